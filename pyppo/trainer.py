"""PPOTrainer: rollout -> buffer -> GAE -> minibatch updates -> gradient guard -> step.

One *update* is one rollout of ``num_steps`` steps in every env followed by ``num_epochs``
passes of clipped-PPO minibatch updates over it (CleanRL's and SB3's PPO). One training
*epoch* covers the training bars once (``env.steps_per_epoch`` env steps per env).

NaN protection, in the order data flows (each counted; docs/design.md has the picture):
1. rewards and auxiliary targets are sanitized by the env and again by the buffer on insert
   (NaN/inf -> 0; targets clamped to ±100 %);
2. model outputs are counted and repaired (:func:`pyppo.guard.guard_outputs`);
3. a non-finite auxiliary loss is set to 0 (``aux_1h_loss was NaN/inf, setting to 0``);
4. gradients pass the fused guard (NaN/inf zeroed per group, total norm clipped);
5. after each update the parameters are checked; non-finite parameters stop training with
   :class:`NonFiniteParametersError` before any checkpoint is written.
Counters stay on the device during an update and are read once at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pyppo import ops
from pyppo.buffer import RolloutBatch, RolloutBuffer
from pyppo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyppo.config import PPOConfig, ppo_config, same_value
from pyppo.device import resolve_device
from pyppo.guard import GradientGuard, guard_outputs
from pyppo.loss import log_prob, ppo_loss
from pyppo.metrics import VALIDATION_SHARPE, MetricSchema, MetricsWriter, ProgressBar
from pyppo.protocols import (
    AuxTargetEnv,
    Describable,
    EpochEnv,
    OutputGuardedModel,
    SanitizingEnv,
    StatefulEnv,
)

logger = logging.getLogger("pyppo")

DEFAULT_AUX_LABELS = ("1h", "24h")


class NonFiniteParametersError(RuntimeError):
    """The model's parameters contain NaN/inf: training cannot continue."""


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block (restored after). The rollout's ops
    see one row per env (32 x 75 by default): too little to split across threads, whose
    fork and join cost more than they save (12 % of the rollout's time on 2 cores)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sample_actions(logits: Tensor, generator: torch.Generator) -> Tensor:
    """Gumbel-max sampling from a categorical: no host sync, reproducible per generator."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    # logits + Gumbel noise, -log(-log(u)), in place: this runs at every rollout step.
    return logits.sub(u.clamp_(1e-20, 1.0).log_().neg_().log_()).argmax(-1)


class PPOTrainer:
    """Clipped PPO with auxiliary return heads and pyppo's NaN guards.

    :param model: a :class:`pyppo.TradingActorCritic`, or any module whose ``forward(obs)``
        returns a dict with ``action_logits`` and ``value`` (and ``pred_<label>`` for the
        two auxiliary horizons when auxiliary losses are on).
    :param environment: a :class:`pyppo.TradingEnv`, or a gymnasium vector env with discrete
        actions and ``autoreset_mode=SAME_STEP``; auxiliary targets come from
        ``info["aux_targets"]`` (without them auxiliary losses are turned off, with one
        warning). What else the trainer uses of it is declared in :mod:`pyppo.protocols`.
    :param config: the PPO settings (:class:`pyppo.config.PPOConfig`, whose defaults are the
        command line's); keyword ``overrides`` replace single fields, e.g.
        ``PPOTrainer(model, env, enable_auxiliary_losses=False, aux_1h_coef=0.01)``.
    :param device: where training runs (default: the environment's device, else the CPU).
    :param run_dir: where ``metrics.csv``, checkpoints and TensorBoard logs go (none if None).
    :param validation: held-out :class:`pyppo.MarketData`; when given, the greedy policy is
        backtested on it after every epoch and the best Sharpe is saved as ``best.pt``.
    :param data_fingerprint: the training data's fingerprint, stored in checkpoints so that
        resuming on other data is refused.
    :param progress: show a progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        environment: Any,
        config: PPOConfig | None = None,
        *,
        device: str | torch.device | None = None,
        run_dir: str | Path | None = None,
        validation: Any = None,
        data_fingerprint: str | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> None:
        self.config = cfg = ppo_config(config, **overrides)
        self.env = environment
        self.num_envs = int(environment.num_envs)
        env_device = getattr(environment, "device", None)  # gymnasium envs have none
        self.device = resolve_device(device or env_device or "cpu")
        if env_device is not None and resolve_device(env_device) != self.device:
            raise ValueError(f"the environment is on {env_device} but device={self.device}; "
                             "make them the same")
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        # fused: one kernel per step instead of ~10 small ops per parameter tensor.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=1e-5,
                                          fused=True)
        self.guard = GradientGuard(self.model, cfg.max_grad_norm if cfg.guards else math.inf,
                                   policy=cfg.nan_policy)
        self.validation = validation
        self.data_fingerprint = data_fingerprint
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # The run's whole configuration as plain data, when a caller has one (the CLI does).
        self.run_config: dict[str, Any] | None = None

        labels = environment.aux_labels if isinstance(environment, AuxTargetEnv) \
            else DEFAULT_AUX_LABELS
        self.aux_names = tuple(f"aux_{label}" for label in labels)
        self.pred_names = tuple(f"pred_{label}" for label in labels)
        if isinstance(model, OutputGuardedModel):
            self.output_names = tuple(model.output_names)
        else:
            self.output_names = ("action_logits", "value", *self.pred_names)
        obs_shape = tuple(environment.single_observation_space.shape)
        self.buffer = RolloutBuffer(cfg.num_steps, self.num_envs, obs_shape, device=self.device,
                                    num_aux=len(self.aux_names), sanitize=cfg.guards)
        self.action_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.batch_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)

        # Training state (saved in checkpoints).
        self.update = 0
        self.env_steps = 0
        self.epoch = 0
        self.best_sharpe = -math.inf
        self.history: list[dict[str, float]] = []
        self._obs: Tensor | None = None
        self._aux: Tensor | None = None
        self._starts: Tensor | None = None
        self._aux_available: bool | None = None
        self._episode_return = torch.zeros(self.num_envs, device=self.device)
        self._last_episode_return = torch.tensor(float("nan"), device=self.device)
        self._env_takes_tensors = True

    # -- the environment loop ------------------------------------------------------------

    def _to_tensor(self, x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x,
                               dtype=dtype, device=self.device)

    def _forward(self, obs: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Model outputs, repaired, and their non-finite counts (one per ``output_names``),
        or None where the model guards and counts its outputs itself."""
        out = self.model(obs)
        if isinstance(self.model, OutputGuardedModel) or not self.config.guards:
            return out, None
        present = {name: out[name] for name in self.output_names if name in out}
        guarded, counts = guard_outputs(present)
        full = torch.zeros(len(self.output_names), dtype=torch.int64, device=self.device)
        full[[self.output_names.index(n) for n in present]] = counts
        return {**out, **guarded}, full

    def _aux_from(self, info: dict) -> Tensor:
        if "aux_targets" in info:
            return self._to_tensor(info["aux_targets"])
        return torch.zeros(self.num_envs, len(self.aux_names), device=self.device)

    def _reset_env(self) -> None:
        obs, info = self.env.reset(seed=self.config.seed)
        if self._aux_available is None:
            self._aux_available = "aux_targets" in info
            if self.config.enable_auxiliary_losses and not self._aux_available:
                warnings.warn(
                    "the environment gives no info['aux_targets']: auxiliary losses are off",
                    stacklevel=6,  # the caller of train()
                )
        self._env_takes_tensors = isinstance(obs, Tensor)
        self._obs = self._to_tensor(obs)
        self._aux = self._aux_from(info)
        self._starts = torch.ones(self.num_envs, device=self.device)

    @property
    def aux_losses_on(self) -> bool:
        return bool(self.config.enable_auxiliary_losses and self._aux_available)

    @torch.inference_mode()
    def collect_rollout(self, counters: dict[str, Tensor]) -> None:
        """Fill the buffer with ``num_steps`` steps of every env, then run GAE."""
        with one_cpu_thread(self.device):
            self._collect_rollout(counters)

    def _collect_rollout(self, counters: dict[str, Tensor]) -> None:
        cfg = self.config
        self.buffer.reset()
        if self._obs is None:
            self._reset_env()
        for _ in range(cfg.num_steps):
            out, bad = self._forward(self._obs)
            if bad is not None:
                counters["outputs"] += bad
            actions = sample_actions(out["action_logits"], self.action_generator)
            logprobs = log_prob(out["action_logits"], actions)
            env_actions = actions if self._env_takes_tensors else actions.cpu().numpy()
            obs, reward, terminated, truncated, info = self.env.step(env_actions)
            reward = self._to_tensor(reward)
            terminated = self._to_tensor(terminated, torch.bool)
            truncated = self._to_tensor(truncated, torch.bool)
            done = terminated | truncated
            self._track_episodes(reward, done, info)
            if "final_obs" in info:  # bootstrap truncated episodes (docs/design.md, gae)
                final_value = self._forward(self._final_obs(info))[0]["value"].reshape(-1)
                bootstrap = truncated & ~terminated
                reward = reward + cfg.gamma * torch.where(bootstrap, final_value, 0.0)
            self.buffer.add(self._obs, actions, logprobs, reward, out["value"].reshape(-1),
                            self._starts, self._aux)
            self._obs = self._to_tensor(obs)
            self._aux = self._aux_from(info)
            self._starts = done.to(torch.float32)
        self.env_steps += cfg.num_steps * self.num_envs
        last_values = self._forward(self._obs)[0]["value"].reshape(-1)
        self.buffer.compute_returns_and_advantage(last_values, self._starts, cfg.gamma,
                                                  cfg.gae_lambda)

    def _final_obs(self, info: dict) -> Tensor:
        final = info["final_obs"]
        if isinstance(final, Tensor):
            return final.to(self.device, torch.float32)
        # gymnasium: an object array with None where the env did not finish.
        rows = [np.zeros_like(np.asarray(self._obs[0].cpu())) if o is None else np.asarray(o)
                for o in final]
        return self._to_tensor(np.stack(rows))

    def _track_episodes(self, reward: Tensor, done: Tensor, info: dict) -> None:
        """Keep the mean return of the latest finished episodes as a device tensor."""
        if "episode_return" in info:  # TradingEnv adds up its episodes itself
            self._last_episode_return = info["episode_return"].float().mean()
            return
        self._episode_return += reward
        finished = done.float()
        count = finished.sum()
        mean = (self._episode_return * finished).sum() / count.clamp_min(1)
        # where, not an if on count: no host sync per step.
        self._last_episode_return = torch.where(count > 0, mean, self._last_episode_return)
        self._episode_return *= 1 - finished

    # -- the PPO update --------------------------------------------------------------------

    def _new_counters(self) -> dict[str, Tensor]:
        z = lambda n: torch.zeros(n, dtype=torch.int64, device=self.device)  # noqa: E731
        return {"outputs": z(len(self.output_names)), "aux_loss_zeroed": z(len(self.aux_names)),
                "grads": z(len(self.guard.groups)), "skipped": z(())}

    def _stat_names(self) -> list[str]:
        """The metric names of the statistics one minibatch step returns, in order."""
        names = ["loss/policy", "loss/value", "loss/entropy", "train/approx_kl",
                 "train/clip_fraction"]
        if self.aux_losses_on:
            names += [f"loss/{name}" for name in self.aux_names]
        if self.config.guards:
            names += ["train/grad_norm", "train/clip_coef"]
        return names

    def update_step(self, batch: RolloutBatch, aux_scale: Tensor | None,
                    counters: dict[str, Tensor]) -> Tensor | None:
        """One minibatch: forward, loss, backward, gradient guard, optimizer step.

        Returns the step's statistics (as :meth:`_stat_names` orders them) as one device
        tensor, or None when the ``skip`` policy skipped the step. This is the seam where
        gradient synchronisation (after ``backward``) and a captured step can plug in.
        """
        cfg = self.config
        out, bad = self._forward(batch.obs)
        if bad is not None:
            counters["outputs"] += bad
        aux = {}
        if aux_scale is not None:
            aux = dict(
                aux_predictions=torch.stack([out[n].reshape(-1) for n in self.pred_names], 1),
                aux_targets=batch.aux_targets, aux_scale=aux_scale,
                aux_coefs=torch.tensor(cfg.aux_coefs, device=self.device),
                guard_aux=cfg.guards,
            )
        terms = ppo_loss(out["action_logits"], out["value"].reshape(-1), batch.actions,
                         batch.old_logprobs, batch.advantages, batch.returns,
                         clip_epsilon=cfg.clip_epsilon, value_coef=cfg.value_coef,
                         entropy_coef=cfg.entropy_coef, **aux)
        stats = [terms.policy, terms.value, terms.entropy, terms.approx_kl, terms.clip_fraction]
        if aux_scale is not None:
            stats += list(terms.aux.unbind())
            if cfg.guards:
                counters["aux_loss_zeroed"] += terms.aux_zeroed

        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if cfg.guards:
            report = self.guard.step()
            counters["grads"] += report.nonfinite_counts
            counters["skipped"] += report.skipped
            # "skip" must not let Adam's momentum move the weights: one sync.
            if cfg.nan_policy == "skip" and bool(report.skipped):
                return None
            stats += [report.total_norm, report.clip_coef]
        self.optimizer.step()
        return torch.stack(stats).detach()

    def ppo_update(self, counters: dict[str, Tensor]) -> dict[str, Tensor]:
        """``num_epochs`` passes of minibatch updates over the buffer; returns the mean
        statistics by metric name."""
        cfg = self.config
        names = self._stat_names()
        aux_scale = None
        if self.aux_losses_on:
            targets = self.buffer.aux_targets.reshape(-1, len(self.aux_names))
            aux_scale = targets.var(0).clamp_min(1e-12)
        kl_index = names.index("train/approx_kl")
        # One stacked add per minibatch instead of one per statistic.
        sums = torch.zeros(len(names), device=self.device)
        n_batches = 0
        for _ in range(cfg.num_epochs):
            epoch_kl = torch.zeros((), device=self.device)
            epoch_batches = 0
            for batch in self.buffer.minibatches(cfg.batch_size, self.batch_generator):
                stats = self.update_step(batch, aux_scale, counters)
                if stats is None:
                    continue
                sums += stats
                epoch_kl += stats[kl_index]
                epoch_batches += 1
                n_batches += 1
            if cfg.target_kl is not None and epoch_batches and \
                    float(epoch_kl / epoch_batches) > cfg.target_kl:
                break
        return dict(zip(names, (sums / max(n_batches, 1)).unbind(), strict=True))

    # -- training ----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Env steps (per env) that cover the training bars once."""
        if not isinstance(self.env, EpochEnv):
            raise ValueError("this environment has no steps_per_epoch: use train(total_steps=...)")
        return int(self.env.steps_per_epoch)

    def metric_schema(self) -> MetricSchema:
        """The columns this trainer's metrics rows have."""
        sanitizers = [("env", name) for name in self.env.sanitize_counts()] \
            if isinstance(self.env, SanitizingEnv) else []
        sanitizers += [("buffer", name) for name in self.buffer.sanitize_counts]
        return MetricSchema(self.guard.groups, self.output_names, self.aux_names, sanitizers)

    def train(self, epochs: int | None = None, *, total_steps: int | None = None) -> list[dict]:
        """Train for ``epochs`` passes over the training bars or ``total_steps`` env steps
        (counted over all envs), continuing from the current state (e.g. after
        :meth:`load_checkpoint`). Returns the metrics rows of all updates so far."""
        if (epochs is None) == (total_steps is None):
            raise ValueError("give exactly one of epochs or total_steps")
        per_update = self.config.num_steps * self.num_envs
        if epochs is not None:
            updates_per_epoch = max(1, math.ceil(self.steps_per_epoch() / self.config.num_steps))
            target_updates = epochs * updates_per_epoch
        else:
            updates_per_epoch = None
            target_updates = math.ceil(total_steps / per_update)
        writer = MetricsWriter(self.run_dir, self.metric_schema().columns,
                               append=self.update > 0)
        bar = ProgressBar(target_updates, self.update, enabled=self.progress)
        try:
            while self.update < target_updates:
                row = self._one_update(updates_per_epoch)
                writer.write(row)
                bar.update(row)
            self.save("checkpoint.pt")
        finally:
            bar.close()
            writer.flush()
        return self.history

    def _one_update(self, updates_per_epoch: int | None) -> dict[str, float]:
        start = time.perf_counter()
        counters = self._new_counters()
        env_before = self._env_counts()
        self.model.train()
        self.collect_rollout(counters)
        t_rollout = time.perf_counter() - start
        stats = self.ppo_update(counters)
        self.update += 1
        if updates_per_epoch is not None:
            self.epoch = math.ceil(self.update / updates_per_epoch)
        row = self._metrics_row(stats, counters, env_before, time.perf_counter() - start,
                                t_rollout)
        self._check_parameters()
        epoch_done = updates_per_epoch is not None and self.update % updates_per_epoch == 0
        if epoch_done and self.validation is not None:
            row[VALIDATION_SHARPE] = self._validate()
        self.history.append(row)
        self._log_nan_events(row)
        if epoch_done and self.validation is not None and row[VALIDATION_SHARPE] > \
                self.best_sharpe:
            self.best_sharpe = row[VALIDATION_SHARPE]
            self.save("best.pt")
        if self.config.checkpoint_every and self.update % self.config.checkpoint_every == 0:
            self.save("checkpoint.pt")
        return row

    def _env_counts(self) -> dict[str, Tensor]:
        """Running sanitizer counts of the env, cloned (their change is what an update saw)."""
        if not isinstance(self.env, SanitizingEnv):
            return {}
        return {name: counts.clone() for name, counts in self.env.sanitize_counts().items()}

    def _metrics_row(self, stats: dict[str, Tensor], counters: dict[str, Tensor],
                     env_before: dict[str, Tensor], seconds: float, t_rollout: float
                     ) -> dict[str, float]:
        values = self.buffer.values.reshape(-1)
        returns = self.buffer.returns.reshape(-1)
        var = returns.var()
        explained = 1 - (returns - values).var() / var if float(var) > 0 else torch.tensor(0.0)
        row: dict[str, float] = {
            "update": self.update, "epoch": self.epoch, "env_steps": self.env_steps,
            "perf/steps_per_sec": self.config.num_steps * self.num_envs / seconds,
            "perf/rollout_seconds": t_rollout, "perf/update_seconds": seconds - t_rollout,
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/explained_variance": float(explained),
            "rollout/mean_step_reward": float(self.buffer.rewards.mean()),
            "rollout/mean_episode_return": float(self._last_episode_return),
        }
        for name in ("loss/policy", "loss/value", "loss/entropy",
                     *(f"loss/{aux}" for aux in self.aux_names), "train/approx_kl",
                     "train/clip_fraction", "train/grad_norm", "train/clip_coef"):
            row[name] = float(stats[name]) if name in stats else math.nan
        row[VALIDATION_SHARPE] = math.nan
        counts = {
            "nonfinite/grad/": (self.guard.groups, counters["grads"]),
            "nonfinite/output/": (self.output_names, self._output_counts(counters)),
            "nonfinite/loss/": (self.aux_names, counters["aux_loss_zeroed"]),
        }
        for prefix, (names, values) in counts.items():
            row.update(zip([prefix + n for n in names], values.tolist(), strict=True))
        row["guard/skipped_steps"] = int(counters["skipped"])
        sanitized = {("env", k): v - env_before[k] for k, v in self._env_counts().items()}
        sanitized.update({("buffer", k): v for k, v in self.buffer.sanitize_counts.items()})
        for (source, what), delta in sanitized.items():
            nonfinite, clamped = delta.tolist()
            row[f"sanitized/{source}/{what}/nonfinite"] = nonfinite
            row[f"sanitized/{source}/{what}/clamped"] = clamped
        return row

    def _output_counts(self, counters: dict[str, Tensor]) -> Tensor:
        if isinstance(self.model, OutputGuardedModel):
            return self.model.take_output_counts()
        return counters["outputs"]

    def _check_parameters(self) -> None:
        bad = int(ops.count_nonfinite([p.detach() for p in self.model.parameters()]).sum())
        if bad:
            raise NonFiniteParametersError(
                f"{bad} model parameters became NaN/inf at update {self.update} "
                f"(env step {self.env_steps}); training stopped. The last good checkpoint in "
                f"{self.run_dir} is kept. Turn the guards on (nan_policy='zero') or lower the "
                "learning rate."
            )

    def _log_nan_events(self, row: dict[str, float]) -> None:
        if not self.config.guards:
            return
        self.guard.log_events()
        for name in self.output_names:
            if row[f"nonfinite/output/{name}"]:
                logger.warning("Model output %s contains NaN/inf (%d elements this update)",
                               name.replace("action_logits", "logits"),
                               row[f"nonfinite/output/{name}"])
        for name in self.aux_names:
            if row[f"nonfinite/loss/{name}"]:
                logger.warning("%s_loss was NaN/inf, setting to 0 (%d minibatches this update)",
                               name, row[f"nonfinite/loss/{name}"])

    # -- validation and checkpoints ------------------------------------------------------

    def _validate(self) -> float:
        """The greedy policy's Sharpe ratio on the validation bars."""
        from pyppo.evaluation import backtest  # evaluation imports the env; keep it lazy

        env = self.env
        self.model.eval()
        result = backtest(self.validation, self.model, window=env.window, fee=env.fee,
                          allow_short=env.allow_short, device=self.device)
        self.model.train()
        return result.metrics()["sharpe"]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain data (no pickled objects)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": dataclasses.asdict(self.config),
            "run_config": self.run_config,
            "agent": {
                "model": self.model.describe() if isinstance(self.model, Describable) else None,
                "env": self.env.describe() if isinstance(self.env, Describable) else None,
            },
            "trainer": {
                "update": self.update, "env_steps": self.env_steps, "epoch": self.epoch,
                "best_sharpe": self.best_sharpe, "history": self.history,
                "obs": self._obs, "aux": self._aux, "starts": self._starts,
                "aux_available": self._aux_available,
                "last_episode_return": self._last_episode_return,
                "env_takes_tensors": self._env_takes_tensors,
                "episode_return": self._episode_return,
            },
            "env": self.env.state_dict() if isinstance(self.env, StatefulEnv) else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "action": self.action_generator.get_state(),
                "batch": self.batch_generator.get_state(),
            },
            "data_fingerprint": self.data_fingerprint,
        }

    def save(self, name: str) -> Path | None:
        """Write a checkpoint into ``run_dir`` atomically (never with NaN parameters)."""
        if self.run_dir is None:
            return None
        self._check_parameters()
        return save_checkpoint(self.run_dir / name, self.state_dict())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a run saved by :meth:`save`; raises CheckpointError if it does not fit."""
        state = load_checkpoint(path, expect_fingerprint=self.data_fingerprint,
                                map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
        saved, mine = state["config"], dataclasses.asdict(self.config)
        differ = {k: (saved.get(k), v) for k, v in mine.items()
                  if k != "checkpoint_every" and not same_value(saved.get(k), v)}
        if differ:
            raise CheckpointError(
                f"checkpoint {path} was made with other settings: "
                + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in differ.items())
            )
        t = state["trainer"]
        self.update, self.env_steps, self.epoch = t["update"], t["env_steps"], t["epoch"]
        self.best_sharpe, self.history = t["best_sharpe"], t["history"]
        self._obs, self._aux, self._starts = t["obs"], t["aux"], t["starts"]
        self._aux_available = t["aux_available"]
        self._last_episode_return = t["last_episode_return"].to(self.device)
        self._env_takes_tensors = t["env_takes_tensors"]
        self._episode_return = t["episode_return"].to(self.device)
        if state["env"] is not None and isinstance(self.env, StatefulEnv):
            self.env.load_state_dict(state["env"])
        elif self._obs is not None:
            self._obs = None  # a foreign env cannot be restored: start fresh episodes
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.action_generator.set_state(state["rng"]["action"].cpu())
        self.batch_generator.set_state(state["rng"]["batch"].cpu())
