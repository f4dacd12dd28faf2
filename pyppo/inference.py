"""The one inference path: a model's outputs at every bar, once per position, then the walk.

An observation holds the bar's features and the position the agent holds (nothing else:
see :mod:`pyppo.features`), so a model's outputs at a bar can only take as many values as
there are positions. :func:`policy_outputs` therefore computes them for every bar in large
batched forward passes, once per possible position, and :func:`walk` then goes through the
bars in order, picking at each bar the outputs for the position that the previous greedy
action left and acting greedily on them. This is exactly what stepping a one-env
:class:`pyppo.TradingEnv` bar by bar with argmax actions does, at a fraction of the cost.

Backtests (:mod:`pyppo.evaluation`) and live predictions (:class:`pyppo.Agent`) both use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pyppo.data import MarketData
from pyppo.features import MarketFeatures, compute_features

# Bars per forward pass: small enough for a pass's activations to stay in the CPU's caches
# (bench_backtest.py --batch-size compares sizes; RESULTS.md, "Backtests"), large enough to
# keep a GPU busy.
BATCH_SIZE = 8_192


def action_positions(allow_short: bool) -> np.ndarray:
    """The position each action stands for, as float32: ``[-1, 0, 1]`` (short, flat, long)
    with shorting, else ``[0, 1]`` (flat, long). Action k leaves position ``[k]``.

    :param allow_short: whether the agent may go short (as :class:`pyppo.TradingEnv`).
    """
    return np.array([-1.0, 0.0, 1.0] if allow_short else [0.0, 1.0], dtype=np.float32)


# -- the inference path ----------------------------------------------------------------


@dataclass
class PolicyOutputs:
    """A model's outputs for a range of bars, once per position the agent could hold.

    ``outputs[name][k, i]`` is output ``name`` (``"action_logits"``, ``"value"``,
    ``"pred_<label>"``...) at bar ``bars[i]`` when the observation holds position
    ``positions[k]``; action k leads to position ``positions[k]``, so ``k`` is also the
    index of the action that left that position.
    """

    bars: np.ndarray  # (B,) int64 market bar index of each row
    positions: np.ndarray  # (P,) float32, as action_positions()
    outputs: dict[str, np.ndarray]  # name -> (P, B, ...) float32

    def __len__(self) -> int:
        return len(self.bars)


@dataclass
class Walk:
    """The greedy agent's run through :class:`PolicyOutputs`, one entry per bar.

    At bar ``bars[i]`` the agent observed position ``held[i]`` (the start position, then
    what the previous action left), took ``actions[i]`` (the greedy action, or the one that
    keeps ``held[i]`` where nothing could be filled) and so holds ``positions[i]`` over the
    next bar; ``outputs[name][i]`` is the model's output at that bar and held position.
    """

    bars: np.ndarray  # (B,) int64
    actions: np.ndarray  # (B,) int64
    held: np.ndarray  # (B,) float32
    positions: np.ndarray  # (B,) float32
    outputs: dict[str, np.ndarray]  # name -> (B, ...) float32


def policy_outputs(
    model: nn.Module,
    market: MarketData,
    window: int,
    allow_short: bool,
    device: str | torch.device = "cpu",
    batch_size: int = BATCH_SIZE,
    *,
    start: int | None = None,
    stop: int | None = None,
    features: MarketFeatures | None = None,
    reuse: bool = True,
) -> PolicyOutputs:
    """The model's outputs at every bar in ``[start, stop)`` for every position it could hold.

    Each batch of ``batch_size`` bars is passed through the model once per position (3 with
    shorting, 2 long-only), in eval mode under :func:`torch.inference_mode` (the model's
    training mode is restored afterwards). The observations are those of
    :class:`pyppo.TradingEnv`: bar t's features with the position written in.
    Every output whose first dimension is the batch is kept, moved to the CPU.

    A model with a ``position_free(obs)`` method (:class:`pyppo.TradingActorCritic`) has
    the part of its forward pass that ignores the position computed once per batch and
    passed as ``model(obs, part)`` for every position (``reuse=False`` turns that off);
    other models get plain ``model(obs)`` calls.

    Some features (the slow volatility, the volatility floor) average over all earlier
    bars, so for live use give ``market`` a long history, not just the bars to predict.

    :param model: maps an ``(N, obs_size)`` float32 tensor to a dict of ``(N, ...)`` tensors
        with at least ``"action_logits"`` (for :func:`walk`); already on ``device``.
    :param market: the bars.
    :param window: the return window the model was trained with.
    :param allow_short: whether the model's actions are short/flat/long or flat/long.
    :param device: where the features and forward passes are computed.
    :param batch_size: bars per forward pass (bounds memory).
    :param start: first bar (default and minimum: ``window``, the first with a full window).
    :param stop: one past the last bar (default: ``len(market)``).
    :param features: what :func:`pyppo.features.compute_features` made for this
        market and window, to reuse it (computed here when ``None``).
    :param reuse: compute the model's position-free part once per batch (when it has one).
    """
    n = len(market)
    start = window if start is None else int(start)
    stop = n if stop is None else int(stop)
    if not window <= start < stop <= n:
        raise ValueError(
            f"bars [{start}, {stop}) of a {n}-bar market with window {window}: need "
            f"window <= start < stop <= {n}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1")
    device = torch.device(device)
    if features is None:
        features = compute_features(market, window, device)
    elif features.spec.window_len != window or features.rows != n:
        raise ValueError(
            f"features are for window {features.spec.window_len} and "
            f"{features.rows} bars, not window {window} and {n} bars"
        )
    features = features.to(device)
    col = features.spec.position_col
    positions = action_positions(allow_short).tolist()
    count = stop - start
    arrays: dict[str, np.ndarray] = {}

    position_free = getattr(model, "position_free", None) if reuse else None

    def forward_all(obs: Tensor) -> Iterator[dict[str, Tensor]]:
        part = position_free(obs) if position_free is not None else None
        for position in positions:
            obs[:, col] = position
            yield model(obs) if part is None else model(obs, part)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(start, stop, batch_size):
                hi = min(lo + batch_size, stop)
                rows = torch.arange(lo, hi, device=device)
                for k, out in enumerate(forward_all(features.observe(rows))):
                    for name, value in out.items():
                        if value.dim() == 0 or value.shape[0] != hi - lo:
                            continue
                        if name not in arrays:
                            shape = (len(positions), count, *value.shape[1:])
                            arrays[name] = np.empty(shape, dtype=np.float32)
                        arrays[name][k, lo - start : hi - start] = value.float().cpu().numpy()
    finally:
        model.train(was_training)
    bars = np.arange(start, stop, dtype=np.int64)
    return PolicyOutputs(bars=bars, positions=action_positions(allow_short), outputs=arrays)


def walk(
    outputs: PolicyOutputs, start_position: float = 0.0, no_fill: np.ndarray | None = None
) -> Walk:
    """Act greedily through ``outputs`` bar by bar, starting from ``start_position``.

    At each bar the agent observes the position the previous action left (the start
    position at the first bar), takes the argmax of that row's ``action_logits`` (the
    first maximum on ties, as :func:`torch.argmax`), and holds the action's position over
    the next bar. At a bar marked in ``no_fill`` nothing can be filled (its price is not a
    real one): the position is held, whatever the model chose.

    :param outputs: what :func:`policy_outputs` returned.
    :param start_position: the position held at the first bar (one of
        ``outputs.positions``).
    :param no_fill: (B,) bool, the bars at which no order can be filled; None for none.
    """
    matches = np.flatnonzero(outputs.positions == np.float32(start_position))
    if matches.size == 0:
        raise ValueError(
            f"start_position={start_position}: must be one of {outputs.positions.tolist()}"
        )
    if "action_logits" not in outputs.outputs:
        raise ValueError("the outputs have no 'action_logits': the model cannot act")
    # greedy[k, i]: the action at bar i when holding position k; it is also the index of
    # the position it leaves, so the walk is a chain of lookups.
    greedy = np.argmax(outputs.outputs["action_logits"], axis=-1)
    rows = greedy.tolist()
    blocked = [False] * len(outputs) if no_fill is None else np.asarray(no_fill).tolist()
    held_index = [0] * len(outputs)
    taken = [0] * len(outputs)
    k = int(matches[0])
    for i in range(len(held_index)):
        held_index[i] = k
        if not blocked[i]:
            k = rows[k][i]
        taken[i] = k
    held_k = np.asarray(held_index, dtype=np.int64)
    actions = np.asarray(taken, dtype=np.int64)
    columns = np.arange(len(outputs))
    return Walk(
        bars=outputs.bars,
        actions=actions,
        held=outputs.positions[held_k],
        positions=outputs.positions[actions],
        outputs={name: value[held_k, columns] for name, value in outputs.outputs.items()},
    )
