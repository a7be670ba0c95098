"""``python -m wemasy_async``: the command line (see :mod:`wemasy_async.cli`)."""

import sys

from .cli import main

sys.exit(main())
