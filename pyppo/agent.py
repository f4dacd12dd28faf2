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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyppo.checkpoint import CheckpointError, build_model, find_checkpoint, load_checkpoint
from pyppo.data import MarketData, MarketDataError, load_market_data
from pyppo.device import resolve_device
from pyppo.env import EnvSpec
from pyppo.heads import AuxHeads
from pyppo.inference import action_positions, policy_outputs, walk
from pyppo.model import ModelSpec, TradingActorCritic

EXPORT_CONFIG, EXPORT_WEIGHTS = "agent.json", "model.safetensors"
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

    model: TradingActorCritic
    spec: EnvSpec
    device: torch.device

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device | None = None) -> Agent:
        """Load a trained agent from a run dir (``best.pt``, else ``checkpoint.pt``), a
        checkpoint file, or a folder written by :func:`export_agent`. Nothing in the files
        can run code. Raises :class:`~pyppo.checkpoint.CheckpointError` when they cannot be
        used."""
        device = resolve_device(device or "cpu")
        path = Path(source)
        if (path / EXPORT_CONFIG).is_file():
            return cls._from_export(path, device)
        path = find_checkpoint(path)
        checkpoint = load_checkpoint(path)
        spec = checkpoint.agent
        if spec.model is None or spec.env is None:
            raise CheckpointError(
                f"checkpoint {path} was not trained on a TradingEnv with a "
                "TradingActorCritic: pyppo.Agent cannot rebuild it"
            )
        model = build_model(spec.model, checkpoint.model, source=path)
        return cls(model.to(device), spec.env, device)

    @classmethod
    def _from_export(cls, folder: Path, device: torch.device) -> Agent:
        try:
            config = json.loads((folder / EXPORT_CONFIG).read_text())
            weights = load_file(folder / EXPORT_WEIGHTS)
            model_spec = ModelSpec.from_dict(config["model"])
            env_spec = EnvSpec.from_dict(config["env"])
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise CheckpointError(f"export {folder} cannot be read: {err}") from None
        model = build_model(model_spec, weights, source=folder)
        return cls(model.to(device), env_spec, device)

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

    def _market(self, bars: Bars) -> MarketData:
        name = str(bars) if not isinstance(bars, pd.DataFrame) else "the bars"
        market = load_market_data(bars, window=self.window, horizons=())
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
    :meth:`Agent.load` needs to rebuild it): a portable agent, without pickles."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in agent.model.state_dict().items()}
    save_file(weights, out / EXPORT_WEIGHTS)
    config = {
        "format": "pyppo-agent",
        "version": 1,
        "model": agent.model.describe().to_dict(),
        "env": agent.spec.to_dict(),
    }
    (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
