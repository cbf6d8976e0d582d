"""Producers and consumers for the bridge tests, run in a network namespace:
``python -m workers.bridge COMMAND ...``.  Messages are 8-byte little-endian
sequence numbers (padded to ``size`` bytes); consumers write what they got to
a file of u64s (``array('Q')``) for the test to check."""

from __future__ import annotations

import json
import os
import sys
import time
from array import array

import shmlink

#: longest a consumer waits for its first message
FIRST_S = 90.0


def report(path: str, **counts: object) -> None:
    """Write ``counts`` to ``path`` as JSON, atomically (a reader never sees half of it)."""
    with open(path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(path + ".tmp", path)


def msg(i: int, size: int) -> bytes:
    return i.to_bytes(8, "little") + b"\0" * (size - 8)


def produce_queue(name: str, n: int, size: int, batch: int, pause: float, progress: str) -> None:
    """Send 0..n-1; write how many were sent to ``progress`` (JSON) as it goes."""
    q = shmlink.Queue.open(name)
    t0 = time.monotonic()
    sent = 0
    last = 0.0
    while sent < n:
        k = min(batch, n - sent)
        q.send_many([msg(i, size) for i in range(sent, sent + k)], timeout=60)
        sent += k
        now = time.monotonic()
        if progress and now - last > 0.05:
            last = now
            report(progress, sent=sent, t=now - t0)
        if pause:
            time.sleep(pause)
    if progress:
        report(progress, sent=sent, t=time.monotonic() - t0, done=True)
    q.close()


def publish_topic(name: str, n: int, size: int, batch: int) -> None:
    t = shmlink.Topic.open(name)
    sent = 0
    while sent < n:
        k = min(batch, n - sent)
        t.publish_many([msg(i, size) for i in range(sent, sent + k)], timeout=60)
        sent += k
    t.close()


def consume(kind: str, name: str, n: int, idle: float, out: str, pace: float,
            ready: str) -> None:
    """Receive until message number ``n - 1`` (the last one sent) or ``idle`` seconds
    without a message (``FIRST_S`` for the first: the producer may still be starting on a
    loaded machine); record the numbers."""
    if kind == "queue":
        obj = shmlink.Queue.open(name)
        src = obj
    else:
        obj = shmlink.Topic.open(name)
        src = obj.subscribe("oldest")
    if ready:
        open(ready, "w").close()
    got = array("Q")
    while not got or got[-1] != n - 1:
        try:
            batch = src.recv_many(1 if pace else 4096, timeout=idle if got else FIRST_S)
        except shmlink.Timeout:
            break
        got.extend(int.from_bytes(m[:8], "little") for m in batch)
        if pace:
            time.sleep(pace)
            if len(got) % 50 == 0:
                report(out + ".progress", received=len(got))
    with open(out, "wb") as f:
        got.tofile(f)
    if src is not obj:
        src.close()
    obj.close()


def main(argv: list[str]) -> None:
    cmd, *a = argv
    if cmd == "produce":
        produce_queue(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5])
    elif cmd == "publish":
        publish_topic(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "consume":
        consume(a[0], a[1], int(a[2]), float(a[3]), a[4], float(a[5]), a[6])
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
