"""``python -m firered_bench OUT_DIR ...``: see ``cli.py``."""

import sys

from .cli import main

sys.exit(main())
