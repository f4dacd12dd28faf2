"""Timing, machine description and table printing shared by pyppo's benchmarks.

Every benchmark times its candidates side by side in one process (the machines here are
shared and noisy, so ratios measured together mean more than absolute times) and reports
medians of several repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone

import torch

import pyppo


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timed:
    """Wraps a method so that its wall time adds up under a name (synchronizing on CUDA)."""

    def __init__(self, totals: dict[str, float], name: str, fn, device: str) -> None:
        self.totals, self.name, self.fn, self.device = totals, name, fn, device

    def __call__(self, *args, **kwargs):
        synchronize(self.device)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        synchronize(self.device)
        self.totals[self.name] += time.perf_counter() - start
        return out


def training_env(device: str, num_envs: int, seed: int = 0) -> pyppo.TradingEnv:
    """The env the training benchmarks train on: the default synthetic market's training
    split (its first 70 %), ``num_envs`` episodes on ``device``."""
    train, _ = pyppo.synthetic_market(seed=0).split(0.7)
    return pyppo.TradingEnv(train, num_envs=num_envs, device=device, seed=seed)


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_neighbour(enabled: bool) -> Iterator[None]:
    """Keep one more core busy (a process spinning) inside the block, as a shared machine's
    neighbour does: work that pyppo splits over threads then waits for the busy one."""
    if not enabled:
        yield
        return
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        spinner.terminate()
        spinner.join()


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Stop with a clear message, before any work, when ``device`` cannot run pyppo's ops."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA GPU is visible")
    if not pyppo.cuda_kernels_available():
        parser.error(
            f"--device {device}: pyppo was built without its CUDA kernels "
            "(rebuild with PYPPO_CUDA=ON)"
        )


def median_seconds(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    setup: Callable[[], object] | None = None,
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs; ``setup()`` runs untimed before
    each (e.g. to restore dirty input that an in-place kernel cleaned)."""
    return median_seconds_each(
        {"fn": fn}, device=device, repeats=repeats, warmup=warmup, setup=setup
    )["fn"]


def median_seconds_each(
    fns: Mapping[str, Callable[[], object]],
    *,
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    setup: Callable[[], object] | None = None,
) -> dict[str, float]:
    """:func:`median_seconds` of several candidates, interleaved: each repeat times every
    candidate once, in turn, so that a burst of load from a neighbour slows them alike
    instead of landing on whichever one happened to run then."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            if setup is not None:
                setup()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def device_seconds_each(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 10, burst: int = 20
) -> dict[str, float]:
    """CUDA only: the device's time per call of each candidate, as the median over
    ``repeats`` bursts of ``burst`` back-to-back calls between two CUDA events (candidates
    interleaved). Queued calls hide the host's launch overhead whenever the device is the
    slower side, so this is the time that bandwidth is computed from; the wall-clock
    :func:`median_seconds_each` of a single synchronized call includes that overhead."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 1):  # the first burst warms up
        for name, fn in fns.items():
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(burst):
                fn()
            stop.record()
            stop.synchronize()
            if i > 0:
                times[name].append(start.elapsed_time(stop) / 1e3 / burst)
    return {name: statistics.median(t) for name, t in times.items()}


def machine(device: str) -> dict[str, str | int]:
    """What the numbers were measured on."""
    info: dict[str, str | int] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_machine(info: dict[str, str | int]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"\nwrote {path}")
