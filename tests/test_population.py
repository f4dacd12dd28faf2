"""Populations: many seeds in one process as one batched model. Member k computes what a run
with seed k computes (to the rounding of batched against plain matrix multiplies), is
guarded on its own, and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SMALL_RUN, same_rows

from pyppo import Agent, PPOTrainer, TradingActorCritic, TradingEnv, export_agent, synthetic_market
from pyppo.checkpoint import CheckpointError, build_model, load_checkpoint, validated_member
from pyppo.cli import evaluate_run, train_main
from pyppo.metrics import read_metrics
from pyppo.population import PopulationActorCritic

SEEDS = (0, 1, 2)
SETTINGS = dict(num_steps=32, num_epochs=2, batch_size=64, progress=False)
# Batched (bmm) against plain (mm) matrix multiplies: the same sums in another order.
TOLERANCE = dict(rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def market():
    return synthetic_market(3000, seed=2)


def obs_spec(market):
    return TradingEnv(market, num_envs=1, episode_length=100).obs_spec


def model(market, seed: int) -> TradingActorCritic:
    torch.manual_seed(seed)
    return TradingActorCritic(obs_spec(market), hidden_dim=32)


def population_trainer(market, seeds=SEEDS, **overrides) -> PPOTrainer:
    env = TradingEnv(market, num_envs=8, episode_length=100, seed=list(seeds))
    population = PopulationActorCritic.from_members([model(market, s) for s in seeds])
    spec = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return PPOTrainer(population, env, seeds=spec, **{**SETTINGS, **overrides})


def single_trainer(market, seed: int, **overrides) -> PPOTrainer:
    env = TradingEnv(market, num_envs=8, episode_length=100, seed=seed)
    return PPOTrainer(model(market, seed), env, seed=seed, **{**SETTINGS, **overrides})


def test_the_batched_forward_and_its_gradients_equal_each_member_alone(market):
    models = [model(market, s) for s in SEEDS]
    population = PopulationActorCritic.from_members(models)
    env = TradingEnv(market, num_envs=6, episode_length=100)
    obs = env.reset(seed=0)[0].unsqueeze(0).repeat(len(SEEDS), 1, 1)
    obs[1] += 0.5  # every member its own rows
    out = population(obs)
    sum(v.sum() for v in out.values()).backward()
    stacked = dict(population.named_parameters())
    for k, single in enumerate(models):
        alone = single(obs[k])
        for name, value in alone.items():
            torch.testing.assert_close(out[name][k], value, **TOLERANCE)
        sum(v.sum() for v in alone.values()).backward()
        for name, param in single.named_parameters():
            torch.testing.assert_close(stacked[name].grad[k], param.grad, **TOLERANCE)
    assert population.describe().members == len(SEEDS)
    member = population.member(1)
    assert all(
        torch.equal(a, b) for a, b in zip(member.parameters(), models[1].parameters(), strict=True)
    )


def test_member_k_trains_as_a_run_with_seed_k(market):
    population = population_trainer(market)
    rows = population.train(total_steps=8 * 32 * 2)
    stacked = dict(population.model.named_parameters())
    for k, seed in enumerate(SEEDS):
        single = single_trainer(market, seed)
        alone = single.train(total_steps=8 * 32 * 2)
        mine = [r for r in rows if r["member"] == k]
        assert [r["seed"] for r in mine] == [seed, seed]
        for a, b in zip(alone, mine, strict=True):  # losses, KL, norms after the guard, ...
            # (A population's rows have no buffer counters: its env counts per member.)
            for key, value in a.items():
                if not key.startswith(("perf/", "sanitized/buffer/")) and value == value:
                    assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        for name, param in single.model.named_parameters():  # after Adam, twice
            torch.testing.assert_close(stacked[name][k], param, **TOLERANCE)


def test_members_with_their_own_settings_train_as_runs_with_those_settings(market):
    # Every per-member setting at once; member k equals a run with seed k and its settings.
    settings = dict(
        lr=(1e-4, 1e-3),
        gamma=(0.99, 0.9),
        gae_lambda=(0.95, 0.7),
        clip_epsilon=(0.2, 0.05),
        entropy_coef=(0.01, 0.1),
        aux_short_coef=(0.1, 0.5),
        aux_long_coef=(0.0, 0.2),
    )
    population = population_trainer(market, seeds=(0, 1), **settings)
    rows = population.train(total_steps=8 * 32 * 2)
    stacked = dict(population.model.named_parameters())
    for k in range(2):
        own = {name: values[k] for name, values in settings.items()}
        single = single_trainer(market, k, **own)
        alone = single.train(total_steps=8 * 32 * 2)
        mine = [r for r in rows if r["member"] == k]
        for a, b in zip(alone, mine, strict=True):
            assert b["train/lr"] == pytest.approx(own["lr"])
            for key in ("loss/policy", "loss/value", "loss/entropy", "loss/aux_1h"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        for name, param in single.model.named_parameters():
            torch.testing.assert_close(stacked[name][k], param, **TOLERANCE)


def test_one_seed_is_the_single_run(market):
    # "--seeds 1" (one member, from --seed) and "--seeds 0-0" are the run without --seeds.
    a = single_trainer(market, 0).train(total_steps=8 * 32 * 2)
    for spec in ("1", "0-0"):
        env = TradingEnv(market, num_envs=8, episode_length=100, seed=0)
        b = PPOTrainer(model(market, 0), env, seed=0, seeds=spec, **SETTINGS)
        same_rows(a, b.train(total_steps=8 * 32 * 2))


def plant_nan_in_member(population: PopulationActorCritic, member: int) -> list[int]:
    """NaN into member ``member``'s aux_1h weight gradient at the first two steps."""
    planted: list[int] = []

    def plant(grad: torch.Tensor) -> torch.Tensor:
        if len(planted) >= 2:
            return grad
        grad = grad.clone()
        grad[member].view(-1)[::3] = math.nan
        planted.append(grad[member].view(-1)[::3].numel())
        return grad

    population.aux_1h.weight.register_hook(plant)
    return planted


@pytest.mark.parametrize("policy", ["zero", "skip"])
def test_a_nan_in_one_member_leaves_the_others_bit_identical(market, policy, caplog):
    clean = population_trainer(market, nan_policy=policy)
    clean.train(total_steps=8 * 32 * 2)
    dirty = population_trainer(market, nan_policy=policy)
    planted = plant_nan_in_member(dirty.model, 1)
    rows = dirty.train(total_steps=8 * 32 * 2)
    clean_params = dict(clean.model.named_parameters())
    for name, param in dirty.model.named_parameters():
        assert torch.isfinite(param).all()
        for k in (0, 2):
            assert torch.equal(param[k], clean_params[name][k]), (name, k)
        if name == "aux_1h.weight":
            assert not torch.equal(param[1], clean_params[name][1])
    counted = {r["member"]: r["nonfinite/grad/aux_1h"] for r in rows if r["update"] == 1}
    assert counted == {0: 0, 1: sum(planted), 2: 0}
    skipped = {r["member"]: r["guard/skipped_steps"] for r in rows if r["update"] == 1}
    assert skipped == ({0: 0, 1: 2, 2: 0} if policy == "skip" else {0: 0, 1: 0, 2: 0})
    assert "NaN/inf gradient detected in aux_1h (member 1)" in caplog.text


def test_target_kl_stops_members_on_their_own(market):
    trainer = population_trainer(market, target_kl=1e-9, num_epochs=4)
    rows = trainer.train(total_steps=8 * 32)
    steps = trainer.optimizer.step_count.tolist()
    # Each member passes the tiny target after its first epoch: 4 minibatches, not 16.
    assert steps == [4.0, 4.0, 4.0]
    assert all(r["train/approx_kl"] > 1e-9 for r in rows)


@pytest.mark.slow
def test_a_population_resumes_exactly(tmp_path, market):
    straight = population_trainer(market)
    straight.train(total_steps=8 * 32 * 4)
    first = population_trainer(market, checkpoint_every=2)
    first.run_dir = tmp_path
    first.train(total_steps=8 * 32 * 2)
    resumed = population_trainer(market)
    resumed.run_dir = tmp_path
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    same_rows(straight.history, resumed.train(total_steps=8 * 32 * 4))
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_the_command_line_trains_a_population(tmp_path):
    run = tmp_path / "run"
    assert train_main([*SMALL_RUN, "--seeds", "0-2", "--epochs", "1", "--run-dir", str(run)]) == 0
    rows = list(read_metrics(run / "metrics.csv"))
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["update", "member", "seed"]
    assert {r["member"] for r in rows} == {0, 1, 2} and {r["seed"] for r in rows} == {0, 1, 2}
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == [
        "member_0",
        "member_1",
        "member_2",
    ]
    validated = [r for r in rows if r["validation/sharpe"] == r["validation/sharpe"]]
    assert len(validated) == 3  # each member scored at the end of the epoch


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("population") / "run"
    args = [*SMALL_RUN, "--seeds", "0-2", "--epochs", "1", "--run-dir", str(run)]
    assert train_main(args) == 0
    return run


@pytest.mark.slow
def test_the_evaluation_reports_every_member_and_their_ensemble(population_run):
    metrics, report = evaluate_run(population_run, device="cpu")
    text = report.read_text()
    assert "## Population: 3 members" in text
    for label in ("member 0, seed 0", "member 2, seed 2", "| IQM |", "IQM, 95 % CI", "ensemble"):
        assert label in text, label
    assert "too few for a reliable interval" in text
    members = [metrics[f"member {k}"]["sharpe"] for k in range(3)]
    picked = validated_member(load_checkpoint(population_run / "best.pt"))
    assert metrics["agent"]["sharpe"] == pytest.approx(members[picked])


@pytest.mark.slow
def test_an_agent_is_the_picked_member_a_chosen_one_or_the_ensemble(population_run, tmp_path):
    best = load_checkpoint(population_run / "best.pt")
    picked = validated_member(best)
    population = build_model(best.agent.model, best.model)
    default = Agent.load(population_run)
    chosen = Agent.load(population_run, member=picked)
    for a, b in zip(default.model.parameters(), chosen.model.parameters(), strict=True):
        assert torch.equal(a, b)
    other = Agent.load(population_run, member=(picked + 1) % 3)
    assert torch.equal(
        next(other.model.parameters()), next(population.parameters())[(picked + 1) % 3]
    )
    ensemble = Agent.load(population_run, member="ensemble")
    bars = synthetic_market(3000, seed=0).frame
    probs = ensemble.predict(bars)
    singles = [Agent.load(population_run, member=k).predict(bars) for k in range(3)]
    for action in ("short", "flat", "long"):
        mean = sum(s[f"prob_{action}"] for s in singles) / 3
        assert probs[f"prob_{action}"] == pytest.approx(mean, rel=1e-5)
    export_agent(ensemble, tmp_path / "ensemble")
    again = Agent.load(tmp_path / "ensemble").predict(bars)
    assert again["prob_long"] == pytest.approx(probs["prob_long"], rel=1e-6)
    with pytest.raises(CheckpointError, match="holds members 0 to 2"):
        Agent.load(population_run, member=3)
