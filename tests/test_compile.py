"""The ways to compute faster: ``compile=True`` (the update's forward pass and loss under
torch.compile compute what the eager ones compute, and a compiled trainer trains) and
``bf16=True`` (bfloat16 autocast, float32 weights and gradients)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market
from pyppo.training.recorder import NaNCounters

TERMS = ("total", "policy", "value", "entropy", "approx_kl", "clip_fraction", "aux")


def trainer(**settings) -> PPOTrainer:
    env = TradingEnv(synthetic_market(3000, seed=1), num_envs=8, episode_length=100)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=32)
    return PPOTrainer(model, env, num_steps=32, batch_size=64, progress=False, **settings)


def test_compiled_loss_equals_eager_on_a_fixed_minibatch():
    compiled = trainer(compile=True)
    counters = NaNCounters.zeros(compiled.metric_schema(), compiled.device)
    compiled.collect_rollout(counters)
    batch = next(compiled.buffer.minibatches(64, torch.Generator().manual_seed(0)))
    updater = compiled.updater
    targets = compiled.buffer.aux_targets.reshape(-1, 2)
    aux_scale = targets.var(0).clamp_min(1e-12)
    assert updater.loss is not updater.forward_and_loss  # the compiled function
    eager, _ = updater.forward_and_loss(batch, aux_scale)
    fast, _ = updater.loss(batch, aux_scale)
    for name in TERMS:
        torch.testing.assert_close(getattr(fast, name), getattr(eager, name), rtol=1e-5, atol=1e-7)
    # Gradients too: the compiled backward is AOTAutograd's.
    grads = []
    for terms in (eager, fast):
        compiled.model.zero_grad()
        terms.total.backward()
        grads.append([p.grad.clone() for p in compiled.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nan_policy", ["zero", "skip"])
@pytest.mark.slow
def test_a_compiled_trainer_trains(nan_policy):
    compiled = trainer(compile=True, nan_policy=nan_policy)
    rows = compiled.train(total_steps=8 * 32 * 2)
    assert len(rows) == 2
    assert all(math.isfinite(rows[-1][k]) for k in ("loss/policy", "loss/value"))
    assert all(torch.isfinite(p).all() for p in compiled.model.parameters())
    assert dataclasses.asdict(compiled.config)["compile"] is True


@pytest.mark.slow
def test_bf16_autocast_trains_with_float32_weights_and_guards():
    plain, bf16 = trainer(), trainer(bf16=True)
    counters = NaNCounters.zeros(bf16.metric_schema(), bf16.device)
    bf16.collect_rollout(counters)
    batch = next(bf16.buffer.minibatches(64, torch.Generator().manual_seed(0)))
    out, _ = bf16._forward(batch.obs)
    reference, _ = plain._forward(batch.obs)  # the same initial weights, in float32
    for name, value in out.items():
        assert value.dtype == torch.float32  # cast back for the loss
        torch.testing.assert_close(value, reference[name], rtol=0.05, atol=0.05)
    assert not torch.equal(out["value"], reference["value"])  # it did compute in bfloat16
    rows = bf16.train(total_steps=8 * 32 * 2)
    assert all(math.isfinite(rows[-1][k]) for k in ("loss/policy", "loss/value"))
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in bf16.model.parameters())
