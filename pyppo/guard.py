"""Gradient and output guards: NaN/inf zeroing, norm clipping, counters and log messages.

Typical use, in any training loop::

    guard = GradientGuard(model, max_norm=0.5)
    for batch in data:
        loss = compute_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        report = guard.step()        # zero NaN/inf, clip; no host synchronisation
        optimizer.step()
    guard.log_events()               # once per update/epoch: one host sync, logs the groups hit

Why logging is separate from ``step()``: deciding whether to log means reading the counts
on the host, which on a GPU waits for every queued kernel. ``step()`` never does that
(unless ``log_every`` asks it to, every that many steps); the counts stay device tensors
and are read once, when :meth:`GradientGuard.log_events` is called. The cumulative
counters are exact whatever the logging cadence.

Model outputs have two helpers: :func:`guard_outputs` counts and repairs them (what
:class:`pyppo.TradingActorCritic` does in every forward pass), :func:`validate_outputs` only
counts them and logs (for checking a model's outputs without changing them).

Log messages (users grep for them; the text is fixed):
``NaN/inf gradient detected in <group>`` and ``Model output <name> contains NaN/inf``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from pyppo import ops
from pyppo.distributed import averaged_gradients_, rank_and_world
from pyppo.heads import output_log_name

logger = logging.getLogger("pyppo")

POLICIES = ("zero", "skip")

# The group of parameters that no child module or prefix claims (e.g. a bare nn.Parameter
# on the root module).
OTHER_GROUP = "other"


@dataclass(frozen=True)
class GuardReport:
    """What one :meth:`GradientGuard.step` found. Every field is a tensor on the gradients'
    device, so building the report costs no host synchronisation; reading a value
    (``int(...)``, ``.item()``, :meth:`counts_by_group`) does."""

    groups: tuple[str, ...]
    # Shapes for one model; a population's (num_members > 1) have a leading [M].
    nonfinite_counts: Tensor  # int64 [num_groups]: NaN/inf elements zeroed, per group
    group_norms: Tensor  # float32 [num_groups]: L2 norm per group, after zeroing, before clipping
    total_norm: Tensor  # float32 []: L2 norm of all gradients, after zeroing, before clipping
    clip_coef: Tensor  # float32 []: min(1, max_norm / (total_norm + 1e-6))
    skipped: Tensor  # bool []: policy "skip" zeroed every gradient this step

    def counts_by_group(self) -> dict[str, int]:
        """Non-finite counts by group name (reads them: a host sync)."""
        return dict(zip(self.groups, self.nonfinite_counts.tolist(), strict=True))

    def norms_by_group(self) -> dict[str, float]:
        """Gradient norms by group name (reads them: a host sync)."""
        return dict(zip(self.groups, self.group_norms.tolist(), strict=True))


def _group_of(name: str, prefixes: Mapping[str, str]) -> str:
    """The group of parameter ``name``: the longest matching prefix wins."""
    best = ""
    for prefix in prefixes:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return prefixes[best] if best else OTHER_GROUP


class GradientGuard:
    """Zeroes NaN/inf gradients, clips the total gradient norm and counts, per group of
    parameters, where non-finite values appeared; one fused kernel
    (:func:`pyppo.ops.guard_gradients_`) does all of it.

    Args:
        model: the module whose ``.grad`` tensors are guarded.
        max_norm: clip the total L2 norm to this (``float("inf")`` disables clipping).
        policy: ``"zero"`` zeroes only the non-finite elements and steps as usual;
            ``"skip"`` zeroes every gradient when any element was non-finite, so that the
            optimizer step changes nothing (as ``torch.amp.GradScaler`` skips a step).
            Note that optimizers with momentum or weight decay may still move parameters
            on a zero gradient; skip the ``optimizer.step()`` on ``report.skipped`` if that
            matters (reading it is a host sync).
        groups: ``None`` groups parameters by the model's top-level child modules
            (``trunk.0.weight`` -> ``trunk``); or a mapping of parameter-name prefixes to
            group names (longest prefix wins). Parameters matched by nothing go to the group
            ``"other"``.
        log_every: when set, :meth:`step` calls :meth:`log_events` every ``log_every``
            steps (one host sync each time). Leave it ``None`` when the training loop calls
            :meth:`log_events` itself, e.g. once per update.
        process_group: a ``torch.distributed`` process group (``dist.group.WORLD`` for
            all processes): :meth:`step` then also averages the gradients over them, in
            one flat all-reduce: each rank's NaN/inf are zeroed and counted first, the
            counts ride along, and the skip and the clip follow the global counts and norm,
            so every rank steps identically. Call it instead of DDP's own all-reduce (a
            model not wrapped in DDP), after ``backward()``; the report's counts are global.
        num_members: a population of this many models with stacked parameters (dim 0 of
            every parameter is the member): each member is guarded on its own (its counts,
            clip coefficient and skip), and the report's tensors get a leading ``[M]``.
    """

    def __init__(
        self,
        model: nn.Module,
        max_norm: float = 0.5,
        policy: str = "zero",
        groups: Mapping[str, str] | None = None,
        log_every: int | None = None,
        process_group: Any = None,
        num_members: int = 1,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"pyppo: policy must be one of {POLICIES}, got {policy!r}")
        if not max_norm >= 0:  # also rejects NaN
            raise ValueError(f"pyppo: max_norm must be >= 0, got {max_norm}")
        if log_every is not None and log_every < 1:
            raise ValueError(f"pyppo: log_every must be None or >= 1, got {log_every}")
        if num_members < 1:
            raise ValueError(f"pyppo: num_members must be >= 1, got {num_members}")
        self.num_members = int(num_members)
        self.max_norm = float(max_norm)
        self.policy = policy
        self.log_every = log_every
        self.process_group = process_group
        self.distributed = process_group is not None and rank_and_world(process_group)[1] > 1

        if groups is None:
            groups = {f"{child}.": child for child, _ in model.named_children()}
        names: list[str] = []
        self._params: list[tuple[nn.Parameter, int]] = []
        for param_name, param in model.named_parameters():
            group = _group_of(param_name, groups)
            if group not in names:
                names.append(group)
            self._params.append((param, names.index(group)))
        # Groups in a stable order: as the mapping / children list them, "other" last.
        ordered = [g for g in dict.fromkeys(groups.values()) if g in names]
        ordered += [g for g in names if g not in ordered]
        remap = {names.index(g): i for i, g in enumerate(ordered)}
        self._params = [(p, remap[gid]) for p, gid in self._params]
        self.groups: tuple[str, ...] = tuple(ordered)

        self.steps = 0
        # Exact running totals, on the gradients' device (created at the first step).
        self._cumulative_nonfinite: Tensor | None = None
        self._skipped_steps: Tensor | None = None
        # Counts not yet logged, and over how many steps.
        self._pending_nonfinite: Tensor | None = None
        self._pending_steps = 0

    def step(self) -> GuardReport:
        """Guard the current gradients in place; call between ``backward()`` and
        ``optimizer.step()``. Parameters without a gradient are left out."""
        grads, group_ids = [], []
        for param, gid in self._params:
            if param.grad is not None:
                grads.append(param.grad)
                group_ids.append(gid)
        if self.distributed:
            counts, norms, total, coef, skipped = self._step_distributed(grads, group_ids)
        else:
            counts, norms, total, coef = ops.guard_gradients_(
                grads,
                group_ids,
                len(self.groups),
                self.max_norm,
                self.policy == "skip",
                self.num_members,
            )
            skipped = (
                counts.sum(-1) > 0
                if self.policy == "skip"
                else counts.new_zeros(self._member_shape, dtype=torch.bool)
            )

        self._accumulate(counts, skipped)
        self.steps += 1
        if self.log_every is not None and self.steps % self.log_every == 0:
            self.log_events()
        return GuardReport(self.groups, counts, norms, total, coef, skipped)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run :meth:`step` before every ``optimizer.step()``, for loops that call the optimizer
        but not the guard; ``handle.remove()`` detaches it.

        The guard must see the gradients before anything that combines them over parameters.
        A ``clip_grad_norm_`` between ``backward()`` and ``optimizer.step()`` turns one NaN
        into NaN in every gradient (the total norm is NaN), so with a loop that clips by
        itself, run the guard right after ``backward()`` instead (e.g.
        :func:`pyppo.integrations.guard_after_backward`) and let the guard replace the clip
        where you can. Under DDP the NaN has already been averaged into every rank by DDP's
        all-reduce when this hook runs: use ``process_group=`` on a model not wrapped in DDP
        instead (the guard then does the all-reduce itself).

        :param optimizer: the optimizer whose ``step()`` the guard runs before (through
            ``register_step_pre_hook``); the hook discards the :class:`GuardReport` (the
            counts stay in :attr:`cumulative_nonfinite` and :meth:`log_events`).
        :return: the hook's handle.
        """

        def guard_before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.step()

        return optimizer.register_step_pre_hook(guard_before_step)

    def _step_distributed(
        self, grads: list[Tensor], group_ids: list[int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """This rank's NaN/inf zeroed and counted, then one flat all-reduce of the gradients
        (averaged) with the counts riding along (summed), then the skip and the clip from the
        global counts and norm: every rank ends with the same gradients and decisions."""
        num_groups, members = len(self.groups), self.num_members
        local = ops.guard_gradients_(grads, group_ids, num_groups, math.inf, False, members)[0]
        counts = averaged_gradients_(grads, local, self.process_group)
        counts = counts.round().long().view(local.shape)
        skipped = counts.sum(-1) > 0
        if self.policy == "skip":
            keep = (~skipped).to(grads[0].dtype)
            if members == 1:
                torch._foreach_mul_(grads, keep)
            else:  # each member's own decision, broadcast over its slice
                torch._foreach_mul_(grads, [keep.view(-1, *[1] * (g.dim() - 1)) for g in grads])
        else:
            skipped = torch.zeros_like(skipped)
        _, norms, total, coef = ops.guard_gradients_(
            grads, group_ids, num_groups, self.max_norm, False, members
        )
        return counts, norms, total, coef, skipped

    def _accumulate(self, counts: Tensor, skipped: Tensor) -> None:
        if self._cumulative_nonfinite is None or self._cumulative_nonfinite.device != counts.device:
            self._cumulative_nonfinite = torch.zeros_like(counts)
            self._pending_nonfinite = torch.zeros_like(counts)
            self._skipped_steps = torch.zeros(
                skipped.shape, dtype=torch.int64, device=counts.device
            )
        self._cumulative_nonfinite += counts
        self._pending_nonfinite += counts
        self._skipped_steps += skipped
        self._pending_steps += 1

    @property
    def _member_shape(self) -> tuple[int, ...]:
        return () if self.num_members == 1 else (self.num_members,)

    @property
    def cumulative_nonfinite(self) -> Tensor:
        """int64 [num_groups] ([M, num_groups] for a population): exact number of NaN/inf
        gradient elements zeroed per group since the guard was made (a device tensor;
        reading it is a host sync)."""
        if self._cumulative_nonfinite is None:
            return torch.zeros((*self._member_shape, len(self.groups)), dtype=torch.int64)
        return self._cumulative_nonfinite

    @property
    def skipped_steps(self) -> Tensor:
        """int64 [] ([M]): number of steps zeroed by the ``skip`` policy (a device tensor)."""
        if self._skipped_steps is None:
            return torch.zeros(self._member_shape, dtype=torch.int64)
        return self._skipped_steps

    def cumulative_counts(self) -> dict[str, int]:
        """:attr:`cumulative_nonfinite` by group name, summed over members (a host sync)."""
        totals = self.cumulative_nonfinite.reshape(-1, len(self.groups)).sum(0)
        return dict(zip(self.groups, totals.tolist(), strict=True))

    def log_events(self) -> dict[str, int]:
        """Log ``NaN/inf gradient detected in <group>`` once for every group that had
        non-finite gradients since the previous call, with the count; return those counts.

        This is the guard's only host synchronisation: call it at the cadence you want the
        log at (the trainer calls it once per update)."""
        if self._pending_nonfinite is None:
            return {}
        per_member = self._pending_nonfinite.reshape(-1, len(self.groups)).tolist()
        steps = self._pending_steps
        self._pending_nonfinite.zero_()
        self._pending_steps = 0
        totals = dict.fromkeys(self.groups, 0)
        for member, counts in enumerate(per_member):
            for group, count in zip(self.groups, counts, strict=True):
                if count:
                    totals[group] += count
                    logger.warning(
                        "NaN/inf gradient detected in %s%s: %d non-finite elements zeroed over "
                        "%d steps",
                        group,
                        member_suffix(member, self.num_members),
                        count,
                        steps,
                    )
        return {group: count for group, count in totals.items() if count}


def member_suffix(member: int, num_members: int) -> str:
    """How a NaN/inf message names a population's member (``" (member 3)"``; nothing for a
    single model, whose messages stay as users know them)."""
    return f" (member {member})" if num_members > 1 else ""


def validate_outputs(outputs: Mapping[str, Tensor], log: bool = True) -> dict[str, Tensor]:
    """Count the NaN/inf elements of each model output in one fused call.

    Returns the counts by name as int64 0-d device tensors. With ``log=True`` the counts are
    read (one host sync) and ``Model output <name> contains NaN/inf`` is logged for each
    output that has any; pass ``log=False`` in a hot loop and add the counts up instead.
    The outputs are not modified (:func:`guard_outputs` repairs them).
    """
    names = list(outputs)
    counts = ops.count_nonfinite([outputs[name] for name in names])
    if log and names:
        for name, count in zip(names, counts.tolist(), strict=True):
            if count:
                logger.warning(
                    "Model output %s contains NaN/inf (%d non-finite elements)",
                    output_log_name(name),
                    count,
                )
    return dict(zip(names, counts.unbind(0), strict=True))


def guard_outputs(
    raw: Mapping[str, Tensor], limits: Mapping[str, float] | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Count the non-finite elements of each output in one fused call, then repair them.

    Returns ``(outputs, counts)``: the outputs through :func:`repair_outputs` and the int64
    counts in the order of ``raw``'s keys. No host synchronisation.

    :param raw: model outputs by name, each with the batch as its first dimension.
    :param limits: the clamp limit of each output, e.g. ``{"pred_1h": 1.0}``
        (:meth:`pyppo.heads.AuxHeads.output_limits`); missing names get ``inf``.
    """
    counts = ops.count_nonfinite(list(raw.values()))
    return repair_outputs(raw, limits), counts


def repair_outputs(
    raw: Mapping[str, Tensor], limits: Mapping[str, float] | None = None
) -> dict[str, Tensor]:
    """The outputs through the differentiable :func:`pyppo.ops.sanitize`: NaN/inf -> 0 with a
    zero gradient there, and values beyond ``limits[name]`` clamped to it (an output without
    a limit is only repaired). Outputs that share a limit are repaired in one call (they
    share their first dimension).

    :param raw: model outputs by name, each with the batch (or the member) as its first
        dimension.
    :param limits: the clamp limit of each output; missing names get ``inf``.
    """
    names = list(raw)
    by_limit: dict[float, list[str]] = {}
    for name in names:
        by_limit.setdefault(float((limits or {}).get(name, math.inf)), []).append(name)
    repaired: dict[str, Tensor] = {}
    for limit, group in by_limit.items():
        flat = [raw[n].reshape(raw[n].shape[0], -1) for n in group]
        clean = ops.sanitize(torch.cat(flat, dim=1), limit)[0]
        for n, part in zip(group, clean.split([f.shape[1] for f in flat], dim=1), strict=True):
            repaired[n] = part.reshape(raw[n].shape)
    return {n: repaired[n] for n in names}
