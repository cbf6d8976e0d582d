"""The ``shmlink`` command: named shared memory from the shell and other languages.

One module per object family adds its sub-commands (:func:`build_parser`
calls each one's ``add_parsers``): :mod:`.segment` (``ls info create write
read clear rm gc``), :mod:`.queue` (``send recv``), :mod:`.demo`,
:mod:`.bench`, :mod:`.board`, :mod:`.topic` (``pub sub``) and
:mod:`.connection` (``request serve``).  The library never imports this
package; only the command (``shmlink``, ``python -m shmlink``) does.

User errors print one line on stderr (``shmlink: error: ...``) and exit 1;
usage errors exit 2; Ctrl-C exits 130.  ``--json`` output is for scripts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..errors import ShmlinkError
from . import bench, board, connection, demo, queue, segment, topic
from ._common import UsageError

__all__ = ["main", "build_parser", "UsageError"]

#: The modules whose ``add_parsers(subparsers)`` make the command table, in help order.
FAMILIES = (segment, queue, demo, bench, board, topic, connection)


def build_parser() -> argparse.ArgumentParser:
    """The ``shmlink`` argument parser with every sub-command."""
    p = argparse.ArgumentParser(
        prog="shmlink",
        description="Inspect and use shmlink named shared memory: segments, queues, topics, boards.",
    )
    p.add_argument("--version", action="version", version=f"shmlink {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shmlink`` command; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 for a user error (one line on stderr), 2 for a usage
        error, 130 after Ctrl-C.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # everything after "bench" belongs to the benchmark suite's own parser
        args = argparse.Namespace(func=bench.cmd_bench, args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except UsageError as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (ShmlinkError, OSError) as e:
        print(f"shmlink: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
