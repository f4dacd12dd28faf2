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
(interleaved, so that a noisy machine slows them alike); the tables show medians.

    python benchmarks/bench_guard.py [--device cuda] [--numel 12000000] [--json out.json]
    python benchmarks/bench_kernels.py --ops guard ...   # the same, from the kernel suite
"""

from __future__ import annotations

import argparse

import torch
from common import (
    check_device,
    machine,
    median_seconds_each,
    print_machine,
    print_table,
    write_json,
)
from torch import nn

from pyppo import ops

# What the fused guard should reach, printed next to what it did (its targets).
TARGET_SPEEDUP = 4.0  # at least this much faster than the unfused sequence
TARGET_OVER_FLOOR = {"clip": 1.5, "noclip": 1.3}  # at most this much slower than the floor


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


def run_case(s: Setup, case: str, repeats: int, device: str) -> dict[str, float]:
    max_norm = 0.25 * s.norm if case == "clip" else 1e6 * s.norm
    floor = floor_read_write if case == "clip" else floor_read
    methods = {
        "fused": lambda: fused(s, max_norm),
        "unfused": lambda: unfused(s, max_norm),
        "floor": lambda: floor(s, max_norm),
    }
    # Check that the case is what it claims to be before timing it.
    s.reset()
    *_, coef = ops.guard_gradients_(s.grads, s.group_ids, 5, max_norm)
    assert (coef.item() < 1) == (case == "clip"), (case, coef.item())
    # reset() before every call (untimed) gives each one the same data and NaN to clean.
    return median_seconds_each(methods, device=device, repeats=repeats, warmup=1, setup=s.reset)


def run(args: argparse.Namespace) -> dict:
    """Time both cases and print a table for each; uses args.device, numel, tensors and
    repeats (None: 30 on cpu, 50 on cuda)."""
    repeats = args.repeats or (30 if args.device == "cpu" else 50)
    s = Setup(args.numel, args.tensors, args.device)
    results = {}
    for case in ("clip", "noclip"):
        medians = run_case(s, case, repeats, args.device)
        results[case] = medians
        print_table(
            f"guard_gradients_, {case}: {args.numel / 1e6:.1f} M fp32 elements "
            f"({args.numel * 4 / 1e9:.2f} GB) in {len(s.grads)} tensors, NaN/inf in "
            f"{len(s.poisoned)} of them, {args.device}, medians of {repeats}",
            ["method", "median ms", "vs fused"],
            [[name, t * 1e3, f"{t / medians['fused']:.2f}x"] for name, t in medians.items()],
        )
        speedup = medians["unfused"] / medians["fused"]
        to_floor = medians["fused"] / medians["floor"]
        floor_name = "read+write floor" if case == "clip" else "read floor"
        print(
            f"fused is {speedup:.2f}x faster than unfused (target >= {TARGET_SPEEDUP:g}x) and "
            f"{to_floor:.2f}x the {floor_name} (target <= {TARGET_OVER_FLOOR[case]}x)"
        )
    return {
        "numel": args.numel,
        "tensors": len(s.grads),
        "device": args.device,
        "repeats": repeats,
        "median_seconds": results,
    }


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options only this benchmark has (bench_kernels.py offers them too)."""
    parser.add_argument("--numel", type=int, default=12_000_000, help="gradient elements")
    parser.add_argument("--tensors", type=int, default=40, help="gradient tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_options(parser)
    parser.add_argument("--repeats", type=int, default=None, help="default: 30 cpu, 50 cuda")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    check_device(parser, args.device)

    info = machine(args.device)
    print_machine(info)
    write_json(args.json, {"machine": info, **run(args)})


if __name__ == "__main__":
    main()
