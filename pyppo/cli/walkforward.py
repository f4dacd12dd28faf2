"""``pyppo-walkforward``: retrain on every window before its test window, test out of sample,
and report the concatenated out-of-sample curves of the agent and the baselines with their
statistics over seeds and windows, their significance and a verdict.

Every training flag works as in ``pyppo-train`` (``--data``, ``--epochs``, ``--seeds``...);
the layout flags are :class:`pyppo.evaluation.walkforward.WalkForwardSettings`'. The run dir
holds ``walkforward.json`` (the settings), one folder per window (``window_1``...: a
training run dir with ``checkpoint.pt``, ``best.pt`` and ``metrics.csv``, and ``test.npz``
once its test window is scored), and the report. ``--resume`` continues: finished windows are
read back, an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pyppo import stats
from pyppo.checkpoint import LATEST, DataInfo, build_model, find_checkpoint, load_checkpoint
from pyppo.cli.common import (
    CommandInterrupted,
    UserError,
    check_writable,
    load_data,
    make_env,
    make_model,
    run_cli,
)
from pyppo.cli.train import command, config_from_args, train_as_configured, train_parser
from pyppo.config import RunConfig, apply, format_seeds
from pyppo.data import MarketData, Universe, format_duration
from pyppo.device import resolve_device
from pyppo.evaluation import BestCheckpoint, plots
from pyppo.evaluation.backtest import Backtest, backtest
from pyppo.evaluation.baselines import DEFAULT_BASELINES
from pyppo.evaluation.report import backtest_settings, markdown_table, plain_json
from pyppo.evaluation.verdict import EVIDENCE_DSR, Significance, significance, verdict_line
from pyppo.evaluation.walkforward import (
    SPANS,
    WalkForwardSettings,
    Window,
    beat_share,
    plan_windows,
)
from pyppo.files import OutputSet, replaced, write_text
from pyppo.interrupts import Interrupted
from pyppo.population import EnsembleActorCritic, PopulationActorCritic
from pyppo.runlock import LOCK_FILE, RunLock
from pyppo.training import PPOTrainer, TrainingInterrupted

SETTINGS_FILE = "walkforward.json"
TEST_FILE = "test.npz"  # a window's scored test: its arrays, written once it is done
REPORT_FILES = ("report.md", "report.json", "equity.csv", "walkforward.png", "windows.png")
BOOTSTRAP_REPS, BOOTSTRAP_SEED = 2000, 0


def walkforward_parser() -> argparse.ArgumentParser:
    p = train_parser(
        prog="pyppo-walkforward",
        description="Walk-forward retraining: train before each of W consecutive test "
        "windows (validation tail inside the span, labels purged), test out of sample, and "
        "report the agent against the baselines with a verdict.",
    )
    defaults = WalkForwardSettings()
    group = p.add_argument_group("walk-forward")
    group.add_argument(
        "--windows", type=int, default=defaults.windows, help="test windows (default: %(default)s)"
    )
    group.add_argument(
        "--span",
        choices=SPANS,
        default=defaults.span,
        help="train on everything before a window, or on a span as long as the first "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share of the bars the test windows cover together (default: %(default)s)",
    )
    group.add_argument(
        "--validation-fraction",
        type=float,
        default=defaults.validation_fraction,
        help="share of each span that picks the checkpoint (default: %(default)s)",
    )
    group.add_argument(
        "--embargo",
        type=int,
        default=defaults.embargo,
        help="bars left out after training and after validation, beyond the purge "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--warm-start",
        action="store_true",
        help="start each window from the previous window's weights",
    )
    group.add_argument("--json", action="store_true", help="print report.json instead")
    return p


def walkforward_main(argv: list[str] | None = None) -> int:
    """``pyppo-walkforward``: returns the exit code (0, 2 on an error, 130/143 when
    stopped by SIGINT/SIGTERM)."""
    return run_cli(_walkforward, argv)


def _walkforward(argv: list[str]) -> int:
    args = walkforward_parser().parse_args(argv)
    config, explicit = config_from_args(args)
    try:
        settings = WalkForwardSettings(
            windows=args.windows,
            span=args.span,
            test_fraction=args.test_fraction,
            validation_fraction=args.validation_fraction,
            embargo=args.embargo,
            warm_start=args.warm_start,
        )
    except ValueError as err:
        raise UserError(str(err), "see pyppo-walkforward --help") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(config.run_dir or f"runs/walkforward-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable(run_dir, "the run dir")
    with RunLock(run_dir, exclusive=True, command="pyppo-walkforward"):
        config, settings = _settings_of_run(run_dir, config, explicit, settings)
        try:
            summary, report = walk_forward(run_dir, config, settings)
        except Interrupted as stop:
            raise CommandInterrupted(stop.exit_code, _what_is_kept(run_dir, stop.name)) from None
    print(json.dumps(summary, indent=2) if args.json else report.read_text())
    return 0


def _settings_of_run(
    run_dir: Path, config: RunConfig, explicit: set[str], settings: WalkForwardSettings
) -> tuple[RunConfig, WalkForwardSettings]:
    """The walk-forward's settings: saved ones on ``--resume`` (flags other than where and
    whether to resume are refused), new ones otherwise (written before anything trains)."""
    path = run_dir / SETTINGS_FILE
    if config.resume and config.overwrite:
        raise UserError("--resume and --overwrite contradict each other", "give one of them")
    if config.resume:
        if not path.exists():
            raise UserError(
                f"cannot resume: {run_dir} holds no walk-forward ({SETTINGS_FILE} is missing)",
                "check --run-dir, or start a new walk-forward without --resume",
            )
        saved = json.loads(path.read_text())
        changed = sorted(explicit - {"run_dir", "resume", "device", "quiet", "debug"})
        if changed:
            raise UserError(
                f"cannot resume with other settings ({', '.join(changed)})",
                "resume with --resume --run-dir alone",
            )
        return (
            apply(RunConfig.from_dict(saved["config"]), {"resume": True, "quiet": config.quiet}),
            WalkForwardSettings(**saved["walkforward"]),
        )
    if path.exists():
        if not config.overwrite:
            raise UserError(
                f"{run_dir} already holds a walk-forward",
                "--resume continues it, --overwrite replaces it, or choose another --run-dir",
            )
        for child in run_dir.iterdir():
            if child.name != LOCK_FILE:  # (held by this command)
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if config.data.path:
        config = apply(config, {"data": {"path": str(Path(config.data.path).resolve())}})
    saved = {"config": config.to_dict(), "walkforward": settings.to_dict()}
    write_text(path, json.dumps(saved, indent=2) + "\n")
    return config, settings


def _what_is_kept(run_dir: Path, signal_name: str) -> str:
    resume = command("pyppo-walkforward", "--resume", "--run-dir", run_dir)
    return f"stopped by {signal_name}: finished windows are kept; resume with: {resume}"


# -- the walk -------------------------------------------------------------------------------


def walk_forward(
    run_dir: Path, config: RunConfig, settings: WalkForwardSettings
) -> tuple[dict[str, Any], Path]:
    """Train and test every window of ``settings`` (finished ones are read back), then write
    the report. Returns ``(report.json's content, report.md's path)``."""
    market, config = load_data(config, set())
    if isinstance(market, Universe):
        raise UserError(
            "pyppo-walkforward retrains on one series; --data names several symbols",
            "give it one symbol's file (pyppo-train and pyppo-eval take a universe)",
        )
    print(market.report())
    device = resolve_device(config.device)
    longest = max(market.horizons, default=1)
    try:
        windows = plan_windows(len(market), config.env.window, longest, settings)
    except ValueError as err:
        raise UserError(str(err)) from None
    seeds = config.ppo.member_seeds
    print(
        f"walk-forward over {len(market):,} bars: {settings.windows} test windows of "
        f"{_size(windows[0].test):,} bars ({settings.span} span), "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({format_seeds(seeds)}) -> {run_dir}"
    )
    tests: list[dict[str, np.ndarray]] = []
    carry = np.zeros(len(seeds) + 1, dtype=np.float32)  # each member's and the ensemble's
    for window in windows:
        folder = run_dir / f"window_{window.index + 1}"
        if (folder / TEST_FILE).exists():
            print(f"window {window.index + 1}: done earlier, read back")
        else:
            trained = _train_window(folder, market, config, settings, window, device)
            _test_window(folder, market, config, window, trained, carry, device)
        with np.load(folder / TEST_FILE) as saved:
            tests.append({key: saved[key] for key in saved.files})
        carry = tests[-1]["positions"][:, -1].astype(np.float32)
    return _report(run_dir, market, config, settings, windows, tests)


def _size(span: tuple[int, int]) -> int:
    return span[1] - span[0]


def _train_window(
    folder: Path,
    market: MarketData,
    config: RunConfig,
    settings: WalkForwardSettings,
    window: Window,
    device: torch.device,
) -> torch.nn.Module:
    """Train (or continue training) the window's population; returns the model that
    validation picked for each member (``best.pt``)."""
    index = market.frame.index
    env = make_env(market, config, device, span=window.train)
    model = make_model(env, config)
    previous = folder.parent / f"window_{window.index}"
    if settings.warm_start and window.index > 0 and not (folder / LATEST).exists():
        start = load_checkpoint(find_checkpoint(previous))
        model.load_state_dict(start.model)
    trainer = PPOTrainer(
        model,
        env,
        config.ppo,
        device=device,
        run_dir=folder,
        callbacks=[BestCheckpoint(market, decisions=window.validation)],
        data_fingerprint=market.fingerprint(),
        progress=not config.quiet,
    )
    trainer.run_config = apply(config, {"run_dir": str(folder)})
    trainer.data_info = DataInfo(
        path=config.data.path,
        source=market.source,
        train_start=str(index[max(window.train[0], config.env.window)]),
        train_end=str(index[window.validation[1] - 1]),
    )
    if (folder / LATEST).exists():
        trainer.load_checkpoint(folder / LATEST)
        print(f"window {window.index + 1}: resuming at update {trainer.update}")
    train_bars = window.train[1] - max(window.train[0], config.env.window)
    print(
        f"window {window.index + 1}: training on bars {window.train[0]:,}..{window.train[1] - 1:,} "
        f"({train_bars:,} decisions), validation {window.validation[0]:,}.."
        f"{window.validation[1] - 1:,}, test {window.test[0]:,}..{window.test[1] - 1:,} "
        f"({index[window.test[0]]:%Y-%m-%d} to {index[window.test[1] - 1]:%Y-%m-%d})"
    )
    try:
        train_as_configured(trainer, config)
    except TrainingInterrupted as stop:
        raise CommandInterrupted(
            stop.exit_code,
            f"stopped by {stop}: window {window.index + 1}'s checkpoint is saved; resume with: "
            + command("pyppo-walkforward", "--resume", "--run-dir", folder.parent),
        ) from None
    best = load_checkpoint(find_checkpoint(folder))
    return build_model(best.agent.model, best.model, source=folder).to(device)


def _test_window(
    folder: Path,
    market: MarketData,
    config: RunConfig,
    window: Window,
    model: torch.nn.Module,
    carry: np.ndarray,
    device: torch.device,
) -> None:
    """Backtest each member and the ensemble on the window's test bars, each from the
    position it held at the end of the previous window, and save the arrays."""
    if isinstance(model, PopulationActorCritic):
        policies = [model.member(k) for k in range(model.members)]
        policies.append(EnsembleActorCritic(model).eval())
    else:
        policies = [model]
    common = backtest_settings(config)
    start, stop = window.test
    results = [
        backtest(
            market,
            policy,
            device=device,
            start=start,
            stop=stop,
            start_position=float(carry[k]),
            **common,
        )
        for k, policy in enumerate(policies)
    ]
    if len(results) == 1:  # one member: it is its own ensemble
        results.append(results[0])
    with replaced(folder / TEST_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            log_returns=np.stack([r.log_returns for r in results]),
            positions=np.stack([r.positions for r in results]),
            start_positions=carry.astype(np.float64),
            market_returns=results[-1].market_returns,
            repaired=results[-1].repaired,
        )


# -- the report -----------------------------------------------------------------------------


def _report(
    run_dir: Path,
    market: MarketData,
    config: RunConfig,
    settings: WalkForwardSettings,
    windows: list[Window],
    tests: list[dict[str, np.ndarray]],
) -> tuple[dict[str, Any], Path]:
    common = backtest_settings(config)
    first, last = windows[0].test[0], windows[-1].test[1]
    bars = np.arange(first, last)
    # The baselines do not retrain: one backtest over every test bar is their concatenation.
    results: dict[str, Backtest] = {
        name: backtest(market, name, start=first, stop=last, **common)
        for name in DEFAULT_BASELINES.names
    }
    hold = results["buy_and_hold"]
    ensemble = Backtest(
        "agent",
        np.concatenate([t["log_returns"][-1] for t in tests]),
        np.concatenate([t["positions"][-1] for t in tests]),
        np.concatenate([t["market_returns"] for t in tests]),
        market.frame.index[bars + 1],
        market.bars_per_year,
        hold.fee,
        repaired=np.concatenate([t["repaired"] for t in tests]),
        spread=hold.spread,
        fill=hold.fill,
    )
    results = {"agent": ensemble, **results}
    seeds = config.ppo.member_seeds
    per_year = market.bars_per_year

    def window_sharpe(log_returns: np.ndarray) -> float:
        return stats.sharpe_for_ranking(stats.sharpe_ratio(np.expm1(log_returns), per_year))

    # Per window: each seed's Sharpe (W, S), and each baseline's (W,).
    members = np.array(
        [[window_sharpe(t["log_returns"][k]) for k in range(len(seeds))] for t in tests]
    )
    cuts = np.cumsum([0, *(_size(w.test) for w in windows)])
    per_window = {
        name: np.array(
            [window_sharpe(r.log_returns[cuts[i] : cuts[i + 1]]) for i in range(len(windows))]
        )
        for name, r in results.items()
    }
    shares = {
        name: beat_share(members, per_window[name], BOOTSTRAP_REPS, BOOTSTRAP_SEED)
        for name in DEFAULT_BASELINES.names
    }
    interval = stats.bootstrap_ci(members, reps=BOOTSTRAP_REPS, seed=BOOTSTRAP_SEED)
    returns = {name: r.returns for name, r in results.items()}
    baselines = DEFAULT_BASELINES.names
    trials = config.selection.trials
    judged = {name: significance(returns, name, baselines, per_year, trials) for name in results}
    hold_wins = int(np.sum(members > per_window["buy_and_hold"][:, None]))
    verdicts = {name: verdict_line(j) for name, j in judged.items()}
    verdicts["agent"] = verdict_line(
        judged["agent"], interval=interval, beats_hold=(hold_wins, members.size)
    )
    over_seeds = {
        "mean": float(np.mean(members)),
        "median": float(np.median(members)),
        "iqm": stats.iqm(members.ravel()),
        "iqm_ci95": list(interval),
        "bootstrap": f"{BOOTSTRAP_REPS} replicates, seed {BOOTSTRAP_SEED}, seeds resampled "
        "within each window",
    }
    out_of_sample = {name: r.metrics() for name, r in results.items()}
    summary = {
        "verdict": verdicts["agent"],
        "verdicts": verdicts,
        "agent_curve": "the ensemble of each window's members (mean action probabilities, "
        "greedy), positions carried across window boundaries",
        "walkforward": settings.to_dict(),
        "windows": [
            {
                "window": w.index + 1,
                "train": list(w.train),
                "validation": list(w.validation),
                "test": list(w.test),
                "test_start": str(market.frame.index[w.test[0]]),
                "test_end": str(market.frame.index[w.test[1] - 1]),
                "seed_sharpes": members[i].tolist(),
                **{f"{name}_sharpe": float(per_window[name][i]) for name in results},
            }
            for i, w in enumerate(windows)
        ],
        "seeds": list(seeds),
        "agent_over_seeds": over_seeds,
        "beats": {name: {"share": s, "ci95": list(ci)} for name, (s, ci) in shares.items()},
        "significance": {name: j.to_dict() for name, j in judged.items()},
        "out_of_sample": out_of_sample,
    }
    lines = _report_lines(
        market,
        config,
        settings,
        windows,
        results,
        out_of_sample,
        members,
        per_window,
        over_seeds,
        shares,
        judged,
        verdicts["agent"],
    )
    times = ensemble.timestamps
    figures = {
        "walkforward.png": plots.walkforward_figure(
            times,
            {name: r.equity for name, r in results.items()},
            [market.frame.index[w.test[0] + 1] for w in windows],
        ),
        "windows.png": plots.window_sharpes_figure(
            members, {n: per_window[n] for n in DEFAULT_BASELINES.names if n != "random"}
        ),
    }
    lines += ["## Figures", "", *(f"![{Path(f).stem}]({f})" for f in figures)]
    with OutputSet(run_dir) as out:
        equity = {name: r.equity for name, r in results.items()}
        frame = pd.DataFrame(equity, index=times)
        frame["position"] = ensemble.positions
        frame.index.name = "timestamp"
        frame.to_csv(out.path("equity.csv"))
        for name, fig in figures.items():
            plots.save(fig, out.path(name))
        out.write_text("report.md", "\n".join(lines) + "\n")
        out.write_text("report.json", json.dumps(plain_json(summary), indent=2) + "\n")
    return plain_json(summary), run_dir / "report.md"


def _report_lines(
    market: MarketData,
    config: RunConfig,
    settings: WalkForwardSettings,
    windows: list[Window],
    results: dict[str, Backtest],
    out_of_sample: dict[str, dict[str, float]],
    members: np.ndarray,
    per_window: dict[str, np.ndarray],
    over_seeds: dict[str, Any],
    shares: dict[str, tuple[float, tuple[float, float]]],
    judged: dict[str, Significance],
    verdict: str,
) -> list[str]:
    """report.md's lines above the figures: the verdict, the layout, the windows, the
    out-of-sample statistics, the agent over seeds and windows, the significance."""
    seeds = config.ppo.member_seeds
    names = list(results)
    agent = results["agent"]
    lines = [
        "# pyppo walk-forward",
        "",
        verdict,
        "",
        f"- data: {market.source}, {len(market):,} bars of {format_duration(market.bar_interval)}",
        f"- {settings.windows} test windows of {_size(windows[0].test):,} bars, {settings.span} "
        f"training span, validation tail {settings.validation_fraction:.0%} of each span, "
        f"embargo {settings.embargo} bars; labels purged (no training or validation label "
        "reaches the next part); features computed once over the whole history",
        f"- seeds {format_seeds(seeds)} per window, {config.epochs} epochs each"
        + (", warm-started from the previous window" if settings.warm_start else ""),
        "- agent: the ensemble of each window's members (mean action probabilities, greedy); "
        "positions carry across window boundaries",
        f"- fill {agent.fill}; costs fee {agent.fee:g} + spread {agent.spread:g} bp / 2 per "
        "unit of position change",
        "",
        "## Windows (Sharpe ratio on each test window)",
        "",
        *markdown_table(
            ["window", "test bars", "seeds (each)", *names],
            [
                [
                    str(w.index + 1),
                    f"{market.frame.index[w.test[0]]:%Y-%m-%d} to "
                    f"{market.frame.index[w.test[1] - 1]:%Y-%m-%d}",
                    ", ".join(f"{v:.2f}" for v in members[i]),
                    *(f"{per_window[n][i]:.2f}" for n in names),
                ]
                for i, w in enumerate(windows)
            ],
        ),
        "",
        "## Out of sample (the test windows concatenated)",
        "",
        *markdown_table(
            ["statistic", *names],
            [
                [key, *(_cell(out_of_sample[n][key], key) for n in names)]
                for key in ("sharpe", "total_return", "max_drawdown", "turnover")
            ],
        ),
        "",
        "## The agent over seeds and windows",
        "",
        f"Sharpe ratio per (window, seed): mean {over_seeds['mean']:.2f}, median "
        f"{over_seeds['median']:.2f}, IQM {over_seeds['iqm']:.2f} (95 % CI "
        f"{over_seeds['iqm_ci95'][0]:.2f} to {over_seeds['iqm_ci95'][1]:.2f}; "
        f"{over_seeds['bootstrap']}).",
        "",
        *markdown_table(
            ["the agent beats", "share of (window, seed) runs", "95 % CI"],
            [[n, f"{s:.0%}", f"{ci[0]:.0%} to {ci[1]:.0%}"] for n, (s, ci) in shares.items()],
        ),
        "",
        "## Significance (out-of-sample returns)",
        "",
        *markdown_table(
            [
                "policy",
                "Sharpe",
                "PSR",
                "DSR",
                "min. track record [bars]",
                "DSR vs buy & hold",
                "DSR vs best other",
                "edge",
            ],
            [
                [
                    n,
                    _cell(j.sharpe, "sharpe"),
                    _cell(j.psr),
                    _cell(j.dsr),
                    _bars(j.min_track_record),
                    _cell(j.dsr_vs_hold),
                    f"{_cell(j.dsr_vs_best)} ({j.best_baseline})",
                    "yes" if j.evidence else "no",
                ]
                for n, j in judged.items()
            ],
        ),
        "",
        f"{config.selection.trials} configuration(s) tried (selection.trials). An edge is "
        "claimed only when the DSR of the active returns against buy-and-hold and against the "
        f"best other baseline are both >= {EVIDENCE_DSR}.",
        "",
    ]
    tuned = config.selection.tuned_until
    if tuned is not None:
        overlapping = [
            w.index + 1 for w in windows if market.frame.index[w.test[0]] <= pd.Timestamp(tuned)
        ]
        if overlapping:
            lines.append(
                f"- **warning: the settings were tuned on bars up to {tuned}** "
                f"(selection.tuned_until): test window(s) {', '.join(map(str, overlapping))} "
                "lie in that period, so their results flatter the agent."
            )
            lines.append("")
    if len(seeds) < 5:
        lines.append(
            f"- **warning: {len(seeds)} seed(s) per window are too few for a reliable "
            "interval** (use --seeds 5 or more)."
        )
        lines.append("")
    return lines


def _cell(value: float, key: str = "") -> str:
    if not np.isfinite(value):
        return "no trades" if key == "sharpe" else "n/a"
    if key in ("total_return", "max_drawdown"):
        return f"{100 * value:.1f} %"
    return f"{value:.2f}"


def _bars(value: float) -> str:
    """A track-record length: bars, "never" when the Sharpe is not above 0."""
    if np.isnan(value):
        return "n/a"
    return "never" if np.isinf(value) else f"{value:,.0f}"
