"""The ``shmlink`` command: named shared memory from the shell and other languages.

One module per object family adds its sub-commands (:func:`build_parser`
calls each one's ``add_parsers``): :mod:`.segment` (``ls info create write
read clear rm gc``), :mod:`.queue` (``send recv``), :mod:`.demo`,
:mod:`.bench`, :mod:`.board`, :mod:`.topic` (``pub sub``) and
:mod:`.connection` (``request serve``).  The library never imports this
package; only the command (``shmlink``, ``python -m shmlink``) does.

Every failure is one line on stderr and a non-zero exit: a usage error
(an unknown option, a value its option does not take) exits 2, a user error
(``shmlink: error: ...``: no such object, input that is not text, a timeout
that ran out) exits 1, Ctrl-C exits 130.  Anything else is a bug: one line
``shmlink: internal error: ... (please report)`` and exit 70, with the
traceback only when ``$SHMLINK_DEBUG`` is ``1``.  ``--json`` output is for
scripts.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from .. import __version__
from ..errors import ShmlinkError
from . import bench, board, bridge, connection, demo, queue, segment, topic
from ._common import Parser, UsageError, UserError

__all__ = ["main", "build_parser", "UsageError", "UserError", "EXIT_INTERNAL"]

#: Exit status of an unexpected exception (EX_SOFTWARE of sysexits.h).
EXIT_INTERNAL = 70

#: The modules whose ``add_parsers(subparsers)`` make the command table, in help order.
FAMILIES = (segment, queue, demo, bench, board, topic, connection, bridge)


def build_parser() -> argparse.ArgumentParser:
    """The ``shmlink`` argument parser with every sub-command."""
    p = Parser(
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
        0 on success, 1 for a user error, 2 for a usage error, 130 after
        Ctrl-C, 70 for an internal error; each failure is one line on stderr.
    """
    if hasattr(sys.stdout, "reconfigure"):
        # names read from the directory may hold undecodable bytes: write them back as they were
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["bench"]:
            # everything after "bench" belongs to the benchmark suite's own parser
            args = argparse.Namespace(func=bench.cmd_bench, args=argv[1:])
        else:
            args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UsageError as e:
        try:
            parser.error(str(e))
        except SystemExit as exit_:
            return int(exit_.code or 2)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except (UserError, ShmlinkError, OSError) as e:
        print(f"shmlink: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("SHMLINK_DEBUG") == "1":
            traceback.print_exc()
        print(f"shmlink: internal error: {type(e).__name__}: {_one_line(e)} (please report; "
              "SHMLINK_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 2


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _quiet_stdout() -> None:
    """The reader of stdout went away: send what is still buffered nowhere, without a warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
