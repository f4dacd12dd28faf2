"""One PPO update: ``num_epochs`` passes of minibatch steps over the rollout buffer.

:meth:`PPOUpdate.step` is one minibatch: forward, :func:`pyppo.loss.ppo_loss`, backward,
the gradient guard, the optimizer step. It is the seam of the update: gradient
synchronisation across processes belongs after ``backward()`` and before the guard, and a
captured (CUDA graph) step replaces it whole. Statistics and NaN/inf counters stay device
tensors; :meth:`PPOUpdate.run` returns their means once the update is done.

A population (``members > 1``) runs the same steps on every member at once: each minibatch
holds ``batch_size`` transitions of every member, drawn in the member's own order; the loss
terms, the auxiliary targets' scale, the gradient guard's decisions and the optimizer's
step are per member, and so is ``target_kl``: a member whose KL passes it sits out the rest
of the update's epochs (its steps are masked), the others go on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyppo.buffer import RolloutBatch, RolloutBuffer
from pyppo.config import PPOConfig
from pyppo.distributed import all_reduce_sum_, rank_and_world
from pyppo.guard import GradientGuard
from pyppo.heads import AuxHeads
from pyppo.loss import PPOLossTerms, ppo_loss
from pyppo.metrics import update_stats
from pyppo.optim import StackedAdam
from pyppo.training.recorder import NaNCounters

# policy(obs) -> (outputs, non-finite output counts or None): the trainer's guarded forward.
Policy = Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]


class PPOUpdate:
    """Minibatch updates of ``model`` by ``optimizer`` under ``guard``.

    :param policy: the guarded forward pass (outputs and their non-finite counts); for a
        population it takes ``(M, B, obs)`` and returns ``(M, B, ...)`` outputs.
    :param optimizer: the optimizer over the model's parameters (a
        :class:`~pyppo.optim.StackedAdam` for a population).
    :param guard: the gradient guard (used when ``config.guards``).
    :param config: the PPO settings.
    :param heads: the auxiliary heads (their outputs and loss names).
    :param process_group: the processes to average gradients and statistics over, or None.
    :param num_envs: this process's envs per member (with ``num_minibatches``, the rollout's
        size).
    :param members: the population's size (1: a plain model).
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer | StackedAdam,
        guard: GradientGuard,
        config: PPOConfig,
        heads: AuxHeads,
        device: torch.device,
        process_group: Any = None,
        *,
        num_envs: int,
        members: int = 1,
        joint_actions: bool = False,
    ) -> None:
        self.policy = policy
        self.joint_actions = joint_actions
        self.optimizer = optimizer
        self.guard = guard
        self.config = config
        self.heads = heads
        self.members = members
        # The loss's per-member settings: plain numbers for one model; for a population,
        # tensors with the member axis first (each member may have its own).
        if members == 1:
            self.clip_epsilon: float | Tensor = config.clip_epsilon
            self.entropy_coef: float | Tensor = config.entropy_coef
            self.aux_coefs = torch.tensor(config.aux_coefs, device=device)
        else:
            self.clip_epsilon = torch.tensor(config.per_member("clip_epsilon"), device=device)
            self.clip_epsilon = self.clip_epsilon.unsqueeze(-1)  # (M, 1): against (M, B) ratios
            self.entropy_coef = torch.tensor(config.per_member("entropy_coef"), device=device)
            self.aux_coefs = torch.tensor(
                [config.per_member("aux_short_coef"), config.per_member("aux_long_coef")],
                device=device,
            ).T  # (M, 2)
        self.device = device
        # Across processes: each steps its share of every minibatch, statistics are global.
        self.process_group = process_group
        world = rank_and_world(process_group)[1]
        # The global minibatch: batch_size, or the global rollout cut into num_minibatches
        # (per member).
        batch = config.batch_size
        if config.num_minibatches is not None:
            batch = config.num_steps * num_envs * world // config.num_minibatches
        if batch < 1 or batch % world:
            raise ValueError(
                f"minibatches of {batch} samples cannot be split evenly over "
                f"{world} processes; change batch_size or num_minibatches"
            )
        self.batch_size = batch // world
        # The forward pass and loss, compiled on request: on CUDA "reduce-overhead" replays
        # them as CUDA graphs; the guard and the optimizer step stay eager.
        self.loss = self.forward_and_loss
        if config.compile:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.loss = torch.compile(self.forward_and_loss, mode=mode, dynamic=False)

    def stat_names(self, aux: bool) -> list[str]:
        """The metric names of the statistics :meth:`step` returns, in order."""
        return update_stats(self.heads, aux=aux, guards=self.config.guards)

    def _by_member(self, x: Tensor) -> Tensor:
        """A batch field ``(M * B, ...)`` as ``(M, B, ...)`` (unchanged for one model)."""
        return x if self.members == 1 else x.view(self.members, -1, *x.shape[1:])

    def _flat(self, x: Tensor) -> Tensor:
        """A per-sample output as ``(B,)``, or ``(M, B)`` for a population."""
        return x.reshape(-1) if self.members == 1 else x.reshape(self.members, -1)

    def forward_and_loss(
        self,
        batch: RolloutBatch,
        aux_scale: Tensor | None,
        adv_stats: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[PPOLossTerms, Tensor | None]:
        """The minibatch's guarded forward pass and its loss terms (see :meth:`step`), and the
        forward pass's non-finite output counts (None where the model counts them itself).
        With ``compile`` this is what :attr:`loss` compiles."""
        cfg = self.config
        b = RolloutBatch(*(self._by_member(field) for field in batch))
        out, bad = self.policy(b.obs)
        aux = {}
        if aux_scale is not None:
            predictions = torch.stack([self._flat(out[n]) for n in self.heads.outputs], -1)
            aux = dict(
                aux_predictions=predictions,
                # a portfolio's targets are (B, N * K): one row per symbol, as predicted
                aux_targets=b.aux_targets.reshape(predictions.shape),
                aux_scale=aux_scale,
                aux_coefs=self.aux_coefs,
                guard_aux=cfg.guards,
            )
        terms = ppo_loss(
            out["action_logits"],
            self._flat(out["value"]),
            b.actions,
            b.old_logprobs,
            b.advantages,
            b.returns,
            clip_epsilon=self.clip_epsilon,
            value_coef=cfg.value_coef,
            entropy_coef=self.entropy_coef,
            advantage_stats=adv_stats,
            joint_actions=self.joint_actions,
            **aux,
        )
        return terms, bad

    def step(
        self,
        batch: RolloutBatch,
        aux_scale: Tensor | None,
        counters: NaNCounters,
        adv_stats: tuple[Tensor, Tensor] | None = None,
        active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One minibatch. Returns its statistics (ordered as :meth:`stat_names`) as one device
        tensor (``(S,)``, or ``(S, M)`` for a population), and a weight per step: 1.0, or 0.0
        when the step was skipped (its statistics then do not count); None when no step can
        be skipped. ``adv_stats``: the advantages' (mean, std) over the global minibatch
        (across processes); None normalizes by the minibatch's own. ``active``: bool ``(M,)``,
        the members still stepping this update (``target_kl``)."""
        cfg = self.config
        terms, bad = self.loss(batch, aux_scale, adv_stats)
        if bad is not None:
            counters.outputs += bad
        stats = [terms.policy, terms.value, terms.entropy, terms.approx_kl, terms.clip_fraction]
        if aux_scale is not None:
            stats += list(terms.aux.unbind(-1))
            if cfg.guards:
                counters.aux_losses += terms.aux_zeroed

        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        skipped = None
        if cfg.guards:
            report = self.guard.step()
            counters.grads += report.nonfinite_counts
            counters.skipped += report.skipped
            stats += [report.total_norm, report.clip_coef]
            if cfg.nan_policy == "skip":
                skipped = report.skipped
        keep = None
        if self.members > 1:
            # Masked on the device, per member: skipped by the guard, or stopped by target_kl.
            held = (
                skipped if active is None else (~active if skipped is None else skipped | ~active)
            )
            self.optimizer.step(held)
            keep = None if held is None else (~held).float()
        else:
            if skipped is not None:
                # As GradScaler masks fused optimizers: with found_inf set, Adam moves neither
                # the weights nor its moments. No host read.
                keep = (~skipped).float()
                self.optimizer.found_inf = skipped.float()
            self.optimizer.step()
        return torch.stack(stats).detach(), keep

    def _advantage_stats(self, batches: list[RolloutBatch]) -> list[Any]:
        """Per minibatch, the advantages' (mean, std) over every process's share of it (per
        member), all minibatches of an epoch in one all-reduce; Nones in a single process."""
        if self.process_group is None:
            return [None] * len(batches)
        advantages = [self._by_member(b.advantages) for b in batches]
        sums = all_reduce_sum_(
            torch.stack(
                [
                    torch.stack(
                        [a.sum(-1), a.square().sum(-1), torch.full_like(a.sum(-1), a.shape[-1])]
                    )
                    for a in advantages
                ]
            ),
            self.process_group,
        )
        means = sums[:, 0] / sums[:, 2]
        stds = (sums[:, 1] / sums[:, 2] - means.square()).clamp_min(0).sqrt()
        return list(zip(means.unbind(), stds.unbind(), strict=True))

    def _variance(self, x: Tensor) -> Tensor:
        """Per-column variance of ``x`` (unbiased), over every process's rows: ``x`` is
        ``(rows, K)``, or ``(M, rows, K)`` for a population (a variance per member)."""
        if self.process_group is None:
            return x.var(-2)
        n = x.new_tensor(float(x.shape[-2])).expand(*x.shape[:-2], 1)
        sums = all_reduce_sum_(
            torch.cat([x.sum(-2), x.square().sum(-2), n], dim=-1), self.process_group
        )
        k = x.shape[-1]
        total, mean = sums[..., -1:], sums[..., :k] / sums[..., -1:]
        return (sums[..., k : 2 * k] - total * mean.square()) / (total - 1).clamp_min(1)

    def _kl_exceeded(self, kl_sum: Tensor, batches: Tensor | int) -> Tensor:
        """Whether each member's mean approximate KL of the epoch, over every process's
        minibatch steps, exceeds ``target_kl`` (a bool tensor, the same on every process: a
        process stopping alone would leave the others waiting in their all-reduces)."""
        count = torch.as_tensor(batches, device=self.device).float().expand_as(kl_sum)
        totals = torch.stack([kl_sum, count])
        if self.process_group is not None:
            totals = all_reduce_sum_(totals, self.process_group)
        return totals[0] / totals[1].clamp_min(1) > self.config.target_kl

    def run(
        self,
        buffer: RolloutBuffer,
        generators: Sequence[torch.Generator],
        counters: NaNCounters,
        *,
        aux: bool,
    ) -> dict[str, Tensor]:
        """``num_epochs`` passes over ``buffer`` in minibatches drawn with ``generators`` (one
        per member); returns the mean statistics by metric name (``(M,)`` each for a
        population). ``aux``: train the auxiliary heads."""
        cfg = self.config
        names = self.stat_names(aux)
        aux_scale = None
        if aux:
            k = len(self.heads)
            targets = buffer.aux_targets.reshape(-1, k)
            if self.members > 1:  # (T, M * N, K) -> (M, T * N, K): each member its own
                steps = buffer.num_steps
                targets = buffer.aux_targets.view(steps, self.members, -1, k).transpose(0, 1)
                targets = targets.reshape(self.members, -1, k)
            aux_scale = self._variance(targets).clamp_min(1e-12)
        kl_index = names.index("train/approx_kl")
        shape = (len(names),) if self.members == 1 else (len(names), self.members)
        # One stacked add per minibatch instead of one per statistic; skipped steps weigh 0.
        sums = torch.zeros(shape, device=self.device)
        n_batches: Tensor | int = 0
        active = None
        if self.members > 1 and cfg.target_kl is not None:
            active = torch.ones(self.members, dtype=torch.bool, device=self.device)
        for _ in range(cfg.num_epochs):
            epoch_kl = torch.zeros(shape[1:], device=self.device)
            epoch_batches: Tensor | int = 0
            batches = buffer.minibatches(self.batch_size, generators)
            adv_stats = itertools.repeat(None)
            if self.process_group is not None:
                batches = list(batches)
                adv_stats = self._advantage_stats(batches)
            for batch, stats_of_adv in zip(batches, adv_stats, strict=False):
                stats, keep = self.step(batch, aux_scale, counters, stats_of_adv, active)
                if keep is not None:
                    stats = stats * keep
                epoch_kl += stats[kl_index]
                sums += stats
                epoch_batches += 1 if keep is None else keep
            n_batches += epoch_batches
            if cfg.target_kl is not None:
                exceeded = self._kl_exceeded(epoch_kl, epoch_batches)
                if active is None:  # one model: stop its epochs (one host read)
                    if bool(exceeded):
                        break
                else:  # each member on its own; done when none is left (one host read)
                    active &= ~exceeded
                    if not bool(active.any()):
                        break
        count = torch.as_tensor(n_batches, dtype=torch.float32, device=self.device).clamp_min(1)
        return dict(zip(names, (sums / count).unbind(), strict=True))
