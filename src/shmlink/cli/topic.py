"""``shmlink pub | sub``: broadcast through a topic."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..topic import DELIVERIES, Topic
from ._common import count_arg, emit_message, size_arg, text_arg, timeout_arg, wait_sliced


def cmd_pub(a: argparse.Namespace) -> int:
    if a.create:
        topic = Topic.create_or_open(a.topic, a.create, delivery=a.delivery)
    else:
        topic = Topic.open(a.topic)
    try:
        if a.message is not None and a.message != "-":
            topic.publish(a.message.encode(), timeout=a.timeout)
        elif a.whole:
            topic.publish(sys.stdin.buffer.read(), timeout=a.timeout)
        else:
            for line in sys.stdin.buffer:
                topic.publish(line.rstrip(b"\r\n"), timeout=a.timeout)
    finally:
        topic.close()
    return 0


def cmd_sub(a: argparse.Namespace) -> int:
    topic = Topic.open(a.topic)
    try:
        sub = topic.subscribe("oldest" if a.oldest else "newest")
        got = 0
        while a.count is None or got < a.count:
            msg = wait_sliced(sub.recv, a.timeout, f"topic {a.topic!r}: no message")
            got += 1
            emit_message(msg, a, seq=sub.next_seq - 1, missed=sub.missed)
        if sub.missed:
            print(f"shmlink: missed {sub.missed} message(s)", file=sys.stderr)
    finally:
        topic.close()
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``pub`` and ``sub``."""
    p = sub.add_parser("pub", help="publish to a topic: MSG, or each line of stdin")
    p.add_argument("topic")
    p.add_argument("message", nargs="?", type=text_arg,
                   help="message; '-' or omitted: each line of stdin")
    p.add_argument("--whole", action="store_true", help="publish all of stdin as one message")
    p.add_argument("--create", metavar="CAPACITY", type=size_arg,
                   help="create the topic if missing (64k, 1M ...)")
    p.add_argument("--delivery", choices=DELIVERIES, default=None,
                   help="delivery of a topic --create makes (default lossless)")
    p.add_argument("--timeout", type=timeout_arg, default=None)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("sub", help="subscribe to a topic and print its messages")
    p.add_argument("topic")
    p.add_argument("--count", type=count_arg, default=None,
                   help="stop after N messages (default: follow)")
    p.add_argument("--oldest", action="store_true",
                   help="start at the oldest message still held")
    p.add_argument("--timeout", type=timeout_arg, default=None,
                   help="give up after this many seconds without a message")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--raw", action="store_true", help="write raw bytes, no newline")
    g.add_argument("--json", action="store_true", help="one JSON object per message (keys below)")
    p.set_defaults(func=cmd_sub)
