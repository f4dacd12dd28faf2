"""PPOTrainer: rollout -> buffer -> GAE -> minibatch updates -> gradient guard -> step.

One *update* is one rollout of ``num_steps`` steps in every env followed by ``num_epochs``
passes of clipped-PPO minibatch updates over it (CleanRL's and SB3's PPO). One training
*epoch* covers the training bars once (``env.steps_per_epoch`` env steps per env).

NaN protection, in the order data flows (the seed note's fixes, each counted):
1. rewards and auxiliary targets are sanitized by the env and again by the buffer on insert
   (NaN/inf -> 0; targets clamped to ±100 %);
2. model outputs are counted and repaired by the guarded clamp (``pyppo.model.guard_outputs``);
3. a non-finite auxiliary loss is set to 0 (``aux_1h_loss was NaN/inf, setting to 0``);
4. gradients pass the fused guard (NaN/inf zeroed per group, total norm clipped);
5. after each update the parameters are checked; non-finite parameters stop training with
   :class:`NonFiniteParametersError` before any checkpoint is written.
Counters stay on the device during an update and are read once at its end.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pyppo import ops
from pyppo.buffer import RolloutBuffer
from pyppo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyppo.guard import GradientGuard
from pyppo.model import OUTPUT_NAMES, guard_outputs

logger = logging.getLogger("pyppo")

AUX_NAMES = ("aux_1h", "aux_24h")


class NonFiniteParametersError(RuntimeError):
    """The model's parameters contain NaN/inf: training cannot continue."""


@dataclass
class PPOConfig:
    """Every hyperparameter of a run; stored in checkpoints."""

    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    aux_1h_coef: float = 0.1
    aux_24h_coef: float = 0.1
    enable_auxiliary_losses: bool = True
    max_grad_norm: float = 0.5
    nan_policy: str = "zero"
    num_steps: int = 256
    num_epochs: int = 4
    batch_size: int = 256
    target_kl: float | None = None
    seed: int = 0
    checkpoint_every: int = 10


def _resolve(device: str | torch.device) -> torch.device:
    """``"cuda"`` as the current GPU's index, so that devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


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


def _pick(log_p: Tensor, actions: Tensor) -> Tensor:
    return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    """Log-probability of ``actions`` under the categorical of ``logits``."""
    return _pick(torch.log_softmax(logits, dim=-1), actions)


def log_prob_and_entropy(logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`log_prob` and the distribution's entropy, from one log-softmax."""
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return _pick(log_p, actions), entropy


class PPOTrainer:
    """Clipped PPO with auxiliary return heads and pyppo's NaN guards.

    Args:
        model: a :class:`pyppo.TradingActorCritic`, or any module whose ``forward(obs)``
            returns a dict with ``action_logits`` and ``value`` (and ``pred_1h``,
            ``pred_24h`` when auxiliary losses are on).
        environment: a :class:`pyppo.TradingEnv`, or a gymnasium vector env with discrete
            actions and ``autoreset_mode=SAME_STEP``; auxiliary targets come from
            ``info["aux_targets"]`` (without them auxiliary losses are turned off, with
            one warning).
        run_dir: where ``metrics.csv``, checkpoints and TensorBoard logs go (none if None).
        validation: held-out :class:`pyppo.MarketData`; when given, the greedy policy is
            backtested on it after every epoch and the best Sharpe is saved as ``best.pt``.
        guards: ``False`` turns off every guard this trainer owns (output repair, loss
            zeroing, gradient zeroing and clipping) to show what happens without them;
            the parameter check still stops a dead run.
        The other arguments are PPO hyperparameters (see :class:`PPOConfig`).
    """

    def __init__(
        self,
        model: nn.Module,
        environment: Any,
        *,
        lr: float = 3e-4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_epsilon: float = 0.2,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        aux_1h_coef: float = 0.1,
        aux_24h_coef: float = 0.1,
        enable_auxiliary_losses: bool = True,
        max_grad_norm: float = 0.5,
        nan_policy: str = "zero",
        num_steps: int = 256,
        num_epochs: int = 4,
        batch_size: int = 256,
        target_kl: float | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
        validation: Any = None,
        checkpoint_every: int = 10,
        guards: bool = True,
        data_fingerprint: str | None = None,
        progress: bool = True,
    ) -> None:
        self.config = PPOConfig(
            lr, gamma, gae_lambda, clip_epsilon, value_coef, entropy_coef, aux_1h_coef,
            aux_24h_coef, enable_auxiliary_losses, max_grad_norm, nan_policy, num_steps,
            num_epochs, batch_size, target_kl, seed, checkpoint_every,
        )
        if nan_policy not in ("zero", "skip"):
            raise ValueError(f"nan_policy must be 'zero' or 'skip', got {nan_policy!r}")
        if batch_size < 1 or num_steps < 1 or num_epochs < 1:
            raise ValueError("num_steps, num_epochs and batch_size must be >= 1")
        self.env = environment
        self.num_envs = int(environment.num_envs)
        env_device = getattr(environment, "device", None)
        if device is None:
            device = env_device if env_device is not None else "cpu"
        self.device = _resolve(device)
        if env_device is not None and _resolve(env_device) != self.device:
            raise ValueError(f"the environment is on {env_device} but device={self.device}; "
                             "make them the same")
        torch.manual_seed(seed)
        self.model = model.to(self.device)
        # fused: one kernel per step instead of ~10 small ops per parameter tensor.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, eps=1e-5, fused=True)
        self.guards = guards
        self.guard = GradientGuard(
            self.model, max_grad_norm if guards else math.inf, policy=nan_policy
        )
        self.validation = validation
        self.data_fingerprint = data_fingerprint
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None

        obs_shape = tuple(environment.single_observation_space.shape)
        self.buffer = RolloutBuffer(
            num_steps, self.num_envs, obs_shape, device=self.device, num_aux=len(AUX_NAMES),
            sanitize=guards,
        )
        self.action_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.batch_generator = torch.Generator(device=self.device).manual_seed(seed + 1)

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
        self._writer: Any = None
        # Anything else a caller wants in checkpoints (the CLI keeps its settings here).
        self.extra: dict[str, Any] = {}

    # -- the environment loop ------------------------------------------------------------

    def _to_tensor(self, x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x,
                               dtype=dtype, device=self.device)

    def _forward(self, obs: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Model outputs, repaired, and their non-finite counts (one per OUTPUT_NAMES), or
        None where the model guards and counts its outputs itself (TradingActorCritic)."""
        out = self.model(obs)
        if hasattr(self.model, "output_nonfinite") or not self.guards:
            return out, None
        present = {name: out[name] for name in OUTPUT_NAMES if name in out}
        guarded, counts = guard_outputs(present)
        full = torch.zeros(len(OUTPUT_NAMES), dtype=torch.int64, device=self.device)
        full[[OUTPUT_NAMES.index(n) for n in present]] = counts
        return {**out, **guarded}, full

    def _aux_from(self, info: dict) -> Tensor:
        if "aux_targets" in info:
            return self._to_tensor(info["aux_targets"])
        return torch.zeros(self.num_envs, len(AUX_NAMES), device=self.device)

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
            if "final_obs" in info:  # bootstrap truncated episodes (DESIGN.md, gae)
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
        return {"outputs": z(len(OUTPUT_NAMES)), "aux_loss_zeroed": z(len(AUX_NAMES)),
                "grads": z(len(self.guard.groups)), "skipped": z(())}

    def _aux_losses(self, out: dict[str, Tensor], targets: Tensor, scale: Tensor,
                    zeroed: Tensor) -> Tensor:
        """Both auxiliary losses, ``[aux_1h, aux_24h]``: the MSE of each clamped prediction
        against its sanitized target, divided by the target's variance over the rollout
        (returns of ~0.5 % would otherwise give losses of ~1e-5 and heads that never learn;
        1.0 = no better than predicting the mean). A non-finite loss is counted and set to 0."""
        preds = torch.stack([out["pred_1h"].reshape(-1), out["pred_24h"].reshape(-1)], dim=1)
        losses = ((preds - targets) ** 2).mean(0) / scale
        if not self.guards:
            return losses
        finite = torch.isfinite(losses)
        zeroed += ~finite
        return torch.where(finite, losses, torch.zeros_like(losses))

    def ppo_update(self, counters: dict[str, Tensor]) -> dict[str, Tensor]:
        """``num_epochs`` passes of minibatch updates over the buffer; returns mean stats."""
        cfg = self.config
        names = ["policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"]
        if self.aux_losses_on:
            names += ["aux_1h_loss", "aux_24h_loss"]
            aux_coefs = torch.tensor([cfg.aux_1h_coef, cfg.aux_24h_coef], device=self.device)
            aux_scale = self.buffer.aux_targets.reshape(-1, len(AUX_NAMES)).var(0).clamp_min(1e-12)
        if self.guards:
            names += ["grad_norm", "clip_coef"]
        # One stacked add per minibatch instead of one per statistic.
        sums = torch.zeros(len(names), device=self.device)
        n_batches = 0
        for _ in range(cfg.num_epochs):
            epoch_kl = torch.zeros((), device=self.device)
            epoch_batches = 0
            for batch in self.buffer.minibatches(cfg.batch_size, self.batch_generator):
                out, bad = self._forward(batch.obs)
                if bad is not None:
                    counters["outputs"] += bad
                logprob, entropy = log_prob_and_entropy(out["action_logits"], batch.actions)
                logratio = logprob - batch.old_logprobs
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clip_fraction = ((ratio - 1.0).abs() > cfg.clip_epsilon).float().mean()
                adv = batch.advantages
                adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
                policy_loss = torch.max(
                    -adv * ratio,
                    -adv * ratio.clamp(1 - cfg.clip_epsilon, 1 + cfg.clip_epsilon),
                ).mean()
                value_loss = 0.5 * ((out["value"].reshape(-1) - batch.returns) ** 2).mean()
                entropy_mean = entropy.mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy_mean
                stats = [policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction]
                if self.aux_losses_on:
                    aux = self._aux_losses(out, batch.aux_targets, aux_scale,
                                           counters["aux_loss_zeroed"])
                    loss = loss + (aux_coefs * aux).sum()
                    stats += [aux[0], aux[1]]

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.guards:
                    report = self.guard.step()
                    counters["grads"] += report.nonfinite_counts
                    counters["skipped"] += report.skipped
                    # "skip" must not let Adam's momentum move the weights: one sync.
                    if cfg.nan_policy == "skip" and bool(report.skipped):
                        continue
                    stats += [report.total_norm, report.clip_coef]
                self.optimizer.step()
                sums += torch.stack(stats).detach()
                epoch_kl += approx_kl
                epoch_batches += 1
                n_batches += 1
            if cfg.target_kl is not None and epoch_batches and \
                    float(epoch_kl / epoch_batches) > cfg.target_kl:
                break
        return dict(zip(names, (sums / max(n_batches, 1)).unbind(), strict=True))

    # -- training ----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Env steps (per env) that cover the training bars once."""
        steps = getattr(self.env, "steps_per_epoch", None)
        if steps is None:
            raise ValueError("this environment has no steps_per_epoch: use train(total_steps=...)")
        return int(steps)

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
        bar = _progress(target_updates, self.update, enabled=self.progress)
        try:
            while self.update < target_updates:
                row = self._one_update(updates_per_epoch)
                bar.update(row)
            self.save("checkpoint.pt")
        finally:
            bar.close()
            if self._writer:
                self._writer.flush()
        return self.history

    def _one_update(self, updates_per_epoch: int | None) -> dict[str, float]:
        start = time.perf_counter()
        counters = self._new_counters()
        buffer_before = {k: v.clone() for k, v in self._env_counts().items()}
        self.model.train()
        t0 = time.perf_counter()
        self.collect_rollout(counters)
        t_rollout = time.perf_counter() - t0
        stats = self.ppo_update(counters)
        self.update += 1
        if updates_per_epoch is not None:
            self.epoch = math.ceil(self.update / updates_per_epoch)
        row = self._metrics_row(stats, counters, buffer_before, time.perf_counter() - start,
                                t_rollout)
        self._check_parameters()
        self.history.append(row)
        self._write_metrics(row)
        self._log_nan_events(row)
        epoch_done = updates_per_epoch is not None and self.update % updates_per_epoch == 0
        if epoch_done and self.validation is not None:
            self._validate()
        if self.config.checkpoint_every and self.update % self.config.checkpoint_every == 0:
            self.save("checkpoint.pt")
        return row

    def _env_counts(self) -> dict[str, Tensor]:
        counts = {f"buffer_{k}": v for k, v in self.buffer.sanitize_counts.items()}
        for name in ("return_counts", "aux_target_counts"):
            if hasattr(self.env, name):
                counts[f"env_{name}"] = getattr(self.env, name)
        return counts

    def _metrics_row(self, stats, counters, env_before, seconds, t_rollout) -> dict[str, float]:
        values = self.buffer.values.reshape(-1)
        returns = self.buffer.returns.reshape(-1)
        var = returns.var()
        explained = 1 - (returns - values).var() / var if float(var) > 0 else torch.tensor(0.0)
        row: dict[str, float] = {
            "update": self.update, "epoch": self.epoch, "env_steps": self.env_steps,
            "steps_per_sec": self.config.num_steps * self.num_envs / seconds,
            "rollout_seconds": t_rollout, "update_seconds": seconds - t_rollout,
            "lr": self.optimizer.param_groups[0]["lr"],
            "explained_variance": float(explained),
            "mean_step_reward": float(self.buffer.rewards.mean()),
        }
        row["mean_episode_return"] = float(self._last_episode_return)
        for name in ("policy_loss", "value_loss", "entropy", "aux_1h_loss", "aux_24h_loss",
                     "approx_kl", "clip_fraction", "grad_norm", "clip_coef"):
            row[name] = float(stats[name]) if name in stats else float("nan")
        for group, count in zip(self.guard.groups, counters["grads"].tolist(), strict=True):
            row[f"nonfinite_grad_{group}"] = count
        for name, count in zip(OUTPUT_NAMES, self._output_counts(counters).tolist(),
                               strict=True):
            row[f"nonfinite_output_{name}"] = count
        for name, count in zip(AUX_NAMES, counters["aux_loss_zeroed"].tolist(), strict=True):
            row[f"{name}_loss_zeroed"] = count
        row["skipped_steps"] = int(counters["skipped"])
        after = self._env_counts()
        for key, value in after.items():
            delta = value - env_before[key] if key.startswith("env_") else value
            label = key.replace("_counts", "").replace("env_return", "env_returns")
            row[f"{label}_nonfinite"], row[f"{label}_clamped"] = delta.tolist()
        return row

    def _output_counts(self, counters: dict[str, Tensor]) -> Tensor:
        own = getattr(self.model, "output_nonfinite", None)
        if own is None:
            return counters["outputs"]
        counts = own.clone()
        own.zero_()
        return counts

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
        if not self.guards:
            return
        self.guard.log_events()
        for name in OUTPUT_NAMES:
            if row[f"nonfinite_output_{name}"]:
                logger.warning("Model output %s contains NaN/inf (%d elements this update)",
                               name.replace("action_logits", "logits"),
                               row[f"nonfinite_output_{name}"])
        for name in AUX_NAMES:
            if row[f"{name}_loss_zeroed"]:
                logger.warning("%s_loss was NaN/inf, setting to 0 (%d minibatches this update)",
                               name, row[f"{name}_loss_zeroed"])

    # -- validation, metrics, checkpoints ------------------------------------------------

    def _validate(self) -> None:
        from pyppo.evaluation import backtest  # evaluation imports the env; keep it lazy

        env = self.env
        self.model.eval()
        result = backtest(self.validation, self.model, window=env.window, fee=env.fee,
                          allow_short=env.allow_short, aux_horizons=env.aux_horizons,
                          device=self.device)
        self.model.train()
        sharpe = result.metrics()["sharpe"]
        self.history[-1]["validation_sharpe"] = sharpe
        if sharpe > self.best_sharpe:
            self.best_sharpe = sharpe
            self.save("best.pt")

    def _write_metrics(self, row: dict[str, float]) -> None:
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.csv"
        new = not path.exists() or self.update == 1
        with open(path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        writer = self._tensorboard()
        if writer is not None:
            for key, value in row.items():
                writer.add_scalar(key, value, self.env_steps)

    def _tensorboard(self) -> Any:
        if self._writer is None and self.run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer or None

    def state_dict(self) -> dict[str, Any]:
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.config),
            "trainer": {
                "update": self.update, "env_steps": self.env_steps, "epoch": self.epoch,
                "best_sharpe": self.best_sharpe, "history": self.history,
                "obs": self._obs, "aux": self._aux, "starts": self._starts,
                "aux_available": self._aux_available,
                "last_episode_return": self._last_episode_return,
                "env_takes_tensors": self._env_takes_tensors,
                "episode_return": self._episode_return,
            },
            "env": env_state,
            "rng": {
                "torch": torch.get_rng_state(),
                "action": self.action_generator.get_state(),
                "batch": self.batch_generator.get_state(),
            },
            "data_fingerprint": self.data_fingerprint,
            "extra": self.extra,
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
        saved = state["config"]
        mine = asdict(self.config)
        differ = {k: (saved.get(k), v) for k, v in mine.items()
                  if k != "checkpoint_every" and saved.get(k) != v}
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
        if state["env"] is not None:
            self.env.load_state_dict(state["env"])
        elif self._obs is not None:
            self._obs = None  # a foreign env cannot be restored: start fresh episodes
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.action_generator.set_state(state["rng"]["action"].cpu())
        self.batch_generator.set_state(state["rng"]["batch"].cpu())


class _progress:
    """A tqdm bar when tqdm is installed and wanted; otherwise a line every 10 %."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=done, unit="update", dynamic_ncols=True)

    def update(self, row: dict[str, float]) -> None:
        self.done += 1
        nan_events = nan_event_count(row)
        text = (f"epoch {row['epoch']} | {row['steps_per_sec']:,.0f} steps/s | return "
                f"{row['mean_episode_return']:+.3f} | NaN events {nan_events}")
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.done == self.total
                               or self.done % max(1, self.total // 10) == 0):
            print(f"update {self.done}/{self.total} | {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


NAN_EVENT_KINDS = ("gradients", "outputs", "aux losses", "rewards/targets")


def _kind_of(column: str) -> str | None:
    if column.startswith("nonfinite_grad_"):
        return "gradients"
    if column.startswith("nonfinite_output_"):
        return "outputs"
    if column.endswith("_loss_zeroed"):
        return "aux losses"
    if column.endswith("_nonfinite") and column.startswith(("buffer_", "env_")):
        return "rewards/targets"
    return None


def nan_event_count(row: dict[str, float]) -> int:
    return int(sum(v for k, v in row.items() if _kind_of(k) and v == v))


def nan_events_by_epoch(history: list[dict[str, float]]) -> dict[int, dict[str, int]]:
    table: dict[int, dict[str, int]] = {}
    for row in history:
        per_kind = table.setdefault(int(row["epoch"]), {k: 0 for k in NAN_EVENT_KINDS})
        for key, value in row.items():
            kind = _kind_of(key)
            if kind is not None and value == value:
                per_kind[kind] += int(value)
    return table


def nan_events_table(history: list[dict[str, float]]) -> str:
    """The end-of-training table: NaN/inf events per epoch, to see whether they decrease."""
    table = nan_events_by_epoch(history)
    kinds = list(NAN_EVENT_KINDS)
    lines = ["NaN/inf events per epoch (all zeroed or repaired; counts are exact)",
             "epoch  " + "  ".join(f"{k:>15}" for k in kinds) + "            total"]
    for epoch, counts in sorted(table.items()):
        lines.append(f"{epoch:>5}  " + "  ".join(f"{counts[k]:>15,}" for k in kinds)
                     + f"  {sum(counts.values()):>15,}")
    return "\n".join(lines)


def iterate_metrics(path: str | Path) -> Iterator[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            yield {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
