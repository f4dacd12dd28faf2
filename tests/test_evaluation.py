"""The vectorized inference path (policy_outputs + walk) and the backtest built on it: the
same positions, equity and predictions as stepping a one-env TradingEnv bar by bar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pyppo import MarketDataError, TradingActorCritic, TradingEnv, synthetic_market
from pyppo.evaluation import backtest, net_returns
from pyppo.features import compute_features
from pyppo.inference import PolicyOutputs, action_positions, policy_outputs, walk
from pyppo.model import fast_tanh_

WINDOW = 60
FEE = 1e-4


def busy_model(market, allow_short: bool = True, hidden_dim: int = 32, seed: int = 0):
    """An untrained model whose actor weights are large enough that its greedy positions
    change often and depend on the position held."""
    torch.manual_seed(seed)
    spec = TradingEnv(market, num_envs=1, episode_length=1, window=WINDOW).obs_spec
    model = TradingActorCritic(spec, num_actions=3 if allow_short else 2, hidden_dim=hidden_dim)
    nn.init.orthogonal_(model.actor.weight, 3.0)
    nn.init.normal_(model.aux_1h.weight, std=0.3)
    nn.init.normal_(model.aux_24h.weight, std=0.3)
    return model


def reference_run(market, model, allow_short: bool = True, fee: float = FEE, device="cpu"):
    """Step a one-env TradingEnv through every decision bar with argmax actions."""
    steps = market.decision_bars(WINDOW)
    env = TradingEnv(
        market,
        num_envs=1,
        episode_length=steps,
        window=WINDOW,
        fee=fee,
        allow_short=allow_short,
        device=device,
        starts="sequential",
    )
    choices = action_positions(allow_short)
    obs, info = env.reset(seed=0)
    rewards, positions, preds, targets = [], [], {"pred_1h": [], "pred_24h": []}, []
    model.eval()
    with torch.inference_mode():
        for _ in range(steps):
            out = model(obs)
            for key in preds:
                preds[key].append(float(out[key][0]))
            targets.append(info["aux_targets"][0].tolist())
            action = out["action_logits"].argmax(-1)
            obs, reward, _, truncated, info = env.step(action)
            rewards.append(float(reward[0]))
            # The action's position (env.position is already reset after the last step).
            positions.append(float(choices[int(action[0])]))
    assert truncated.all()
    return {
        "rewards": np.array(rewards),
        "positions": np.array(positions),
        "preds": {k: np.array(v) for k, v in preds.items()},
        "targets": np.array(targets),
    }


@pytest.mark.parametrize(
    ("n_bars", "allow_short"), [(8_000, True), (4_000, False)], ids=["short", "long-only"]
)
@pytest.mark.slow
def test_vectorized_backtest_equals_stepping_the_env(n_bars, allow_short):
    market = synthetic_market(n_bars, seed=3)
    model = busy_model(market, allow_short)
    ref = reference_run(market, model, allow_short)
    result = backtest(market, model, window=WINDOW, fee=FEE, allow_short=allow_short)
    # The positions change often and every position occurs, so the walk is exercised.
    assert set(np.unique(result.positions)) == set(action_positions(allow_short).tolist())
    assert np.mean(np.diff(result.positions) != 0) > 0.1
    np.testing.assert_array_equal(result.positions, ref["positions"])
    np.testing.assert_array_equal(result.log_returns, ref["rewards"])
    np.testing.assert_array_equal(result.equity, np.exp(np.cumsum(ref["rewards"])))
    for j, name in enumerate(("pred_1h", "pred_24h")):
        np.testing.assert_array_equal(result.targets[name], ref["targets"][:, j])
        # Within float rounding: the backtest's forward passes take the fast inference path
        # (the position-free part computed once, tanh from sigmoid), the env the plain one.
        np.testing.assert_allclose(result.preds[name], ref["preds"][name], rtol=1e-5, atol=5e-6)
    assert result.policy == "agent" and len(result.market_returns) == len(ref["rewards"])


@pytest.mark.parametrize("policy", ["buy_and_hold", "random"])
def test_baselines_equal_stepping_the_env_with_their_actions(policy):
    market = synthetic_market(3_000, seed=5, bad_ticks=0.01)
    result = backtest(market, policy, window=WINDOW, fee=FEE, seed=7)
    actions = np.searchsorted(action_positions(True), result.positions)
    steps = market.decision_bars(WINDOW)
    env = TradingEnv(
        market, num_envs=1, episode_length=steps, window=WINDOW, fee=FEE, starts="sequential"
    )
    env.reset()
    rewards = np.array([float(env.step(torch.tensor([a]))[1][0]) for a in actions])
    # The env pays each bar's sanitized move; the backtest books a dirty bar's move at the
    # next real price: the totals agree wherever a price is real, and nowhere is a move lost.
    real = ~result.repaired
    assert result.repaired.any() and real.any()
    np.testing.assert_allclose(
        np.cumsum(result.log_returns)[real], np.cumsum(rewards)[real], rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(
        result.log_returns[real & np.roll(real, 1)], rewards[real & np.roll(real, 1)]
    )
    assert (result.log_returns[result.repaired] == 0).all()
    assert np.isfinite(result.log_returns).all() and not result.preds and not result.targets
    if policy == "buy_and_hold":
        assert (result.positions == 1.0).all()
    else:
        # Reproducible for a seed, different for another, every action drawn.
        again = backtest(market, "random", window=WINDOW, fee=FEE, seed=7)
        other = backtest(market, "random", window=WINDOW, fee=FEE, seed=8)
        np.testing.assert_array_equal(again.positions, result.positions)
        assert not np.array_equal(other.positions, result.positions)
        assert set(np.unique(result.positions)) == {-1.0, 0.0, 1.0}


def test_walk_by_hand():
    # Three bars, positions (-1, 0, 1). logits[k, i] favours action (k + i) % 3 at bar i when
    # holding position k, so from flat (k=1): bar 0 -> action 1 (flat), bar 1 -> 2 (long),
    # bar 2 -> holding long (k=2) -> (2 + 2) % 3 = 1 (flat).
    logits = np.zeros((3, 3, 3), dtype=np.float32)
    for k in range(3):
        for i in range(3):
            logits[k, i, (k + i) % 3] = 1.0
    value = np.arange(9, dtype=np.float32).reshape(3, 3)  # value[k, i] = 3k + i
    outputs = PolicyOutputs(
        bars=np.array([10, 11, 12]),
        positions=action_positions(True),
        outputs={"action_logits": logits, "value": value},
    )
    run = walk(outputs)
    assert run.actions.tolist() == [1, 2, 1]
    assert run.held.tolist() == [0.0, 0.0, 1.0]
    assert run.positions.tolist() == [0.0, 1.0, 0.0]
    assert run.outputs["value"].tolist() == [3.0, 4.0, 8.0]
    np.testing.assert_array_equal(run.outputs["action_logits"][2], logits[2, 2])
    assert run.bars.tolist() == [10, 11, 12]
    # From short (k=0): bar 0 -> action 0 (short), bar 1 -> 1 (flat), bar 2 -> 0 (short).
    short = walk(outputs, start_position=-1.0)
    assert short.actions.tolist() == [0, 1, 0] and short.held.tolist() == [-1.0, -1.0, 0.0]
    # Ties go to the first maximum, as torch.argmax.
    tied = PolicyOutputs(outputs.bars, outputs.positions, {"action_logits": np.zeros_like(logits)})
    assert walk(tied).actions.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="start_position=0.5"):
        walk(outputs, start_position=0.5)
    with pytest.raises(ValueError, match="action_logits"):
        walk(PolicyOutputs(outputs.bars, outputs.positions, {"value": value}))


class Recorder(nn.Module):
    """Wraps a model and records the mode and inference state of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append((self.training, torch.is_inference_mode_enabled(), obs.shape[0]))
        return self.model(obs)


def test_policy_outputs_batches_ranges_and_modes():
    market = synthetic_market(3_000, seed=2)
    model = Recorder(busy_model(market))
    model.train()
    full = policy_outputs(model, market, WINDOW, True)
    assert model.training  # restored
    assert all(not training and inference for training, inference, _ in model.calls)
    assert [n for *_, n in model.calls] == [len(market) - WINDOW] * 3  # one batch, 3 positions
    assert full.bars.tolist() == list(range(WINDOW, len(market)))
    assert full.outputs["action_logits"].shape == (3, len(market) - WINDOW, 3)
    assert full.outputs["value"].shape == (3, len(market) - WINDOW)

    model.calls.clear()
    features = compute_features(market, WINDOW, "cpu")
    part = policy_outputs(
        model, market, WINDOW, True, batch_size=500, start=1000, stop=2600, features=features
    )
    assert [n for *_, n in model.calls] == [500] * 9 + [100] * 3
    assert part.bars.tolist() == list(range(1000, 2600))
    for name, value in part.outputs.items():
        np.testing.assert_allclose(value, full.outputs[name][:, 1000 - WINDOW : 2600 - WINDOW])
    # Each row is the model at that bar's env observation with the position written in.
    obs = features.materialize()[[1234, 1234]].clone()
    obs[:, features.spec.position_col] = torch.tensor([-1.0, 1.0])
    with torch.inference_mode():
        direct = model.model.eval()(obs)["value"].numpy()
    np.testing.assert_allclose(part.outputs["value"][[0, 2], 234], direct, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="window <= start"):
        policy_outputs(model, market, WINDOW, True, start=WINDOW - 1)
    with pytest.raises(ValueError, match="window <= start"):
        policy_outputs(model, market, WINDOW, True, stop=len(market) + 1)
    with pytest.raises(ValueError, match="features are for window 30"):
        policy_outputs(model, market, WINDOW, True, features=compute_features(market, 30, "cpu"))


def test_position_free_part_is_computed_once_per_batch_and_changes_nothing():
    market = synthetic_market(2_000, seed=8)
    model = busy_model(market)
    calls = []
    model.trunk.price[0].register_forward_hook(lambda *_: calls.append(1))
    kw = dict(batch_size=500, start=400, stop=2_000)
    reused = policy_outputs(model, market, WINDOW, True, **kw)
    assert len(calls) == 4  # once per batch of 500 bars
    calls.clear()
    plain = policy_outputs(model, market, WINDOW, True, reuse=False, **kw)
    assert len(calls) == 4 * 3  # once per batch and position
    for name, value in plain.outputs.items():
        np.testing.assert_allclose(reused.outputs[name], value, rtol=1e-5, atol=5e-6)


def test_model_forward_with_its_position_free_part_is_the_plain_forward():
    market = synthetic_market(2_000, seed=8)
    model = busy_model(market)
    obs = compute_features(market, WINDOW, "cpu").materialize()[500:900].clone()
    with torch.no_grad():
        part = model.position_free(obs)
        for position in (-1.0, 0.0, 1.0):
            obs[:, model.obs_spec.position_col] = position
            plain, given = model(obs), model(obs, part)
            for name in plain:
                torch.testing.assert_close(given[name], plain[name], rtol=1e-5, atol=5e-6)


def test_fast_tanh_matches_torch_tanh():
    x = torch.linspace(-20, 20, 100_001)
    y = fast_tanh_(x.clone())
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=2e-7)
    with pytest.raises(RuntimeError, match="is for inference"):
        fast_tanh_(x.clone().requires_grad_(True))


def test_net_returns_by_hand():
    positions = np.array([1.0, 1.0, -1.0, 0.0])
    returns = np.array([0.01, -0.02, 0.03, 0.04])
    fee = 0.001
    expected = [0.01 - fee, -0.02, -0.03 - 2 * fee, -fee]
    np.testing.assert_allclose(net_returns(positions, returns, fee), expected, rtol=1e-6)
    assert net_returns(positions, returns, fee).dtype == np.float32
    np.testing.assert_allclose(
        net_returns(positions, returns, fee, start_position=1.0)[0], 0.01, rtol=1e-6
    )


def test_small_held_out_set():
    """Window 60, horizons (1h, 24h): 200 bars give 116 decision bars, 85 bars one, and 84
    none; no episode length is involved."""
    for n_bars, steps in ((200, 116), (85, 1)):
        market = synthetic_market(n_bars, seed=4)
        model = busy_model(market)
        ref = reference_run(market, model)
        for policy in (model, "buy_and_hold", "random"):
            result = backtest(market, policy, window=WINDOW, fee=FEE)
            assert len(result.log_returns) == len(result.positions) == steps
            metrics = result.metrics()
            assert metrics["bars"] == steps
            # One bar has no Sharpe ratio (no dispersion to divide by): NaN, like a flat policy.
            undefined = {"hit_rate", "sharpe"} if steps < 2 else {"hit_rate"}
            assert all(math.isfinite(v) for k, v in metrics.items() if k not in undefined)
            assert steps < 2 or math.isfinite(metrics["sharpe"])
            if policy is model:
                np.testing.assert_array_equal(result.positions, ref["positions"])
                np.testing.assert_array_equal(result.log_returns, ref["rewards"])
    with pytest.raises(MarketDataError, match="84 bars leave no decision bar"):
        backtest(synthetic_market(84, seed=4), "buy_and_hold", window=WINDOW)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy='hold'"):
        backtest(synthetic_market(500), "hold")


@pytest.mark.cuda
def test_backtest_on_cuda_equals_stepping_the_env_there():
    market = synthetic_market(3_000, seed=9, bad_ticks=0.01)
    model = busy_model(market).cuda()
    ref = reference_run(market, model, device="cuda")
    result = backtest(market, model, window=WINDOW, fee=FEE, device="cuda")
    np.testing.assert_array_equal(result.positions, ref["positions"])
    np.testing.assert_array_equal(result.log_returns, ref["rewards"])
    np.testing.assert_allclose(result.preds["pred_1h"], ref["preds"]["pred_1h"], atol=1e-5)


class SpikeChaser(nn.Module):
    """Long, except right after a huge up move, when it goes short: on bad ticks this earns a
    spike's way up and its way down, at prices no one could trade at."""

    def __init__(self, last_return_col: int) -> None:
        super().__init__()
        self.col = last_return_col

    def forward(self, obs):
        up = obs[:, self.col] > 5.0
        logits = torch.stack(
            [up.float(), torch.zeros_like(up, dtype=torch.float32), (~up).float()], 1
        )
        return {"action_logits": 10 * logits, "value": torch.zeros(len(obs))}


def test_dirty_held_out_bars_give_finite_sane_statistics():
    market = synthetic_market(4_000, seed=5, bad_ticks=0.01)
    chaser = SpikeChaser(WINDOW - 1)
    result = backtest(market, chaser, window=WINDOW, fee=FEE)
    # Stepping the env with the same policy pays for the spikes: several-fold in one go.
    env = TradingEnv(
        market,
        num_envs=1,
        episode_length=market.decision_bars(WINDOW),
        window=WINDOW,
        fee=FEE,
        starts="sequential",
    )
    obs, _ = env.reset()
    paid = 0.0
    for _ in range(market.decision_bars(WINDOW)):
        action = chaser(obs)["action_logits"].argmax(-1)
        obs, reward, *_ = env.step(action)
        paid += float(reward[0])
    assert math.exp(paid) > 20.0
    # The backtest trades only at real prices and marks the equity there.
    hold = backtest(market, "buy_and_hold", window=WINDOW, fee=FEE)
    assert result.repaired.sum() >= 2 * len(market.planted["spike"])
    assert abs(result.metrics()["total_return"]) < 3.0
    assert result.equity.max() < 3.0 * hold.equity.max()
    assert all(math.isfinite(v) for k, v in result.metrics().items() if k != "hit_rate")
