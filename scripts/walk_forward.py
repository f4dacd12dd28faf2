#!/usr/bin/env python
"""Walk-forward retraining and its report: python scripts/walk_forward.py --windows 3 (see
--help)."""

import sys

from pyppo.cli import walkforward_main

if __name__ == "__main__":
    sys.exit(walkforward_main())
