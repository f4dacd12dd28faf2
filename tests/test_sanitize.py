"""pyppo.ops.sanitize_ / sanitize against pyppo.reference.sanitize."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES, FLOAT_DTYPES, salted, same_bits
from hypothesis import given, settings
from hypothesis import strategies as st

from pyppo import ops, reference

SHAPES = [(0,), (1,), (7,), (33,), (1000,), (33, 17), (4, 5, 6), (3, 0, 2), (1 << 18,)]
LIMITS = [1.0, 0.3, 0.0, 1e6, float("inf")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("limit", LIMITS)
def test_matches_reference(device, dtype, shape, limit):
    x = salted(shape, dtype, device, limit=limit, seed=len(shape) + int(min(limit, 9) * 10))
    want_y, want_counts = reference.sanitize(x, limit)

    y, counts = ops.sanitize(x, limit)
    assert same_bits(y, want_y)
    assert counts.dtype == torch.int64 and counts.device == x.device
    assert counts.tolist() == want_counts.tolist()

    x_in_place = x.clone()
    counts = ops.sanitize_(x_in_place, limit)
    assert same_bits(x_in_place, want_y)
    assert counts.tolist() == want_counts.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_counts_are_exact_for_planted_values(device):
    x = torch.zeros(100_000, device=device)
    x[::1000] = float("nan")  # 100
    x[1::1000] = float("inf")  # 100
    x[2::2000] = -float("inf")  # 50
    x[3::500] = 7.0  # 200 clamped
    x[4::4000] = -1.5  # 25 clamped
    x[5::700] = 1.0  # exactly at the limit: untouched
    counts = ops.sanitize_(x, 1.0)
    assert counts.tolist() == [250, 225]
    assert torch.isfinite(x).all() and x.abs().max().item() == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_infinite_limit_only_zeroes_nonfinite(device):
    x = torch.tensor([1e30, -1e30, float("nan"), float("inf"), 3.0], device=device)
    y, counts = ops.sanitize(x, float("inf"))
    assert torch.equal(y, torch.tensor([1e30, -1e30, 0.0, 0.0, 3.0], device=device))
    assert counts.tolist() == [2, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_contiguous_input(device, dtype):
    base = salted((64, 50), dtype, device, seed=3)
    views = [base.t(), base[:, ::3], base[::2, 1:], base.unsqueeze(0).transpose(0, 2)]
    for view in views:
        want_y, want_counts = reference.sanitize(view, 1.0)
        y, counts = ops.sanitize(view, 1.0)
        assert y.is_contiguous() and same_bits(y, want_y)
        assert counts.tolist() == want_counts.tolist()

    # In place on a strided view: the view is sanitized, the rest of the base is untouched.
    x = base.clone()
    view = x[:, ::3]
    want_view, want_counts = reference.sanitize(view, 1.0)
    outside = x[:, 1::3].clone()
    counts = ops.sanitize_(view, 1.0)
    assert same_bits(x[:, ::3], want_view)
    assert torch.isnan(outside).any()  # the rest holds NaN and inf: sanitizing would show
    assert same_bits(x[:, 1::3], outside) and same_bits(x[:, 2::3], base[:, 2::3])
    assert counts.tolist() == want_counts.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_place_leaves_input_alone(device):
    x = salted((1000,), torch.float32, device, seed=5)
    before = x.clone()
    ops.sanitize(x, 1.0)
    assert torch.equal(torch.isnan(x), torch.isnan(before))
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=300),
    limit=st.one_of(st.floats(0, 2.0**127, width=32), st.just(math.inf)),
)
def test_hypothesis_float32(values, limit):
    x = torch.tensor(values, dtype=torch.float32)
    want_y, want_counts = reference.sanitize(x, limit)
    y, counts = ops.sanitize(x, limit)
    assert same_bits(y, want_y)
    assert counts.tolist() == want_counts.tolist()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_rejects_non_float_dtypes(dtype):
    x = torch.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        ops.sanitize_(x, 1.0)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        ops.sanitize(x, 1.0)


@pytest.mark.parametrize("limit", [-1.0, -0.5, float("nan"), -float("inf")])
def test_rejects_bad_limits(limit):
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        ops.sanitize_(x, limit)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        ops.sanitize(x, limit)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in FLOAT_DTYPES:
        x = salted((37, 5), dtype, device, seed=7)
        torch.library.opcheck(torch.ops.pyppo.sanitize_.default, (x.clone(), 1.0))
        torch.library.opcheck(torch.ops.pyppo.sanitize.default, (x, 0.5))


def test_torch_compile_matches_eager():
    def scaled_and_sanitized(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, counts = ops.sanitize(x * 2.0, 1.0)
        return y + 1.0, counts

    compiled = torch.compile(scaled_and_sanitized, fullgraph=True)
    x = salted((4096,), torch.float32, seed=11)
    want_y, want_counts = scaled_and_sanitized(x)
    y, counts = compiled(x)
    assert same_bits(y, want_y)
    assert counts.tolist() == want_counts.tolist()


@pytest.mark.cuda
def test_cuda_unaligned_and_large():
    # Offsets that break 16-byte alignment take the scalar path; a large tensor spans
    # many grid-stride iterations.
    base = salted((1 << 22) + 3, torch.float16, "cuda", seed=13)
    for x in (base[1:], base[3:], base):
        want_y, want_counts = reference.sanitize(x, 1.0)
        y, counts = ops.sanitize(x, 1.0)
        assert same_bits(y, want_y)
        assert counts.tolist() == want_counts.tolist()


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    x = salted((1 << 20,), torch.float32, "cuda", seed=17)
    want_y, want_counts = reference.sanitize(x, 1.0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = x.clone()
        counts = ops.sanitize_(y, 1.0)
    stream.synchronize()
    assert same_bits(y, want_y)
    assert counts.tolist() == want_counts.tolist()


def test_sanitize_in_place_on_a_tensor_autograd_saved_raises_at_backward():
    x = torch.tensor([0.5, 2.0, -3.0], requires_grad=True)
    y = x.exp()  # exp saves its output for backward
    ops.sanitize_(y, 1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.sanitize_(x, 1.0)
    # Where autograd needs nothing, it works as before (and under no_grad on a leaf).
    z = torch.tensor([float("nan"), 5.0])
    assert ops.sanitize_(z, 1.0).tolist() == [1, 1] and z.tolist() == [0.0, 1.0]
    with torch.no_grad():
        ops.sanitize_(x, 1.0)
    assert x.tolist() == [0.5, 1.0, -1.0]


def test_in_place_ops_refuse_what_autograd_forbids_as_torch_does():
    leaf = torch.tensor([0.5, float("nan"), 3.0], requires_grad=True)
    # torch's own in-place op, for comparison: the same refusal.
    with pytest.raises(RuntimeError, match="view of a leaf Variable that requires grad"):
        leaf[:2].clamp_(-1, 1)
    with pytest.raises(RuntimeError, match="view of a leaf Variable that requires grad"):
        ops.sanitize_(leaf[:2], 1.0)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.guard_gradients_([leaf], [0], 1, 1.0)
    assert torch.isnan(leaf[1])  # untouched


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda bad: ops.sanitize_(bad, 1.0), "x"),
        (lambda bad: ops.sanitize(bad, 1.0), "x"),
        (lambda bad: ops.count_nonfinite([torch.zeros(2), bad]), r"tensors\[1\]"),
        (lambda bad: ops.guard_gradients_([bad], [0], 1, 1.0), r"grads\[0\]"),
        (lambda bad: ops.gae(bad, *[torch.zeros(4, 2)] * 2, *[torch.zeros(2)] * 2), "rewards"),
    ],
)
@pytest.mark.parametrize("kind", ["None", "numpy", "sparse", "nested"])
def test_inputs_that_are_not_dense_tensors_are_a_type_error_naming_the_argument(
    call, argument, kind
):
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors announce they are a prototype
        bad = {
            "None": lambda: None,
            "numpy": lambda: np.zeros(3, dtype=np.float32),
            "sparse": lambda: torch.zeros(3).to_sparse(),
            "nested": lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]),
        }[kind]()
    with pytest.raises(TypeError, match=f"pyppo: {argument} "):
        call(bad)
