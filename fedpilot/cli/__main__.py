"""``python -m fedpilot.cli``."""

import sys

from fedpilot.cli import main

sys.exit(main())
