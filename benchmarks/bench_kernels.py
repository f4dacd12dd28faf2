"""Benchmarks of pyppo's guarded kernels against what users write today and the memory floor.

    python benchmarks/bench_kernels.py                   # CPU
    python benchmarks/bench_kernels.py --device cuda     # GPU
    python benchmarks/bench_kernels.py --sizes 16M --repeats 20 --json out.json

sanitize: fused ``pyppo.ops.sanitize_`` vs the unfused torch sequence (count non-finite,
``nan_to_num_``, count out-of-range, ``clamp_``) vs ``dst.copy_(src)`` of the same tensor,
which reads and writes the same bytes as the in-place kernel: the floor.
"""

from __future__ import annotations

import argparse

import torch
from common import machine, median_seconds, print_table, write_json

from pyppo import ops

SPECIAL_FRACTION = 0.01  # about 1 % NaN / inf / out-of-range values


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


def sanitize_row(size: int, args: argparse.Namespace) -> dict:
    pristine = dirty_tensor(size, args.dtype, args.device)
    work = torch.empty_like(pristine)

    def restore() -> None:  # the in-place candidates clean their input
        work.copy_(pristine)

    def timed(fn, setup=None) -> float:
        return median_seconds(fn, setup=setup, device=args.device, repeats=args.repeats)

    fused = timed(lambda: ops.sanitize_(work, 1.0), restore)
    unfused = timed(lambda: unfused_sanitize_(work, 1.0), restore)
    copy = timed(lambda: work.copy_(pristine))
    bytes_moved = 2 * pristine.numel() * pristine.element_size()
    return {
        "op": "sanitize_", "elements": size, "dtype": str(args.dtype).removeprefix("torch."),
        "fused_ms": fused * 1e3, "unfused_ms": unfused * 1e3, "copy_ms": copy * 1e3,
        "speedup_vs_unfused": unfused / fused, "fused_over_copy": fused / copy,
        "fused_GBps": bytes_moved / fused / 1e9, "copy_GBps": bytes_moved / copy / 1e9,
    }


def bench_sanitize(args: argparse.Namespace) -> list[dict]:
    results = [sanitize_row(size, args) for size in args.sizes]
    print_table(
        f"sanitize_ ({results[0]['dtype']}, {args.device}, ~1 % special values; medians of "
        f"{args.repeats})",
        ["elements", "fused ms", "unfused ms", "copy ms", "unfused/fused", "fused/copy",
         "fused GB/s", "copy GB/s"],
        [[r["elements"], r["fused_ms"], r["unfused_ms"], r["copy_ms"], r["speedup_vs_unfused"],
          r["fused_over_copy"], r["fused_GBps"], r["copy_GBps"]] for r in results],
    )
    return results


BENCHES = {"sanitize": bench_sanitize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ops", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[parse_size(s) for s in ("64K", "256K", "1M", "4M", "16M", "64M")])
    parser.add_argument("--dtype", default="float32",
                        type=lambda s: getattr(torch, s))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")

    info = machine(args.device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    results = {name: BENCHES[name](args) for name in args.ops}
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
