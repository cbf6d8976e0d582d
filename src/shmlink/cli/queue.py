"""``shmlink send | recv``: messages through a lossless queue."""

from __future__ import annotations

import argparse
from typing import Any

from ..queue import Queue
from ._common import (count_arg, emit_message, input_bytes, size_arg, text_arg, timeout_arg,
                      wait_sliced)


def cmd_send(a: argparse.Namespace) -> None:
    if a.create:
        q = Queue.create_or_open(a.queue, a.create)
    else:
        q = Queue.open(a.queue)
    try:
        data = input_bytes(a)
        q.send(a.text.encode() if data is None else data, timeout=a.timeout)
    finally:
        q.close()


def cmd_recv(a: argparse.Namespace) -> None:
    q = Queue.open(a.queue)
    try:
        got = 0
        while a.follow or got < a.count:
            # --follow alone waits without a limit; --timeout bounds each message's wait
            msg = wait_sliced(q.recv, a.timeout, f"queue {a.queue!r}: no message")
            got += 1
            emit_message(msg, a)
    finally:
        q.close()


def add_parsers(sub: Any) -> None:
    """Add ``send`` and ``recv``."""
    s = sub.add_parser("send", help="send a message to a queue")
    s.add_argument("queue")
    s.add_argument("text", nargs="?", type=text_arg,
                   help="message; '-' or omitted: read stdin")
    s.add_argument("--file", help="send this file's contents")
    s.add_argument("--create", metavar="CAPACITY", type=size_arg,
                   help="create the queue if missing")
    s.add_argument("--timeout", type=timeout_arg, default=None)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser("recv", help="receive messages from a queue")
    s.add_argument("queue")
    s.add_argument("--count", type=count_arg, default=1)
    s.add_argument("--follow", action="store_true",
                   help="keep receiving until Ctrl-C (or until the reader of stdout exits)")
    s.add_argument("--timeout", type=timeout_arg, default=None,
                   help="give up after this many seconds without a message")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="write raw bytes, no newline")
    g.add_argument("--json", action="store_true", help="one JSON object per message (keys below)")
    s.set_defaults(func=cmd_recv)
