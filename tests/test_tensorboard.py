"""TensorBoard gets what metrics.csv gets: the same names, grouped by prefix, one event per
update, and a resumed run does not repeat steps."""

from __future__ import annotations

import pytest
from helpers import SMALL_RUN

from pyppo.cli import train_main
from pyppo.metrics import read_metrics

# End to end: trained runs and their event files.
pytestmark = pytest.mark.slow

SMALL = SMALL_RUN


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_has_the_losses_and_the_nan_counters(tmp_path):
    run = tmp_path / "run"
    assert (
        train_main(
            [*SMALL, "--run-dir", str(run), "--total-steps", str(256 * 3), "--bad-ticks", "0.01"]
        )
        == 0
    )
    tags = scalars(run)
    rows = list(read_metrics(run / "metrics.csv"))
    for name in (
        "loss/policy",
        "loss/value",
        "loss/aux_1h",
        "train/approx_kl",
        "nonfinite/grad/aux_1h",
        "nonfinite/output/pred_24h",
        "sanitized/env/returns/nonfinite",
    ):
        assert [step for step, _ in tags[name]] == [int(r["env_steps"]) for r in rows], name
        assert [v for _, v in tags[name]] == pytest.approx([r[name] for r in rows]), name
    assert sum(v for _, v in tags["sanitized/env/returns/nonfinite"]) > 0  # bad ticks seen
    # Grouped as in metrics.csv: every tag is a column.
    assert set(tags) <= set(rows[0])


def test_a_resumed_run_does_not_repeat_steps(tmp_path):
    run = tmp_path / "run"
    assert train_main([*SMALL, "--run-dir", str(run), "--total-steps", str(256 * 2)]) == 0
    assert (
        train_main(["--resume", "--run-dir", str(run), "--total-steps", str(256 * 4), "--quiet"])
        == 0
    )
    steps = [step for step, _ in scalars(run)["loss/policy"]]
    assert steps == sorted(set(steps)) == [256, 512, 768, 1024]
