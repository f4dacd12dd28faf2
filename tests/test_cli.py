"""The command lines as users run them: bad ticks, guards off, --no-aux, --resume, --data."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import SMALL_RUN, same_rows

from pyppo import Agent, synthetic_market
from pyppo.checkpoint import load_checkpoint
from pyppo.cli import eval_main, predict_main, train_main
from pyppo.metrics import read_metrics

# End to end: every test trains through the command line.
pytestmark = pytest.mark.slow

SMALL = SMALL_RUN


def train(run, *extra: str) -> int:
    return train_main([*SMALL, "--run-dir", str(run), *extra])


def test_bad_ticks_run_completes_with_finite_parameters(tmp_path, capsys):
    assert train(tmp_path / "r", "--epochs", "2", "--bad-ticks", "0.01") == 0
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert all(torch.isfinite(p).all() for p in state.model.values())
    rows = list(read_metrics(tmp_path / "r" / "metrics.csv"))
    assert sum(r["sanitized/env/returns/nonfinite"] for r in rows) > 0
    out = capsys.readouterr().out
    assert "planted bad ticks" in out  # the data report comes first
    assert "NaN/inf events per epoch" in out


def test_guards_off_fails_loudly(tmp_path, capsys):
    code = train(tmp_path / "r", "--epochs", "3", "--bad-ticks", "0.01", "--no-guards")
    assert code == 2
    assert "parameters became NaN/inf" in capsys.readouterr().err


def test_no_aux_still_predicts(tmp_path):
    assert train(tmp_path / "r", "--epochs", "1", "--no-aux") == 0
    rows = list(read_metrics(tmp_path / "r" / "metrics.csv"))
    assert all(math.isnan(r["loss/aux_1h"]) for r in rows)
    assert eval_main([str(tmp_path / "r"), "--device", "cpu"]) == 0
    assert "| pred_1h |" in (tmp_path / "r" / "report.md").read_text()


def test_resume_continues_identically(tmp_path):
    assert train(tmp_path / "straight", "--epochs", "2") == 0
    assert train(tmp_path / "resumed", "--epochs", "1") == 0
    assert (
        train_main(["--run-dir", str(tmp_path / "resumed"), "--resume", "--epochs", "2", "--quiet"])
        == 0
    )
    a = list(read_metrics(tmp_path / "straight" / "metrics.csv"))
    b = list(read_metrics(tmp_path / "resumed" / "metrics.csv"))
    assert len(a) == len(b) > 2
    same_rows(a, b)


def fails_with(capsys, code: int, message: str) -> None:
    """The run failed with exit code 2 and one last stderr line ``error: ...message...``."""
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last


def test_resume_errors_are_clear(tmp_path, capsys):
    fails_with(capsys, train_main(["--resume"]), "needs --run-dir")
    fails_with(
        capsys, train_main(["--resume", "--run-dir", str(tmp_path / "nothing")]), "does not exist"
    )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    fails_with(
        capsys, train_main(["--resume", "--run-dir", str(tmp_path / "bad")]), "corrupt or truncated"
    )


def test_user_csv(tmp_path, capsys):
    frame = synthetic_market(3000, seed=2).frame.reset_index()
    frame = frame.rename(columns={frame.columns[0]: "Date"})
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    assert train(tmp_path / "r", "--epochs", "1", "--data", str(path)) == 0
    code = train(tmp_path / "r2", "--epochs", "1", "--data", str(path), "--bad-ticks", "0.01")
    fails_with(capsys, code, "synthetic market only")


def test_eval_of_a_checkpoint_that_does_not_fit_the_model(tmp_path, capsys):
    assert train(tmp_path / "r", "--epochs", "1") == 0
    path = tmp_path / "r" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["model"] = {"not_a_weight": torch.zeros(1)}
    torch.save(state, path)
    (tmp_path / "r" / "best.pt").unlink()
    fails_with(
        capsys,
        eval_main([str(tmp_path / "r"), "--device", "cpu"]),
        "does not fit this version's model",
    )


@pytest.mark.parametrize("how", ["pooled", "portfolio"])
def test_a_universe_of_files_trains_evaluates_and_predicts(tmp_path, capsys, how):
    universe = synthetic_market(1500, seed=3, symbols=4)
    universe.to_files(tmp_path / "universe")
    extra = ["--portfolio"] if how == "portfolio" else []
    run = tmp_path / how
    assert train(run, "--epochs", "1", "--data", str(tmp_path / "universe"), *extra) == 0
    assert f"x 4 symbols ({how})" in capsys.readouterr().out
    assert eval_main([str(run), "--device", "cpu"]) == 0
    report = (run / "report.md").read_text()
    assert "## Per symbol" in report and "| S03 |" in report and "mean IC" in report
    assert (run / "weights.png").stat().st_size > 0 and "weights.png" in report
    weights = pd.read_csv(run / "weights.csv", index_col=0)
    assert list(weights.columns) == ["S00", "S01", "S02", "S03"]
    assert weights.abs().to_numpy().max() <= 0.25 + 1e-9
    answer = Agent.load(run).predict({s: universe[s].frame for s in universe.symbols})
    assert set(answer) == set(universe.symbols)
    if how == "portfolio":
        assert {a["target_weight"] for a in answer.values()} <= {-0.25, 0.0, 0.25}
        with pytest.raises(ValueError, match="decides for all its symbols at once"):
            Agent.load(run).predict(universe["S00"].frame)
    capsys.readouterr()
    assert predict_main([str(run), "--data", str(tmp_path / "universe"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["symbol"] for line in lines] == ["S00", "S01", "S02", "S03"]
    capsys.readouterr()
    fails_with(capsys, eval_main([str(run), "--folds", "2"]), "--folds scores sub-periods")
    one_series = str(tmp_path / "universe" / "S00.csv")
    if how == "portfolio":
        code = eval_main([str(run), "--data", one_series])
        fails_with(capsys, code, "a portfolio agent trades several symbols together")
    else:  # a pooled agent is a single-asset agent too
        assert eval_main([str(run), "--data", one_series]) == 0
    # --portfolio needs several symbols.
    code = train(tmp_path / "one", "--epochs", "1", "--portfolio")
    fails_with(capsys, code, "--portfolio trades several symbols together")


@pytest.mark.parametrize("how", [[], ["--portfolio"]], ids=["pooled", "portfolio"])
def test_a_universe_run_resumes_identically(tmp_path, how):
    synthetic_market(1200, seed=2, symbols=3).to_files(tmp_path / "universe")
    data = ["--data", str(tmp_path / "universe"), *how]
    assert train(tmp_path / "straight", "--epochs", "2", *data) == 0
    assert train(tmp_path / "resumed", "--epochs", "1", *data) == 0
    resumed = ["--run-dir", str(tmp_path / "resumed"), "--resume", "--epochs", "2", "--quiet"]
    assert train_main(resumed) == 0
    a = list(read_metrics(tmp_path / "straight" / "metrics.csv"))
    b = list(read_metrics(tmp_path / "resumed" / "metrics.csv"))
    assert len(a) == len(b) >= 2
    same_rows(a, b)
