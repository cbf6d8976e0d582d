"""``shmlink board write | read | watch | clear``: a shared latest value."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..board import Board
from ..errors import TextDecodeError
from ._common import (UsageError, count_arg, decode_input, encode_text, encoding_arg, size_arg,
                      text_arg, timeout_arg)


def cmd_board(a: argparse.Namespace) -> int:
    """Run ``shmlink board ACTION NAME ...``; returns the exit status."""
    if a.action != "write" and (a.text is not None or a.create):
        raise UsageError(f"board {a.action} takes only a NAME (TEXT and --create are for write)")
    if a.action == "write":
        if a.create:
            board = Board.create_or_open(a.name, a.create)
        else:
            board = Board.open(a.name)
        try:
            if a.text is None or a.text == "-":
                data = sys.stdin.buffer.read()
                if a.encoding != "utf-8":
                    data = encode_text(decode_input(
                        data, a, "leave --encoding out to write the bytes as they are"),
                        a.encoding)
            else:
                data = encode_text(a.text, a.encoding)
            version = board.write(data, timeout=a.timeout)
            if a.verbose:
                sys.stderr.write(f"wrote {len(data)} bytes to board {a.name!r}: version {version}\n")
        finally:
            board.close()
        return 0
    board = Board.open(a.name)
    try:
        if a.action == "read":
            _emit(board, board.read(), a)
        elif a.action == "clear":
            board.clear(timeout=a.timeout)
        else:  # watch
            seen = 0
            for value in board.watch(timeout=a.timeout, initial=a.initial):
                _emit(board, value, a)
                seen += 1
                if a.count is not None and seen >= a.count:
                    break
    finally:
        board.close()
    return 0


def _emit(board: Board, value: bytes, a: argparse.Namespace) -> None:
    if a.raw:
        sys.stdout.buffer.write(value)
    else:
        try:
            text = value.decode(a.encoding)
        except UnicodeDecodeError as e:
            raise TextDecodeError(
                f"board {board.name!r}: the value is not valid {a.encoding} ({e.reason}); "
                "pass --encoding, or --raw for the bytes"
            ) from None
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def add_parsers(sub: Any) -> None:
    """Add ``board``."""
    p = sub.add_parser("board", help="write, read or watch a board (a shared latest value)")
    p.description = ("Use a board, a shared latest value.  write: replace the value "
                     "(TEXT, or stdin); read: print it; watch: print each new value; "
                     "clear: make it empty.")
    p.add_argument("action", choices=["write", "read", "watch", "clear"])
    p.add_argument("name")
    p.add_argument("text", nargs="?", type=text_arg,
                   help="(write) the value; '-' or omitted: read stdin")
    p.add_argument("--create", metavar="CAPACITY", type=size_arg,
                   help="(write) create the board, holding up to SIZE bytes, if it is missing")
    p.add_argument("--raw", action="store_true",
                   help="(read, watch) write the bytes as they are, without a newline")
    p.add_argument("--encoding", type=encoding_arg, default="utf-8",
                   help="text encoding (default utf-8)")
    p.add_argument("--count", type=count_arg, default=None, help="(watch) stop after N values")
    p.add_argument("--initial", action="store_true",
                   help="(watch) print the current value first")
    p.add_argument("--timeout", type=timeout_arg, default=None,
                   help="seconds to wait (watch: for each value; write: for the lock)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_board)
