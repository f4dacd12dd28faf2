"""``pyppo-predict`` (what a trained agent does at the latest bars) and ``pyppo-export`` (a
portable copy of an agent: safetensors weights and a JSON config)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import pandas as pd

from pyppo.agent import Agent, export_agent
from pyppo.cli.common import Parser, run_cli
from pyppo.data import load_universe, synthetic_market
from pyppo.data.universe import is_universe_source


def predict_parser() -> Parser:
    p = Parser(
        prog="pyppo-predict",
        description="The agent's action, action probabilities, value and return "
        "predictions for the latest bar (or every bar) of an OHLCV file.",
    )
    p.add_argument("run", help="a run dir, a checkpoint (.pt) or an exported agent folder")
    bars = p.add_mutually_exclusive_group(required=True)
    bars.add_argument(
        "--data",
        help="CSV or Parquet file of recent OHLCV bars; several symbols: a folder, a glob, "
        "comma-separated files or one file with a symbol column (one row per symbol)",
    )
    bars.add_argument(
        "--synthetic",
        action="store_true",
        help="the embedded synthetic market's bars (the default training data), to try it out",
    )
    p.add_argument(
        "--position",
        default="flat",
        help="the position held now: short, flat or long (default: flat)",
    )
    p.add_argument(
        "--all-bars",
        action="store_true",
        help="every bar, walking the positions the agent's actions lead to",
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_member_argument(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def member_choice(text: str) -> int | str:
    """``--member``: a member's number, or ``ensemble``."""
    if text == "ensemble":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a member's number or 'ensemble'")
    return int(text)


def add_member_argument(parser: Parser) -> None:
    parser.add_argument(
        "--member",
        type=member_choice,
        default=None,
        help="of a population (--seeds): a member's number, or ensemble (the members' mean "
        "action probabilities); default: the member validation picks",
    )


def _json_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def predict_main(argv: list[str] | None = None) -> int:
    """``pyppo-predict``: returns the exit code (0, or 2 with one ``error:`` line)."""
    return run_cli(_predict, argv)


def _predict(argv: list[str]) -> int:
    args = predict_parser().parse_args(argv)
    agent = Agent.load(args.run, device=args.device, member=args.member)
    bars: Any = synthetic_market().frame if args.synthetic else args.data
    if not args.synthetic and is_universe_source(args.data):
        universe = load_universe(args.data, window=agent.window, horizons=(1,))
        bars = {symbol: market.frame for symbol, market in universe.markets.items()}
    result = agent.predict(bars, args.position, all_bars=args.all_bars)
    if isinstance(bars, dict):  # one answer per symbol
        if args.all_bars:
            frame = pd.concat(result, names=["symbol", "timestamp"])
        else:
            rows = [{"symbol": symbol, **answer} for symbol, answer in result.items()]
            frame = pd.DataFrame(rows).set_index(["symbol", "timestamp"])
    else:
        frame = result if args.all_bars else pd.DataFrame([result]).set_index("timestamp")
    if args.json:
        for record in frame.reset_index().to_dict("records"):
            print(json.dumps({k: _json_value(v) for k, v in record.items()}))
    else:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(frame.to_string(float_format=lambda x: f"{x:+.5f}"))
    return 0


def export_parser() -> Parser:
    p = Parser(
        prog="pyppo-export",
        description="Write a trained agent as model.safetensors plus agent.json, which "
        "pyppo.Agent.load and pyppo-predict read (no pickles).",
    )
    p.add_argument("run", help="a run dir or a checkpoint (.pt)")
    p.add_argument("--out", required=True, help="the folder to write")
    add_member_argument(p)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def export_main(argv: list[str] | None = None) -> int:
    """``pyppo-export``: returns the exit code (0, or 2 with one ``error:`` line)."""
    return run_cli(_export, argv)


def _export(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    out = export_agent(Agent.load(args.run, member=args.member), args.out)
    print(f"exported to {out}: load it with pyppo.Agent.load({str(out)!r})")
    return 0
