"""The ``shmlink`` command: named shared memory from the shell and other languages.

One module per object family adds its sub-commands (:func:`build_parser`
calls each one's ``add_parsers``): :mod:`.segment` (``ls info create write
read clear rm gc``), :mod:`.queue` (``send recv``), :mod:`.demo`,
:mod:`.bench`, :mod:`.board`, :mod:`.topic` (``pub sub``) and
:mod:`.connection` (``request serve``).  The library never imports this
package; only the command (``shmlink``, ``python -m shmlink``) does.

Every failure ends with one line on stderr and a non-zero exit: a usage error
(an unknown option, a value its option does not take) shows the sub-command's
usage, then the line, and exits 2; a user error (``shmlink: error: ...``: no
such object, input that is not text, a timeout that ran out) exits 1, its
advice a command or an option (:mod:`._advice`), never Python; Ctrl-C exits
130 without a word.  Anything else is a bug: one line ``shmlink: internal
error: ... (please report)`` and exit 70, with the traceback when ``--debug``
is given or ``$SHMLINK_DEBUG`` is ``1`` (which also shows the traceback of
user errors).  A closed stdout (``shmlink sub t | head -1``) ends any command
quietly with exit 0.  ``--json`` output is for scripts: its keys are listed
in :mod:`._reference`, in each command's ``--help`` and in ``docs/cli.md``.
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
from ._advice import advise
from ._common import Parser, UsageError, UserError
from ._reference import EXIT_STATUS, JSON_KEYS, epilog

__all__ = ["main", "build_parser", "UsageError", "UserError", "EXIT_INTERNAL"]

#: Exit status of an unexpected exception (EX_SOFTWARE of sysexits.h).
EXIT_INTERNAL = 70

#: The modules whose ``add_parsers(subparsers)`` make the command table, in help order.
FAMILIES = (segment, queue, demo, bench, board, topic, connection, bridge)


def build_parser() -> argparse.ArgumentParser:
    """The ``shmlink`` argument parser with every sub-command.

    Each sub-command's ``--help`` ends with its ``--json`` keys
    (:data:`._reference.JSON_KEYS`).
    """
    p = Parser(
        prog="shmlink",
        description="Inspect and use shmlink named shared memory: segments, queues, topics, boards.",
        epilog=EXIT_STATUS + "\n\n`shmlink COMMAND --help` lists the command's --json keys; "
               "docs/cli.md has them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"shmlink {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (as SHMLINK_DEBUG=1 does)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in FAMILIES:
        family.add_parsers(sub)
    p.commands = sub.choices
    for name, command in sub.choices.items():
        command.is_command = name != "bench"  # bench's arguments are the suite's own
        if name != "bench":  # --debug after the command works too (bench passes it through)
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help=argparse.SUPPRESS)
        if name in JSON_KEYS:
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            command.epilog = epilog(name)
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
        0 on success (and when stdout's reader went away), 1 for a user
        error, 2 for a usage error, 130 after Ctrl-C, 70 for an internal
        error; each failure ends with one line on stderr.
    """
    if hasattr(sys.stdout, "reconfigure"):
        # names read from the directory may hold undecodable bytes: write them back as they were
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SHMLINK_DEBUG") == "1"
    if argv[:2] == ["--debug", "bench"]:
        debug, argv = True, argv[1:]
    command = ""
    try:
        if argv[:1] == ["bench"]:
            # everything after "bench" belongs to the benchmark suite's own parser
            args = argparse.Namespace(func=bench.cmd_bench, args=argv[1:], command="bench")
        else:
            args = parser.parse_args(argv)
        command = args.command
        debug = debug or getattr(args, "debug", False)
        return int(args.func(args) or 0)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UsageError as e:
        try:
            _parser_of(parser, command).error(str(e))
        except SystemExit as exit_:
            return int(exit_.code or 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except (UserError, ShmlinkError, OSError) as e:
        if debug:
            traceback.print_exc()
        print(f"shmlink: error: {advise(_one_line(e), command)}", file=sys.stderr)
        return 1
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"shmlink: internal error: {type(e).__name__}: {_one_line(e)} (please report; "
              "--debug or SHMLINK_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 2


def _parser_of(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-command's own parser (for its usage line), else the top-level one."""
    return getattr(parser, "commands", {}).get(command, parser)  # type: ignore[no-any-return]


def _one_line(e: BaseException) -> str:
    """``e``'s message on one line; an OSError of our own files as ``FILE: what went wrong``."""
    if isinstance(e, OSError) and not isinstance(e, ShmlinkError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return " ".join(f"{where}{e.strerror}".split())
    return " ".join(str(e).split()) or f"{type(e).__name__} (no message)"


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
