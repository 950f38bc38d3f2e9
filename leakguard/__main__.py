"""``python -m leakguard``: the same as the ``leakguard`` command."""

import sys

from .cli import main

sys.exit(main())
