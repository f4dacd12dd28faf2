"""Inside an update nothing reads back to the host per step or per minibatch: the number of
host reads per update does not grow with the rollout length or the number of minibatches
(counted at the Python level and at the dispatcher, with the env built as on a GPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market

READ_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
READ_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


class CountReads(TorchDispatchMode):
    """Counts the dispatcher ops that copy a value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READ_OPS:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_python_reads(counter: list[int]):
    """Counts calls of the Tensor methods that read values to the host."""
    originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}

    def wrap(fn):
        def call(self, *a, **kw):
            counter[0] += 1
            return fn(self, *a, **kw)

        return call

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def reads_per_update(num_steps: int, batch_size: int, **settings) -> tuple[int, int]:
    market = synthetic_market(3000, seed=1)
    # As on a GPU: no per-step action check (on a CPU the env checks actions on the host).
    env = TradingEnv(market, num_envs=8, episode_length=100, check_actions=False)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=16)
    trainer = PPOTrainer(
        model,
        env,
        num_steps=num_steps,
        batch_size=batch_size,
        num_epochs=2,
        progress=False,
        **settings,
    )
    trainer.train(total_steps=8 * num_steps)  # warm-up: first-call work is not per update
    python = [0]
    with CountReads() as dispatch, counting_python_reads(python):
        trainer.train(total_steps=2 * 8 * num_steps)
    return dispatch.reads, python[0]


@pytest.mark.parametrize(
    "settings",
    [{}, {"target_kl": 10.0}, {"nan_policy": "skip"}, {"target_kl": 10.0, "nan_policy": "skip"}],
    ids=["default", "target_kl", "skip", "both"],
)
def test_host_reads_do_not_grow_with_steps_or_minibatches(settings):
    small = reads_per_update(num_steps=16, batch_size=64, **settings)  # 2 minibatches
    long_rollout = reads_per_update(num_steps=64, batch_size=256, **settings)
    many_minibatches = reads_per_update(num_steps=16, batch_size=16, **settings)  # 8
    assert small == long_rollout == many_minibatches, (small, long_rollout, many_minibatches)
    assert small[0] + small[1] < 100  # and they are few: one read at the end of the update
