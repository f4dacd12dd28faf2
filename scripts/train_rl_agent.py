#!/usr/bin/env python
"""Train a PPO trading agent: python scripts/train_rl_agent.py (see --help)."""

import sys

from pyppo.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
