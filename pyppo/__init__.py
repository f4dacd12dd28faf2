"""pyppo: PPO for trading agents, with NaN/inf guarding fused into C++/CUDA kernels.

Import order matters: torch is imported before the extension so that the extension's
torch libraries resolve to the ones already loaded.
"""

from __future__ import annotations

from pyppo.interrupts import quiet_startup

quiet_startup()  # a Ctrl-C while pyppo's commands import torch ends them with one line

import torch  # noqa: E402, F401  (before the extension, see above)

from pyppo import ops, reference
from pyppo._extension import cuda_kernels_available
from pyppo.agent import Agent, export_agent
from pyppo.buffer import RolloutBatch, RolloutBuffer
from pyppo.config import DataConfig, EnvConfig, ModelConfig, PPOConfig, RunConfig
from pyppo.data import (
    MarketData,
    MarketDataError,
    Universe,
    load_market_data,
    load_universe,
    synthetic_market,
)
from pyppo.env import EnvSpec, ObsSpec, TradingEnv
from pyppo.guard import GradientGuard, guard_outputs, validate_outputs
from pyppo.loss import PPOLossTerms, ppo_loss
from pyppo.model import ModelSpec, PortfolioActorCritic, TradingActorCritic
from pyppo.portfolio_env import PortfolioEnv
from pyppo.training import NonFiniteParametersError, PPOTrainer, TrainingCallback

__all__ = [
    "Agent",
    "export_agent",
    "cuda_kernels_available",
    "ops",
    "reference",
    "RunConfig",
    "DataConfig",
    "EnvConfig",
    "ModelConfig",
    "PPOConfig",
    "GradientGuard",
    "guard_outputs",
    "validate_outputs",
    "RolloutBatch",
    "RolloutBuffer",
    "MarketData",
    "MarketDataError",
    "load_market_data",
    "load_universe",
    "Universe",
    "synthetic_market",
    "TradingEnv",
    "PortfolioEnv",
    "ObsSpec",
    "TradingActorCritic",
    "PortfolioActorCritic",
    "ModelSpec",
    "EnvSpec",
    "PPOTrainer",
    "TrainingCallback",
    "NonFiniteParametersError",
    "ppo_loss",
    "PPOLossTerms",
]
__version__ = "0.2.0"
