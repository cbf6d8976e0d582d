"""``shmlink board write | read | watch | clear``: a shared latest value."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..board import Board
from ..errors import TextDecodeError
from ._common import (UsageError, count_arg, decode_input, emit_message, encode_text,
                      encoding_arg, size_arg, text_arg, timeout_arg, wait_sliced)


def cmd_board(a: argparse.Namespace) -> int:
    """Run ``shmlink board ACTION NAME ...``; returns the exit status."""
    if a.action != "write" and (a.text is not None or a.create):
        raise UsageError(f"board {a.action} takes only a NAME (TEXT and --create are for write)")
    if a.json and a.action not in ("read", "watch"):
        raise UsageError(f"board {a.action} prints nothing; --json is for read and watch")
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
            _emit(board, *board.read_versioned(), a)
        elif a.action == "clear":
            board.clear(timeout=a.timeout)
        else:  # watch: like Board.watch, in slices that notice a closed stdout
            version, value = board.read_versioned()
            seen = 0
            if a.initial:
                _emit(board, version, value, a)
                seen += 1
            while a.count is None or seen < a.count:
                def changed(timeout: float | None, since: int = version) -> int:
                    return board.wait_for_change(since, timeout=timeout)
                wait_sliced(changed, a.timeout, f"board {a.name!r}: no write")
                version, value = board.read_versioned()
                _emit(board, version, value, a)
                seen += 1
    finally:
        board.close()
    return 0


def _emit(board: Board, version: int, value: bytes, a: argparse.Namespace) -> None:
    if not a.raw and not a.json:
        try:
            value.decode(a.encoding)
        except UnicodeDecodeError as e:
            raise TextDecodeError(
                f"board {board.name!r}: the value is not valid {a.encoding} ({e.reason}); "
                "pass --encoding, or --raw for the bytes"
            ) from None
    emit_message(value, a, version=version)


def add_parsers(sub: Any) -> None:
    """Add ``board``."""
    p = sub.add_parser("board", help="write, read or watch a board (a shared latest value)")
    p.description = ("Use a board, a shared latest value.  write: replace the value\n"
                     "(TEXT, or stdin); read: print it; watch: print each new value;\n"
                     "clear: make it empty.")
    p.add_argument("action", choices=["write", "read", "watch", "clear"])
    p.add_argument("name")
    p.add_argument("text", nargs="?", type=text_arg,
                   help="(write) the value; '-' or omitted: read stdin")
    p.add_argument("--create", metavar="CAPACITY", type=size_arg,
                   help="(write) create the board, holding up to SIZE bytes, if it is missing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true",
                   help="(read, watch) write the bytes as they are, without a newline")
    g.add_argument("--json", action="store_true",
                   help="(read, watch) one JSON object per value (keys below)")
    p.add_argument("--encoding", type=encoding_arg, default="utf-8",
                   help="text encoding (default utf-8)")
    p.add_argument("--count", type=count_arg, default=None, help="(watch) stop after N values")
    p.add_argument("--initial", action="store_true",
                   help="(watch) print the current value first")
    p.add_argument("--timeout", type=timeout_arg, default=None,
                   help="seconds to wait (watch: for each value; write: for the lock)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_board)
