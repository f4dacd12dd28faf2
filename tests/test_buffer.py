"""pyppo.RolloutBuffer: storage round trip, sanitize on insert, GAE, minibatches, errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES

from pyppo import RolloutBuffer, reference

T, N, OBS, AUX = 6, 5, (3, 2), 2


def random_steps(
    steps=T, envs=N, obs_shape=OBS, num_aux=AUX, device="cpu", seed=0, dtype=torch.float32
):
    """Per-step inputs with finite, in-range rewards and aux targets (nothing to sanitize)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append(
            dict(
                obs=torch.randn(envs, *obs_shape, generator=g, dtype=dtype),
                actions=torch.randint(0, 3, (envs,), generator=g),
                logprobs=torch.randn(envs, generator=g, dtype=dtype),
                rewards=torch.randn(envs, generator=g, dtype=dtype),
                values=torch.randn(envs, generator=g, dtype=dtype),
                episode_starts=torch.rand(envs, generator=g) < 0.2,
                aux_targets=torch.rand(envs, num_aux, generator=g, dtype=dtype) - 0.5,
            )
        )
    return [{k: v.to(device) for k, v in step.items()} for step in out]


def filled(device="cpu", **kwargs):
    buf = RolloutBuffer(T, N, OBS, device=device, num_aux=AUX, **kwargs)
    steps = random_steps(device=device, dtype=buf.dtype)
    for step in steps:
        buf.add(**step)
    return buf, steps


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_every_field(device):
    buf, steps = filled(device)
    assert buf.full and buf.pos == T
    stacked = {k: torch.stack([s[k] for s in steps]) for k in steps[0]}
    torch.testing.assert_close(buf.obs, stacked["obs"], rtol=0, atol=0)
    torch.testing.assert_close(buf.actions, stacked["actions"], rtol=0, atol=0)
    torch.testing.assert_close(buf.logprobs, stacked["logprobs"], rtol=0, atol=0)
    torch.testing.assert_close(buf.rewards, stacked["rewards"], rtol=0, atol=0)
    torch.testing.assert_close(buf.values, stacked["values"], rtol=0, atol=0)
    torch.testing.assert_close(
        buf.episode_starts, stacked["episode_starts"].float(), rtol=0, atol=0
    )
    torch.testing.assert_close(buf.aux_targets, stacked["aux_targets"], rtol=0, atol=0)
    for counts in buf.sanitize_counts.values():
        assert counts.device.type == device and counts.tolist() == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_advantages_match_reference(device, dtype):
    buf, steps = filled(device, dtype=dtype)
    last_values = torch.randn(N, dtype=dtype, device=device)
    last_starts = torch.tensor([True, False, True, False, False], device=device)
    buf.compute_returns_and_advantage(last_values, last_starts, 0.98, 0.9)
    adv, ret = reference.gae(
        buf.rewards.cpu(),
        buf.values.cpu(),
        buf.episode_starts.cpu(),
        last_values.cpu(),
        last_starts.cpu(),
        0.98,
        0.9,
    )
    torch.testing.assert_close(buf.advantages.cpu(), adv)
    torch.testing.assert_close(buf.returns.cpu(), ret)


@pytest.mark.parametrize("device", DEVICES)
def test_gae_with_a_gamma_and_lambda_per_member(device):
    members, width = 3, 2
    buf = RolloutBuffer(T, members * width, OBS, device=device, num_aux=AUX)
    for step in random_steps(envs=members * width, device=device):
        buf.add(**step)
    last_values = torch.randn(members * width, device=device)
    last_starts = torch.tensor([True, False] * members, device=device)
    gammas, lambdas = (0.9, 0.99, 0.5), (0.95, 0.0, 1.0)
    buf.compute_returns_and_advantage(last_values, last_starts, gammas, lambdas)
    for k in range(members):
        block = slice(k * width, (k + 1) * width)
        adv, ret = reference.gae(
            buf.rewards[:, block].cpu(),
            buf.values[:, block].cpu(),
            buf.episode_starts[:, block].cpu(),
            last_values[block].cpu(),
            last_starts[block].cpu(),
            gammas[k],
            lambdas[k],
        )
        torch.testing.assert_close(buf.advantages[:, block].cpu(), adv)
        torch.testing.assert_close(buf.returns[:, block].cpu(), ret)
    with pytest.raises(ValueError, match="cannot be cut into 4 equal member blocks"):
        buf.compute_returns_and_advantage(last_values, last_starts, (0.9, 0.8, 0.7, 0.6), 0.95)


def test_per_env_fields_accept_column_shape():
    buf = RolloutBuffer(1, N, OBS, num_aux=AUX)
    step = random_steps(steps=1)[0]
    for key in ("logprobs", "rewards", "values", "episode_starts"):
        step[key] = step[key].reshape(N, 1)
    buf.add(**step)
    torch.testing.assert_close(buf.values[0], step["values"].reshape(N), rtol=0, atol=0)
    buf.compute_returns_and_advantage(torch.zeros(N, 1), torch.zeros(N, 1, dtype=torch.uint8))


def test_float_and_uint8_episode_starts():
    buf = RolloutBuffer(2, N, OBS, num_aux=AUX)
    step = random_steps(steps=1)[0]
    buf.add(**{**step, "episode_starts": torch.tensor([0, 2, 0, 1, 0], dtype=torch.uint8)})
    buf.add(**{**step, "episode_starts": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])})
    assert buf.episode_starts.tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 1, 0]]


def test_missing_aux_targets_are_stored_as_zero():
    buf = RolloutBuffer(2, N, OBS, num_aux=AUX)
    steps = random_steps(steps=2)
    buf.add(**steps[0])
    buf.add(**{**steps[1], "aux_targets": None})
    torch.testing.assert_close(buf.aux_targets[0], steps[0]["aux_targets"], rtol=0, atol=0)
    assert buf.aux_targets[1].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_sanitize_counts_exact(device):
    nan, inf = float("nan"), float("inf")
    buf = RolloutBuffer(3, 4, (2,), device=device, num_aux=2, aux_limit=1.0)
    steps = random_steps(3, 4, (2,), 2, device=device)
    steps[0]["rewards"] = torch.tensor([nan, 1e30, -inf, 0.5], device=device)
    steps[0]["aux_targets"] = torch.tensor(
        [[nan, 0.5], [inf, -inf], [2.0, -1.5], [1.0, -1.0]], device=device
    )
    steps[2]["rewards"] = torch.tensor([inf, -0.0, 1e-40, -1e6], device=device)
    steps[2]["aux_targets"] = torch.tensor(
        [[1e10, -1e-3], [0.0, 0.0], [nan, 7.0], [0.1, 0.2]], device=device
    )
    for step in steps:
        buf.add(**step)
    counts = buf.sanitize_counts
    assert counts["rewards"].device.type == device
    # Rewards: limit inf -> only non-finite values count (3), nothing is clamped.
    assert counts["rewards"].tolist() == [3, 0]
    # Aux: nan, inf, -inf, nan are non-finite (4); 2.0, -1.5, 1e10, 7.0 are clamped (4).
    assert counts["aux_targets"].tolist() == [4, 4]
    assert torch.equal(buf.rewards[0].cpu(), torch.tensor([0.0, 1e30, 0.0, 0.5]))
    torch.testing.assert_close(
        buf.aux_targets[0].cpu(), torch.tensor([[0.0, 0.5], [0.0, 0.0], [1.0, -1.0], [1.0, -1.0]])
    )
    assert torch.isfinite(buf.rewards).all() and torch.isfinite(buf.aux_targets).all()
    # Counts are kept per rollout: reset zeroes them in place.
    held = counts["aux_targets"]
    buf.reset()
    assert held.tolist() == [0, 0]


def test_reward_limit_clamps_and_counts():
    buf = RolloutBuffer(1, 3, (1,), num_aux=0, reward_limit=2.0)
    step = random_steps(1, 3, (1,), 0)[0]
    step["rewards"] = torch.tensor([5.0, -3.0, 1.0])
    buf.add(**step)
    assert buf.rewards[0].tolist() == [2.0, -2.0, 1.0]
    assert buf.sanitize_counts["rewards"].tolist() == [0, 2]
    assert buf.aux_targets.shape == (1, 3, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size", [1, 7, 30, 64])
def test_minibatches_partition_the_rollout(device, batch_size):
    buf, _ = filled(device)
    buf.compute_returns_and_advantage(
        torch.zeros(N, device=device), torch.zeros(N, device=device), 0.99, 0.95
    )
    batches = list(buf.minibatches(batch_size, torch.Generator(device=device).manual_seed(3)))
    rows = T * N
    assert len(batches) == math.ceil(rows / batch_size)
    assert all(len(b.obs) == batch_size for b in batches[:-1])
    # Every transition exactly once: the values field identifies rows (random floats), and
    # every field of a row must come from the same (t, n).
    flat = {
        "obs": buf.obs.flatten(0, 1),
        "actions": buf.actions.flatten(0, 1),
        "old_logprobs": buf.logprobs.flatten(0, 1),
        "advantages": buf.advantages.flatten(0, 1),
        "returns": buf.returns.flatten(0, 1),
        "values": buf.values.flatten(0, 1),
        "aux_targets": buf.aux_targets.flatten(0, 1),
    }
    seen = []
    for batch in batches:
        for value in batch:
            assert value.is_contiguous() and value.device == buf.device
        # Locate each row by its value (the random values are distinct).
        idx = (batch.values[:, None] == flat["values"][None, :]).int().argmax(dim=1)
        for field, value in batch._asdict().items():
            torch.testing.assert_close(value, flat[field][idx], rtol=0, atol=0)
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(rows))


def test_minibatch_order_is_seeded_and_random():
    buf, _ = filled()
    buf.compute_returns_and_advantage(torch.zeros(N), torch.zeros(N))

    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([b.values for b in buf.minibatches(8, generator)])

    assert torch.equal(order(5), order(5))
    assert not torch.equal(order(5), order(6))
    assert not torch.equal(order(5), buf.values.flatten())


@pytest.mark.parametrize("device", DEVICES)
def test_reset_and_refill(device):
    buf, _ = filled(device)
    buf.reset()
    assert buf.pos == 0 and not buf.full
    with pytest.raises(RuntimeError, match="compute_returns_and_advantage"):
        next(buf.minibatches(4))
    steps = random_steps(device=device, seed=9)
    for i, step in enumerate(steps):
        buf.add(**step)
        assert buf.pos == i + 1
    torch.testing.assert_close(buf.obs[-1], steps[-1]["obs"], rtol=0, atol=0)


def test_properties_and_repr():
    buf = RolloutBuffer(4, 2, 3, num_aux=1, dtype=torch.float64)
    assert buf.obs_shape == (3,) and buf.num_steps == 4 and buf.num_envs == 2
    assert buf.num_aux == 1 and buf.dtype == torch.float64 and buf.device == torch.device("cpu")
    assert buf.obs.shape == (4, 2, 3) and buf.actions.dtype == torch.int64
    assert "RolloutBuffer(num_steps=4" in repr(buf)
    cont = RolloutBuffer(2, 2, (1,), action_shape=(3,), action_dtype=torch.float32)
    assert cont.actions.shape == (2, 2, 3) and cont.actions.dtype == torch.float32


# --- errors -----------------------------------------------------------------------------


def test_add_past_capacity():
    buf, steps = filled()
    with pytest.raises(RuntimeError, match=r"full \(6 steps\)"):
        buf.add(**steps[0])


def test_compute_before_full():
    buf = RolloutBuffer(T, N, OBS, num_aux=AUX)
    buf.add(**random_steps(steps=1)[0])
    with pytest.raises(RuntimeError, match="holds 1 of 6 steps"):
        buf.compute_returns_and_advantage(torch.zeros(N), torch.zeros(N))


def test_minibatches_before_compute_and_bad_batch_size():
    buf, _ = filled()
    with pytest.raises(RuntimeError, match="compute_returns_and_advantage"):
        next(buf.minibatches(4))
    buf.compute_returns_and_advantage(torch.zeros(N), torch.zeros(N))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            next(buf.minibatches(bad))


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("obs", torch.zeros(N, 3), ValueError, r"obs must have shape \(5, 3, 2\), got \(5, 3\)"),
        ("obs", torch.zeros(N + 1, 3, 2), ValueError, r"obs must have shape"),
        ("actions", torch.zeros(N, 2, dtype=torch.int64), ValueError, r"actions must have shape"),
        ("actions", torch.zeros(N), TypeError, r"actions must be Long, got Float"),
        ("logprobs", torch.zeros(N, 2), ValueError, r"logprobs must have shape \(5,\) or \(5, 1\)"),
        ("rewards", torch.zeros(N - 1), ValueError, r"rewards must have shape .* got \(4,\)"),
        ("rewards", torch.zeros(N, dtype=torch.float64), TypeError, r"rewards must be Float"),
        ("values", torch.zeros(N, dtype=torch.float16), TypeError, "values must be"),
        (
            "episode_starts",
            torch.zeros(N, dtype=torch.int32),
            TypeError,
            "episode_starts must be Float or Bool or Byte",
        ),
        ("aux_targets", torch.zeros(N, 3), ValueError, r"aux_targets must have shape \(5, 2\)"),
        ("obs", torch.zeros(N, 3, 2, dtype=torch.float64), TypeError, "obs must be Float"),
    ],
)
def test_add_rejects_mismatches(field, value, error, match):
    buf = RolloutBuffer(T, N, OBS, num_aux=AUX)
    step = random_steps(steps=1)[0]
    step[field] = value
    with pytest.raises(error, match=match):
        buf.add(**step)
    assert buf.pos == 0  # nothing was written


def test_compute_rejects_mismatches():
    buf, _ = filled()
    with pytest.raises(ValueError, match="last_values must have shape"):
        buf.compute_returns_and_advantage(torch.zeros(N + 1), torch.zeros(N))
    with pytest.raises(TypeError, match="last_values must be Float"):
        buf.compute_returns_and_advantage(torch.zeros(N, dtype=torch.float64), torch.zeros(N))
    with pytest.raises(ValueError, match="gamma"):
        buf.compute_returns_and_advantage(torch.zeros(N), torch.zeros(N), gamma=2.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_envs": -1}, ValueError, "num_envs"),
        ({"obs_shape": (0,)}, ValueError, "obs_shape"),
        ({"num_aux": -1}, ValueError, "num_aux"),
        ({"dtype": torch.float16}, TypeError, "dtype"),
        ({"aux_limit": -1.0}, ValueError, "aux_limit"),
        ({"reward_limit": float("nan")}, ValueError, "reward_limit"),
        ({"device": "meta"}, ValueError, "not supported"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    args = {"num_steps": T, "num_envs": N, "obs_shape": OBS, **kwargs}
    with pytest.raises(error, match=match):
        RolloutBuffer(**args)


@pytest.mark.cuda
def test_device_mismatch_is_named():
    buf = RolloutBuffer(T, N, OBS, device="cuda", num_aux=AUX)
    step = random_steps(steps=1, device="cuda")[0]
    step["rewards"] = step["rewards"].cpu()
    with pytest.raises(RuntimeError, match="rewards is on cpu but the buffer is on cuda:0"):
        buf.add(**step)
    assert buf.pos == 0
