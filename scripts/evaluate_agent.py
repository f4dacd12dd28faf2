#!/usr/bin/env python
"""Backtest a trained agent: python scripts/evaluate_agent.py runs/<run> (see --help)."""

import sys

from pyppo.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
