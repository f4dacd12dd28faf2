"""StackedAdam: Adam for a population whose parameters are stacked along a leading member
dimension, each member with its own learning rate, step count and skipped steps.

``torch.optim.Adam(fused=True)`` cannot serve a population: its learning rate is one number
per parameter group, its step count one per tensor (a stacked tensor holds every member),
and its ``found_inf`` skips the step of every member at once. This optimizer keeps a step
count ``[M]`` and takes a learning rate ``[M]`` and a skip mask ``[M]``, all device tensors
(no host synchronisation), and updates every stacked tensor with a handful of ``_foreach``
ops, whatever the number of members. For each member it computes what
``torch.optim.Adam(fused=True)`` computes for that member alone (tested, to float
rounding): with ``g`` the gradient, ``t`` the member's step count after this step,

    m = beta1 * m + (1 - beta1) * g              (as lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1 ** t) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)

and a skipped member's weights, moments and step count do not move (the fused Adam's
``found_inf``, per member).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class StackedAdam:
    """Adam over stacked parameters (dim 0 of each is the member).

    :param params: the population's parameters, each ``[M, ...]``.
    :param lr: the learning rate, one for all members or one per member (``[M]``).
    :param betas: Adam's ``(beta1, beta2)``.
    :param eps: added to the denominator (pyppo's trainer uses 1e-5, as CleanRL).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float | Sequence[float] | Tensor,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
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
        self.step_count = torch.zeros(self.members, dtype=torch.float32, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
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
