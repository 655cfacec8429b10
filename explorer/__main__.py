"""``python -m explorer``: the same program as ``pruning-explorer``."""

import sys

from explorer.cli import main

sys.exit(main())
