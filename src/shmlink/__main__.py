"""``python -m shmlink`` runs the ``shmlink`` command."""

import sys

from .cli import main

sys.exit(main())
