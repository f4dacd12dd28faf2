"""Pure-torch references of pyppo's kernels: the executable spec.

Tests compare every kernel against these on adversarial inputs, and the benchmarks use
them as the "unfused" baseline. They favour clarity over speed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """NaN/+inf/-inf -> 0, finite values outside [-limit, limit] clamped.

    ``limit`` is first rounded to ``x``'s dtype, as ``torch.clamp`` does with a Python
    scalar. Returns ``(y, counts)`` with counts = int64 ``[nonfinite, clamped]``.
    """
    lim = torch.tensor(limit, dtype=x.dtype).item()
    nonfinite = ~torch.isfinite(x)
    y = torch.where(nonfinite, torch.zeros((), dtype=x.dtype, device=x.device), x)
    clamped = y.abs() > lim
    y = y.clamp(-lim, lim)
    counts = torch.stack([nonfinite.sum(), clamped.sum()]).to(torch.int64)
    return y, counts
