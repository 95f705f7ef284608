"""``python -m fedpilot``: the same command line as the ``fedpilot`` script."""

import sys

from fedpilot.cli import main

if __name__ == "__main__":
    sys.exit(main())
