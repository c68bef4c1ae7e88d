"""``python -m gnopt`` runs the command line (see :mod:`gnopt.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
