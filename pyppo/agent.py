"""A trained agent, for use: what it does now, and what it expects the next bars to bring.

``Agent.load(run)`` reads a run dir, a checkpoint or an export (:func:`export_agent`) safely
and without the training data: the model's shape, the observation's window, the horizons and
the bar interval all come from the checkpoint. ``agent.predict(bars, position)`` validates
the bars with the training data's rules, builds the observations with the same feature
pipeline and runs the same inference path as the backtest
(:func:`pyppo.inference.policy_outputs` and :func:`pyppo.inference.walk`), so a prediction
is exactly what the backtest would have done on those bars.

The auxiliary predictions ``pred_<label>`` are simple returns over their horizon
(``close[t + h] / close[t] - 1``), clamped to ±``aux_limit`` (±100 % by default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyppo.checkpoint import (
    AgentSpec,
    CheckpointError,
    build_model,
    find_checkpoint,
    load_checkpoint,
    validated_member,
)
from pyppo.data import MarketData, MarketDataError, load_market_data
from pyppo.device import resolve_device
from pyppo.env import EnvSpec
from pyppo.features import compute_features
from pyppo.files import OutputSet
from pyppo.heads import AuxHeads
from pyppo.inference import action_positions, policy_outputs, walk
from pyppo.model import ModelSpec, PortfolioActorCritic, TradingActorCritic
from pyppo.population import EnsembleActorCritic, PopulationActorCritic

EXPORT_CONFIG, EXPORT_WEIGHTS = "agent.json", "model.safetensors"
# What agent.json says it is; version 2 carries the weights' SHA-256.
EXPORT_FORMAT, EXPORT_VERSION = "pyppo-agent", 2
POSITION_NAMES = {-1.0: "short", 0.0: "flat", 1.0: "long"}
# Bars needed before the first prediction besides the window: the trailing volatility
# that normalizes returns settles over about one window.
WARMUP_WINDOWS = 1

Bars = pd.DataFrame | str | Path


@dataclass
class Agent:
    """A trained :class:`~pyppo.TradingActorCritic` and what it takes to feed it.

    :param model: the model, in eval mode, on ``device``.
    :param spec: the observation's settings (:meth:`pyppo.TradingEnv.describe`: window,
        allow_short, horizon labels and bars, bar interval, ...).
    :param device: where the forward passes run.
    """

    model: TradingActorCritic | EnsembleActorCritic
    spec: EnvSpec
    device: torch.device

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | torch.device | None = None,
        member: int | str | None = None,
    ) -> Agent:
        """Load a trained agent from a run dir (``best.pt``, else ``checkpoint.pt``), a
        checkpoint file, or a folder written by :func:`export_agent`. Nothing in the files
        can run code. Raises :class:`~pyppo.checkpoint.CheckpointError` when they cannot be
        used.

        :param member: of a population (``--seeds``): the member to load (0 .. K-1),
            ``"ensemble"`` (the members' mean action probabilities, greedy), or None for the
            member validation picks (never chosen on the held-out bars).
        """
        device = resolve_device(device or "cpu")
        path = Path(source)
        if (path / EXPORT_CONFIG).is_file():
            return cls._from_export(path, device)
        path = find_checkpoint(path)
        checkpoint = load_checkpoint(path)
        spec = checkpoint.agent
        try:
            spec.check_fits()
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path} cannot be used as an agent: {err}") from None
        model = build_model(spec.model, checkpoint.model, source=path)
        model = choose_member(model, member, validated_member(checkpoint), path)
        return cls(model.to(device), spec.env, device)

    @classmethod
    def _from_export(cls, folder: Path, device: torch.device) -> Agent:
        config = _read_export_config(folder)
        weights_file = folder / EXPORT_WEIGHTS
        try:
            digest = file_sha256(weights_file)
        except OSError as err:
            raise CheckpointError(
                f"export {folder}: {EXPORT_WEIGHTS} cannot be read ({err.strerror}); export the "
                "agent again"
            ) from None
        if digest != config["sha256"]:
            raise CheckpointError(
                f"export {folder}: {EXPORT_WEIGHTS} does not match the SHA-256 in "
                f"{EXPORT_CONFIG} (the file was changed or damaged); export the agent again"
            )
        try:
            weights = load_file(weights_file)
            spec = AgentSpec(ModelSpec.from_dict(config["model"]), EnvSpec.from_dict(config["env"]))
            spec.check_fits()
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise CheckpointError(f"export {folder} cannot be used: {err}") from None
        model = build_model(spec.model, weights, source=folder)
        if isinstance(model, PopulationActorCritic):  # only an ensemble is exported whole
            model = EnsembleActorCritic(model)
        return cls(model.to(device), spec.env, device)

    # -- what it knows ------------------------------------------------------------------

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def bar_interval(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.spec.bar_interval_seconds)

    @property
    def pred_names(self) -> list[str]:
        """The return predictions' names, after the horizons: ``pred_1h``, ``pred_24h``."""
        return list(AuxHeads.from_labels(self.spec.aux_labels).outputs)

    @property
    def action_names(self) -> list[str]:
        """``short, flat, long`` (or ``flat, long`` for a long-only agent), by action."""
        return [POSITION_NAMES[float(p)] for p in action_positions(self.spec.allow_short)]

    @property
    def min_bars(self) -> int:
        """The fewest bars :meth:`predict` takes: the window, its warm-up, and the bar itself."""
        return self.window * (1 + WARMUP_WINDOWS) + 1

    # -- predictions ----------------------------------------------------------------------

    def predict(
        self,
        bars: Bars | dict[str, Bars],
        position: str | float = "flat",
        *,
        all_bars: bool = False,
    ) -> dict[str, Any] | pd.DataFrame:
        """What the agent does at the last bar of ``bars``, holding ``position`` now.

        :param bars: recent OHLCV bars as a DataFrame or a CSV/Parquet path, validated with
            the rules of training data (:func:`pyppo.load_market_data`); at least
            :attr:`min_bars` bars of the interval the agent was trained on. A dict of them
            (``{"BTC": df1, "ETH": df2}``) answers for each, as a dict of the same results.
        :param position: the position held now (``"short"``, ``"flat"``, ``"long"`` or
            -1/0/1); with ``all_bars`` the position held at the first predicted bar.
        :param all_bars: predict every bar from the first with a full window on, walking the
            positions the agent's own actions lead to.
        :returns: for the last bar a dict: ``timestamp``, ``position`` (held), ``action``,
            ``action_name``, ``prob_<action name>`` per action, ``value`` and the return
            predictions ``pred_<label>``; with ``all_bars`` a DataFrame of those, one row per
            bar, indexed by timestamp.
        """
        portfolio = isinstance(self.model, PortfolioActorCritic)
        if isinstance(bars, dict) and portfolio and not all_bars:
            return self._predict_portfolio(bars, position)
        if portfolio:
            raise ValueError(
                "a portfolio agent decides for all its symbols at once: give it several "
                "symbols (a dict of symbol -> bars; pyppo-predict --data FOLDER), without "
                "all_bars"
            )
        if isinstance(bars, dict):
            return {name: self.predict(b, position, all_bars=all_bars) for name, b in bars.items()}
        market = self._market(bars)
        held = self._position(position)
        start = self.window if all_bars else len(market) - 1
        outputs = policy_outputs(
            self.model, market, self.window, self.spec.allow_short, self.device, start=start
        )
        run = walk(outputs, held)
        frame = self._frame(market, run)
        return frame if all_bars else frame.iloc[-1].to_dict() | {"timestamp": frame.index[-1]}

    def _predict_portfolio(
        self, bars: dict[str, Bars], position: str | float | dict[str, str | float]
    ) -> dict[str, dict[str, Any]]:
        """Every symbol's slot decision at its latest bar, as one portfolio (see
        :meth:`predict`): per symbol the :meth:`predict` fields plus ``target_weight``, the
        fraction of equity the agent wants in it (its slot over the number of symbols)."""
        if not bars:
            raise ValueError("predict: give at least one symbol's bars")
        markets = {name: self._market(b) for name, b in bars.items()}
        held = {
            name: self._position(position[name] if isinstance(position, dict) else position)
            for name in markets
        }
        features = compute_features(list(markets.values()), self.window, self.device)
        n = len(markets)
        last = features.offsets[1:].to(self.device) - 1
        slots = torch.tensor(list(held.values()), dtype=torch.float32, device=self.device)
        rows = features.observe(last, slots, torch.arange(n, device=self.device))
        obs = torch.cat([rows.reshape(1, -1), torch.ones(1, n, device=self.device)], dim=1)
        with torch.inference_mode():
            out = self.model.eval()(obs)
        probs = torch.softmax(out["action_logits"][0], dim=-1).cpu().numpy()
        slot_of = action_positions(self.spec.allow_short)
        result = {}
        for i, (name, market) in enumerate(markets.items()):
            action = int(probs[i].argmax())
            answer: dict[str, Any] = {
                "timestamp": market.frame.index[-1],
                "position": POSITION_NAMES[held[name]],
                "action": action,
                "action_name": self.action_names[action],
            }
            for k, action_name in enumerate(self.action_names):
                answer[f"prob_{action_name}"] = float(probs[i, k])
            answer["value"] = float(out["value"][0])
            for pred in self.pred_names:
                answer[pred] = float(out[pred][0, i])
            answer["target_weight"] = float(slot_of[action]) / n
            result[name] = answer
        return result

    def _market(self, bars: Bars) -> MarketData:
        name = str(bars) if not isinstance(bars, pd.DataFrame) else "the bars"
        # (One bar ahead is the shortest horizon; predictions need none, min_bars covers it.)
        market = load_market_data(bars, window=self.window, horizons=(1,))
        if market.bar_interval != self.bar_interval:
            raise MarketDataError(
                f"{name} are {market.bar_interval} bars, the agent was trained on "
                f"{self.bar_interval} bars: give it bars of its own interval"
            )
        if len(market) < self.min_bars:
            raise MarketDataError(
                f"{name} have {len(market)} bars; the agent needs at least {self.min_bars} "
                f"(its window of {self.window}, as many again to warm up the features, and "
                "the bar to predict)"
            )
        return market

    def _position(self, position: str | float) -> float:
        by_name = {name: float(p) for p, name in POSITION_NAMES.items()}
        value = by_name.get(position) if isinstance(position, str) else float(position)
        allowed = action_positions(self.spec.allow_short).tolist()
        if value not in allowed:
            names = ", ".join(POSITION_NAMES[p] for p in allowed)
            raise ValueError(f"position {position!r}: this agent holds one of {names}")
        return value

    def _frame(self, market: MarketData, run: Any) -> pd.DataFrame:
        logits = torch.from_numpy(run.outputs["action_logits"])
        probs = torch.softmax(logits, dim=-1).numpy()
        columns: dict[str, Any] = {
            "position": [POSITION_NAMES[float(p)] for p in run.held],
            "action": run.actions,
            "action_name": [self.action_names[a] for a in run.actions],
        }
        for k, name in enumerate(self.action_names):
            columns[f"prob_{name}"] = probs[:, k]
        columns["value"] = run.outputs["value"]
        for name in self.pred_names:
            columns[name] = run.outputs[name]
        return pd.DataFrame(columns, index=market.frame.index[run.bars])


def export_agent(agent: Agent, out: str | Path) -> Path:
    """Write ``agent`` as ``model.safetensors`` (the weights) and ``agent.json`` (what
    :meth:`Agent.load` needs to rebuild it, and the weights' SHA-256): a portable agent,
    without pickles. Both files appear together or not at all."""
    out = Path(out)
    model = agent.model.population if isinstance(agent.model, EnsembleActorCritic) else agent.model
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with OutputSet(out) as files:
        save_file(weights, files.path(EXPORT_WEIGHTS))
        config = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "sha256": file_sha256(files.path(EXPORT_WEIGHTS)),
            "model": model.describe().to_dict(),
            "env": agent.spec.to_dict(),
        }
        files.write_text(EXPORT_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def choose_member(
    model: TradingActorCritic, member: int | str | None, picked: int | None, source: Path
) -> TradingActorCritic | EnsembleActorCritic:
    """The model an agent acts with: a plain model as it is; of a population, member
    ``member``, the ensemble (``"ensemble"``), or the member validation picked (``None``)."""
    if not isinstance(model, PopulationActorCritic):
        if member not in (None, 0):
            raise CheckpointError(f"{source} holds one model, not a population: drop member=")
        return model
    if member == "ensemble":
        return EnsembleActorCritic(model).eval()
    if member is None:
        if picked is None:
            raise CheckpointError(
                f"{source} holds a population of {model.members} that validation never scored: "
                "choose a member (member=0 .. or 'ensemble'; --member on the command line)"
            )
        member = picked
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < model.members:
        raise CheckpointError(
            f"member={member!r}: {source} holds members 0 to {model.members - 1}, or 'ensemble'"
        )
    return model.member(member)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_export_config(folder: Path) -> dict[str, Any]:
    """``agent.json`` of an export, checked: the format, the version, the fields."""
    path = folder / EXPORT_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"export {folder}: {EXPORT_CONFIG} cannot be read ({err})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a pyppo agent export")
    if config.get("version") != EXPORT_VERSION:
        raise CheckpointError(
            f"export {folder} has version {config.get('version')!r}, this pyppo reads version "
            f"{EXPORT_VERSION}; export the agent again with pyppo-export"
        )
    missing = [key for key in ("sha256", "model", "env") if key not in config]
    if missing:
        raise CheckpointError(f"export {folder}: {EXPORT_CONFIG} lacks {', '.join(missing)}")
    return config
