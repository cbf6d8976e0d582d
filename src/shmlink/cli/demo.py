"""``shmlink demo``: two real processes talking through named shared memory.

The *writer* creates a segment and two auto-reset events; the *reader*, a
separate process that knows only the names, opens them.  Each round the
writer writes a line of text and sets ``ping``; the reader wakes, reads it,
writes its reply after the writer's text and sets ``pong``.  Then the writer
streams a few messages through a lossless queue.  Everything is removed at
the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from typing import Any

from ._common import count_arg

REPLY_AT = 2048


def _say(role: str, text: str) -> None:
    sys.stdout.write(f"[{role:<6} pid {os.getpid():>6}] {text}\n")
    sys.stdout.flush()


def _reader(base: str, rounds: int, n_messages: int) -> None:
    from shmlink import Event, Queue, Segment

    seg = Segment.open(base, timeout=10)
    ping = Event.open(base + ".ping", timeout=10)
    pong = Event.open(base + ".pong", timeout=10)
    queue = Queue.open(base + ".queue", timeout=10)
    _say("reader", f"opened segment {base!r} by name: {seg.size} bytes, "
                   f"participants {seg.participants()}")
    for _ in range(rounds):
        ping.wait(timeout=10)
        text = seg.read_text()
        _say("reader", f"read    {text!r}")
        reply = f"got {len(text)} characters, thanks"
        seg.write_text(reply, offset=REPLY_AT)
        _say("reader", f"replied {reply!r}")
        pong.set()
    total = 0
    for _ in range(n_messages):
        msg = queue.recv_object(timeout=10)
        total += msg["value"]
        _say("reader", f"queue   {msg}")
    _say("reader", f"received {n_messages} queue messages, sum of values {total}")
    for obj in (queue, pong, ping, seg):
        obj.close()


def run_demo(rounds: int = 3, n_messages: int = 4) -> int:
    """Run the demo; returns 0 on success."""
    from shmlink import Event, Queue, Segment

    base = f"demo-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    seg = Segment.create(base, 4096)
    ping = Event.create(base + ".ping", auto_reset=True)
    pong = Event.create(base + ".pong", auto_reset=True)
    queue = Queue.create(base + ".queue", 64 * 1024)
    objects = [queue, pong, ping, seg]
    _say("writer", f"created segment {base!r} ({seg.size} bytes at {seg.path}), "
                   "two events and a queue")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_reader, args=(base, rounds, n_messages), name="shmlink-demo-reader")
    child.start()
    try:
        for i in range(1, rounds + 1):
            text = f"hello #{i} from the writer at {time.strftime('%H:%M:%S')}"
            seg.write_text(text)
            _say("writer", f"wrote   {text!r}")
            ping.set()
            pong.wait(timeout=20)
            _say("writer", f"reply   {seg.read_text(offset=REPLY_AT)!r}")
        for i in range(n_messages):
            queue.send_object({"seq": i, "value": i * i}, timeout=10)
        _say("writer", f"sent {n_messages} messages through queue {queue.name!r}")
        child.join(20)
        if child.exitcode != 0:
            _say("writer", f"the reader failed (exit code {child.exitcode})")
            return 1
        _say("writer", "done; removing the segment, events and queue")
        return 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        for obj in objects:
            obj.unlink()
            obj.close()


def cmd_demo(a: argparse.Namespace) -> int:
    return run_demo(rounds=a.rounds)


def add_parsers(sub: Any) -> None:
    """Add ``demo``."""
    s = sub.add_parser("demo", help="two processes exchanging text through shared memory")
    s.add_argument("--rounds", type=count_arg, default=3,
                   help="text exchanges before the queue messages (default 3)")
    s.set_defaults(func=cmd_demo)
