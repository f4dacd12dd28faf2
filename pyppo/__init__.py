"""pyppo: PPO for trading agents, with NaN/inf guarding fused into C++/CUDA kernels.

Import order matters: torch is imported before the extension so that the extension's
torch libraries resolve to the ones already loaded.
"""

from __future__ import annotations

import torch

from pyppo._extension import _C, cuda_kernels_available
from pyppo import ops, reference
from pyppo.guard import GradientGuard

__all__ = ["GradientGuard", "cuda_kernels_available", "ops", "reference", "_C", "torch"]
__version__ = "0.1.0"
