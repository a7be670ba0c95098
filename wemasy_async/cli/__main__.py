"""``python -m wemasy_async.cli``: the same command as ``wemasy-async``."""

import sys

from . import main

sys.exit(main())
