"""Tests of the gradient guard (guard_gradients_, GradientGuard) and the output guard
(count_nonfinite, validate_outputs, the gradient of sanitize): kernels against pyppo.reference and
torch's clip_grad_norm_, exact counts, policies, a NaN-poisoned training run, bad inputs."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import DEVICES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pyppo import ops, reference
from pyppo.guard import GradientGuard, validate_outputs

CHUNK = 1 << 16  # kGuardChunk in csrc/guard.h: sizes around it cross chunk boundaries
NAN, INF = float("nan"), float("inf")
# Kernel and reference may differ by an ulp in the clip coefficient (summation order).
GRAD_TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}

SIZE_MIXES = [
    [],
    [0],
    [1],
    [0, 1, 0],
    [7, 3, 1000],
    [CHUNK, CHUNK + 1, 1],
    [3 * CHUNK + 5, 0, 31],
    [200_003, 1, 17, CHUNK - 1, 0, 4096],
]
DTYPE_MIXES = {
    "fp32": [torch.float32],
    "mixed": [torch.float32, torch.float16, torch.bfloat16],
    "with_fp64": [torch.float64, torch.float32, torch.bfloat16],
}


def adversarial(n: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    """Gradient-like values with NaN, +inf, -inf, -0.0, subnormals and large values."""
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
    if n:
        k = max(1, n // 500)
        big = 6e4 if dtype == torch.float16 else 1e15
        tiny = 1e-7 if dtype == torch.float16 else 1e-40
        for value in (NAN, INF, -INF, -0.0, tiny, big, -big):
            idx = torch.randint(0, n, (k,), generator=gen)
            x[idx] = value
    return x.to(dtype).to(device)


def make_grads(sizes, dtypes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [adversarial(n, dtypes[i % len(dtypes)], device, gen) for i, n in enumerate(sizes)]


def assert_guard_matches_reference(grads, group_ids, num_groups, max_norm, skip):
    expected_grads = [g.clone() for g in grads]
    got = ops.guard_gradients_(grads, group_ids, num_groups, max_norm, skip)
    expected = reference.guard_gradients_(expected_grads, group_ids, num_groups, max_norm, skip)
    counts, norms, total, coef = got
    assert counts.dtype == torch.int64 and counts.shape == (num_groups,)
    assert norms.dtype == total.dtype == coef.dtype == torch.float32
    torch.testing.assert_close(counts, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(norms, expected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, expected[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coef, expected[3], rtol=1e-5, atol=1e-7)
    for g, e in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, **GRAD_TOLERANCE[g.dtype])
    return got


# ---- guard_gradients_ against the reference ------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", SIZE_MIXES, ids=lambda s: "x".join(map(str, s)) or "none")
@pytest.mark.parametrize("dtypes", DTYPE_MIXES.values(), ids=DTYPE_MIXES.keys())
@pytest.mark.parametrize("max_norm", [0.1, INF], ids=["clip", "noclip"])
@pytest.mark.parametrize("skip", [False, True], ids=["zero", "skip"])
def test_guard_matches_reference(device, sizes, dtypes, max_norm, skip):
    grads = make_grads(sizes, dtypes, device)
    num_groups = 3
    group_ids = [i % num_groups for i in range(len(grads))]
    assert_guard_matches_reference(grads, group_ids, num_groups, max_norm, skip)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 5, 64, 1023, CHUNK - 3, CHUNK + 3, 2 * CHUNK + 1]),
            st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
            st.integers(0, 3),
        ),
        max_size=8,
    ),
    max_norm=st.sampled_from([0.0, 1e-3, 1.0, 1e3, INF]),
    skip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_guard_matches_reference_random(device, data, max_norm, skip, seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [adversarial(n, dtype, device, gen) for n, dtype, _ in data]
    group_ids = [gid for _, _, gid in data]
    assert_guard_matches_reference(grads, group_ids, 4, max_norm, skip)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_guard_equals_clip_grad_norm_on_finite_gradients(device, max_norm):
    gen = torch.Generator().manual_seed(1)
    sizes = [CHUNK * 2 + 9, 1, 300, 0, 5000]
    params = [nn.Parameter(torch.empty(n, device=device)) for n in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    grads = [p.grad.clone() for p in params]
    expected_total = nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    _, _, total, _ = ops.guard_gradients_(grads, [0] * len(grads), 1, max_norm)
    torch.testing.assert_close(total, expected_total, rtol=1e-5, atol=0)
    for g, p in zip(grads, params, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_exact_counts_of_planted_values(device, dtype):
    grads = [
        torch.ones(CHUNK + 10, dtype=dtype),
        torch.ones(5, dtype=dtype),
        torch.ones(3 * CHUNK, dtype=dtype),
        torch.zeros(0, dtype=dtype),
    ]
    grads[0][[0, 1, CHUNK - 1, CHUNK, CHUNK + 9]] = torch.tensor(
        [NAN, INF, -INF, NAN, NAN], dtype=dtype
    )
    grads[1][4] = -INF
    grads[2][:: CHUNK // 2] = NAN  # 6 NaN, two per chunk
    grads = [g.to(device) for g in grads]
    counts, norms, total, coef = ops.guard_gradients_(grads, [2, 0, 2, 1], 3, INF)
    assert counts.tolist() == [1, 0, 11]
    finite_elements = [CHUNK + 10 - 5, 5 - 1, 3 * CHUNK - 6]
    torch.testing.assert_close(
        norms.cpu(),
        torch.tensor(
            [math.sqrt(finite_elements[1]), 0.0, math.sqrt(finite_elements[0] + finite_elements[2])]
        ),
    )
    assert coef.item() == 1.0
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][[0, 1, CHUNK - 1, CHUNK]] == 0).all() and grads[0][2] == 1


@pytest.mark.parametrize("device", DEVICES)
def test_skip_policy_zeroes_everything_only_when_something_was_nonfinite(device):
    clean = [torch.full((100,), 3.0, device=device), torch.full((CHUNK + 1,), -2.0, device=device)]
    dirty = [g.clone() for g in clean]
    dirty[1][7] = NAN
    counts, _, _, coef = ops.guard_gradients_(dirty, [0, 1], 2, 1.0, skip_nonfinite=True)
    assert counts.tolist() == [0, 1]
    assert all((g == 0).all() for g in dirty)
    assert coef.item() < 1  # the coefficient is still reported
    counts, _, total, coef = ops.guard_gradients_(clean, [0, 1], 2, 1.0, skip_nonfinite=True)
    assert counts.tolist() == [0, 0]
    torch.testing.assert_close(clean[0], torch.full_like(clean[0], 3.0 * coef.item()))
    assert total.item() > 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_max_norm_zero_zeroes_gradients(device):
    grads = [torch.randn(1000, device=device)]
    _, _, _, coef = ops.guard_gradients_(grads, [0], 1, 0.0)
    assert coef.item() == 0.0 and (grads[0] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_overflowing_norm_gives_zero_coefficient_like_clip_grad_norm(device):
    grads = [torch.full((10,), 1e30, device=device)]  # squares overflow float32
    _, norms, total, coef = ops.guard_gradients_(grads, [0], 1, 1.0)
    assert math.isinf(total.item()) and math.isinf(norms[0].item())
    assert coef.item() == 0.0 and (grads[0] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_gradients_are_guarded_in_place(device):
    permuted = torch.randn(300, 400, device=device)
    permuted[5, 7] = NAN
    strided = torch.randn(300, 400, device=device)
    strided[5, 8] = INF
    # dense but permuted (guarded directly), and strided (guarded through a copy)
    grads = [permuted.t(), strided[:, ::2]]
    expected = [g.clone() for g in grads]
    counts, *_ = ops.guard_gradients_(grads, [0, 1], 2, 0.5)
    reference.guard_gradients_(expected, [0, 1], 2, 0.5)
    assert counts.tolist() == [1, 1]
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("max_norm", [0.1, INF], ids=["clip", "noclip"])
def test_views_into_one_flat_buffer_at_every_alignment(device, dtype, max_norm):
    # Gradients that share one flat buffer (as in bucketed or flattened optimizers) start at
    # any element offset, so the vectorized kernels must handle unaligned starts; the gaps
    # between the views must stay untouched.
    sizes = [1, 2, 3, 5, 7, CHUNK + 3, 13, 2 * CHUNK - 1, 4, 6, 1000]
    gap = 1
    flat = make_grads([sum(sizes) + gap * len(sizes)], [dtype], device, seed=21)[0]
    original = flat.clone()
    grads, offset, in_view = [], 0, torch.zeros(flat.numel(), dtype=torch.bool)
    for n in sizes:
        grads.append(flat[offset : offset + n])
        in_view[offset : offset + n] = True
        offset += n + gap
    assert {g.data_ptr() % 16 for g in grads} != {0}
    group_ids = [i % 3 for i in range(len(grads))]
    assert_guard_matches_reference(grads, group_ids, 3, max_norm, False)
    outside = (~in_view).to(device)
    assert torch.equal(flat[outside], original[outside])


@pytest.mark.parametrize("device", DEVICES)
def test_norms_are_deterministic(device):
    grads = make_grads([5 * CHUNK + 3, 1000, 70_001], [torch.float32, torch.bfloat16], device)
    original_threads = torch.get_num_threads()
    results = []
    try:
        for threads in (1, original_threads):
            torch.set_num_threads(threads)
            results.append(ops.guard_gradients_([g.clone() for g in grads], [0, 1, 0], 2, 0.5))
    finally:
        torch.set_num_threads(original_threads)
    results.append(ops.guard_gradients_([g.clone() for g in grads], [0, 1, 0], 2, 0.5))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_opcheck_guard_gradients():
    grads = make_grads([CHUNK + 3, 10, 0], [torch.float32, torch.float16], "cpu")
    torch.library.opcheck(
        torch.ops.pyppo.guard_gradients_.default, (grads, [0, 1, 1], 2, 0.5, False)
    )
    torch.library.opcheck(
        torch.ops.pyppo.guard_gradients_.default, (grads, [0, 1, 1], 2, 0.5, True)
    )
    torch.library.opcheck(torch.ops.pyppo.count_nonfinite.default, (grads,))


# ---- the member axis: a population's stacked gradients, each member guarded alone ---------


def member_grads(members: int, sizes, dtypes, device, seed=0):
    """Stacked gradients ``[members, n]``: member 1's are finite, member 2's are all NaN
    (when there are 3 members), the others adversarial."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for i, n in enumerate(sizes):
        dtype = dtypes[i % len(dtypes)]
        g = torch.stack([adversarial(n, dtype, device, gen) for _ in range(members)])
        if members >= 2:
            g[1] = (torch.randn(n, generator=gen) * 0.1).to(dtype).to(device)
        if members >= 3:
            g[2] = NAN
        grads.append(g)
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", DTYPE_MIXES.values(), ids=DTYPE_MIXES.keys())
@pytest.mark.parametrize("max_norm", [0.1, INF], ids=["clip", "noclip"])
@pytest.mark.parametrize("skip", [False, True], ids=["zero", "skip"])
def test_each_member_is_guarded_as_if_alone(device, dtypes, max_norm, skip):
    members, sizes, ids = 4, [CHUNK + 3, 10, 0, 300], [0, 1, 1, 2]
    grads = member_grads(members, sizes, dtypes, device)
    expected_grads = [g.clone() for g in grads]
    counts, norms, total, coef = ops.guard_gradients_(grads, ids, 3, max_norm, skip, members)
    want = reference.guard_gradients_(expected_grads, ids, 3, max_norm, skip, members)
    assert counts.shape == norms.shape == (members, 3) and total.shape == coef.shape == (members,)
    torch.testing.assert_close(counts, want[0], rtol=0, atol=0)
    torch.testing.assert_close(norms, want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, want[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coef, want[3], rtol=1e-5, atol=1e-7)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, **GRAD_TOLERANCE[g.dtype])
    # Member 1 had no NaN and member 2 nothing else: counted for themselves only.
    assert counts[1].sum() == 0 and counts[2].sum() == sum(n for n in sizes)
    # Each member equals guarding its slices alone (the op, one member at a time).
    for k in range(members):
        alone = [e[k].clone() for e in member_grads(members, sizes, dtypes, device)]
        got = ops.guard_gradients_(alone, ids, 3, max_norm, skip)
        assert torch.equal(got[0], counts[k])
        torch.testing.assert_close(got[3], coef[k], rtol=0, atol=0)
        for a, g in zip(alone, grads, strict=True):
            assert torch.equal(a, g[k])


@pytest.mark.parametrize("device", DEVICES)
def test_a_nan_in_one_member_leaves_the_others_bit_identical(device):
    grads = member_grads(3, [5000, 64], [torch.float32], device, seed=3)
    grads = [torch.stack([g[1], g[1], g[1]]) for g in grads]  # three finite members
    clean = [g.clone() for g in grads]
    for g in grads:
        g[2, ::7] = NAN
    counts, _, _, coef = ops.guard_gradients_(grads, [0, 1], 2, 0.05, True, 3)
    clean_counts, _, _, clean_coef = ops.guard_gradients_(clean, [0, 1], 2, 0.05, True, 3)
    assert counts[:2].sum() == 0 and counts[2].sum() > 0
    assert torch.equal(coef[:2], clean_coef[:2])
    for g, c in zip(grads, clean, strict=True):
        assert torch.equal(g[:2], c[:2]) and (g[2] == 0).all()  # skipped: its step only


def test_one_member_keeps_the_unbatched_shapes():
    out = ops.guard_gradients_([torch.randn(1, 5)], [0], 2, 1.0, False, 1)
    assert [tuple(t.shape) for t in out] == [(2,), (2,), (), ()]


def test_opcheck_guard_gradients_with_members():
    grads = member_grads(3, [CHUNK + 3, 10], [torch.float32, torch.float16], "cpu")
    torch.library.opcheck(
        torch.ops.pyppo.guard_gradients_.default, (grads, [0, 1], 2, 0.5, True, 3)
    )
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \[2, 10\]; with num_members = 3"):
        ops.guard_gradients_([grads[0], torch.zeros(2, 10)], [0, 1], 2, 0.5, False, 3)
    with pytest.raises(ValueError, match="num_members must be >= 1"):
        ops.guard_gradients_(grads, [0, 1], 2, 0.5, False, 0)


# ---- bad inputs ----------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    g = [torch.randn(4), torch.randn(3)]
    with pytest.raises(ValueError, match="one device"):
        ops.guard_gradients_([torch.randn(4), torch.randn(3, device="meta")], [0, 0], 1, 1.0)
    with pytest.raises(TypeError, match=r"grads\[1\] must be a float"):
        ops.guard_gradients_([torch.randn(4), torch.ones(3, dtype=torch.int64)], [0, 0], 1, 1.0)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        ops.guard_gradients_(g, [0, 0], 1, -1.0)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        ops.guard_gradients_(g, [0, 0], 1, NAN)
    with pytest.raises(ValueError, match=r"group_ids\[1\] = 2 is out of range"):
        ops.guard_gradients_(g, [0, 2], 2, 1.0)
    with pytest.raises(ValueError, match=r"group_ids\[0\] = -1 is out of range"):
        ops.guard_gradients_(g, [-1, 0], 2, 1.0)
    with pytest.raises(ValueError, match="2 gradients but 1 group ids"):
        ops.guard_gradients_(g, [0], 1, 1.0)
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        ops.guard_gradients_([], [], 0, 1.0)
    with pytest.raises(TypeError, match="must be a float"):
        ops.count_nonfinite([torch.ones(2, dtype=torch.int32)])
    with pytest.raises(ValueError, match="policy"):
        GradientGuard(nn.Linear(2, 2), policy="ignore")
    with pytest.raises(ValueError, match="max_norm"):
        GradientGuard(nn.Linear(2, 2), max_norm=-1)


@pytest.mark.cuda
def test_gradients_on_cpu_and_cuda_raise():
    with pytest.raises(ValueError, match="one device"):
        ops.guard_gradients_([torch.randn(4, device="cuda"), torch.randn(3)], [0, 0], 1, 1.0)


def test_empty_list_returns_neutral_result():
    counts, norms, total, coef = ops.guard_gradients_([], [], 2, 1.0)
    assert counts.tolist() == [0, 0] and norms.tolist() == [0.0, 0.0]
    assert total.item() == 0.0 and coef.item() == 1.0


# ---- count_nonfinite, validate_outputs, sanitize's gradient--------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", DTYPE_MIXES.values(), ids=DTYPE_MIXES.keys())
def test_count_nonfinite_matches_reference_and_reads_only(device, dtypes):
    xs = make_grads([0, 1, 7, CHUNK + 1, 3 * CHUNK], dtypes, device, seed=3)
    xs.append(make_grads([400], dtypes, device, seed=4)[0].view(20, 20).t())  # non-contiguous
    before = [x.clone() for x in xs]
    counts = ops.count_nonfinite(xs)
    assert counts.device.type == device
    torch.testing.assert_close(counts, reference.count_nonfinite(xs), rtol=0, atol=0)
    for x, b in zip(xs, before, strict=True):
        assert torch.equal(x.nan_to_num(), b.nan_to_num()) and torch.equal(x.isnan(), b.isnan())


@pytest.mark.parametrize("device", DEVICES)
def test_validate_outputs_logs_the_exact_message(device, caplog):
    outputs = {
        "pred_1h": torch.tensor([0.1, NAN, INF, 0.2], device=device),
        "pred_24h": torch.randn(8, device=device),
    }
    with caplog.at_level(logging.WARNING, logger="pyppo"):
        counts = validate_outputs(outputs)
    assert {k: int(v) for k, v in counts.items()} == {"pred_1h": 2, "pred_24h": 0}
    assert "Model output pred_1h contains NaN/inf" in caplog.text
    assert "pred_24h" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pyppo"):
        validate_outputs(outputs, log=False)
    assert caplog.text == ""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sanitize_forward_and_backward_match_reference(device, dtype):
    gen = torch.Generator().manual_seed(5)
    x = adversarial(3000, dtype, device, gen) * 10
    x[:4] = torch.tensor([1.0, -1.0, 1.5, -0.0])  # the limit itself passes the gradient
    upstream = torch.randn(3000, generator=gen).to(dtype).to(device)
    upstream[::7] = NAN  # NaN from upstream must not leak through masked places
    x_kernel = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    y, counts = ops.sanitize(x_kernel, 1.0)
    y_ref, counts_ref = reference.sanitize(x_ref, 1.0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(counts, counts_ref, rtol=0, atol=0)
    y.backward(upstream)
    y_ref.backward(upstream)
    torch.testing.assert_close(x_kernel.grad, x_ref.grad, rtol=0, atol=0, equal_nan=True)
    lim = torch.tensor(1.0, dtype=dtype).item()
    masked = ~(torch.isfinite(x) & (x.abs() <= lim))
    assert masked.any() and (x_kernel.grad[masked] == 0).all()
    passes = ~masked & ~upstream.isnan()
    assert torch.equal(x_kernel.grad[passes], upstream[passes])


def test_sanitize_gradcheck_and_opcheck():
    x = torch.tensor([0.3, -0.7, 2.5, -3.0, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.sanitize(t, 1.0)[0], (x,))
    torch.library.opcheck(torch.ops.pyppo.sanitize.default, (x, 1.0))


# ---- GradientGuard ---------------------------------------------------------------------------


class TinyActorCritic(nn.Module):
    """The shape of pyppo's TradingActorCritic: a trunk and four heads."""

    def __init__(self, n_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.actor = nn.Linear(hidden, 3)
        self.critic = nn.Linear(hidden, 1)
        self.aux_1h = nn.Linear(hidden, 1)
        self.aux_24h = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.actor(h), self.critic(h), self.aux_1h(h), self.aux_24h(h)


def plant_nan_in_grads(module: nn.Module) -> int:
    """Make every backward leave NaN/inf in module's parameter gradients, at fixed places;
    returns how many elements per backward."""
    positions = {"weight": [(0, 0), (0, 5), (0, 31)], "bias": [(0,)]}
    values = {"weight": NAN, "bias": INF}

    def make_hook(name):
        def hook(param):
            for pos in positions[name]:
                param.grad[pos] = values[name]

        return hook

    for name, param in module.named_parameters():
        param.register_post_accumulate_grad_hook(make_hook(name))
    return sum(len(p) for p in positions.values())


def training_loss(model, x, target):
    logits, value, pred_1h, pred_24h = model(x)
    return (
        logits.logsumexp(-1).mean()
        + (value - target).square().mean()
        + (pred_1h - target).square().mean()
        + (pred_24h - target).square().mean()
    )


@pytest.mark.parametrize("device", DEVICES)
def test_nan_poisoned_aux_head_trains_50_adam_steps(device, caplog):
    torch.manual_seed(0)
    model = TinyActorCritic().to(device)
    planted_per_step = plant_nan_in_grads(model.aux_1h)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = GradientGuard(model, max_norm=0.5)
    assert guard.groups == ("trunk", "actor", "critic", "aux_1h", "aux_24h")
    x, target = torch.randn(64, 8, device=device), torch.randn(64, 1, device=device)
    first_loss = training_loss(model, x, target).item()
    for _ in range(50):
        optimizer.zero_grad()
        training_loss(model, x, target).backward()
        report = guard.step()
        optimizer.step()
        assert report.counts_by_group() == {
            "trunk": 0,
            "actor": 0,
            "critic": 0,
            "aux_1h": planted_per_step,
            "aux_24h": 0,
        }
        assert report.clip_coef.item() <= 1.0 and not report.skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert guard.cumulative_counts() == {
        "trunk": 0,
        "actor": 0,
        "critic": 0,
        "aux_1h": 50 * planted_per_step,
        "aux_24h": 0,
    }
    assert training_loss(model, x, target).item() < first_loss  # it still learns
    with caplog.at_level(logging.WARNING, logger="pyppo"):
        assert guard.log_events() == {"aux_1h": 50 * planted_per_step}
        assert guard.log_events() == {}  # each event is logged once
    assert caplog.text.count("NaN/inf gradient detected in aux_1h") == 1
    assert "detected in trunk" not in caplog.text


@pytest.mark.parametrize("device", DEVICES)
def test_skip_policy_leaves_adam_parameters_untouched(device):
    torch.manual_seed(0)
    model = TinyActorCritic().to(device)
    plant_nan_in_grads(model.aux_24h)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = GradientGuard(model, max_norm=0.5, policy="skip")
    x, target = torch.randn(16, 8, device=device), torch.randn(16, 1, device=device)
    for _ in range(10):
        optimizer.zero_grad()
        training_loss(model, x, target).backward()
        report = guard.step()
        optimizer.step()
        assert bool(report.skipped)
    assert int(guard.skipped_steps) == 10
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_guard_groups_from_prefix_mapping():
    model = TinyActorCritic()
    model.temperature = nn.Parameter(torch.ones(()))
    guard = GradientGuard(model, groups={"aux_": "aux", "trunk.": "trunk", "trunk.2.": "trunk_out"})
    assert guard.groups == ("aux", "trunk", "trunk_out", "other")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.trunk[2].weight.grad[0, 0] = NAN
    model.aux_24h.bias.grad[0] = NAN
    model.temperature.grad.fill_(INF)
    report = guard.step()
    assert report.counts_by_group() == {"aux": 1, "trunk": 0, "trunk_out": 1, "other": 1}


def test_guard_logs_every_n_steps_and_skips_params_without_grad(caplog):
    model = TinyActorCritic()
    guard = GradientGuard(model, log_every=3)
    with caplog.at_level(logging.WARNING, logger="pyppo"):
        for step in range(6):
            model.zero_grad(set_to_none=True)
            model.critic.weight.grad = torch.full_like(model.critic.weight, NAN)  # only grad
            guard.step()
            expected_messages = (step + 1) // 3
            assert caplog.text.count("NaN/inf gradient detected in critic") == expected_messages
    assert guard.cumulative_counts()["critic"] == 6 * model.critic.weight.numel()


# ---- CUDA-only properties ------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_guard_never_synchronizes_with_the_host():
    model = TinyActorCritic().cuda()
    plant_nan_in_grads(model.aux_1h)
    guard = GradientGuard(model, max_norm=0.1, policy="skip")
    training_loss(
        model, torch.randn(4, 8, device="cuda"), torch.zeros(4, 1, device="cuda")
    ).backward()
    grads = make_grads([3 * CHUNK + 1, 5], [torch.float32, torch.bfloat16], "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.guard_gradients_(grads, [0, 1], 2, 0.5)
        ops.count_nonfinite(grads)
        guard.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_matches_cpu_and_is_bitwise_repeatable():
    sizes = [40 * CHUNK + 17, 3, 0, CHUNK, 123_457]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    cpu = make_grads(sizes, dtypes, "cpu", seed=9)
    gpu_runs = []
    for _ in range(3):
        gpu = [g.cuda() for g in cpu]
        gpu_runs.append((ops.guard_gradients_(gpu, [0, 1, 1, 2, 0], 3, 0.5), gpu))
    cpu_result = ops.guard_gradients_(cpu, [0, 1, 1, 2, 0], 3, 0.5)
    for a, b in zip(cpu_result, gpu_runs[0][0], strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)
    for results, grads in gpu_runs[1:]:
        for a, b in zip(gpu_runs[0][0], results, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(gpu_runs[0][1], grads, strict=True):
            assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("chunk", [1024, 1 << 20])
def test_cuda_chunk_sizes(chunk, monkeypatch):
    monkeypatch.setenv("PYPPO_GUARD_CUDA_CHUNK", str(chunk))
    sizes = [(1 << 20) + 3, 5, 3 * (1 << 20) - 1, 1023, 0]
    grads = make_grads(sizes, [torch.float32, torch.bfloat16, torch.float16], "cuda", seed=12)
    assert_guard_matches_reference(grads, [0, 1, 2, 0, 1], 3, 0.5, False)
    assert_guard_matches_reference(grads, [0, 1, 2, 0, 1], 3, INF, True)
    xs = make_grads(sizes, [torch.float32], "cuda", seed=13)
    torch.testing.assert_close(ops.count_nonfinite(xs), reference.count_nonfinite(xs))


@pytest.mark.cuda
def test_cuda_many_tensors_span_several_launches():
    sizes = [(i * 997) % 5000 + (CHUNK if i % 50 == 0 else 0) for i in range(300)]
    grads = make_grads(sizes, [torch.float32, torch.float16], "cuda", seed=11)
    assert_guard_matches_reference(grads, [i % 7 for i in range(300)], 7, 0.5, False)


@pytest.mark.cuda
def test_opcheck_cuda():
    grads = make_grads([CHUNK + 3, 10, 0], [torch.float32, torch.bfloat16], "cuda")
    torch.library.opcheck(
        torch.ops.pyppo.guard_gradients_.default, (grads, [0, 1, 1], 2, 0.5, True)
    )
    torch.library.opcheck(torch.ops.pyppo.count_nonfinite.default, (grads,))
    x = torch.randn(100, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.pyppo.sanitize.default, (x, 1.0))


def test_aliased_gradients_are_refused():
    g = torch.randn(100)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] share memory"):
        ops.guard_gradients_([g, g], [0, 0], 1, 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[2\] share memory"):
        ops.guard_gradients_([g[:60], torch.randn(3), g[50:]], [0, 0, 0], 1, 1.0)
    # Neighbouring views of one buffer (how flat gradient buffers are cut) are fine.
    counts = ops.guard_gradients_([g[:50], g[50:]], [0, 0], 1, 1.0)[0]
    assert counts.tolist() == [0]
