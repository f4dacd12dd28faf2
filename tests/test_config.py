"""One configuration: the command line, TOML files, config.json, checkpoints and the Python
API share one set of defaults, and every flag users know still parses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import SMALL_RUN

from pyppo import (
    PPOConfig,
    PPOTrainer,
    RunConfig,
    TradingActorCritic,
    TradingEnv,
    synthetic_market,
)
from pyppo.checkpoint import CheckpointError, load_checkpoint
from pyppo.cli import UserError, make_env, make_model, resolve_config, train_main
from pyppo.config import apply, parse_seeds
from pyppo.metrics import read_metrics

SMALL = SMALL_RUN


def test_cli_and_api_defaults_are_one_set():
    config, explicit, _ = resolve_config([])
    assert explicit == set()
    # What the Python API builds with no settings equals what the command line builds from
    # its defaults: the env and the model, compared by what they are, not by signature.
    market = synthetic_market(3000, seed=1)
    api_env = TradingEnv(market)
    cli_env = make_env(market, config, torch.device("cpu"))
    assert api_env.describe() == cli_env.describe()
    assert (api_env.num_envs, api_env.sanitize) == (cli_env.num_envs, cli_env.sanitize)
    api_model = TradingActorCritic(api_env.obs_spec)
    assert api_model.describe() == make_model(cli_env, config).describe()
    # The defaults that learn best are the command line's.
    assert (config.ppo.lr, config.model.hidden_dim, config.env.num_envs) == (3e-4, 128, 256)


def test_trainer_without_a_config_uses_the_cli_defaults():
    market = synthetic_market(3000, seed=1)
    env = TradingEnv(market, num_envs=4, episode_length=100)
    trainer = PPOTrainer(TradingActorCritic(env.obs_spec, hidden_dim=16), env, progress=False)
    assert trainer.config == RunConfig().ppo


# Every flag users type (the README's and the original trainer's), with a value, and the
# setting it must produce.
KNOWN_FLAGS = [
    (["--epochs", "3"], "epochs", 3),
    (["--total-steps", "5000"], "total_steps", 5000),
    (["--run-dir", "runs/x"], "run_dir", "runs/x"),
    (["--resume"], "resume", True),
    (["--device", "cpu"], "device", "cpu"),
    (["--seed", "7"], "ppo.seed", 7),
    (["--quiet"], "quiet", True),
    (["--data", "bars.csv"], "data.path", "bars.csv"),
    (["--timestamp-col", "Date"], "data.timestamp_col", "Date"),
    (["--timestamp-format", "%d/%m/%Y"], "data.timestamp_format", "%d/%m/%Y"),
    (["--price-col", "Close"], "data.price_col", "Close"),
    (["--repair", "ffill"], "data.repair", "ffill"),
    (["--bars", "5000"], "data.bars", 5000),
    (["--data-seed", "3"], "data.data_seed", 3),
    (["--bad-ticks", "0.01"], "data.bad_ticks", 0.01),
    (["--no-aux"], "ppo.enable_auxiliary_losses", False),
    (["--aux-1h-coef", "0.01"], "ppo.aux_short_coef", 0.01),
    (["--aux-24h-coef", "0.02"], "ppo.aux_long_coef", 0.02),
    (["--nan-policy", "skip"], "ppo.nan_policy", "skip"),
    (["--max-grad-norm", "1.5"], "ppo.max_grad_norm", 1.5),
    (["--no-guards"], "ppo.guards", False),
    (["--lr", "3e-4"], "ppo.lr", 3e-4),
    (["--num-envs", "16"], "env.num_envs", 16),
    (["--portfolio"], "env.portfolio", True),
    (["--max-weight", "0.2"], "env.max_weight", 0.2),
    (["--max-gross", "0.8"], "env.max_gross", 0.8),
    (["--num-steps", "128"], "ppo.num_steps", 128),
    (["--num-epochs", "2"], "ppo.num_epochs", 2),
    (["--batch-size", "512"], "ppo.batch_size", 512),
    (["--gamma", "0.95"], "ppo.gamma", 0.95),
    (["--gae-lambda", "0.9"], "ppo.gae_lambda", 0.9),
    (["--entropy-coef", "0.02"], "ppo.entropy_coef", 0.02),
    (["--hidden-dim", "64"], "model.hidden_dim", 64),
    (["--episode-length", "360"], "env.episode_length", 360),
    (["--window", "30"], "env.window", 30),
    (["--fee", "0.0005"], "env.fee", 0.0005),
    (["--long-only"], "env.allow_short", False),
]


@pytest.mark.parametrize(("argv", "name", "value"), KNOWN_FLAGS, ids=lambda x: str(x))
def test_every_flag_users_know_still_parses_with_its_meaning(argv, name, value):
    config, explicit, _ = resolve_config(argv)
    obj = config
    for part in name.split("."):
        obj = getattr(obj, part)
    assert obj == value
    assert explicit == {name}
    # Nothing else moved.
    section, _, field = name.rpartition(".")
    assert config == apply(RunConfig(), {section: {field: value}} if section else {name: value})


def test_every_flag_in_help_is_covered():
    from pyppo.cli import train_parser

    flags = {s for a in train_parser()._actions for s in a.option_strings if s.startswith("--")}
    covered = {argv[0] for argv, _, _ in KNOWN_FLAGS}
    new = {
        "--help",
        "--config",
        "--print-config",
        "--horizons",
        "--aux-limit",
        "--clip-epsilon",
        "--value-coef",
        "--aux-short-coef",
        "--aux-long-coef",
        "--target-kl",
        "--checkpoint-every",
        "--overwrite",
        "--debug",
        "--num-minibatches",
        "--compile",
        "--bf16",
        "--seeds",
        "--fill",
        "--spread",
        "--selection-trials",
        "--selection-tuned-until",
        "--weight-decay",
    }
    assert flags - covered == new


@pytest.mark.slow
def test_toml_file_plus_flag_override_lands_in_config_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        "epochs = 1\n[ppo]\nlr = 0.0003\naux_1h_coef = 0.05\nnum_epochs = 1\n[env]\nwindow = 30\n"
    )
    run = tmp_path / "run"
    assert (
        train_main(
            [
                *SMALL,
                "--config",
                str(toml),
                "--lr",
                "0.0002",
                "--run-dir",
                str(run),
                "--total-steps",
                "256",
            ]
        )
        == 0
    )
    saved = json.loads((run / "config.json").read_text())
    config = saved["config"]
    assert config["ppo"]["lr"] == 0.0002  # the flag wins over the file
    assert config["ppo"]["aux_short_coef"] == 0.05  # the file's old name is understood
    assert config["env"]["window"] == 30 and config["epochs"] == 1
    assert config["ppo"]["gamma"] == PPOConfig().gamma  # a default
    assert {
        "ppo.lr",
        "ppo.aux_short_coef",
        "env.window",
        "epochs",
        "ppo.num_epochs",
        "data.bars",
        "total_steps",
    } <= set(saved["explicit"])
    assert "ppo.gamma" not in saved["explicit"]
    # The checkpoint holds the same plain data.
    assert load_checkpoint(run / "checkpoint.pt").run_config.to_dict() == config


@pytest.mark.slow
def test_print_config_round_trips(tmp_path, capsys):
    assert (
        train_main(["--lr", "0.0002", "--horizons", "4h,1d", "--long-only", "--print-config"]) == 0
    )
    printed = capsys.readouterr().out
    assert "target_kl" not in printed  # TOML has no null: unset values are left out
    path = tmp_path / "printed.toml"
    path.write_text(printed)
    again, _, _ = resolve_config(["--config", str(path)])
    first, _, _ = resolve_config(["--lr", "0.0002", "--horizons", "4h,1d", "--long-only"])
    assert again == first
    assert again.data.horizons == ("4h", "1d") and again.env.allow_short is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "abc"], "lr must be a number, got 'abc'"),
        (["--lr", "nan"], "lr (--lr) must be a finite number > 0, got nan"),
        (["--gamma", "2"], "gamma (--gamma) must be a number in [0, 1]"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be a whole number >= 1"),
        (["--window", "0"], "window (--window) must be a whole number >= 1"),
        (["--bad-ticks", "0.5"], "bad_ticks (--bad-ticks) must be a rate in [0, 0.3)"),
        (["--horizons", "1h"], "exactly two"),
        (["--nan-policy", "ignore"], "invalid choice"),
        (["--lr", "1e-4,3e-4"], "lr (--lr) has 2 values for 1 member(s)"),
        (["--seeds", "3", "--gamma", "0.9,0.99"], "gamma (--gamma) has 2 values for 3 member"),
        (["--seeds", "2", "--lr", "1e-4,-1"], "lr (--lr) must be a finite number > 0, got -1.0"),
        (["--seeds", "2", "--entropy-coef", "0.01,x"], "entropy_coef must be a number"),
    ],
)
def test_bad_values_are_clear_errors(argv, message):
    with pytest.raises(UserError) as err:
        resolve_config(argv)
    assert message in str(err.value)


def test_unknown_toml_setting_is_an_error(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[ppo]\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown setting ppo.'learning_rate'"):
        resolve_config(["--config", str(toml)])


def test_the_original_trainer_calls_work():
    market = synthetic_market(3000, seed=1)
    env = TradingEnv(market, num_envs=4, episode_length=100)
    model = TradingActorCritic(env.obs_spec, hidden_dim=16)
    off = PPOTrainer(model=model, environment=env, enable_auxiliary_losses=False, progress=False)
    assert off.config.enable_auxiliary_losses is False
    low = PPOTrainer(
        model=model, environment=env, aux_1h_coef=0.01, aux_24h_coef=0.01, progress=False
    )
    assert low.config.aux_coefs == (0.01, 0.01)
    config = PPOConfig(lr=3e-4, num_steps=16)
    mixed = PPOTrainer(model, env, config, batch_size=32, progress=False)
    assert (mixed.config.lr, mixed.config.num_steps, mixed.config.batch_size) == (3e-4, 16, 32)
    with pytest.raises(TypeError, match="unknown PPO setting 'learning_rate'"):
        PPOTrainer(model, env, learning_rate=1e-3)
    with pytest.raises(ValueError, match="nan_policy"):
        PPOTrainer(model, env, nan_policy="ignore")


PLAIN = (torch.Tensor, int, float, str, bool, type(None))


def walk(value, path="checkpoint"):
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{path}: key {key!r}"
            walk(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            walk(item, f"{path}[{i}]")
    else:
        assert isinstance(value, PLAIN), f"{path} is a {type(value).__name__}"


@pytest.mark.slow
def test_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    run = tmp_path / "run"
    assert train_main([*SMALL, "--run-dir", str(run), "--epochs", "1"]) == 0
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(run / name, weights_only=False)
        walk(state)
        agent = state["agent"]
        assert agent["model"]["hidden_dim"] == 32 and agent["model"]["aux_labels"] == ["1h", "24h"]
        assert agent["env"]["window"] == 60 and agent["env"]["aux_horizon_bars"] == [1, 24]
        assert agent["env"]["bar_interval_seconds"] == 3600.0


def test_older_checkpoint_format_is_a_clear_error(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "model": {}}, path)
    with pytest.raises(CheckpointError, match="format version 1"):
        load_checkpoint(path)


@pytest.mark.slow
def test_aux_names_follow_the_horizon_labels(tmp_path):
    run = tmp_path / "run"
    assert (
        train_main([*SMALL, "--run-dir", str(run), "--total-steps", "256", "--horizons", "3,12"])
        == 0
    )
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {
        "loss/aux_3bars",
        "loss/aux_12bars",
        "nonfinite/grad/aux_3bars",
        "nonfinite/output/pred_12bars",
        "nonfinite/loss/aux_3bars",
    } <= set(header)
    assert not any("1h" in column for column in header)


@pytest.mark.slow
def test_known_flags_all_at_once_train(tmp_path):
    """One short run with every known flag that can go together (the file, resume and
    bad-tick flags have runs of their own in test_cli.py)."""
    run = tmp_path / "run"
    argv = [
        "--epochs",
        "1",
        "--total-steps",
        "512",
        "--run-dir",
        str(run),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--quiet",
        "--bars",
        "3000",
        "--data-seed",
        "2",
        "--no-aux",
        "--aux-1h-coef",
        "0.01",
        "--aux-24h-coef",
        "0.02",
        "--nan-policy",
        "skip",
        "--max-grad-norm",
        "1.0",
        "--lr",
        "3e-4",
        "--num-envs",
        "8",
        "--num-steps",
        "32",
        "--num-epochs",
        "2",
        "--batch-size",
        "64",
        "--gamma",
        "0.95",
        "--gae-lambda",
        "0.9",
        "--entropy-coef",
        "0.02",
        "--hidden-dim",
        "32",
        "--episode-length",
        "200",
        "--window",
        "30",
        "--fee",
        "0.0005",
        "--long-only",
    ]
    assert train_main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["env"] == {
        "num_envs": 8,
        "episode_length": 200,
        "window": 30,
        "fee": 0.0005,
        "allow_short": False,
        "fill": "close",
        "spread": 0.0,
        "portfolio": False,
        "max_weight": 1.0,
        "max_gross": 1.0,
    }
    assert config["ppo"]["nan_policy"] == "skip" and config["ppo"]["aux_long_coef"] == 0.02
    state = load_checkpoint(run / "checkpoint.pt")
    assert state.agent.model.num_actions == 2  # --long-only: flat/long
    assert state.trainer.env_steps == 512


@pytest.mark.slow
def test_validation_sharpe_reaches_metrics_csv(tmp_path):
    run = tmp_path / "run"
    assert train_main([*SMALL, "--run-dir", str(run), "--epochs", "2"]) == 0
    rows = list(read_metrics(run / "metrics.csv"))
    per_epoch = len(rows) // 2
    validated = [r["validation/sharpe"] for r in rows]
    ends = {per_epoch - 1, len(rows) - 1}
    assert all(math.isfinite(v) for i, v in enumerate(validated) if i in ends)
    assert all(math.isnan(v) for i, v in enumerate(validated) if i not in ends)
    best = max(validated[i] for i in ends)
    assert load_checkpoint(run / "best.pt").callbacks["best_checkpoint"]["best_score"] == best


GPU_PRESET = Path(__file__).resolve().parents[1] / "configs" / "gpu.toml"


def test_gpu_preset_is_a_valid_large_batch_config():
    config, explicit, _ = resolve_config(["--config", str(GPU_PRESET)])
    assert config.device == "cuda" and config.env.num_envs >= 1024
    assert {"device", "total_steps", "env.num_envs", "ppo.num_minibatches"} <= explicit
    # Its length is in env steps, a whole number of updates, each cut into equal minibatches.
    rollout = config.env.num_envs * config.ppo.num_steps
    assert config.total_steps % rollout == 0
    assert rollout % config.ppo.num_minibatches == 0


@pytest.mark.slow
def test_gpu_preset_trains_on_the_cpu_when_told_to(tmp_path):
    run = tmp_path / "run"
    argv = ["--config", str(GPU_PRESET), "--device", "cpu", "--bars", "3000"]
    argv += ["--num-envs", "16", "--total-steps", "1024", "--run-dir", str(run), "--quiet"]
    assert train_main(argv) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["ppo"]["num_minibatches"] == 4 and saved["ppo"]["lr"] == 3e-4


@pytest.mark.parametrize(
    ("spec", "base", "seeds"),
    [
        ("8", 3, tuple(range(3, 11))),
        ("0-7", 0, tuple(range(8))),
        ("0,3,5", 9, (0, 3, 5)),
        ("0-3,8", 0, (0, 1, 2, 3, 8)),
        ("5-5", 0, (5,)),
    ],
)
def test_seeds_are_a_count_a_range_or_a_list(spec, base, seeds):
    assert parse_seeds(spec, base) == seeds


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", "at least 1"),
        ("3-1", "runs backwards"),
        ("1,1", "named twice"),
        ("a", "give N"),
        ("-2", "give N"),
        ("1-", "give N"),
        ("", "give N"),
    ],
)
def test_bad_seeds_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_seeds(spec)


def test_settings_may_differ_per_member(tmp_path):
    config, _, _ = resolve_config(["--seeds", "2", "--lr", "1e-4,3e-4", "--clip-epsilon", "0.1"])
    assert config.ppo.lr == (1e-4, 3e-4)
    assert config.ppo.per_member("lr") == (1e-4, 3e-4)
    assert config.ppo.per_member("clip_epsilon") == (0.1, 0.1)
    path = tmp_path / "population.toml"
    path.write_text("[ppo]\nseeds = '0-2'\ngamma = [0.9, 0.95, 0.99]\nlr = [0.001]\n")
    from_toml, _, _ = resolve_config(["--config", str(path)])
    assert from_toml.ppo.gamma == (0.9, 0.95, 0.99)
    assert from_toml.ppo.lr == 0.001  # a list of one is the plain setting
    assert RunConfig.from_dict(from_toml.to_dict()) == from_toml
