"""TradingEnv: step semantics by hand on a tiny series, gymnasium vector-env API, bad ticks
flowing through with every bad value counted, and device/epoch bookkeeping."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pyppo import (
    MarketData,
    MarketDataError,
    ObsSpec,
    TradingEnv,
    load_market_data,
    reference,
    synthetic_market,
)
from pyppo.features import compute_features

CLOSE = [100.0, 101.0, 99.0, 100.0, 102.0, 101.0, 103.0, 104.0, 102.0, 105.0, 106.0, 104.0]
FEE = 0.01


def tiny_market():
    idx = pd.date_range("2024-01-01", periods=len(CLOSE), freq="1h")
    return load_market_data(pd.DataFrame({"close": CLOSE}, index=idx), window=2, horizons=(1, 2))


def tiny_env(**kw):
    # The aux horizons are the market's: (1, 2) bars.
    args = dict(num_envs=2, episode_length=3, window=2, fee=FEE, starts="sequential")
    args.update(kw)
    return TradingEnv(tiny_market(), **args)


def lr(a: int, b: int) -> float:
    return math.log(CLOSE[b] / CLOSE[a])


def fwd(t: int, h: int) -> float:
    return CLOSE[t + h] / CLOSE[t] - 1


def test_epoch_bookkeeping_on_tiny_series():
    env = tiny_env()
    # Decision bars need 2 returns behind them and 2 bars ahead: bars 2..9.
    assert env.first_bar == 2 and env.bars_per_epoch == 8
    assert env.bars_per_epoch == env.market.decision_bars(2)
    assert env.steps_per_epoch == 4  # ceil(8 / 2 envs)
    assert env.aux_horizon_bars == (1, 2) and env.aux_labels == ("1bars", "2bars")
    assert env.obs_spec == ObsSpec.for_window(2)


def test_step_semantics_by_hand():
    env = tiny_env()
    spec = env.obs_spec
    obs, info = env.reset()
    # Sequential starts tile bars 2..9 with 3-step episodes: starts 2, 5, (8 -> moved to 7).
    assert env.bar_index.tolist() == [2, 5]
    assert obs[:, spec.position_col].tolist() == [0.0, 0.0]
    assert spec.position_col == spec.size - 1 and spec.names[-1] == "position"
    torch.testing.assert_close(
        info["aux_targets"], torch.tensor([[fwd(2, 1), fwd(2, 2)], [fwd(5, 1), fwd(5, 2)]])
    )

    # Step 1: env 0 goes long, env 1 goes short (both from flat: one unit of fee).
    obs, reward, terminated, truncated, info = env.step(torch.tensor([2, 0]))
    expected = [lr(2, 3) - FEE, -lr(5, 6) - FEE]
    torch.testing.assert_close(reward, torch.tensor(expected))
    assert env.bar_index.tolist() == [3, 6]
    assert obs[:, spec.position_col].tolist() == [1.0, -1.0]
    torch.testing.assert_close(
        info["aux_targets"], torch.tensor([[fwd(3, 1), fwd(3, 2)], [fwd(6, 1), fwd(6, 2)]])
    )
    assert not terminated.any() and not truncated.any() and "final_obs" not in info
    total = torch.tensor(expected)

    # Step 2: env 0 stays long (no fee), env 1 flips short -> long (two units of fee).
    obs, reward, terminated, truncated, info = env.step(torch.tensor([2, 2]))
    expected = [lr(3, 4), lr(6, 7) - 2 * FEE]
    torch.testing.assert_close(reward, torch.tensor(expected))
    total += torch.tensor(expected)

    # Step 3: both go flat (one unit of fee, no market exposure) and the episodes end.
    obs, reward, terminated, truncated, info = env.step(torch.tensor([1, 1]))
    torch.testing.assert_close(reward, torch.tensor([-FEE, -FEE]))
    total += torch.tensor([-FEE, -FEE])
    assert truncated.tolist() == [True, True] and terminated.tolist() == [False, False]
    assert info["_final_obs"].tolist() == [True, True]
    final = info["final_obs"]
    # The final observation is of bars 5 and 8, flat: exactly the table rows (position
    # column 0), as a fresh env observing those bars flat would see them.
    assert final[:, spec.position_col].tolist() == [0.0, 0.0]
    table = env.features.materialize()
    assert torch.equal(final, table[[5, 8]])
    torch.testing.assert_close(info["episode_return"], total)
    # Auto-reset (same step): the returned obs starts the next episodes, at the next tiles.
    assert env.bar_index.tolist() == [7, 2]
    assert torch.equal(obs, table[[7, 2]])
    torch.testing.assert_close(
        info["aux_targets"], torch.tensor([[fwd(7, 1), fwd(7, 2)], [fwd(2, 1), fwd(2, 2)]])
    )

    # After the reset the first trade is charged from flat again.
    _, reward, *_ = env.step(torch.tensor([0, 1]))
    torch.testing.assert_close(reward, torch.tensor([-lr(7, 8) - FEE, 0.0]))
    assert env.counters()["return_nonfinite"] == 0


def test_long_only_has_two_actions():
    env = tiny_env(allow_short=False)
    assert env.single_action_space.n == 2
    env.reset()
    _, reward, *_ = env.step(torch.tensor([1, 0]))
    torch.testing.assert_close(reward, torch.tensor([lr(2, 3) - FEE, 0.0]))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 1\]"):
        env.step(torch.tensor([2, 0]))


def test_observation_window_is_scale_free_and_causal():
    base = synthetic_market(2000, seed=4)
    scaled_frame = base.frame * 1000.0
    scaled = load_market_data(scaled_frame)
    kw = dict(num_envs=4, episode_length=50, starts="sequential")
    a, _ = TradingEnv(base, **kw).reset()
    b, _ = TradingEnv(scaled, **kw).reset()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # Row t only depends on bars <= t: changing the future leaves it alone.
    future = base.frame.copy()
    future.iloc[1500:, :4] *= 2.0
    env_a = TradingEnv(base, num_envs=1, episode_length=10)
    env_b = TradingEnv(load_market_data(future), num_envs=1, episode_length=10)
    torch.testing.assert_close(
        env_a.features.materialize()[:1500], env_b.features.materialize()[:1500]
    )
    # The newest window column has the sign of the newest log return.
    t = torch.arange(100, 1500)
    last = env_a.features.materialize()[t, env_a.obs_spec.window.stop - 1]
    assert torch.equal(torch.sign(last), torch.sign(base.log_returns[t].float()))


def cut(market, t: int) -> MarketData:
    """The market as it was known at bar t: bars 0..t only."""
    frame = market.frame.iloc[: t + 1]
    return MarketData(frame, bar_interval=market.bar_interval, horizons=market.horizons)


@pytest.mark.parametrize("bad_ticks", [0.0, 0.01])
def test_features_of_a_bar_use_only_bars_up_to_it(bad_ticks):
    """The table of the market cut after bar t is bit for bit the first t + 1 rows of the
    full table: no feature (volatility floor included) looks ahead."""
    market = synthetic_market(3000, seed=6, bad_ticks=bad_ticks)
    full = compute_features(market, 60, "cpu").materialize()
    for t in (0, 1, 5, 59, 60, 61, 777, 1500, 2998):
        part = compute_features(cut(market, t), 60, "cpu").materialize()
        assert torch.equal(part, full[: t + 1]), t


def test_flat_series_does_not_divide_by_zero():
    idx = pd.date_range("2024-01-01", periods=300, freq="1h")
    frame = pd.DataFrame({"close": 100.0, "high": 100.0, "low": 100.0}, index=idx)
    feats = compute_features(load_market_data(frame), 60, "cpu")
    table, spec = feats.materialize(), feats.spec
    assert torch.isfinite(table).all()
    assert (table[:, spec.window] == 0).all() and (table[:, spec.indicators] == 0).all()
    # Nearly flat, then volatile: still finite, and the quiet bars' features do not see the
    # volatility to come (a floor from the whole series' volatility would).
    rng = np.random.default_rng(0)
    steps = np.concatenate([rng.normal(0, 1e-8, 150), rng.normal(0, 1e-2, 150)])
    moving = load_market_data(pd.DataFrame({"close": 100.0 * np.exp(np.cumsum(steps))}, idx))
    table = compute_features(moving, 60, "cpu").materialize()
    assert torch.isfinite(table).all()
    for t in (100, 200):
        assert torch.equal(
            compute_features(cut(moving, t), 60, "cpu").materialize(), table[: t + 1]
        )


def test_observation_is_the_bar_and_the_position_only():
    md = synthetic_market(2000, seed=1)
    env = TradingEnv(md, num_envs=3, episode_length=7, seed=2)
    spec = env.obs_spec
    assert spec.size == 60 + 9 + 4 + 1
    assert "episode_progress" not in spec.names and spec.names[spec.position_col] == "position"
    assert env.describe().observation_size == spec.size
    obs, _ = env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):  # across episode boundaries: nothing about the episode shows
        expected = env.features.materialize()[env.bar_index].clone()
        expected[:, spec.position_col] = env.position
        assert torch.equal(obs, expected)
        obs, *_ = env.step(torch.randint(0, 3, (3,), generator=gen))


def test_invalid_actions_and_misuse():
    env = tiny_env()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(torch.tensor([1, 1]))
    env.reset()
    with pytest.raises(ValueError, match=r"actions must have shape \(2,\)"):
        env.step(torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 2\]"):
        env.step(torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 2\]"):
        env.step(torch.tensor([-1, 1]))
    with pytest.raises(TypeError, match="integers"):
        env.step(torch.tensor([1.0, 1.0]))
    env.step(np.array([2, 0]))  # numpy and lists are accepted
    env.step([1, 1])


def test_horizon_and_length_errors():
    # The aux horizons are the market's; bad ones are refused when the market is built.
    with pytest.raises(MarketDataError, match="shorter than the bar interval"):
        synthetic_market(2000, horizons=("30min", "24h"))
    with pytest.raises(MarketDataError, match="not a whole multiple"):
        synthetic_market(2000, horizons=("90min",))
    md = synthetic_market(2000)
    with pytest.raises(MarketDataError, match="too few for episode_length=5000"):
        TradingEnv(md, episode_length=5000)
    env = TradingEnv(md, episode_length=100)
    assert env.aux_horizon_bars == (1, 24) and env.aux_labels == ("1h", "24h")
    md = synthetic_market(2000, horizons=("2h", 5))
    env = TradingEnv(md, episode_length=100)
    assert env.aux_horizon_bars == (2, 5) and env.aux_labels == ("2h", "5bars")
    # The targets follow the market's horizons, column by column.
    _, info = env.reset()
    expected = torch.stack([md.forward_returns(2), md.forward_returns(5)], 1).float()
    torch.testing.assert_close(info["aux_targets"], expected[env.bar_index])


def test_random_starts_are_seeded_and_in_range():
    md = synthetic_market(3000, seed=2)
    env = TradingEnv(md, num_envs=256, episode_length=100, seed=5)
    env.reset()
    first = env.bar_index.clone()
    assert first.min() >= env.first_bar and first.max() <= len(md) - 100 - 24
    assert len(first.unique()) > 100
    env.reset(seed=5)
    assert torch.equal(env.bar_index, first)
    env.reset(seed=6)
    assert not torch.equal(env.bar_index, first)


def test_sequential_starts_cover_every_decision_bar_once_per_round():
    md = synthetic_market(3000, seed=2)
    env = TradingEnv(md, num_envs=4, episode_length=100, starts="sequential")
    env.reset()
    slots = math.ceil(env.bars_per_epoch / 100)
    seen = set()
    for _ in range(math.ceil(slots / 4) * 100):
        seen.update(env.bar_index.tolist())
        env.step(torch.ones(4, dtype=torch.int64))
    assert seen == set(range(env.first_bar, env.first_bar + env.bars_per_epoch))


def test_planted_edge_is_visible_in_the_observation_and_beats_buy_and_hold_out_of_sample():
    """The synthetic market's momentum is observable: trading the sign of the obs's mom_3
    column, after fees, beats buy-and-hold and staying flat on the held-out split."""
    _, test = synthetic_market(20_000, seed=0).split(0.8)
    env = TradingEnv(test, num_envs=1, episode_length=len(test) - 60 - 24, starts="sequential")
    col = env.obs_spec.names.index("mom_3")
    totals = {}
    for policy in ("momentum", "buy_and_hold"):
        obs, _ = env.reset()
        total = 0.0
        for _ in range(env.episode_length):
            if policy == "momentum":
                action = torch.where(obs[:, col] > 0, 2, 0)
            else:
                action = torch.full((1,), 2)
            obs, reward, _, truncated, _ = env.step(action)
            total += float(reward)
        assert truncated.all()
        totals[policy] = total
    assert totals["momentum"] > max(totals["buy_and_hold"], 0.0) + 0.5


# ----------------------------------------------------------------------------- bad ticks


def test_bad_ticks_flow_through_with_every_bad_value_counted():
    md = synthetic_market(4000, seed=11, bad_ticks=0.01)
    env = TradingEnv(md, num_envs=8, episode_length=200, starts="sequential", fee=1e-4)
    logr = md.log_returns.float()
    aux_table = torch.stack([md.forward_returns(1), md.forward_returns(24)], 1).float()
    obs, info = env.reset(seed=0)
    expect_ret = torch.zeros(2, dtype=torch.int64)
    expect_aux = reference.sanitize(aux_table[env.bar_index])[1]
    reward_bars = set()
    rounds = math.ceil(math.ceil(env.bars_per_epoch / 200) / 8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(rounds * 200):
        t_next = env.bar_index + 1
        reward_bars.update(t_next.tolist())
        expect_ret += reference.sanitize(logr[t_next])[1]
        actions = torch.randint(0, 3, (8,), generator=gen)
        obs, reward, terminated, truncated, info = env.step(actions)
        expect_aux += reference.sanitize(aux_table[env.bar_index])[1]
        for x in (obs, reward, info["aux_targets"], info.get("final_obs", obs)):
            assert torch.isfinite(x).all()
        assert reward.abs().max() <= 1 + 2 * 1e-4
        assert info["aux_targets"].abs().max() <= 1.0
    counts = env.counters()
    assert [counts["return_nonfinite"], counts["return_clamped"]] == expect_ret.tolist()
    assert [counts["aux_nonfinite"], counts["aux_clamped"]] == expect_aux.tolist()
    # Every planted bad bar inside the traded range was stepped onto, and each one made
    # its mark: zero prices and NaN bars give non-finite returns, spikes clamped ones.
    lo, hi = env.first_bar + 1, env.first_bar + env.bars_per_epoch
    planted = {k: [int(p) for p in v if lo <= p <= hi] for k, v in md.planted.items()}
    assert all(len(v) > 5 for v in planted.values())
    assert all(p in reward_bars for v in planted.values() for p in v)
    bad_bars = len(planted["zero_price"]) + len(planted["nan_bar"])
    assert counts["return_nonfinite"] >= bad_bars
    assert counts["return_clamped"] >= len(planted["spike"])
    # The observation table was built from sanitized returns, counted once per bar.
    n_nonfinite = int((~torch.isfinite(md.log_returns)).sum())
    assert counts["feature_return_nonfinite"] == n_nonfinite == 2 * bad_bars_total(md)
    assert torch.isfinite(env.features.materialize()).all()


def bad_bars_total(md) -> int:
    # Zero-price and NaN bars poison two log returns each (into and out of the bar), as
    # long as two bad bars are not neighbours.
    bad = np.sort(np.concatenate([md.planted["zero_price"], md.planted["nan_bar"]]))
    assert (np.diff(bad) > 1).all()
    return len(bad)


def test_counters_stay_on_device_and_reset():
    env = TradingEnv(synthetic_market(3000, bad_ticks=0.02), num_envs=16, episode_length=100)
    env.reset()
    for _ in range(300):
        env.step(torch.randint(0, 3, (16,)))
    assert env.return_counts.dtype == torch.int64 and env.return_counts.device == env.device
    assert env.counters()["return_nonfinite"] > 0
    env.reset_counters()
    assert env.counters()["return_nonfinite"] == env.counters()["aux_clamped"] == 0


# ----------------------------------------------------------------------------- gymnasium


def test_gymnasium_vector_env_api():
    gym = pytest.importorskip("gymnasium")
    env = TradingEnv(synthetic_market(3000), num_envs=5, episode_length=20, seed=3)
    assert isinstance(env, gym.vector.VectorEnv)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert env.num_envs == 5
    assert env.single_action_space == gym.spaces.Discrete(3)
    assert env.action_space == gym.spaces.MultiDiscrete([3] * 5)
    assert env.single_observation_space.shape == (env.obs_spec.size,)
    assert env.observation_space.shape == (5, env.obs_spec.size)
    obs, info = env.reset(seed=123)
    assert isinstance(info, dict) and obs.dtype == torch.float32
    assert env.observation_space.contains(obs.numpy())
    # Reset determinism (gymnasium's check_reset_seed_determinism, vectorized).
    obs2, _ = env.reset(seed=123)
    assert torch.equal(obs, obs2)
    # Step determinism and actions sampled from action_space.
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(45)]
    runs = []
    for _ in range(2):
        env.reset(seed=123)
        runs.append([env.step(a) for a in actions])
    for (o1, r1, te1, tr1, _), (o2, r2, _, tr2, _) in zip(*runs, strict=True):
        assert torch.equal(o1, o2) and torch.equal(r1, r2) and torch.equal(tr1, tr2)
        assert env.single_observation_space.contains(o1[0].numpy())
        assert r1.shape == te1.shape == tr1.shape == (5,)
        assert te1.dtype == tr1.dtype == torch.bool
    # Truncation every 20 steps, with a final observation.
    truncs = [bool(tr.all()) for _, _, _, tr, _ in runs[0]]
    assert [i for i, t in enumerate(truncs) if t] == [19, 39]
    assert env.observation_space.contains(runs[0][19][4]["final_obs"].numpy())
    # Returned data is not reused (check_returned_data_not_reused).
    env.reset(seed=1)
    o1, r1, *_ = env.step(np.zeros(5, dtype=np.int64))
    keep_o, keep_r = o1.clone(), r1.clone()
    env.step(np.full(5, 2))
    assert torch.equal(o1, keep_o) and torch.equal(r1, keep_r)
    env.close()
    assert env.closed


def test_works_without_gymnasium():
    code = (
        "import sys; sys.modules['gymnasium'] = None\n"
        "import torch, pyppo\n"
        "env = pyppo.TradingEnv(pyppo.synthetic_market(2000), num_envs=3, episode_length=10)\n"
        "obs, info = env.reset()\n"
        "assert env.single_action_space.n == 3 and env.single_observation_space.shape == (74,)\n"
        "out = env.step(torch.tensor([0, 1, 2]))\n"
        "assert out[0].shape == (3, 74)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- devices


@pytest.mark.cuda
def test_cuda_matches_cpu():
    md = synthetic_market(3000, seed=9, bad_ticks=0.01)
    kw = dict(num_envs=32, episode_length=50, starts="sequential")
    cpu = TradingEnv(md, device="cpu", **kw)
    gpu = TradingEnv(md, device="cuda", **kw)
    o_c, i_c = cpu.reset()
    o_g, i_g = gpu.reset()
    torch.testing.assert_close(o_g.cpu(), o_c)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        a = torch.randint(0, 3, (32,), generator=gen)
        o_c, r_c, _, tr_c, i_c = cpu.step(a)
        o_g, r_g, _, tr_g, i_g = gpu.step(a.cuda())
        assert o_g.device.type == r_g.device.type == i_g["aux_targets"].device.type == "cuda"
        torch.testing.assert_close(o_g.cpu(), o_c)
        torch.testing.assert_close(r_g.cpu(), r_c)
        torch.testing.assert_close(i_g["aux_targets"].cpu(), i_c["aux_targets"])
    assert cpu.counters() == gpu.counters()
