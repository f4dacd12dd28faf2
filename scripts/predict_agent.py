"""pyppo-predict: see --help."""

import sys

from pyppo.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
