#!/usr/bin/env python
"""Search training settings with Optuna on validation bars: python scripts/sweep.py --trials 40
(see --help)."""

import sys

from pyppo.cli import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main())
