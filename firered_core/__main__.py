"""``python -m firered_core ...`` is the ``firered`` command (see ``firered_core.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
