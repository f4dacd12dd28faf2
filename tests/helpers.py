"""Shared test inputs: the devices to run on, and tensors salted with the values that
break naive kernels."""

from __future__ import annotations

import pytest
import torch

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Every device test runs on the CPU and, where a GPU and the CUDA kernels exist, on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def salted(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: str = "cpu",
    *,
    limit: float = 1.0,
    special_fraction: float = 0.2,
    seed: int = 0,
) -> torch.Tensor:
    """Random values around +-2*limit with NaN, +-inf, -0.0, subnormals, exact +-limit and
    huge values planted at random positions."""
    gen = torch.Generator().manual_seed(seed)
    scale = 2.0 * limit if limit not in (0.0, float("inf")) else 2.0
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    info = torch.finfo(dtype)
    specials = torch.tensor(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            -0.0,
            info.tiny / 4,  # subnormal
            -info.tiny / 4,
            limit,
            -limit,
            info.max,
            -info.max,
            1e3 * scale,
        ],
        dtype=torch.float64,
    )
    n = x.numel()
    if n:
        pick = torch.rand(n, generator=gen) < special_fraction
        which = torch.randint(len(specials), (n,), generator=gen)
        x.view(-1)[pick] = specials[which[pick]]
    return x.to(dtype).to(device)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN at the same places, and equal signs of zero (torch.equal treats
    -0.0 == 0.0 and NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    a, b = a[~nan_a], b[~nan_b]
    return torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


# A small training run for command-line tests (about a second per epoch on two cores).
SMALL_RUN = [
    "--bars",
    "3000",
    "--num-envs",
    "8",
    "--num-steps",
    "32",
    "--batch-size",
    "64",
    "--hidden-dim",
    "32",
    "--episode-length",
    "200",
    "--quiet",
    "--device",
    "cpu",
]
# Metrics that measure time, and so differ between two otherwise identical runs.
TIMING = {"perf/steps_per_sec", "perf/rollout_seconds", "perf/update_seconds"}


def same_rows(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    """Two runs' metrics rows are equal, update by update, timing aside (NaN equals NaN)."""
    assert [r["update"] for r in a] == [r["update"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if key not in TIMING:
                assert ra[key] == rb[key] or (ra[key] != ra[key] and rb[key] != rb[key]), key
