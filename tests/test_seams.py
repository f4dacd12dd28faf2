"""Where training, evaluation and checkpoints meet: validation as a callback that never
replaces best.pt with a worse model, one Sharpe ratio everywhere, the heads' names declared
once, and the typed checkpoint (older format included)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pyppo import TradingActorCritic, TradingEnv, guard_outputs, stats, synthetic_market
from pyppo.checkpoint import (
    BEST_CHECKPOINT_CALLBACK,
    Checkpoint,
    build_model,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pyppo.evaluation import Backtest, BestCheckpoint, validation_sharpe
from pyppo.evaluation.report import _fmt_statistic, policy_summaries
from pyppo.heads import AuxHeads
from pyppo.metrics import VALIDATION_SHARPE, MetricSchema
from pyppo.training import PPOTrainer, TrainingCallback

# -- validation as a callback -----------------------------------------------------------


class ScriptedScores:
    """A validation score that follows a script, one value per epoch (shared across the
    callbacks of a run and of its resume)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)

    def __call__(self, result: Backtest) -> float:
        return next(self.scores)


def trainer_with(market, run_dir, callbacks, **settings):
    train, validation = market.split(0.8)
    env = TradingEnv(train, num_envs=8, episode_length=100, seed=0)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=16)
    trainer = PPOTrainer(
        model,
        env,
        num_steps=32,
        num_epochs=1,
        batch_size=128,
        run_dir=run_dir,
        progress=False,
        callbacks=callbacks(validation),
        data_fingerprint=train.fingerprint(),
        **settings,
    )
    return trainer, env


@pytest.mark.slow
def test_a_resumed_run_never_replaces_best_pt_with_a_worse_model(tmp_path):
    market = synthetic_market(3000, seed=2)
    # Epoch scores 3, 1 before the stop; 0.5, 2 after the resume: all worse than epoch 1.
    script = ScriptedScores([3.0, 1.0, 0.5, 2.0])
    trainer, env = trainer_with(market, tmp_path, lambda v: [BestCheckpoint(v, script)])
    per_epoch = math.ceil(env.steps_per_epoch / 32)
    trainer.train(epochs=2)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.trainer.update == per_epoch  # epoch 1's model
    assert load_checkpoint(tmp_path / "checkpoint.pt").callbacks[BEST_CHECKPOINT_CALLBACK] == {
        "best_score": 3.0
    }

    resumed, _ = trainer_with(market, tmp_path, lambda v: [BestCheckpoint(v, script)])
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    resumed.train(epochs=4)
    validated = [r[VALIDATION_SHARPE] for r in resumed.history if VALIDATION_SHARPE in r]
    assert validated == [3.0, 1.0, 0.5, 2.0]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.trainer.update == per_epoch  # still epoch 1's
    assert best.callbacks[BEST_CHECKPOINT_CALLBACK]["best_score"] == 3.0


class StopAfter(TrainingCallback):
    """Scores every update with the update's number and stops training after ``last``."""

    name = "stop_after"
    columns = ("test/update",)

    def __init__(self, last: int) -> None:
        self.last = last
        self.seen: list[float] = []

    def due(self, trainer, epoch_done):
        return True

    def evaluate(self, trainer):
        return {"test/update": float(trainer.update)}

    def on_result(self, trainer, rows):
        self.seen.append(rows[0]["test/update"])
        return trainer.update >= self.last


def test_a_callback_fills_its_columns_and_can_stop_training(tmp_path):
    market = synthetic_market(3000, seed=2)
    callback = StopAfter(3)
    trainer, _ = trainer_with(market, tmp_path, lambda v: [callback])
    history = trainer.train(total_steps=8 * 32 * 10)
    assert len(history) == 3 and callback.seen == [1.0, 2.0, 3.0]
    assert [row["test/update"] for row in history] == [1.0, 2.0, 3.0]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/update" in header and VALIDATION_SHARPE not in header
    assert load_checkpoint(tmp_path / "checkpoint.pt").trainer.update == 3


def test_callbacks_need_distinct_names(tmp_path):
    market = synthetic_market(3000, seed=2)
    with pytest.raises(ValueError, match="distinct names"):
        trainer_with(market, None, lambda v: [StopAfter(1), StopAfter(2)])


# -- one Sharpe ratio --------------------------------------------------------------------


def fixed_backtest(positions: np.ndarray, seed: int = 0) -> Backtest:
    """A backtest over a fixed series of returns, as the backtest builds one."""
    rng = np.random.default_rng(seed)
    market_returns = rng.normal(2e-4, 5e-3, len(positions))
    fee = 1e-4
    previous = np.concatenate([[0.0], positions[:-1]])
    log_returns = positions * market_returns - fee * np.abs(positions - previous)
    times = pd.date_range("2021-01-01", periods=len(positions), freq="1h")
    return Backtest("agent", log_returns, positions, market_returns, times, 8766.0, fee)


def test_best_pt_the_report_and_the_learning_test_use_one_sharpe():
    rng = np.random.default_rng(1)
    agent = fixed_backtest(rng.choice([-1.0, 0.0, 1.0], size=500))
    hold = fixed_backtest(np.ones(500))
    report = policy_summaries({"agent": agent, "buy_and_hold": hold})["agent"]["Sharpe Ratio"]
    want = stats.sharpe_ratio(np.expm1(agent.log_returns), 8766.0)
    # best.pt's score, the learning test's metrics["sharpe"] and report.md's Sharpe Ratio.
    assert validation_sharpe(agent) == agent.metrics()["sharpe"] == report == want
    assert math.isfinite(want) and want != 0.0


def test_a_flat_agent_has_no_sharpe_shown_as_no_trades_and_ranked_as_zero():
    flat = fixed_backtest(np.zeros(300))
    hold = fixed_backtest(np.ones(300))
    assert math.isnan(flat.metrics()["sharpe"])
    assert validation_sharpe(flat) == 0.0
    summary = policy_summaries({"agent": flat, "buy_and_hold": hold})["agent"]
    assert _fmt_statistic("Sharpe Ratio", summary["Sharpe Ratio"]) == "no trades"
    assert stats.sharpe_for_ranking(1.5) == 1.5


# -- the heads' names ----------------------------------------------------------------------


def test_heads_name_everything_after_the_labels():
    heads = AuxHeads.from_labels(("4h", "1d"))
    assert heads.modules == ("aux_4h", "aux_1d") and heads.outputs == ("pred_4h", "pred_1d")
    assert heads.output_names() == ("action_logits", "value", "pred_4h", "pred_1d")
    assert heads.loss_columns == ("loss/aux_4h", "loss/aux_1d")
    assert [h.loss_log_name for h in heads] == ["aux_4h_loss", "aux_1d_loss"]
    schema = MetricSchema(("trunk", *heads.modules), heads.output_names(), heads, ())
    assert {"loss/aux_4h", "nonfinite/loss/aux_1d", "nonfinite/output/pred_4h"} <= set(
        schema.columns
    )
    with pytest.raises(ValueError, match="distinct"):
        AuxHeads.from_labels(("1h", "1h"))


@pytest.mark.parametrize("aux_limit", [math.inf, 0.5])
def test_the_model_runs_with_any_aux_limit(aux_limit):
    env = TradingEnv(synthetic_market(2000, seed=1), num_envs=4, episode_length=50)
    model = TradingActorCritic(env.obs_spec, hidden_dim=16, aux_limit=aux_limit)
    torch.nn.init.normal_(model.aux_1h.weight, std=50.0)  # predictions far beyond ±1
    obs, _ = env.reset(seed=0)
    out = model(obs)
    assert set(out) == {"action_logits", "value", "pred_1h", "pred_24h"}
    big = out["pred_1h"].abs().max()
    assert big > 1.0 if aux_limit == math.inf else big <= aux_limit


def test_guard_outputs_clamps_each_output_to_its_own_limit():
    raw = {
        "action_logits": torch.tensor([[5.0, float("nan")]]),
        "value": torch.tensor([7.0]),
        "pred_1h": torch.tensor([3.0]),
    }
    out, counts = guard_outputs(raw, {"pred_1h": 1.0})
    assert out["action_logits"].tolist() == [[5.0, 0.0]] and out["value"].tolist() == [7.0]
    assert out["pred_1h"].tolist() == [1.0] and counts.tolist() == [1, 0, 0]
    unclamped, _ = guard_outputs(raw)  # no limits: only NaN/inf repaired
    assert unclamped["pred_1h"].tolist() == [3.0]


# -- the typed checkpoint -------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("seams")
    market = synthetic_market(3000, seed=2)
    trainer, _ = trainer_with(market, run, lambda v: [BestCheckpoint(v)])
    trainer.train(total_steps=8 * 32 * 2)
    return run, trainer


def test_a_checkpoint_round_trips_through_plain_data(saved_run):
    run, trainer = saved_run
    saved = load_checkpoint(run / "checkpoint.pt")
    assert isinstance(saved, Checkpoint) and saved.config == trainer.config
    assert saved.agent.model == trainer.model.describe()
    assert saved.agent.env == trainer.env.describe()
    again = Checkpoint.from_dict(saved.to_dict())
    assert again.trainer == saved.trainer and again.agent == saved.agent
    model = build_model(saved.agent.model, saved.model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.parameters(), trainer.model.parameters(), strict=True)
    )


def test_find_checkpoint_prefers_the_validated_model(saved_run, tmp_path):
    run, _ = saved_run
    assert find_checkpoint(run / "checkpoint.pt") == run / "checkpoint.pt"
    assert find_checkpoint(run).name in ("best.pt", "checkpoint.pt")
    with pytest.raises(Exception, match="holds no checkpoint"):
        find_checkpoint(tmp_path)


def test_format_2_checkpoints_still_load_and_keep_their_best_score(saved_run, tmp_path):
    run, _ = saved_run
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # Format 2: the best score in the trainer section, no callbacks, the agent's spec with
    # observation_size, a run config of plain data.
    state.pop("format_version")
    callbacks = state.pop("callbacks")
    state["trainer"]["best_sharpe"] = 4.25
    state["agent"]["env"]["observation_size"] = len(state["agent"]["env"]["observation_names"])
    state["ranks"] = [
        {
            "rollout": r["rollout"],
            "env": r["env"],
            "rng": {"torch": r["torch_rng"], "batch": r["batch_rng"][0]},
        }
        for r in state["ranks"]
    ]
    assert callbacks  # (the format-3 file had them)
    path = tmp_path / "v2.pt"
    save_checkpoint(path, state)
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 2
    torch.save(raw, path)
    old = load_checkpoint(path)
    assert old.callbacks == {BEST_CHECKPOINT_CALLBACK: {"best_score": 4.25}}
    callback = BestCheckpoint(None)
    callback.load_state_dict(old.callbacks[BEST_CHECKPOINT_CALLBACK])
    assert callback.best_score == 4.25
    assert torch.equal(
        old.ranks[0].batch_rng[0], load_checkpoint(run / "checkpoint.pt").ranks[0].batch_rng[0]
    )


def test_a_checkpoint_from_before_weight_decay_resumes_without_it(saved_run, tmp_path):
    run, trainer = saved_run
    assert trainer.config.weight_decay > 0  # the default
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # As written then: no weight_decay setting, torch's Adam with every parameter in one group.
    del state["config"]["weight_decay"]
    if state["run_config"] is not None:
        state["run_config"]["ppo"].pop("weight_decay", None)
    model = copy.deepcopy(trainer.model)
    adam = torch.optim.Adam(model.parameters(), lr=trainer.config.lr, eps=1e-5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    adam.step()
    state["optimizer"] = adam.state_dict()
    path = tmp_path / "before.pt"
    torch.save(state, path)
    old = load_checkpoint(path)
    assert old.config.weight_decay == 0.0
    assert old.run_config is None or old.run_config.ppo.weight_decay == 0.0
    market = synthetic_market(3000, seed=2)
    resumed, _ = trainer_with(market, tmp_path / "resumed", lambda v: [], weight_decay=0.0)
    resumed.load_checkpoint(path)
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.0, 0.0]
    for p, q in zip(resumed.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(resumed.optimizer.state[p]["exp_avg"], adam.state[q]["exp_avg"])
