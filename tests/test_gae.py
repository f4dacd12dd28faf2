"""pyppo.ops.gae against pyppo.reference.gae (the plain loop; the contract is in
docs/design.md, "Kernel contracts")."""

from __future__ import annotations

import pytest
import torch

from pyppo import ops, reference

BOUNDARIES = ["random", "first", "last", "every", "none"]


def make_rollout(
    steps: int,
    envs: int,
    boundaries: str = "random",
    dtype: torch.dtype = torch.float32,
    start_dtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
):
    """A random rollout with episode starts placed as `boundaries` says."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(steps, envs, generator=g, dtype=torch.float64)
    values = torch.randn(steps, envs, generator=g, dtype=torch.float64)
    last_values = torch.randn(envs, generator=g, dtype=torch.float64)
    starts = torch.zeros(steps, envs, dtype=torch.bool)
    last_starts = torch.zeros(envs, dtype=torch.bool)
    if boundaries == "random":
        starts = torch.rand(steps, envs, generator=g) < 0.1
        last_starts = torch.rand(envs, generator=g) < 0.3
    elif boundaries == "first":
        starts[0] = True
    elif boundaries == "last":
        starts[-1] = True
        last_starts[:] = True
    elif boundaries == "every":
        starts[:] = True
        last_starts[:] = True
    start_dtype = start_dtype or dtype
    return tuple(
        x.to(device)
        for x in (
            rewards.to(dtype),
            values.to(dtype),
            starts.to(start_dtype),
            last_values.to(dtype),
            last_starts.to(start_dtype),
        )
    )


def tolerances(dtype: torch.dtype, steps: int) -> dict:
    # The kernels follow the reference's operation order; on CUDA the compiler fuses
    # multiply-adds and the chunked scan re-associates, so allow error growing with T.
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10 * steps}
    return {"rtol": 1e-5, "atol": 1e-5 * max(1, steps) ** 0.5}


def check_against_reference(args, gamma: float, lam: float) -> None:
    adv, ret = ops.gae(*args, gamma, lam)
    cpu_args = [a.cpu() for a in args]
    ref_adv, ref_ret = reference.gae(*cpu_args, gamma, lam)
    tol = tolerances(args[0].dtype, args[0].shape[0])
    torch.testing.assert_close(adv.cpu(), ref_adv, **tol)
    torch.testing.assert_close(ret.cpu(), ref_ret, **tol)
    assert adv.shape == args[0].shape and adv.dtype == args[0].dtype
    assert adv.is_contiguous() and ret.is_contiguous()


@pytest.mark.parametrize("boundaries", BOUNDARIES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (64, 3), (130, 37), (33, 100)])
def test_matches_reference(shape, boundaries):
    check_against_reference(make_rollout(*shape, boundaries), 0.99, 0.95)


@pytest.mark.parametrize(
    "gamma, lam", [(0.0, 0.95), (0.99, 0.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
)
@pytest.mark.parametrize("boundaries", ["random", "none"])
def test_gamma_lambda_extremes(gamma, lam, boundaries):
    check_against_reference(make_rollout(40, 19, boundaries, seed=1), gamma, lam)


@pytest.mark.parametrize("start_dtype", [torch.float64, torch.bool, torch.uint8])
@pytest.mark.parametrize("boundaries", BOUNDARIES)
def test_float64(start_dtype, boundaries):
    args = make_rollout(70, 21, boundaries, dtype=torch.float64, start_dtype=start_dtype)
    check_against_reference(args, 0.97, 0.9)


@pytest.mark.parametrize("start_dtype", [torch.bool, torch.uint8])
def test_integral_starts_equal_float_starts(start_dtype):
    float_args = make_rollout(50, 13)
    int_args = make_rollout(50, 13, start_dtype=start_dtype)
    for a, b in zip(ops.gae(*float_args, 0.99, 0.95), ops.gae(*int_args, 0.99, 0.95), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_uint8_nonzero_means_start():
    r, v, s, lv, ls = make_rollout(20, 5, start_dtype=torch.uint8)
    expected = ops.gae(r, v, s, lv, ls)
    got = ops.gae(r, v, s * 7, lv, ls * 3)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mixed_start_dtypes_and_noncontiguous_inputs():
    r, v, s, lv, ls = make_rollout(30, 8, start_dtype=torch.bool)
    # Transposed storage: the op makes its inputs contiguous.
    rt, vt = r.t().contiguous().t(), v.t().contiguous().t()
    assert not rt.is_contiguous()
    adv, ret = ops.gae(rt, vt, s, lv, ls.float(), 0.9, 0.8)
    ref_adv, ref_ret = reference.gae(r, v, s, lv, ls, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_known_values_by_hand():
    # One env, 3 steps, episode boundary before step 2; gamma = 0.5, lambda = 1.
    rewards = torch.tensor([[1.0], [2.0], [4.0]])
    values = torch.tensor([[0.5], [1.0], [2.0]])
    starts = torch.tensor([[1.0], [0.0], [1.0]])
    last_values = torch.tensor([8.0])
    last_starts = torch.tensor([0.0])
    adv, ret = ops.gae(rewards, values, starts, last_values, last_starts, 0.5, 1.0)
    # t=2: delta = 4 + 0.5*8 - 2 = 6; adv = 6
    # t=1: next step starts an episode -> delta = 2 - 1 = 1; adv = 1
    # t=0: delta = 1 + 0.5*1 - 0.5 = 1; adv = 1 + 0.5*1 = 1.5
    torch.testing.assert_close(adv, torch.tensor([[1.5], [1.0], [6.0]]))
    torch.testing.assert_close(ret, adv + values)


def test_empty_rollouts():
    for steps, envs in [(0, 4), (5, 0)]:
        r, v, s, lv, ls = (torch.zeros(steps, envs),) * 3 + (torch.zeros(envs),) * 2
        adv, ret = ops.gae(r, v, s, lv, ls)
        assert adv.shape == (steps, envs) and ret.shape == (steps, envs)


def test_opcheck():
    for args in (
        make_rollout(17, 5),
        make_rollout(8, 3, dtype=torch.float64, start_dtype=torch.bool),
    ):
        torch.library.opcheck(torch.ops.pyppo.gae.default, (*args, 0.99, 0.95))


def test_torch_compile():
    args = make_rollout(12, 4)
    compiled = torch.compile(lambda *a: ops.gae(*a, 0.99, 0.95), fullgraph=True, backend="eager")
    for a, b in zip(compiled(*args), ops.gae(*args, 0.99, 0.95), strict=True):
        torch.testing.assert_close(a, b)


def _bad(**changes):
    args = dict(
        rewards=torch.zeros(4, 3),
        values=torch.zeros(4, 3),
        episode_starts=torch.zeros(4, 3),
        last_values=torch.zeros(3),
        last_episode_starts=torch.zeros(3),
        gamma=0.99,
        gae_lambda=0.95,
    )
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"rewards": torch.zeros(4, 3, dtype=torch.float16)}, TypeError, "rewards must be"),
        ({"values": torch.zeros(4, 3, dtype=torch.float64)}, TypeError, "values must have"),
        ({"last_values": torch.zeros(3, dtype=torch.float64)}, TypeError, "last_values"),
        ({"episode_starts": torch.zeros(4, 3, dtype=torch.int32)}, TypeError, "episode_starts"),
        (
            {"last_episode_starts": torch.zeros(3, dtype=torch.float64)},
            TypeError,
            "last_episode_starts",
        ),
        (
            {
                "rewards": torch.zeros(12),
                "values": torch.zeros(12),
                "episode_starts": torch.zeros(12),
            },
            ValueError,
            r"\(T, N\)",
        ),
        ({"values": torch.zeros(4, 2)}, ValueError, r"values must have shape \[4, 3\]"),
        ({"episode_starts": torch.zeros(3, 3)}, ValueError, "episode_starts must have shape"),
        ({"last_values": torch.zeros(4)}, ValueError, r"last_values must have shape \[3\]"),
        ({"last_episode_starts": torch.zeros(3, 1)}, ValueError, "last_episode_starts must"),
        ({"gamma": 1.5}, ValueError, "gamma"),
        ({"gamma": float("nan")}, ValueError, "gamma"),
        ({"gae_lambda": -0.1}, ValueError, "gae_lambda"),
    ],
)
def test_bad_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        ops.gae(**_bad(**changes))


@pytest.mark.cuda
def test_devices_must_match():
    with pytest.raises(RuntimeError, match="last_values is on"):
        ops.gae(
            **_bad(
                rewards=torch.zeros(4, 3, device="cuda"),
                values=torch.zeros(4, 3, device="cuda"),
                episode_starts=torch.zeros(4, 3, device="cuda"),
            )
        )


@pytest.mark.cuda
@pytest.mark.parametrize("boundaries", BOUNDARIES)
@pytest.mark.parametrize(
    "shape",
    # (1, 1) and (9, 1): the per-env scan; (4096, 1) ... (2048, 64): chunked scans with
    # ragged last chunks; (64, 70000): few chunks of many envs.
    [(1, 1), (9, 1), (4096, 1), (1000, 3), (2048, 64), (257, 1000), (64, 70000)],
)
def test_cuda_matches_reference(shape, boundaries):
    check_against_reference(make_rollout(*shape, boundaries, device="cuda"), 0.99, 0.95)


@pytest.mark.cuda
@pytest.mark.parametrize("start_dtype", [None, torch.bool, torch.uint8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)])
def test_cuda_dtypes_and_extremes(dtype, start_dtype, gamma, lam):
    args = make_rollout(1500, 5, dtype=dtype, start_dtype=start_dtype, device="cuda")
    check_against_reference(args, gamma, lam)


@pytest.mark.cuda
def test_cuda_opcheck():
    torch.library.opcheck(
        torch.ops.pyppo.gae.default, (*make_rollout(300, 7, device="cuda"), 0.99, 0.95)
    )
