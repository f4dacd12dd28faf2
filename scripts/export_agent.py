"""pyppo-export: see --help."""

import sys

from pyppo.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
