"""Typed Python entry points to pyppo's kernels (``torch.ops.pyppo.*``).

Each op dispatches on the device of its inputs to the CPU or CUDA kernel, has a fake
(meta) implementation so that it traces under ``torch.compile``, and has a pure-torch
twin in :mod:`pyppo.reference` that states exactly what it computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

import pyppo._extension  # noqa: F401  (loads the kernels and registers the op schemas)

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def sanitize_(x: Tensor, limit: float = 1.0) -> Tensor:
    """Sanitize ``x`` in place: NaN/+inf/-inf become 0, finite values are clamped to
    ``[-limit, limit]`` (``limit`` rounded to ``x``'s dtype).

    Returns an int64 tensor ``[nonfinite, clamped]`` on ``x``'s device; reading it is the
    only host synchronisation. ``limit=float("inf")`` only zeroes non-finite values.
    Works for float32/64, float16 and bfloat16 of any shape, contiguous or not. Like
    torch's in-place ops it refuses a leaf that requires grad, and a backward pass that
    needs ``x``'s old values raises.
    """
    _check_dense(x, "x")
    _check_writable(x, "x", "use ops.sanitize(x), which returns a new tensor")
    counts = torch.ops.pyppo.sanitize_.default(x, float(limit))
    # Tell autograd that x changed, as torch's own in-place ops do: a backward pass that needs
    # the old x (e.g. y = x.exp(); sanitize_(y)) then raises instead of using the new values.
    if not x.is_inference() and not torch.compiler.is_compiling():
        torch.autograd.graph.increment_version(x)
    return counts


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """Out-of-place :func:`sanitize_`: returns ``(y, counts)`` and leaves ``x`` untouched.
    ``y`` is contiguous.

    Differentiable, so it also guards model outputs (:func:`pyppo.guard.guard_outputs`): the
    gradient passes unchanged where ``x`` was finite and inside ``[-limit, limit]`` and is
    exactly 0 elsewhere, so a NaN arriving from upstream at a repaired place is never
    propagated. (The gradient is registered in C++, ``csrc/sanitize_autograd.cpp``: models
    call this in every forward pass.)"""
    _check_dense(x, "x")
    return torch.ops.pyppo.sanitize.default(x, float(limit))


def _check_dense(x: object, name: str) -> None:
    """A ``TypeError`` naming the argument unless ``x`` is a dense (strided) tensor."""
    if not isinstance(x, Tensor):
        hint = " (convert it with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
        raise TypeError(f"pyppo: {name} must be a torch.Tensor, got {type(x).__name__}{hint}")
    if x.is_nested:
        raise TypeError(f"pyppo: {name} is a nested tensor; pass a dense (strided) tensor")
    if x.layout != torch.strided:
        raise TypeError(
            f"pyppo: {name} has layout {x.layout}; pass a dense (strided) tensor, e.g. "
            f"{name}.to_dense()"
        )


def _check_writable(x: Tensor, name: str, instead: str) -> None:
    """Refuse an in-place change that autograd forbids, with torch's own words: a leaf that
    requires grad, or a view of one."""
    if not (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return
    if x.is_leaf:
        what = "a leaf Variable that requires grad"
    elif x._base is not None and x._base.is_leaf and x._base.requires_grad:
        what = "a view of a leaf Variable that requires grad"
    else:
        return
    raise RuntimeError(
        f"pyppo: {name} is {what} and is being used in an in-place operation; {instead}"
    )


def _check_float(x: Tensor, name: str) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"pyppo: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}"
        )


@torch.library.register_fake("pyppo::sanitize_")
def _sanitize_inplace_fake(x: Tensor, limit: float) -> Tensor:
    _check_float(x, "x")
    return x.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("pyppo::sanitize")
def _sanitize_fake(x: Tensor, limit: float) -> tuple[Tensor, Tensor]:
    _check_float(x, "x")
    return x.new_empty(x.shape), x.new_empty(2, dtype=torch.int64)


def gae(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_episode_starts: Tensor,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over a ``(T, N)`` rollout; returns
    ``(advantages, returns)``, both ``(T, N)`` and contiguous.

    The Stable-Baselines3 / CleanRL convention (see :func:`pyppo.reference.gae`):
    ``episode_starts[t, n]`` marks that observation ``t`` of env ``n`` begins an episode;
    ``last_values`` and ``last_episode_starts`` (shape ``(N,)``) bootstrap the step after
    ``T - 1``. ``rewards``, ``values`` and ``last_values`` are all float32 or all float64
    (the math runs in that dtype); the two start tensors may be that dtype (used as numbers,
    ``next_nonterminal = 1 - start``) or bool / uint8 (nonzero = a start). ``gamma`` and
    ``gae_lambda`` must lie in ``[0, 1]``. All tensors on one device.
    """
    arguments = (rewards, values, episode_starts, last_values, last_episode_starts)
    names = ("rewards", "values", "episode_starts", "last_values", "last_episode_starts")
    for tensor, name in zip(arguments, names, strict=True):
        _check_dense(tensor, name)
    return torch.ops.pyppo.gae.default(
        rewards,
        values,
        episode_starts,
        last_values,
        last_episode_starts,
        float(gamma),
        float(gae_lambda),
    )


@torch.library.register_fake("pyppo::gae")
def _gae_fake(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_episode_starts: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    if rewards.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pyppo.gae: rewards must be float32 or float64, got {rewards.dtype}")
    if rewards.dim() != 2:
        raise ValueError(f"pyppo.gae: rewards must be a (T, N) tensor, got shape {rewards.shape}")
    return rewards.new_empty(rewards.shape), rewards.new_empty(rewards.shape)


# ---- gradient guard ----------------------------------------------------------------------


def guard_gradients_(
    grads: list[Tensor],
    group_ids: list[int],
    num_groups: int,
    max_norm: float,
    skip_nonfinite: bool = False,
    num_members: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Guard a list of gradients in place, in one fused multi-tensor pass (plus a scaling
    pass only when clipping is needed).

    ``grads`` may mix float32/float16/bfloat16 (and float64) tensors of any sizes, all on
    one device; ``group_ids[i]`` in ``[0, num_groups)`` names the group of ``grads[i]``.
    NaN/+inf/-inf elements are counted per group and set to 0; the squared L2 norm of the
    rest is accumulated per group (float32, float64 for float64 gradients, in a fixed order:
    deterministic). Then, with ``coef = min(1, max_norm / (total_norm + 1e-6))``:
    ``skip_nonfinite`` and any element non-finite -> every gradient is zeroed; else, if
    ``coef < 1``, every gradient is multiplied by ``coef`` (on CUDA that choice is made on
    the device: no host synchronisation).

    Returns ``(nonfinite_counts int64 [num_groups], group_norms float32 [num_groups],
    total_norm float32 [], clip_coef float32 [])`` on the gradients' device.

    ``num_members = M > 1``: dim 0 of every gradient is the member (a population's stacked
    parameters) and each member is guarded on its own, as if alone: its NaN/inf are counted
    for it only, its clip coefficient comes from its own norm, and ``skip_nonfinite`` zeroes
    only its gradients. The results gain a leading member dimension: ``[M, num_groups]``,
    ``[M, num_groups]``, ``[M]``, ``[M]``.
    """
    _check_sequence(grads, "grads")
    for i, grad in enumerate(grads):
        _check_dense(grad, f"grads[{i}]")
        _check_writable(grad, f"grads[{i}]", "pass the parameters' .grad tensors")
    group_ids = [int(g) for g in group_ids]
    # Checked here too, not only in C++: with one toolchain (the GPU machine's g++ 13.3,
    # Python 3.12, torch 2.11) an error thrown by these kernels crashed the process instead
    # of raising; the Python check keeps bad arguments a clear exception everywhere.
    _check_guard_args(grads, group_ids, int(num_groups), float(max_norm), int(num_members))
    if not torch.compiler.is_compiling():
        _check_no_overlap(grads)
    return torch.ops.pyppo.guard_gradients_.default(
        grads, group_ids, int(num_groups), float(max_norm), bool(skip_nonfinite), int(num_members)
    )


def count_nonfinite(tensors: list[Tensor]) -> Tensor:
    """Number of NaN/+inf/-inf elements of each tensor (int64 ``[len(tensors)]``), counted in
    one fused read-only pass; the tensors are not modified."""
    _check_sequence(tensors, "tensors")
    for i, t in enumerate(tensors):
        _check_dense(t, f"tensors[{i}]")
    _check_tensor_list(tensors, "tensors")  # see guard_gradients_ for why here too
    return torch.ops.pyppo.count_nonfinite.default(tensors)


def _check_sequence(tensors: object, name: str) -> None:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"pyppo: {name} must be a list of tensors, got {type(tensors).__name__}")


def _check_tensor_list(tensors: list[Tensor], name: str) -> None:
    for i, t in enumerate(tensors):
        _check_float(t, f"{name}[{i}]")
        if t.device != tensors[0].device:
            raise ValueError(
                f"pyppo: {name}[{i}] is on {t.device} but {name}[0] is on {tensors[0].device};"
                " all tensors must be on one device"
            )


def _check_no_overlap(grads: list[Tensor]) -> None:
    """The kernel writes every gradient in parallel: two that share memory (the same tensor
    twice, or overlapping views) would race. Tensors with storages of their own (the usual
    case: one check per tensor) cannot overlap; those sharing one are compared by byte span."""
    storages = [t.untyped_storage().data_ptr() for t in grads if t.numel()]
    if len(set(storages)) == len(storages):
        return
    spans = []
    for i, t in enumerate(grads):
        if t.numel() == 0:
            continue
        reach = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
        start = t.data_ptr() - t.element_size() * sum(
            (n - 1) * -s for n, s in zip(t.shape, t.stride(), strict=True) if s < 0
        )
        spans.append((start, start + t.element_size() * (reach + 1), i))
    spans.sort()
    for (_, end, i), (start, _, j) in zip(spans, spans[1:], strict=False):
        if start < end:
            first, second = sorted((i, j))
            raise ValueError(
                f"pyppo: grads[{first}] and grads[{second}] share memory (the same tensor twice, "
                "or overlapping views); pass each gradient once"
            )


def _check_guard_args(
    grads: list[Tensor], group_ids: list[int], num_groups: int, max_norm: float, num_members: int
) -> None:
    """The kernels' argument checks (csrc/guard.h), in the same order, with the same messages."""
    if len(group_ids) != len(grads):
        raise ValueError(
            f"pyppo: got {len(grads)} gradients but {len(group_ids)} group ids; "
            "pass one id per gradient"
        )
    if num_groups < 1:
        raise ValueError(f"pyppo: num_groups must be >= 1, got {num_groups}")
    for i, gid in enumerate(group_ids):
        if not 0 <= gid < num_groups:
            raise ValueError(
                f"pyppo: group_ids[{i}] = {gid} is out of range for num_groups = {num_groups}"
            )
    if not max_norm >= 0:
        raise ValueError(
            f"pyppo: max_norm must be >= 0 (float('inf') disables clipping), got {max_norm}"
        )
    if num_members < 1:
        raise ValueError(f"pyppo: num_members must be >= 1, got {num_members}")
    _check_tensor_list(grads, "grads")
    if num_members > 1:
        for i, g in enumerate(grads):
            if g.dim() < 1 or g.shape[0] != num_members:
                raise ValueError(
                    f"pyppo: grads[{i}] has shape {list(g.shape)}; with num_members = "
                    f"{num_members} dim 0 of every gradient is the member"
                )


@torch.library.register_fake("pyppo::guard_gradients_")
def _guard_gradients_fake(
    grads: list[Tensor],
    group_ids: list[int],
    num_groups: int,
    max_norm: float,
    skip: bool,
    num_members: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_guard_args(grads, group_ids, num_groups, max_norm, num_members)
    device = grads[0].device if grads else torch.device("cpu")
    members = () if num_members == 1 else (num_members,)
    return (
        torch.empty((*members, num_groups), dtype=torch.int64, device=device),
        torch.empty((*members, num_groups), dtype=torch.float32, device=device),
        torch.empty(members, dtype=torch.float32, device=device),
        torch.empty(members, dtype=torch.float32, device=device),
    )


@torch.library.register_fake("pyppo::count_nonfinite")
def _count_nonfinite_fake(tensors: list[Tensor]) -> Tensor:
    _check_tensor_list(tensors, "tensors")
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.empty(len(tensors), dtype=torch.int64, device=device)
