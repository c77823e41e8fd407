"""``python -m firered_train.synthetic OUT_DIR ...``: see ``cli.py``."""

import sys

from .cli import main

sys.exit(main())
