"""StackedAdam: Adam with decoupled weight decay (AdamW) for a population whose parameters
are stacked along a leading member dimension, each member with its own learning rate, step
count and skipped steps.

``torch.optim.AdamW(fused=True)`` cannot serve a population: its learning rate is one number
per parameter group, its step count one per tensor (a stacked tensor holds every member),
and its ``found_inf`` skips the step of every member at once. This optimizer keeps a step
count ``[M]`` and takes a learning rate ``[M]`` and a skip mask ``[M]``, all device tensors
(no host synchronisation), and updates every stacked tensor with a handful of ``_foreach``
ops, whatever the number of members. For each member it computes what
``torch.optim.AdamW(fused=True)`` computes for that member alone (tested, to float
rounding): with ``g`` the gradient, ``t`` the member's step count after this step, ``wd``
the weight decay (for weights: parameters with more than one dimension per member; biases
are not decayed, the usual practice, :func:`decays`),

    p = p * (1 - lr * wd)                        (weights only)
    m = beta1 * m + (1 - beta1) * g              (as lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1 ** t) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)

and a skipped member's weights, moments and step count do not move (the fused Adam's
``found_inf``, per member). With ``wd = 0`` it is Adam.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


def decays(parameter: Tensor, member_dims: int = 0) -> bool:
    """Whether weight decay applies to ``parameter``: a weight (more than one dimension
    besides the ``member_dims`` leading member dimensions), not a bias or a scale."""
    return parameter.dim() - member_dims > 1


class StackedAdam:
    """AdamW over stacked parameters (dim 0 of each is the member).

    :param params: the population's parameters, each ``[M, ...]``.
    :param lr: the learning rate, one for all members or one per member (``[M]``).
    :param betas: Adam's ``(beta1, beta2)``.
    :param eps: added to the denominator (pyppo's trainer uses 1e-5, as CleanRL).
    :param weight_decay: each step first shrinks every weight (:func:`decays`) by
        ``lr * weight_decay`` (decoupled, as AdamW).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float | Sequence[float] | Tensor,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("StackedAdam got no parameters")
        self.members = self.params[0].shape[0]
        device = self.params[0].device
        for i, p in enumerate(self.params):
            if p.dim() < 1 or p.shape[0] != self.members or p.device != device:
                raise ValueError(
                    f"parameter {i} has shape {list(p.shape)} on {p.device}: every parameter "
                    f"needs the member dimension first ({self.members}) and one device"
                )
        lr = torch.as_tensor(lr, dtype=torch.float32, device=device).reshape(-1)
        if lr.numel() not in (1, self.members) or not bool((lr > 0).all()):
            raise ValueError(f"lr needs one positive value or one per member ({self.members})")
        self.lr = lr.expand(self.members).clone()
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay needs a value >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.step_count = torch.zeros(self.members, dtype=torch.float32, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # Which parameters weight decay shrinks (fixed by their shapes).
        self._decayed = [decays(p, member_dims=1) for p in self.params]
        # A [M] vector broadcast over each parameter's shape.
        self._shapes = [(-1, *([1] * (p.dim() - 1))) for p in self.params]

    def _per_tensor(self, values: Tensor) -> list[Tensor]:
        return [values.view(shape) for shape in self._shapes]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, skip: Tensor | None = None) -> None:
        """One Adam step for every member not marked in ``skip`` (bool ``[M]``, a device
        tensor: no host read); parameters without a gradient are left alone."""
        keep = (
            torch.ones(self.members, device=self.step_count.device)
            if skip is None
            else (~skip.reshape(-1)).to(torch.float32)
        )
        self.step_count += keep
        # A member that has never stepped has t = 0; its factors are unused (keep = 0).
        t = self.step_count.clamp_min(1)
        step_size = self.lr / (1 - self.beta1**t) * keep
        bias2_sqrt = (1 - self.beta2**t).sqrt()
        active = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in active]
        grads = [self.params[i].grad for i in active]
        m = [self.exp_avg[i] for i in active]
        v = [self.exp_avg_sq[i] for i in active]
        shape = [self._shapes[i] for i in active]
        keep_b = [keep.view(s) for s in shape]
        weights = [i for i in active if self._decayed[i]]
        if self.weight_decay and weights:
            shrink = 1 - self.lr * self.weight_decay * keep
            torch._foreach_mul_(
                [self.params[i] for i in weights], [shrink.view(self._shapes[i]) for i in weights]
            )
        # Moments: a skipped member's weight is 0, so its moments stay as they were.
        torch._foreach_lerp_(m, grads, [(1 - self.beta1) * k for k in keep_b])
        torch._foreach_mul_(v, [1 - (1 - self.beta2) * k for k in keep_b])
        weighted = torch._foreach_mul(grads, [(1 - self.beta2) * k for k in keep_b])
        torch._foreach_addcmul_(v, weighted, grads)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [bias2_sqrt.view(s) for s in shape])
        torch._foreach_add_(denom, self.eps)
        updates = torch._foreach_div(m, denom)
        torch._foreach_mul_(updates, [step_size.view(s) for s in shape])
        torch._foreach_sub_(params, updates)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "step": self.step_count,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = state["lr"].to(self.lr.device)
        self.step_count = state["step"].to(self.step_count.device)
        for mine, saved in zip(self.exp_avg, state["exp_avg"], strict=True):
            mine.copy_(saved)
        for mine, saved in zip(self.exp_avg_sq, state["exp_avg_sq"], strict=True):
            mine.copy_(saved)
        self.beta1, self.beta2 = state["betas"]
        self.eps = state["eps"]
        # A state saved before weight decay existed: the run trained without it.
        self.weight_decay = state.get("weight_decay", 0.0)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``model``'s parameters as two groups for ``torch.optim.AdamW``: the weights with
    ``weight_decay``, the rest (:func:`decays`) without, as :class:`StackedAdam` decays."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]


def regrouped(
    saved: dict[str, Any], optimizer: Any, parameters: Sequence[Tensor]
) -> dict[str, Any]:
    """``saved``, a torch optimizer's state, laid out in ``optimizer``'s parameter groups.

    A state saved with every parameter in one group (by torch's Adam, before the trainer
    had weight decay) becomes ``optimizer``'s groups, each parameter keeping its moments,
    with no weight decay: that run trained without it. Any other state is returned as it is.

    :param parameters: the model's parameters in the order the one saved group held them.
    """
    groups = getattr(optimizer, "param_groups", None)
    if groups is None or len(saved["param_groups"]) != 1 or len(groups) == 1:
        return saved
    (old,) = saved["param_groups"]
    saved_index = {id(p): old["params"][k] for k, p in enumerate(parameters)}
    state, new_groups, index = {}, [], 0
    for group in groups:
        ids = []
        for p in group["params"]:
            if saved_index[id(p)] in saved["state"]:
                state[index] = saved["state"][saved_index[id(p)]]
            ids.append(index)
            index += 1
        new_groups.append({**old, "weight_decay": 0.0, "params": ids})
    return {"state": state, "param_groups": new_groups}
