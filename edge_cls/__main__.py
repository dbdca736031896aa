"""``python -m edge_cls``: the CLI, also what ``torchrun -m edge_cls distill ...`` starts per process."""

import sys

from edge_cls.cli import main

sys.exit(main())
