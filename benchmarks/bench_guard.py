"""Benchmark of the fused gradient guard (pyppo.ops.guard_gradients_).

Three ways to guard about 12 M fp32 gradient elements in about 40 tensors, a few of which
hold planted NaN, timed side by side:

  fused    one pyppo.ops.guard_gradients_ call
  unfused  what people write today: a non-finite count per tensor, nan_to_num_ per tensor,
           then torch.nn.utils.clip_grad_norm_(foreach=True)
  floor    the least any guard must do to the same bytes: one read pass (`sum`) and, when
           clipping, one in-place write pass (`mul_`)

in two cases: "clip" (the norm exceeds max_norm: the guard must read and then scale) and
"noclip" (it does not: a guard need only read). The gradients are views into one flat
buffer, so the floor runs over exactly the bytes the guards touch. Before every timed call
the buffer is restored from a master copy and the NaN are planted again (untimed), so every
call sees the same data and the same cache state. Each repeat times all methods in turn
(interleaved, so that a noisy machine slows them alike); the table shows medians.

    python benchmarks/bench_guard.py [--device cuda] [--numel 12000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import pyppo
from pyppo import ops


def tensor_sizes(total: int, count: int, gen: torch.Generator) -> list[int]:
    """`count` sizes that add up to `total`, spread like a model's layers (a few big
    matrices, many small vectors)."""
    weights = torch.rand(count, generator=gen) ** 3 + 1e-3
    sizes = (weights / weights.sum() * total).long().clamp(min=1)
    sizes[0] += total - int(sizes.sum())
    return sizes.tolist()


class Setup:
    """The gradients (views into one flat buffer), their master copy and the NaN plan."""

    def __init__(self, numel: int, num_tensors: int, device: str, nan_tensors: int = 3) -> None:
        gen = torch.Generator().manual_seed(0)
        self.sizes = tensor_sizes(numel, num_tensors, gen)
        self.master = (torch.randn(numel, generator=gen) * 1e-2).to(device)
        self.flat = self.master.clone()
        self.grads = list(self.flat.split(self.sizes))
        # clip_grad_norm_ takes parameters and reads their .grad.
        self.params = [nn.Parameter(torch.empty_like(g)) for g in self.grads]
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g
        self.group_ids = [i % 5 for i in range(len(self.grads))]  # trunk/actor/critic/aux...
        # A few NaN/inf in a few tensors, as a poisoned auxiliary head would leave.
        self.poisoned = [
            (t, [0, self.sizes[t] // 2, self.sizes[t] - 1])
            for t in range(1, len(self.grads), max(1, len(self.grads) // nan_tensors))
        ]
        self.norm = float(self.master.norm())

    def reset(self) -> None:
        self.flat.copy_(self.master)
        for t, positions in self.poisoned:
            self.grads[t][positions] = torch.tensor(
                [float("nan"), float("inf"), -float("inf")], device=self.flat.device
            )


def fused(s: Setup, max_norm: float) -> None:
    ops.guard_gradients_(s.grads, s.group_ids, 5, max_norm)


def unfused(s: Setup, max_norm: float) -> None:
    # Counts kept as tensors (no .item() per tensor), which flatters this baseline on a GPU.
    _counts = [(~torch.isfinite(g)).sum() for g in s.grads]
    for g in s.grads:
        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    nn.utils.clip_grad_norm_(s.params, max_norm, foreach=True)


def floor_read_write(s: Setup, max_norm: float) -> None:
    s.flat.sum()
    s.flat.mul_(0.5)


def floor_read(s: Setup, max_norm: float) -> None:
    s.flat.sum()


def time_call(fn: Callable[[], None], device: str) -> float:
    """Seconds for one call, synchronised."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(s: Setup, case: str, repeats: int, device: str) -> dict[str, float]:
    max_norm = 0.25 * s.norm if case == "clip" else 1e6 * s.norm
    methods = {
        "fused": fused,
        "unfused": unfused,
        "floor": floor_read_write if case == "clip" else floor_read,
    }
    # Check that the case is what it claims to be, then warm up.
    s.reset()
    *_, coef = ops.guard_gradients_(s.grads, s.group_ids, 5, max_norm)
    assert (coef.item() < 1) == (case == "clip"), (case, coef.item())
    for fn in methods.values():
        s.reset()
        fn(s, max_norm)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            s.reset()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time_call(lambda fn=fn: fn(s, max_norm), device))
    return {name: statistics.median(t) for name, t in times.items()}


def machine(device: str) -> dict[str, str | int]:
    info: dict[str, str | int] = {
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--numel", type=int, default=12_000_000, help="gradient elements")
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=None, help="default: 30 cpu, 50 cuda")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and pyppo.cuda_kernels_available()):
        raise SystemExit("--device cuda needs a GPU and pyppo built with its CUDA kernels")
    repeats = args.repeats or (30 if args.device == "cpu" else 50)

    s = Setup(args.numel, args.tensors, args.device)
    gbytes = args.numel * 4 / 1e9
    info = machine(args.device)
    print(
        f"guard benchmark: {args.numel / 1e6:.1f} M fp32 elements ({gbytes:.2f} GB) in "
        f"{len(s.grads)} tensors, NaN/inf in {len(s.poisoned)} of them, {args.device}, "
        f"median of {repeats}"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    results = {}
    for case in ("clip", "noclip"):
        medians = run_case(s, case, repeats, args.device)
        results[case] = medians
        floor_name = "read+write floor" if case == "clip" else "read floor"
        print(f"\n{case}:")
        print(f"  {'method':<10} {'median ms':>10} {'vs fused':>9}")
        for name, t in medians.items():
            print(f"  {name:<10} {t * 1e3:>10.3f} {t / medians['fused']:>8.2f}x")
        speedup = medians["unfused"] / medians["fused"]
        to_floor = medians["fused"] / medians["floor"]
        limit = 1.5 if case == "clip" else 1.3
        print(
            f"  fused is {speedup:.2f}x faster than unfused (target >= 4x) and "
            f"{to_floor:.2f}x the {floor_name} (target <= {limit}x)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "numel": args.numel,
                    "tensors": len(s.grads),
                    "device": args.device,
                    "repeats": repeats,
                    "median_seconds": results,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
