"""``python -m edge_cls.cli``: the command line."""

import sys

from . import main

sys.exit(main())
