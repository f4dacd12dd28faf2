"""Benchmarks of pyppo's GAE op and RolloutBuffer against the obvious alternatives.

    python benchmarks/bench_gae.py [--device cuda] [--dtype float64] [--json out.json] [--quick]
    python benchmarks/bench_kernels.py --ops gae ...   # the same, from the kernel suite

Three tables (four on CUDA), medians of repeated timings:

1. ``gae`` at (T, N) = (128, 8), (2048, 64), (256, 1024), (2048, 4096) against
   - a NumPy loop over steps written the way Stable-Baselines3's
     ``RolloutBuffer.compute_returns_and_advantage`` writes it (CPU arrays, always), and
   - a plain copy of the same bytes: gae reads rewards, values and episode_starts and writes
     advantages and returns, i.e. 5 x T x N elements of traffic; the baseline is one
     ``dst.copy_(src)`` of 2.5 x T x N elements (2.5 read + 2.5 written), on the same device.
   Times are wall clock per synchronized call; on CUDA a second table times bursts of
   back-to-back calls with CUDA events, the device time that bandwidth is computed from.
   ``ops.gae`` allocates its two outputs on every call, and on the CPU a block of 128 KiB or
   more can come fresh from the OS (glibc's mmap threshold), so the kernel pays one page
   fault per 4 KiB of output; the copy writes into an existing tensor. So the table also
   times the same kernel writing into preallocated storage, through
   ``RolloutBuffer.compute_returns_and_advantage`` (what training runs).
2. ``RolloutBuffer.add`` per step against the same writes done from Python
   (``copy_`` into each storage row, ``pyppo.ops.sanitize_`` on rewards and aux targets and
   ``+=`` of their counts).
3. One epoch of ``RolloutBuffer.minibatches`` over a 2048 x 64 rollout with 64-dim
   observations in batches of 256 against the same ``randperm`` plus one plain
   ``index_select`` per field (7 fields) on the flattened storage.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
import torch
from common import (
    check_device,
    device_seconds_each,
    machine,
    median_seconds,
    print_machine,
    print_table,
    write_json,
)

import pyppo
from pyppo import ops

SHAPES = [(128, 8), (2048, 64), (256, 1024), (2048, 4096)]
GAMMA, LAMBDA = 0.99, 0.95


def adaptive_median(
    fn: Callable[[], object],
    device: torch.device,
    min_time: float = 0.3,
    min_repeats: int = 7,
    max_repeats: int = 500,
) -> float:
    """Median seconds per call of `fn` over about `min_time` seconds of calls (at least
    `min_repeats`, at most `max_repeats`). The shapes span four orders of magnitude: a
    fixed count would be either a handful of microsecond calls, mostly scheduler noise, or
    far too long at the large ones."""
    # One call, after the same two warm-up calls, says how many fit in min_time.
    once = median_seconds(fn, device=device.type, repeats=1, warmup=2)
    repeats = min(max_repeats, max(min_repeats, round(min_time / max(once, 1e-9))))
    return median_seconds(fn, device=device.type, repeats=repeats, warmup=0)


def sb3_style_gae(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    """GAE as a NumPy loop over steps, in the style of Stable-Baselines3's rollout buffer:
    one vectorized statement per step across envs, float32 arrays."""
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last_gae_lam = 0
    for step in reversed(range(num_steps)):
        if step == num_steps - 1:
            next_non_terminal = 1.0 - dones.astype(np.float32)
            next_values = last_values
        else:
            next_non_terminal = 1.0 - episode_starts[step + 1]
            next_values = values[step + 1]
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * gae_lambda * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
    returns = advantages + values
    return advantages, returns


def filled_buffer(rewards, values, episode_starts, dtype) -> pyppo.RolloutBuffer:
    """A RolloutBuffer holding this rollout (1-dim observations, no auxiliary targets)."""
    steps, envs = rewards.shape
    device = rewards.device
    buf = pyppo.RolloutBuffer(steps, envs, (1,), device=device, num_aux=0, dtype=dtype)
    obs = torch.zeros(envs, 1, dtype=dtype, device=device)
    actions = torch.zeros(envs, dtype=torch.long, device=device)
    for t in range(steps):
        buf.add(obs, actions, values[t], rewards[t], values[t], episode_starts[t])
    return buf


def bench_gae(device: torch.device, dtype: torch.dtype, shapes) -> list[dict]:
    rows = []
    for steps, envs in shapes:
        g = torch.Generator().manual_seed(0)
        r = torch.randn(steps, envs, generator=g, dtype=dtype)
        v = torch.randn(steps, envs, generator=g, dtype=dtype)
        s = (torch.rand(steps, envs, generator=g) < 0.01).to(dtype)
        lv = torch.randn(envs, generator=g, dtype=dtype)
        ls = torch.zeros(envs, dtype=dtype)
        np_args = [x.numpy() for x in (r, v, s, lv, ls)]
        t_numpy = adaptive_median(
            lambda a=np_args: sb3_style_gae(*a, GAMMA, LAMBDA),
            torch.device("cpu"),
            min_time=0.2,
            min_repeats=3,
        )
        # The two must agree, or the comparison is meaningless.
        adv_np, _ = sb3_style_gae(*np_args, GAMMA, LAMBDA)

        dev = [x.to(device) for x in (r, v, s, lv, ls)]
        t_gae = adaptive_median(lambda d=dev: ops.gae(*d, GAMMA, LAMBDA), device)
        adv, _ = ops.gae(*dev, GAMMA, LAMBDA)
        np.testing.assert_allclose(adv.cpu().numpy(), adv_np, rtol=1e-3, atol=1e-3)

        # The same kernel writing into preallocated storage, as the copy does and as training
        # does (RolloutBuffer.compute_returns_and_advantage): no fresh outputs to fault in.
        buf = filled_buffer(*dev[:3], dtype)
        t_into = adaptive_median(
            lambda b=buf, d=dev: b.compute_returns_and_advantage(d[3], d[4], GAMMA, LAMBDA),
            device,
        )
        np.testing.assert_allclose(buf.advantages.cpu().numpy(), adv_np, rtol=1e-3, atol=1e-3)

        elems = steps * envs * 5 // 2  # 2.5 T N elements read + 2.5 T N written
        src = torch.randn(elems, dtype=dtype, device=device)
        dst = torch.empty_like(src)
        t_copy = adaptive_median(lambda d=dst, s=src: d.copy_(s), device)
        traffic = 5 * steps * envs * r.element_size()
        row = {}
        if device.type == "cuda":
            # Bandwidth is a device measure: back-to-back calls timed with CUDA events.
            dev_t = device_seconds_each(
                {
                    "gae": lambda d=dev: ops.gae(*d, GAMMA, LAMBDA),
                    "copy": lambda d=dst, s=src: d.copy_(s),
                }
            )
            row = {
                "gae_device_s": dev_t["gae"],
                "copy_device_s": dev_t["copy"],
                "gae_device_GBps": traffic / dev_t["gae"] / 1e9,
                "copy_device_GBps": traffic / dev_t["copy"] / 1e9,
                "bandwidth_vs_copy": dev_t["copy"] / dev_t["gae"],
            }
        rows.append(
            {
                "T": steps,
                "N": envs,
                "gae_s": t_gae,
                "gae_into_buffer_s": t_into,
                "into_over_copy": t_into / t_copy,
                "numpy_sb3_s": t_numpy,
                "copy_s": t_copy,
                "speedup_vs_numpy": t_numpy / t_gae,
                "gae_over_copy": t_gae / t_copy,
                "gae_GBps": traffic / t_gae / 1e9,
                "copy_GBps": traffic / t_copy / 1e9,
                **row,
            }
        )
    return rows


def rollout_inputs(steps, envs, obs_dim, num_aux, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        rewards = torch.randn(envs, generator=g, dtype=dtype)
        rewards[0] = float("nan")  # something for the sanitizer to do
        out.append(
            dict(
                obs=torch.randn(envs, obs_dim, generator=g, dtype=dtype),
                actions=torch.randint(0, 3, (envs,), generator=g),
                logprobs=torch.randn(envs, generator=g, dtype=dtype),
                rewards=rewards,
                values=torch.randn(envs, generator=g, dtype=dtype),
                episode_starts=torch.rand(envs, generator=g) < 0.01,
                aux_targets=torch.randn(envs, num_aux, generator=g, dtype=dtype),
            )
        )
    return [{k: x.to(device) for k, x in step.items()} for step in out]


def bench_add(
    device: torch.device, dtype: torch.dtype, steps=256, envs=64, obs_dim=64, num_aux=2
) -> dict:
    inputs = rollout_inputs(steps, envs, obs_dim, num_aux, device, dtype)
    buf = pyppo.RolloutBuffer(steps, envs, (obs_dim,), device=device, num_aux=num_aux, dtype=dtype)

    def fill_buffer():
        buf.reset()
        for step in inputs:
            buf.add(**step)

    # The same writes from Python, into the same kind of preallocated storage.
    store = {
        k: torch.zeros(steps, *x.shape, dtype=x.dtype, device=device) for k, x in inputs[0].items()
    }
    store["episode_starts"] = torch.zeros(steps, envs, dtype=dtype, device=device)
    counts = {
        k: torch.zeros(2, dtype=torch.int64, device=device) for k in ("rewards", "aux_targets")
    }

    def fill_python():
        for c in counts.values():
            c.zero_()
        for t, step in enumerate(inputs):
            for k in ("obs", "actions", "logprobs", "values", "episode_starts"):
                store[k][t].copy_(step[k])
            store["rewards"][t].copy_(step["rewards"])
            counts["rewards"] += ops.sanitize_(store["rewards"][t], math.inf)
            store["aux_targets"][t].copy_(step["aux_targets"])
            counts["aux_targets"] += ops.sanitize_(store["aux_targets"][t], 1.0)

    t_buf = adaptive_median(fill_buffer, device, min_repeats=5) / steps
    t_py = adaptive_median(fill_python, device, min_repeats=5) / steps
    assert torch.equal(buf.rewards, store["rewards"]) and torch.equal(
        buf.sanitize_counts["aux_targets"], counts["aux_targets"]
    )
    return {
        "steps": steps,
        "N": envs,
        "obs_dim": obs_dim,
        "add_s": t_buf,
        "python_writes_s": t_py,
        "add_over_python": t_buf / t_py,
    }


def bench_minibatches(
    device: torch.device,
    dtype: torch.dtype,
    steps=2048,
    envs=64,
    obs_dim=64,
    batch_size=256,
    num_aux=2,
) -> dict:
    buf = pyppo.RolloutBuffer(steps, envs, (obs_dim,), device=device, num_aux=num_aux, dtype=dtype)
    for step in rollout_inputs(1, envs, obs_dim, num_aux, device, dtype) * steps:
        buf.add(**step)
    buf.obs.copy_(torch.randn(buf.obs.shape, dtype=dtype))
    buf.compute_returns_and_advantage(
        torch.zeros(envs, dtype=dtype, device=device), torch.zeros(envs, dtype=dtype, device=device)
    )
    gen = torch.Generator(device=device).manual_seed(0)

    def epoch_buffer():
        return list(buf.minibatches(batch_size, gen))[-1]

    fields = [
        x.flatten(0, 1)
        for x in (
            buf.obs,
            buf.actions,
            buf.logprobs,
            buf.advantages,
            buf.returns,
            buf.values,
            buf.aux_targets,
        )
    ]
    rows = steps * envs

    def epoch_index_select():
        order = torch.randperm(rows, generator=gen, device=device)
        for start in range(0, rows, batch_size):
            idx = order[start : start + batch_size]
            batch = [f.index_select(0, idx) for f in fields]
        return batch

    t_buf = adaptive_median(epoch_buffer, device, min_repeats=5)
    t_sel = adaptive_median(epoch_index_select, device, min_repeats=5)
    return {
        "T": steps,
        "N": envs,
        "obs_dim": obs_dim,
        "batch_size": batch_size,
        "minibatches_s": t_buf,
        "index_select_s": t_sel,
        "ratio": t_buf / t_sel,
    }


def run(args: argparse.Namespace) -> dict:
    """All three benchmarks, each printed as a table; uses args.device, dtype (a name,
    float32 or float64) and quick."""
    device = torch.device(args.device)
    if device.type == "cuda":
        # With its index, so that the buffer's device checks see the same device as ours.
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, args.dtype)
    shapes = SHAPES[:-1] if args.quick else SHAPES

    gae_rows = bench_gae(device, dtype, shapes)
    print_table(
        f"gae ({device}, {args.dtype}, medians; copy = one copy_ moving the same 5*T*N "
        "elements of traffic; 'into buffer' = the same kernel writing preallocated storage)",
        [
            "T x N",
            "gae us",
            "into buffer us",
            "numpy SB3 us",
            "copy us",
            "vs numpy",
            "/ copy",
            "into / copy",
            "gae GB/s",
            "copy GB/s",
        ],
        [
            [
                f"{r['T']} x {r['N']}",
                r["gae_s"] * 1e6,
                r["gae_into_buffer_s"] * 1e6,
                r["numpy_sb3_s"] * 1e6,
                r["copy_s"] * 1e6,
                f"{r['speedup_vs_numpy']:.0f}x",
                f"{r['gae_over_copy']:.2f}x",
                f"{r['into_over_copy']:.2f}x",
                r["gae_GBps"],
                r["copy_GBps"],
            ]
            for r in gae_rows
        ],
    )

    if device.type == "cuda":
        print_table(
            "gae on the device: back-to-back calls timed with CUDA events (launch overhead "
            "hidden), medians; bandwidth = the same 5*T*N elements of traffic / time",
            ["T x N", "gae us", "copy us", "gae GB/s", "copy GB/s", "gae / copy bandwidth"],
            [
                [
                    f"{r['T']} x {r['N']}",
                    r["gae_device_s"] * 1e6,
                    r["copy_device_s"] * 1e6,
                    r["gae_device_GBps"],
                    r["copy_device_GBps"],
                    f"{r['bandwidth_vs_copy']:.0%}",
                ]
                for r in gae_rows
            ],
        )

    add = bench_add(device, dtype)
    print_table(
        f"RolloutBuffer.add per step (N={add['N']}, obs {add['obs_dim']}, medians) vs the same "
        "writes from Python",
        ["add us", "Python writes us", "add / Python"],
        [[add["add_s"] * 1e6, add["python_writes_s"] * 1e6, f"{add['add_over_python']:.2f}x"]],
    )

    mb = bench_minibatches(device, dtype)
    print_table(
        f"one minibatch epoch ({mb['T']}x{mb['N']}, obs {mb['obs_dim']}, batch "
        f"{mb['batch_size']}, medians) vs randperm + index_select of 7 fields",
        ["minibatches ms", "index_select ms", "ratio"],
        [[mb["minibatches_s"] * 1e3, mb["index_select_s"] * 1e3, f"{mb['ratio']:.2f}x"]],
    )
    return {
        "device": str(device),
        "dtype": args.dtype,
        "gae": gae_rows,
        "add": add,
        "minibatches": mb,
    }


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options only this benchmark has (bench_kernels.py offers them too)."""
    parser.add_argument("--quick", action="store_true", help="skip (T, N) = (2048, 4096)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    add_options(parser)
    args = parser.parse_args()
    check_device(parser, args.device)

    info = machine(args.device)
    print_machine(info)
    write_json(args.json, {"machine": info, **run(args)})


if __name__ == "__main__":
    main()
