"""Benchmarks of pyppo's guarded kernels against what users write today and the memory floor.

The one entry point for the kernel benchmarks; ``--ops`` picks some (default: all).

    python benchmarks/bench_kernels.py                   # CPU, all of them
    python benchmarks/bench_kernels.py --device cuda     # GPU
    python benchmarks/bench_kernels.py --ops sanitize --sizes 16M --repeats 20 --json out.json
    python benchmarks/bench_kernels.py --ops gae --busy   # with the other core busy

sanitize: fused ``pyppo.ops.sanitize_`` vs the unfused torch sequence (count non-finite,
``nan_to_num_``, count out-of-range, ``clamp_``) vs ``dst.copy_(src)`` of the same tensor,
which reads and writes the same bytes as the in-place kernel: the floor.
guard: ``pyppo.ops.guard_gradients_`` vs nan_to_num_ + clip_grad_norm_ vs the read(+write)
floor; see bench_guard.py, which also runs it alone.
gae: ``pyppo.ops.gae`` vs a NumPy loop and a copy, and RolloutBuffer's add and minibatches
vs the same work from Python; see bench_gae.py, which also runs it alone.
"""

from __future__ import annotations

import argparse

import bench_gae
import bench_guard
import torch
from common import (
    busy_neighbour,
    check_device,
    machine,
    median_seconds,
    print_machine,
    print_table,
    write_json,
)

from pyppo import ops

SPECIAL_FRACTION = 0.01  # about 1 % NaN / inf / out-of-range values
SANITIZE_REPEATS = 10  # when --repeats is not given


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def dirty_tensor(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, generator=gen, device=device, dtype=torch.float32).mul_(0.5)
    pick = torch.rand(n, generator=gen, device=device) < SPECIAL_FRACTION
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 50.0, -50.0], device=device)
    which = torch.randint(len(specials), (n,), generator=gen, device=device)
    x[pick] = specials[which[pick]]
    return x.to(dtype)


def unfused_sanitize_(x: torch.Tensor, limit: float) -> torch.Tensor:
    """What a careful user writes today with plain torch ops."""
    nonfinite = (~torch.isfinite(x)).sum()
    x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    clamped = (x.abs() > limit).sum()
    x.clamp_(-limit, limit)
    return torch.stack([nonfinite, clamped])


def sanitize_row(size: int, repeats: int, args: argparse.Namespace) -> dict:
    pristine = dirty_tensor(size, getattr(torch, args.dtype), args.device)
    work = torch.empty_like(pristine)

    def restore() -> None:  # the in-place candidates clean their input
        work.copy_(pristine)

    def timed(fn, setup=None) -> float:
        return median_seconds(fn, setup=setup, device=args.device, repeats=repeats)

    fused = timed(lambda: ops.sanitize_(work, 1.0), restore)
    unfused = timed(lambda: unfused_sanitize_(work, 1.0), restore)
    copy = timed(lambda: work.copy_(pristine))
    bytes_moved = 2 * pristine.numel() * pristine.element_size()
    return {
        "op": "sanitize_",
        "elements": size,
        "dtype": args.dtype,
        "fused_ms": fused * 1e3,
        "unfused_ms": unfused * 1e3,
        "copy_ms": copy * 1e3,
        "speedup_vs_unfused": unfused / fused,
        "fused_over_copy": fused / copy,
        "fused_GBps": bytes_moved / fused / 1e9,
        "copy_GBps": bytes_moved / copy / 1e9,
    }


def bench_sanitize(args: argparse.Namespace) -> list[dict]:
    repeats = args.repeats or SANITIZE_REPEATS
    results = [sanitize_row(size, repeats, args) for size in args.sizes]
    print_table(
        f"sanitize_ ({args.dtype}, {args.device}, ~1 % special values; medians of {repeats})",
        [
            "elements",
            "fused ms",
            "unfused ms",
            "copy ms",
            "unfused/fused",
            "fused/copy",
            "fused GB/s",
            "copy GB/s",
        ],
        [
            [
                r["elements"],
                r["fused_ms"],
                r["unfused_ms"],
                r["copy_ms"],
                r["speedup_vs_unfused"],
                r["fused_over_copy"],
                r["fused_GBps"],
                r["copy_GBps"],
            ]
            for r in results
        ],
    )
    return results


# Each takes the parsed options and returns what goes into --json under its name.
BENCHES = {"sanitize": bench_sanitize, "guard": bench_guard.run, "gae": bench_gae.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ops", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed repeats per candidate for sanitize (default "
        f"{SANITIZE_REPEATS}) and guard (default 30 cpu, 50 cuda); gae "
        "repeats each candidate for about 0.3 s instead",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64", "float16", "bfloat16"],
        help="for sanitize and gae (gae: float32 or float64); guard is fp32",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--busy", action="store_true", help="keep another core busy (a shared machine)"
    )
    parser.add_argument_group("sanitize").add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        help="elements, e.g. 64K 16M",
        default=[parse_size(s) for s in "64K 256K 1M 4M 16M 64M".split()],
    )
    # guard and gae own their options, so that they have the same defaults here and alone.
    bench_guard.add_options(parser.add_argument_group("guard"))
    bench_gae.add_options(parser.add_argument_group("gae"))
    args = parser.parse_args()
    check_device(parser, args.device)
    if "gae" in args.ops and args.dtype not in ("float32", "float64"):
        parser.error(
            f"--dtype {args.dtype}: gae runs in float32 or float64 only; "
            "leave gae out with --ops sanitize guard"
        )

    info = machine(args.device)
    print_machine(info)
    print(f"busy neighbour: {args.busy}")
    with busy_neighbour(args.busy):
        results = {name: BENCHES[name](args) for name in args.ops}
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
