"""Using a trained agent: predictions from Python and the command line, consistent with the
backtest, from checkpoints or a portable export, and never from dirty bars."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyppo import Agent, MarketDataError, export_agent
from pyppo.checkpoint import CheckpointError, load_checkpoint
from pyppo.cli import export_main, load_data, predict_main, split_data, train_main
from pyppo.evaluation import backtest

# End to end: a module fixture trains the run these tests use.
pytestmark = pytest.mark.slow

FIELDS = {
    "timestamp",
    "position",
    "action",
    "action_name",
    "prob_short",
    "prob_flat",
    "prob_long",
    "value",
    "pred_1h",
    "pred_24h",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The default run (default data, model and settings), trained for one epoch."""
    run = tmp_path_factory.mktemp("agent") / "run"
    assert train_main(["--run-dir", str(run), "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    return run


@pytest.fixture(scope="module")
def held_out(run):
    config = load_checkpoint(run / "best.pt").run_config
    market, _ = load_data(config, {"data.horizons"})
    return split_data(market)[2], config


def test_predictions_are_the_backtest_bit_for_bit(run, held_out):
    test, config = held_out
    agent = Agent.load(run)
    frame = agent.predict(test.frame, "flat", all_bars=True)
    result = backtest(
        test,
        agent.model,
        window=config.env.window,
        fee=config.env.fee,
        allow_short=config.env.allow_short,
    )
    n = len(result.positions)
    assert n > 100 and len(frame) >= n
    positions = np.array([-1.0, 0.0, 1.0])[frame["action"].to_numpy()[:n]]
    assert np.array_equal(positions, result.positions)
    for name in ("pred_1h", "pred_24h"):
        assert np.array_equal(frame[name].to_numpy()[:n], result.preds[name])
    # The last-bar answer is the all-bars answer at that bar, for the position held there
    # (to float rounding: a one-row forward pass blocks its matrix products differently).
    last = agent.predict(test.frame, frame["position"].iloc[-1])
    assert last["action"] == frame["action"].iloc[-1]
    assert last["pred_24h"] == pytest.approx(frame["pred_24h"].iloc[-1], rel=1e-5, abs=1e-7)
    assert set(last) == FIELDS and last["timestamp"] == test.frame.index[-1]
    assert abs(last["prob_short"] + last["prob_flat"] + last["prob_long"] - 1) < 1e-5


def test_the_export_predicts_the_same(run, held_out, tmp_path):
    test, _ = held_out
    agent = Agent.load(run)
    assert export_main([str(run), "--out", str(tmp_path / "export")]) == 0
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "agent.json",
        "model.safetensors",
    ]
    exported = Agent.load(tmp_path / "export")
    a = agent.predict(test.frame, all_bars=True)
    b = exported.predict(test.frame, all_bars=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    export_agent(exported, tmp_path / "again")  # an export exports again
    assert Agent.load(tmp_path / "again").spec == agent.spec


def damaged_exports(export: Path):
    """(what was done, how to do it to a copy of ``export``) for every damage an export can
    suffer on its way."""

    def flip_a_bit(folder: Path) -> None:
        weights = folder / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) - 7] ^= 0x10  # inside a weight: the file still parses
        weights.write_bytes(bytes(data))

    def edit(change):
        def apply(folder: Path) -> None:
            config = json.loads((folder / "agent.json").read_text())
            change(config)
            (folder / "agent.json").write_text(json.dumps(config))

        return apply

    return [
        ("a flipped bit in the weights", flip_a_bit, "does not match the SHA-256"),
        (
            "a damaged header",
            lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64),
            "does not match the SHA-256",
        ),
        ("no weights", lambda f: (f / "model.safetensors").unlink(), "cannot be read"),
        ("agent.json not JSON", lambda f: (f / "agent.json").write_text("{"), "cannot be read"),
        ("no env key", edit(lambda c: c.pop("env")), "lacks env"),
        ("no checksum", edit(lambda c: c.pop("sha256")), "lacks sha256"),
        ("an older version", edit(lambda c: c.update(version=1)), "export the agent again"),
        (
            "a zero bar interval",
            edit(lambda c: c["env"].update(bar_interval_seconds=0)),
            "implausible env description: bar_interval_seconds 0",
        ),
        (
            "three aux labels",
            edit(lambda c: c["model"].update(aux_labels=["1h", "24h", "7d"])),
            "implausible model description: aux_labels",
        ),
        (
            "labels the env does not have",
            edit(lambda c: c["model"].update(aux_labels=["2h", "48h"])),
            "does not fit the env",
        ),
    ]


def test_every_damaged_export_is_one_clear_error(run, tmp_path, capsys):
    export = tmp_path / "export"
    assert export_main([str(run), "--out", str(export)]) == 0
    for what, damage, message in damaged_exports(export):
        copy = tmp_path / what.replace(" ", "_")
        shutil.copytree(export, copy)
        damage(copy)
        with pytest.raises(CheckpointError, match=message):
            Agent.load(copy)
        assert predict_main([str(copy), "--synthetic"]) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message.split(":")[0] in err[0]


def test_a_run_dir_with_a_pickle_payload_executes_nothing(run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(run / "best.pt", weights_only=True)
    state["agent"]["env"] = Payload()
    (tmp_path / "run").mkdir()
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        Agent.load(tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), 0.0, float("inf")])
def test_dirty_bars_are_an_error_never_a_prediction(run, held_out, bad):
    test, _ = held_out
    frame = test.frame.copy()
    frame.iloc[-10, frame.columns.get_loc("close")] = bad
    with pytest.raises(MarketDataError):
        Agent.load(run).predict(frame)


def test_bars_of_another_interval_or_too_few_bars_are_clear_errors(run, held_out):
    test, _ = held_out
    agent = Agent.load(run)
    daily = test.frame.copy()
    daily.index = pd.date_range("2020-01-01", periods=len(daily), freq="D", name="timestamp")
    with pytest.raises(MarketDataError, match="trained on 0 days 01:00:00 bars"):
        agent.predict(daily)
    with pytest.raises(MarketDataError, match=f"needs at least {agent.min_bars}"):
        agent.predict(test.frame.iloc[-agent.min_bars + 1 :])
    with pytest.raises(ValueError, match="holds one of short, flat, long"):
        agent.predict(test.frame, "sideways")


def test_many_symbols_in_one_call(run, held_out):
    test, _ = held_out
    agent = Agent.load(run)
    other = test.frame.copy()
    other[["open", "high", "low", "close"]] *= 2.0  # another asset, same returns
    answers = agent.predict({"BTC": test.frame, "ETH": other}, "long")
    assert set(answers) == {"BTC", "ETH"} and set(answers["ETH"]) == FIELDS
    assert answers["BTC"] == agent.predict(test.frame, "long")


def test_pyppo_predict_json_lines(run, held_out, tmp_path, capsys):
    test, _ = held_out
    path = tmp_path / "latest.csv"
    test.frame.to_csv(path)
    assert predict_main([str(run), "--data", str(path), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == FIELDS and record["action_name"] in ("short", "flat", "long")
    assert pd.Timestamp(record["timestamp"]) == test.frame.index[-1]
    assert predict_main([str(run), "--data", str(path), "--json", "--all-bars"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(test.frame) - agent_window(run)
    assert predict_main([str(run), "--data", str(path)]) == 0  # a table
    assert "action_name" in capsys.readouterr().out
    assert predict_main([str(run), "--data", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def agent_window(run) -> int:
    return Agent.load(run).window
