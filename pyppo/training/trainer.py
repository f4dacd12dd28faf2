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

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyppo import ops
from pyppo.buffer import RolloutBuffer
from pyppo.checkpoint import (
    LATEST,
    AgentSpec,
    Checkpoint,
    CheckpointError,
    DataInfo,
    ProcessState,
    TrainerState,
    load_checkpoint,
)
from pyppo.config import ModelConfig, PPOConfig, RunConfig, ppo_config, same_value
from pyppo.device import resolve_device
from pyppo.distributed import (
    all_reduce_max,
    broadcast_module_,
    gather_to_rank0,
    rank_and_world,
    to_cpu,
)
from pyppo.guard import GradientGuard, guard_outputs
from pyppo.heads import DEFAULT_AUX_LABELS, AuxHeads
from pyppo.metrics import MEMBER, SEED, MetricSchema, log_nan_events
from pyppo.optim import StackedAdam, decay_groups, regrouped
from pyppo.protocols import (
    AuxTargetEnv,
    EpochEnv,
    OutputGuardedModel,
    PopulationModel,
    SanitizingEnv,
    StatefulEnv,
)
from pyppo.training.callbacks import TrainingCallback, broadcast_metrics
from pyppo.training.recorder import (
    MetricsWriter,
    NaNCounters,
    ProgressBar,
    member_rows,
    reduce_rows,
    sanitized_columns,
)
from pyppo.training.rollout import Rollout
from pyppo.training.stop import StopRequest, TrainingInterrupted
from pyppo.training.update import PPOUpdate

logger = logging.getLogger("pyppo")


class NonFiniteParametersError(RuntimeError):
    """The model's parameters contain NaN/inf: training cannot continue."""


class PPOTrainer:
    """Clipped PPO with auxiliary return heads and pyppo's NaN guards.

    :param model: a :class:`pyppo.TradingActorCritic`, or any module whose ``forward(obs)``
        returns a dict with ``action_logits`` and ``value`` (and ``pred_<label>`` for the
        two auxiliary horizons when auxiliary losses are on); or a population
        (:class:`pyppo.population.PopulationActorCritic`, one member per seed of
        ``config.seeds``, with a :class:`~pyppo.TradingEnv` made with those seeds).
    :param environment: a :class:`pyppo.TradingEnv`, or a gymnasium vector env with discrete
        actions and ``autoreset_mode=SAME_STEP``; auxiliary targets come from
        ``info["aux_targets"]`` (without them auxiliary losses are turned off, with one
        warning). What else the trainer uses of it is declared in :mod:`pyppo.protocols`.
    :param config: the PPO settings (:class:`pyppo.config.PPOConfig`, whose defaults are the
        command line's); keyword ``overrides`` replace single fields, e.g.
        ``PPOTrainer(model, env, enable_auxiliary_losses=False, aux_1h_coef=0.01)``.
    :param device: where training runs (default: the environment's device, else the CPU).
    :param run_dir: where ``metrics.csv``, checkpoints and TensorBoard logs go (none if None).
    :param callbacks: run between updates (:class:`pyppo.training.TrainingCallback`), e.g.
        :class:`pyppo.evaluation.BestCheckpoint`, which backtests the greedy policy on
        validation bars after every epoch and keeps the best as ``best.pt``.
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
        callbacks: Sequence[TrainingCallback] = (),
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
            raise ValueError(
                f"the environment is on {env_device} but device={self.device}; make them the same"
            )
        # Under torch.distributed each process trains its share of the envs (``environment``)
        # and of every minibatch; docs/design.md, "Many processes".
        self.rank, self.world_size = rank_and_world()
        group = dist.group.WORLD if self.world_size > 1 else None
        # A population: one member per seed, the model's and the env's members alike.
        self.seeds = cfg.member_seeds
        self.members = len(self.seeds)
        model_members = model.members if isinstance(model, PopulationModel) else 1
        env_members = getattr(environment, "members", 1)
        if model_members != self.members or env_members != self.members:
            raise ValueError(
                f"{self.members} member seeds, a model of {model_members} and an env of "
                f"{env_members}: make a population's model and env with one member per seed"
            )
        self.envs_per_member = self.num_envs // self.members
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.device)
        broadcast_module_(self.model)  # identical initial weights on every process
        if self.members == 1:
            # fused: one kernel per step instead of ~10 small ops per parameter tensor.
            self.optimizer = torch.optim.AdamW(
                decay_groups(self.model, cfg.weight_decay), lr=cfg.lr, eps=1e-5, fused=True
            )
        else:  # per member: its own step count and skipped steps
            self.optimizer = StackedAdam(
                self.model.parameters(),
                cfg.per_member("lr"),
                eps=1e-5,
                weight_decay=cfg.weight_decay,
            )
        self.guard = GradientGuard(
            self.model,
            cfg.max_grad_norm if cfg.guards else math.inf,
            policy=cfg.nan_policy,
            process_group=group,
            num_members=self.members,
        )
        self.callbacks = list(callbacks)
        names = [cb.name for cb in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callbacks need distinct names, got {names}")
        self.data_fingerprint = data_fingerprint
        self.progress = progress and self.rank == 0
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # The run's whole configuration and data, when a caller has them (the CLI does).
        self.run_config: RunConfig | None = None
        self.data_info: DataInfo | None = None

        labels = (
            environment.aux_labels if isinstance(environment, AuxTargetEnv) else DEFAULT_AUX_LABELS
        )
        self.heads = AuxHeads.from_labels(labels)
        if isinstance(model, OutputGuardedModel):
            self.output_names = tuple(model.output_names)
        else:
            self.output_names = self.heads.output_names()
        # Other models' outputs are repaired here, predictions clamped as pyppo's model does.
        self._output_limits = self.heads.output_limits(ModelConfig.aux_limit)
        obs_shape = tuple(environment.single_observation_space.shape)
        # A portfolio env acts once per symbol (MultiDiscrete) and has targets per symbol.
        action_shape = tuple(getattr(environment.single_action_space, "shape", ()) or ())
        symbols = action_shape[0] if action_shape else 1
        if action_shape and self.members > 1:
            raise ValueError("a population (several seeds) cannot train a portfolio env yet")
        self.buffer = RolloutBuffer(
            cfg.num_steps,
            self.num_envs,
            obs_shape,
            device=self.device,
            num_aux=len(self.heads) * symbols,
            action_shape=action_shape,
            sanitize=cfg.guards,
        )
        # Each process its own episodes, actions and minibatches: seeds offset by the rank;
        # each member its own, from its seed.
        seeds = [seed + 1000 * self.rank for seed in self.seeds]
        self.rollout = Rollout(
            environment, self.buffer, seeds=seeds, want_aux=cfg.enable_auxiliary_losses
        )
        self.batch_generators = [
            torch.Generator(device=self.device).manual_seed(seed + 1) for seed in seeds
        ]
        self.updater = PPOUpdate(
            self._forward,
            self.optimizer,
            self.guard,
            cfg,
            self.heads,
            self.device,
            group,
            num_envs=self.envs_per_member,
            members=self.members,
            joint_actions=bool(action_shape),
        )

        # Set (e.g. by SIGINT, see pyppo.training.stop) to stop at the next update boundary.
        self.stop = StopRequest()

        # Training state (saved in checkpoints).
        self.update = 0
        self.env_steps = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    # -- the policy and the rollout ----------------------------------------------------

    def _forward(self, obs: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Model outputs, repaired, and their non-finite counts (one per ``output_names``),
        or None where the model guards and counts its outputs itself. A population's
        observations come member by member: ``(M * N, obs)`` from the env (outputs as
        ``(M * N, ...)``), or ``(M, B, obs)`` from a minibatch (outputs ``(M, B, ...)``)."""
        if isinstance(self.model, PopulationModel) and obs.dim() == 2:
            out, bad = self._forward(obs.view(self.members, -1, obs.shape[-1]))
            return {name: value.flatten(0, 1) for name, value in out.items()}, bad
        if self.config.bf16:
            # Matrix multiplies in bfloat16; the loss, its gradients' guard and Adam see
            # float32 (the outputs are cast back, the weights never leave float32).
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.model(obs)
            out = {name: value.float() for name, value in out.items()}
        else:
            out = self.model(obs)
        if isinstance(self.model, OutputGuardedModel) or not self.config.guards:
            return out, None
        present = {name: out[name] for name in self.output_names if name in out}
        guarded, counts = guard_outputs(present, self._output_limits)
        full = torch.zeros(len(self.output_names), dtype=torch.int64, device=self.device)
        full[[self.output_names.index(n) for n in present]] = counts
        return {**out, **guarded}, full

    @property
    def aux_losses_on(self) -> bool:
        return bool(self.config.enable_auxiliary_losses and self.rollout.aux_available)

    def collect_rollout(self, counters: NaNCounters) -> None:
        """Fill the buffer with ``num_steps`` steps of every env, then run GAE."""
        cfg = self.config
        self.rollout.collect(
            self._forward, cfg.per_member("gamma"), cfg.per_member("gae_lambda"), counters.outputs
        )
        self.env_steps += cfg.num_steps * self.envs_per_member * self.world_size

    # -- the PPO update --------------------------------------------------------------------

    def ppo_update(self, counters: NaNCounters) -> dict[str, Tensor]:
        """``num_epochs`` passes of minibatch updates over the buffer (see
        :class:`pyppo.training.update.PPOUpdate`); returns the mean statistics by name."""
        return self.updater.run(
            self.buffer, self.batch_generators, counters, aux=self.aux_losses_on
        )

    # -- training ----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Env steps (per env) that cover the training bars once."""
        if not isinstance(self.env, EpochEnv):
            raise ValueError("this environment has no steps_per_epoch: use train(total_steps=...)")
        # Every process's envs together cover the bars: each does its share of the steps.
        return math.ceil(int(self.env.steps_per_epoch) / self.world_size)

    def updates_per_epoch(self) -> int:
        """Updates in one training epoch: enough rollouts to cover the training bars once
        (the last one may reach past them)."""
        return max(1, math.ceil(self.steps_per_epoch() / self.config.num_steps))

    def env_steps_per_epoch(self) -> int:
        """Env steps one training epoch takes, over every env of every process (of each
        member: a population's members each take as many)."""
        steps = self.updates_per_epoch() * self.config.num_steps
        return steps * self.envs_per_member * self.world_size

    def metric_schema(self) -> MetricSchema:
        """The columns this trainer's metrics rows have."""
        sanitizers = (
            [("env", name) for name in self.env.sanitize_counts()]
            if isinstance(self.env, SanitizingEnv)
            else []
        )
        if self.members == 1:
            # (A population's buffer only ever sees what its env sanitized already; its
            # counts are the whole population's, checked in _warn_if_the_buffer_sanitized.)
            sanitizers += [("buffer", name) for name in self.buffer.sanitize_counts]
        extra = [column for cb in self.callbacks for column in cb.columns]
        return MetricSchema(
            self.guard.groups,
            self.output_names,
            self.heads,
            sanitizers,
            extra,
            population=self.members > 1,
        )

    def train(self, epochs: int | None = None, *, total_steps: int | None = None) -> list[dict]:
        """Train for ``epochs`` passes over the training bars or ``total_steps`` env steps
        (counted over all envs, of each member for a population), continuing from the
        current state (e.g. after :meth:`load_checkpoint`). A callback may end training
        early. Returns the metrics rows of all updates so far (one per member per update)."""
        if (epochs is None) == (total_steps is None):
            raise ValueError("give exactly one of epochs or total_steps")
        per_update = self.config.num_steps * self.envs_per_member * self.world_size
        if epochs is not None:
            updates_per_epoch = self.updates_per_epoch()
            target_updates = epochs * updates_per_epoch
        else:
            updates_per_epoch = None
            target_updates = math.ceil(total_steps / per_update)
        resume_from = (self.update, self.env_steps) if self.update else None
        writer = MetricsWriter(
            self.run_dir if self.rank == 0 else None,
            self.metric_schema().columns,
            history=self.history,
            resume_from=resume_from,
        )
        bar = ProgressBar(target_updates, self.update, enabled=self.progress)
        try:
            while self.update < target_updates:
                rows, due = self._one_update(updates_per_epoch)
                # The rows are on disk before any checkpoint that covers them.
                for row in rows:
                    writer.write(row)
                bar.update(rows)
                stop_asked = False
                for callback in due:
                    stop_asked |= bool(callback.on_result(self, rows))
                if self.config.checkpoint_every and self.update % self.config.checkpoint_every == 0:
                    self.save(LATEST)
                # Decided here, between updates (a resumable state), by every process at once.
                stop = all_reduce_max(float(self.stop.signal or 0), self.device)
                if stop:
                    self.save(LATEST)
                    raise TrainingInterrupted(int(stop), self.update)
                if stop_asked:
                    break
            self.save(LATEST)
        finally:
            bar.close()
            writer.flush()
        return self.history

    def _one_update(
        self, updates_per_epoch: int | None
    ) -> tuple[list[dict[str, float]], list[TrainingCallback]]:
        """One update; returns its metrics rows, one per member (the due callbacks' metrics
        merged in), and those callbacks, whose :meth:`~TrainingCallback.on_result` the loop
        runs once the rows are written."""
        start = time.perf_counter()
        schema = self.metric_schema()
        counters = NaNCounters.zeros(schema, self.device, self.members)
        env_before = self._env_counts()
        self.model.train()
        self.collect_rollout(counters)
        t_rollout = time.perf_counter() - start
        stats = self.ppo_update(counters)
        self.update += 1
        if updates_per_epoch is not None:
            self.epoch = math.ceil(self.update / updates_per_epoch)
        seconds = time.perf_counter() - start
        rows = self._metrics_rows(stats, counters, env_before, seconds, t_rollout, schema)
        rows = reduce_rows(rows, self.device)
        self._check_parameters()
        epoch_done = updates_per_epoch is not None and self.update % updates_per_epoch == 0
        due = [cb for cb in self.callbacks if cb.due(self, epoch_done)]
        for callback in due:
            for name, values in self._run_callback(callback).items():
                for k, row in enumerate(rows):
                    row[name] = values if self.members == 1 else values[k]
        self.history.extend(rows)
        if self.config.guards and self.rank == 0:
            for row in rows:
                log_nan_events(row, schema)
        return rows, due

    def _run_callback(self, callback: TrainingCallback) -> dict[str, Any]:
        """``callback``'s metrics, computed on rank 0 and broadcast to every process."""
        metrics = callback.evaluate(self) if self.rank == 0 else None
        if isinstance(self.model, OutputGuardedModel):
            self.model.take_output_counts()  # a callback's forward passes are not training's
        return broadcast_metrics(metrics, callback.columns, self.members, self.device)

    def _env_counts(self) -> dict[str, Tensor]:
        """Running sanitizer counts of the env, cloned (their change is what an update saw)."""
        if not isinstance(self.env, SanitizingEnv):
            return {}
        return {name: counts.clone() for name, counts in self.env.sanitize_counts().items()}

    def _metrics_rows(
        self,
        stats: dict[str, Tensor],
        counters: NaNCounters,
        env_before: dict[str, Tensor],
        seconds: float,
        t_rollout: float,
        schema: MetricSchema,
    ) -> list[dict[str, float]]:
        """The update's metrics rows, one per member, read back in two transfers."""
        members = self.members
        # (T, M * N) -> (M, T * N): each member's own transitions.
        by_member = lambda x: x.view(x.shape[0], members, -1).transpose(0, 1).flatten(1)  # noqa: E731
        values, returns = by_member(self.buffer.values), by_member(self.buffer.returns)
        var = returns.var(1)
        explained = torch.where(var > 0, 1 - (returns - values).var(1) / var, 0.0)
        shared: dict[str, float] = {
            "update": self.update,
            "epoch": self.epoch,
            "env_steps": self.env_steps,
            "perf/steps_per_sec": self.config.num_steps * self.num_envs / seconds,
            "perf/rollout_seconds": t_rollout,
            "perf/update_seconds": seconds - t_rollout,
        }
        lr = self.optimizer.param_groups[0]["lr"] if members == 1 else self.optimizer.lr
        columns: dict[str, Tensor] = {
            "train/lr": torch.as_tensor(lr, dtype=torch.float64, device=self.device),
            "train/explained_variance": explained,
            "rollout/mean_step_reward": by_member(self.buffer.rewards).mean(1),
            "rollout/mean_episode_return": self.rollout.last_episode_return,
        }
        nan = torch.tensor(math.nan, device=self.device)
        columns.update({name: stats.get(name, nan) for name in schema.stats})
        if isinstance(self.model, OutputGuardedModel):
            counters.outputs += self.model.take_output_counts().view(counters.outputs.shape)
        columns.update(counters.columns(schema))
        sanitized = {("env", k): v - env_before[k] for k, v in self._env_counts().items()}
        if members == 1:
            sanitized.update({("buffer", k): v for k, v in self.buffer.sanitize_counts.items()})
        else:
            self._warn_if_the_buffer_sanitized()
        columns.update(sanitized_columns(sanitized))
        rows = member_rows(shared, columns, members)
        if members > 1:
            for k, row in enumerate(rows):
                rows[k] = {"update": row.pop("update"), MEMBER: k, SEED: self.seeds[k], **row}
        return rows

    def _warn_if_the_buffer_sanitized(self) -> None:
        """A population's buffer sanitizes again what its env handed over (the env counts
        per member, the buffer only in total): anything it finds means the env let a
        non-finite or out-of-range value through, which is logged (one host read)."""
        counts = torch.stack(list(self.buffer.sanitize_counts.values())).sum(0).tolist()
        if any(counts):
            logger.warning(
                "the rollout buffer repaired %d non-finite and clamped %d values this update "
                "(over every member)",
                *counts,
            )

    def _check_parameters(self) -> None:
        bad = int(ops.count_nonfinite([p.detach() for p in self.model.parameters()]).sum())
        if bad:
            latest = None if self.run_dir is None else self.run_dir / LATEST
            kept = (
                f"{latest} holds the last good state"
                if latest is not None and latest.exists()
                else "no checkpoint was saved before it"
            )
            raise NonFiniteParametersError(
                f"{bad} model parameters became NaN/inf at update {self.update} "
                f"(env step {self.env_steps}); training stopped and {kept}. Turn the guards on "
                "(nan_policy='zero', --nan-policy zero) or lower the learning rate."
            )

    # -- checkpoints ---------------------------------------------------------------------

    def _process_state(self) -> ProcessState:
        """What differs between processes: their episodes, envs and random streams."""
        return ProcessState(
            rollout=self.rollout.state_dict(),
            env=self.env.state_dict() if isinstance(self.env, StatefulEnv) else None,
            torch_rng=torch.get_rng_state(),
            batch_rng=[generator.get_state() for generator in self.batch_generators],
        )

    def checkpoint(self) -> Checkpoint:
        """Everything a resumed run needs (:class:`pyppo.checkpoint.Checkpoint`). Under
        torch.distributed every process must call it (it gathers their states); the result is
        complete on rank 0."""
        gathered = gather_to_rank0(to_cpu(dataclasses.asdict(self._process_state())))
        return Checkpoint(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            config=self.config,
            trainer=TrainerState(self.update, self.env_steps, self.epoch, self.history),
            agent=AgentSpec.of(self.model, self.env),
            # Every process's state on rank 0, which writes the file; empty elsewhere.
            ranks=[ProcessState(**state) for state in gathered or []],
            run_config=self.run_config,
            data_fingerprint=self.data_fingerprint,
            data=self.data_info,
            callbacks={cb.name: cb.state_dict() for cb in self.callbacks},
        )

    def save(self, name: str, model_state: dict[str, Tensor] | None = None) -> Path | None:
        """Write a checkpoint into ``run_dir`` atomically (never with NaN parameters). Every
        process must call it under torch.distributed; rank 0 writes.

        :param name: the file, in ``run_dir``.
        :param model_state: weights to write instead of the model's own (a population's
            best members, :class:`pyppo.evaluation.BestCheckpoint`).
        """
        if self.run_dir is None:
            return None
        self._check_parameters()
        checkpoint = self.checkpoint()
        if model_state is not None:
            checkpoint.model = model_state
        return checkpoint.save(self.run_dir / name) if self.rank == 0 else None

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a run saved by :meth:`save`; raises CheckpointError if it does not fit."""
        saved = load_checkpoint(
            path, expect_fingerprint=self.data_fingerprint, map_location=self.device
        )
        try:
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(
                regrouped(saved.optimizer, self.optimizer, list(self.model.parameters()))
            )
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
        differ = {
            f.name: (getattr(saved.config, f.name), getattr(self.config, f.name))
            for f in dataclasses.fields(PPOConfig)
            if f.name != "checkpoint_every"
            and not same_value(getattr(saved.config, f.name), getattr(self.config, f.name))
        }
        if differ:
            raise CheckpointError(
                f"checkpoint {path} was made with other settings: "
                + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in differ.items())
            )
        if len(saved.ranks) != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {len(saved.ranks)} processes, this run "
                f"has {self.world_size}: resume with the same number of processes"
            )
        t = saved.trainer
        self.update, self.env_steps, self.epoch, self.history = (
            t.update,
            t.env_steps,
            t.epoch,
            t.history,
        )
        for cb in self.callbacks:
            if cb.name in saved.callbacks:
                cb.load_state_dict(saved.callbacks[cb.name])
        mine = saved.ranks[self.rank]
        env_restored = mine.env is not None and isinstance(self.env, StatefulEnv)
        if env_restored:
            self.env.load_state_dict(mine.env)
        self.rollout.load_state_dict(mine.rollout, env_restored=env_restored)
        torch.set_rng_state(mine.torch_rng.cpu())
        for generator, state in zip(self.batch_generators, mine.batch_rng, strict=True):
            generator.set_state(state.cpu())
