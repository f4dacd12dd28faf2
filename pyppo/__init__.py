"""pyppo: PPO for trading agents, with NaN/inf guarding fused into C++/CUDA kernels.

Import order matters: torch is imported before the extension so that the extension's
torch libraries resolve to the ones already loaded.
"""

from __future__ import annotations

import torch

from pyppo import ops, reference
from pyppo._extension import _C, cuda_kernels_available
from pyppo.buffer import RolloutBatch, RolloutBuffer
from pyppo.data import MarketData, MarketDataError, load_market_data, synthetic_market
from pyppo.env import ObsSpec, TradingEnv
from pyppo.guard import GradientGuard, validate_outputs
from pyppo.model import TradingActorCritic
from pyppo.trainer import NonFiniteParametersError, PPOTrainer

__all__ = [
    "cuda_kernels_available", "ops", "reference", "_C", "torch",
    "GradientGuard", "validate_outputs",
    "RolloutBatch", "RolloutBuffer",
    "MarketData", "MarketDataError", "load_market_data", "synthetic_market",
    "TradingEnv", "ObsSpec",
    "TradingActorCritic", "PPOTrainer", "NonFiniteParametersError",
]
__version__ = "0.1.0"
