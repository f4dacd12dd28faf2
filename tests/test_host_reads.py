"""Inside an update nothing reads back to the host per step or per minibatch: the number of
host reads per update does not grow with the rollout length or the number of minibatches
(counted at the Python level and at the dispatcher, with the env built as on a GPU)."""

from __future__ import annotations

import pytest
import torch

from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market
from pyppo.diagnostics import HostReads


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
    with HostReads() as reads:
        trainer.train(total_steps=2 * 8 * num_steps)
    return reads.dispatch, reads.python


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


def test_host_reads_counts_both_levels():
    x = torch.arange(4.0)
    with HostReads() as reads:
        x.sum().item()  # one Python read, one dispatcher read
        bool(x[0] > 0)
        torch.nonzero(x)  # a dispatcher read only
    assert (reads.python, reads.dispatch) == (2, 3)
    x.sum().item()  # after the block: not counted, the methods are restored
    assert reads.python == 2 and "call" not in torch.Tensor.item.__qualname__
