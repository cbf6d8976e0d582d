"""``python -m shmlink`` runs the ``shmlink`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command was still starting: as quiet as later
    sys.exit(130)

sys.exit(main())
