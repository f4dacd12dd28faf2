"""One PPO update: ``num_epochs`` passes of minibatch steps over the rollout buffer.

:meth:`PPOUpdate.step` is one minibatch: forward, :func:`pyppo.loss.ppo_loss`, backward,
the gradient guard, the optimizer step. It is the seam of the update: gradient
synchronisation across processes belongs after ``backward()`` and before the guard, and a
captured (CUDA graph) step replaces it whole. Statistics and NaN/inf counters stay device
tensors; :meth:`PPOUpdate.run` returns their means once the update is done.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
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
from pyppo.training.recorder import NaNCounters

# policy(obs) -> (outputs, non-finite output counts or None): the trainer's guarded forward.
Policy = Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]


class PPOUpdate:
    """Minibatch updates of ``model`` by ``optimizer`` under ``guard``.

    :param policy: the guarded forward pass (outputs and their non-finite counts).
    :param optimizer: the optimizer over the model's parameters.
    :param guard: the gradient guard (used when ``config.guards``).
    :param config: the PPO settings.
    :param heads: the auxiliary heads (their outputs and loss names).
    :param process_group: the processes to average gradients and statistics over, or None.
    :param num_envs: this process's envs (with ``num_minibatches``, the rollout's size).
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        guard: GradientGuard,
        config: PPOConfig,
        heads: AuxHeads,
        device: torch.device,
        process_group: Any = None,
        *,
        num_envs: int,
    ) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.guard = guard
        self.config = config
        self.heads = heads
        self.aux_coefs = torch.tensor(config.aux_coefs, device=device)
        self.device = device
        # Across processes: each steps its share of every minibatch, statistics are global.
        self.process_group = process_group
        world = rank_and_world(process_group)[1]
        # The global minibatch: batch_size, or the global rollout cut into num_minibatches.
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
        out, bad = self.policy(batch.obs)
        aux = {}
        if aux_scale is not None:
            predictions = torch.stack([out[n].reshape(-1) for n in self.heads.outputs], 1)
            aux = dict(
                aux_predictions=predictions,
                aux_targets=batch.aux_targets,
                aux_scale=aux_scale,
                aux_coefs=self.aux_coefs,
                guard_aux=cfg.guards,
            )
        terms = ppo_loss(
            out["action_logits"],
            out["value"].reshape(-1),
            batch.actions,
            batch.old_logprobs,
            batch.advantages,
            batch.returns,
            clip_epsilon=cfg.clip_epsilon,
            value_coef=cfg.value_coef,
            entropy_coef=cfg.entropy_coef,
            advantage_stats=adv_stats,
            **aux,
        )
        return terms, bad

    def step(
        self,
        batch: RolloutBatch,
        aux_scale: Tensor | None,
        counters: NaNCounters,
        adv_stats: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One minibatch. Returns its statistics (ordered as :meth:`stat_names`) as one device
        tensor, and, under the ``skip`` policy, 1.0, or 0.0 when the step was skipped (its
        statistics then do not count); None when no step can be skipped. ``adv_stats``: the
        advantages' (mean, std) over the global minibatch (across processes); None normalizes
        by the minibatch's own."""
        cfg = self.config
        terms, bad = self.loss(batch, aux_scale, adv_stats)
        if bad is not None:
            counters.outputs += bad
        stats = [terms.policy, terms.value, terms.entropy, terms.approx_kl, terms.clip_fraction]
        if aux_scale is not None:
            stats += list(terms.aux.unbind())
            if cfg.guards:
                counters.aux_losses += terms.aux_zeroed

        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        keep = None
        if cfg.guards:
            report = self.guard.step()
            counters.grads += report.nonfinite_counts
            counters.skipped += report.skipped
            stats += [report.total_norm, report.clip_coef]
            if cfg.nan_policy == "skip":
                # Masked on the device, as GradScaler masks fused optimizers: with found_inf
                # set, Adam moves neither the weights nor its moments. No host read.
                keep = (~report.skipped).float()
                self.optimizer.found_inf = report.skipped.float()
        self.optimizer.step()
        return torch.stack(stats).detach(), keep

    def _advantage_stats(self, batches: list[RolloutBatch]) -> list[Any]:
        """Per minibatch, the advantages' (mean, std) over every process's share of it, all
        minibatches of an epoch in one all-reduce; Nones in a single process."""
        if self.process_group is None:
            return [None] * len(batches)
        sums = all_reduce_sum_(
            torch.stack(
                [
                    torch.stack(
                        [
                            b.advantages.sum(),
                            b.advantages.square().sum(),
                            b.advantages.new_tensor(b.advantages.numel()),
                        ]
                    )
                    for b in batches
                ]
            ),
            self.process_group,
        )
        means = sums[:, 0] / sums[:, 2]
        stds = (sums[:, 1] / sums[:, 2] - means.square()).clamp_min(0).sqrt()
        return list(zip(means.unbind(), stds.unbind(), strict=True))

    def _variance(self, x: Tensor) -> Tensor:
        """Per-column variance of ``x`` (unbiased), over every process's rows."""
        if self.process_group is None:
            return x.var(0)
        n = x.new_tensor(float(x.shape[0]))
        sums = all_reduce_sum_(
            torch.cat([x.sum(0), x.square().sum(0), n[None]]), self.process_group
        )
        k = x.shape[1]
        total, mean = sums[-1], sums[:k] / sums[-1]
        return (sums[k : 2 * k] - total * mean.square()) / (total - 1).clamp_min(1)

    def _kl_exceeded(self, kl_sum: Tensor, batches: Tensor | int) -> bool:
        """Whether the epoch's mean approximate KL, over every process's minibatch steps,
        exceeds ``target_kl``: one host read per epoch, and the same answer on every process
        (a process stopping alone would leave the others waiting in their all-reduces)."""
        totals = torch.stack([kl_sum, torch.as_tensor(batches, device=self.device).float()])
        if self.process_group is not None:
            totals = all_reduce_sum_(totals, self.process_group)
        return float(totals[0] / totals[1].clamp_min(1)) > self.config.target_kl

    def run(
        self, buffer: RolloutBuffer, generator: torch.Generator, counters: NaNCounters, *, aux: bool
    ) -> dict[str, Tensor]:
        """``num_epochs`` passes over ``buffer`` in minibatches drawn with ``generator``;
        returns the mean statistics by metric name. ``aux``: train the auxiliary heads."""
        cfg = self.config
        names = self.stat_names(aux)
        aux_scale = None
        if aux:
            targets = buffer.aux_targets.reshape(-1, len(self.heads))
            aux_scale = self._variance(targets).clamp_min(1e-12)
        kl_index = names.index("train/approx_kl")
        # One stacked add per minibatch instead of one per statistic; skipped steps weigh 0.
        sums = torch.zeros(len(names), device=self.device)
        n_batches: Tensor | int = 0
        for _ in range(cfg.num_epochs):
            epoch_kl = torch.zeros((), device=self.device)
            epoch_batches: Tensor | int = 0
            batches = buffer.minibatches(self.batch_size, generator)
            adv_stats = itertools.repeat(None)
            if self.process_group is not None:
                batches = list(batches)
                adv_stats = self._advantage_stats(batches)
            for batch, stats_of_adv in zip(batches, adv_stats, strict=False):
                stats, keep = self.step(batch, aux_scale, counters, stats_of_adv)
                if keep is not None:
                    stats = stats * keep
                epoch_kl += stats[kl_index]
                sums += stats
                epoch_batches += 1 if keep is None else keep
            n_batches += epoch_batches
            if cfg.target_kl is not None and self._kl_exceeded(epoch_kl, epoch_batches):
                break
        count = torch.as_tensor(n_batches, dtype=torch.float32, device=self.device).clamp_min(1)
        return dict(zip(names, (sums / count).unbind(), strict=True))
