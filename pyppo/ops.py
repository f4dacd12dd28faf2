"""Typed Python entry points to pyppo's kernels (``torch.ops.pyppo.*``).

Each op dispatches on the device of its inputs to the CPU or CUDA kernel, has a fake
(meta) implementation so that it traces under ``torch.compile``, and has a pure-torch
twin in :mod:`pyppo.reference` that states exactly what it computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

import pyppo._extension  # noqa: F401  (loads the kernels and registers the op schemas)

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def sanitize_(x: Tensor, limit: float = 1.0) -> Tensor:
    """Sanitize ``x`` in place: NaN/+inf/-inf become 0, finite values are clamped to
    ``[-limit, limit]`` (``limit`` rounded to ``x``'s dtype).

    Returns an int64 tensor ``[nonfinite, clamped]`` on ``x``'s device; reading it is the
    only host synchronisation. ``limit=float("inf")`` only zeroes non-finite values.
    Works for float32/64, float16 and bfloat16 of any shape, contiguous or not.
    """
    return torch.ops.pyppo.sanitize_.default(x, float(limit))


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """Out-of-place :func:`sanitize_`: returns ``(y, counts)`` and leaves ``x`` untouched.
    ``y`` is contiguous."""
    return torch.ops.pyppo.sanitize.default(x, float(limit))


def _check_float(x: Tensor, name: str) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"pyppo: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}"
        )


@torch.library.register_fake("pyppo::sanitize_")
def _sanitize_inplace_fake(x: Tensor, limit: float) -> Tensor:
    _check_float(x, "x")
    return x.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("pyppo::sanitize")
def _sanitize_fake(x: Tensor, limit: float) -> tuple[Tensor, Tensor]:
    _check_float(x, "x")
    return x.new_empty(x.shape), x.new_empty(2, dtype=torch.int64)
