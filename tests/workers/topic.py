"""Child-process bodies for the Topic tests, and a fan-out throughput probe.

Spawned children import their targets from this module by name.  Every child
takes *names* (never a mapped object), opens what it needs itself, reports
plain values through a spawn-context queue, bounds every wait, and exits by
itself when the parent that started it goes away.

Test messages check themselves::

    <u64 seq> <u32 crc32 of seq and body> <body derived from seq>

so a receiver catches a torn, truncated, reordered or lost message.

Run as a script, it measures 64-byte fan-out (1 publisher, 1 and 4
subscriber processes) for shmlink.Topic and pyzmq PUB/SUB::

    cd tests && python -m workers.topic bench [--count N] [--subs 1,4]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib
from typing import Any

import shmlink

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

_HEAD = struct.Struct("<QI")
_BLOCK = bytes((i * 167 + 13) & 0xFF for i in range(1 << 17))
MIN_SIZE = _HEAD.size


def make(seq: int, size: int = 64) -> bytes:
    """Message ``seq`` of ``size`` bytes (>= 12): seq, crc32, derived body."""
    start = (seq * 13) & 0xFFFF
    body = _BLOCK[start:start + size - _HEAD.size]
    return _HEAD.pack(seq, zlib.crc32(body, seq & 0xFFFFFFFF)) + body


def check(msg: Any) -> int:
    """The seq of a test message; ValueError if any byte is wrong."""
    msg = bytes(msg)
    if len(msg) < _HEAD.size:
        raise ValueError(f"message of {len(msg)} bytes is shorter than its header")
    seq, crc = _HEAD.unpack_from(msg)
    body = msg[_HEAD.size:]
    start = (seq * 13) & 0xFFFF
    if zlib.crc32(body, seq & 0xFFFFFFFF) != crc or body != _BLOCK[start:start + len(body)]:
        raise ValueError(f"message {seq} ({len(msg)} bytes) is torn or corrupt")
    return seq


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


# ---------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------


def subscriber(name: str, count: int, results: Any, ready: Any, slow_every: int = 0,
               slow_s: float = 0.0, batch: int = 0, streams: int = 1) -> None:
    """Subscribe (newest), then read until the last message of every stream.

    Publisher ``k`` of ``streams`` numbers its messages ``k << 32 | i`` for
    i in 0..count-1.  Checks every message, the order within each stream
    (no gap at all in lossless mode), and that the gaps add up to
    ``missed``; reports a dict (received, missed, gaps, counted, errors).
    """
    errors: list[str] = []
    received = gaps = 0
    last = [-1] * streams
    with shmlink.Topic.open(name) as topic:
        sub = topic.subscribe()
        ready.set()
        lossless = topic.delivery == "lossless"
        try:
            while min(last) < count - 1:
                msgs = sub.recv_many(batch, timeout=30) if batch else [sub.recv(timeout=30)]
                for m in msgs:
                    seq = check(m)
                    k, i = seq >> 32, seq & 0xFFFFFFFF
                    if i <= last[k]:
                        raise ValueError(f"message {k}:{i} after {k}:{last[k]}: out of order")
                    if lossless and i != last[k] + 1:
                        raise ValueError(f"lossless topic skipped from {k}:{last[k]} to {k}:{i}")
                    gaps += i - last[k] - 1
                    last[k] = i
                    received += 1
                    if slow_every and received % slow_every == 0:
                        time.sleep(slow_s)
        except Exception as e:  # reported to the parent, which fails the test
            errors.append(f"{type(e).__name__}: {e}")
        results.put({"received": received, "missed": sub.missed, "gaps": gaps,
                     "counted": sub.received, "errors": errors})


def publisher(name: str, count: int, size: int, go: Any, stream: int = 0) -> None:
    """Publish messages ``stream << 32 | i`` for i in 0..count-1, once ``go`` is set."""
    with shmlink.Topic.open(name) as topic:
        if not go.wait(60):
            raise SystemExit("never told to start")
        for i in range(count):
            topic.publish(make(stream << 32 | i, size), timeout=30)


def idle_subscriber(name: str, ready: Any) -> None:
    """Subscribe and never read (until killed, or orphaned, or 120 s)."""
    parent = os.getppid()
    with shmlink.Topic.open(name) as topic:
        sub = topic.subscribe()  # held, never read
        ready.set()
        end = time.monotonic() + 120
        while time.monotonic() < end and not _orphaned(parent):
            time.sleep(0.05)
        sub.close()


def flood_publisher(name: str, size: int, first: int, ready: Any) -> None:
    """Publish messages first, first+1, ... of ``size`` bytes as fast as possible,
    until killed (or orphaned, or 120 s)."""
    parent = os.getppid()
    end = time.monotonic() + 120
    with shmlink.Topic.open(name) as topic:
        seq = first
        while not _orphaned(parent) and time.monotonic() < end:
            for _ in range(64):
                topic.publish(make(seq, size), timeout=30)
                seq += 1
            ready.set()


# ---------------------------------------------------------------------------
# Fan-out throughput probe (a program, not a test)
# ---------------------------------------------------------------------------


def _bench_shm_sub(name: str, n: int, ready: Any, out: Any, batch: int) -> None:
    with shmlink.Topic.open(name) as topic:
        sub = topic.subscribe()
        ready.set()
        got = 0
        if batch:
            while got < n:
                got += len(sub.recv_many(batch, timeout=30))
        else:
            recv = sub.recv
            while got < n:
                recv(timeout=30)
                got += 1
        out.put((time.monotonic(), got))


def _bench_zmq_sub(addr: str, n: int, ready: Any, out: Any, batch: int) -> None:
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, 30000)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(addr)
    while s.recv() != b"hello":  # the slow-joiner handshake
        pass
    ready.set()
    while s.recv() != b"go":
        pass
    recv = s.recv
    for _ in range(n):
        recv()
    out.put((time.monotonic(), n))
    s.close(0)
    ctx.term()


def bench_fanout(kind: str, subs: int, n: int, size: int = 64, batch: int = 0) -> float:
    """Messages/s each subscriber receives (the slowest one), 1 publisher."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(subs)]
    msg = b"x" * size
    if kind == "shmlink":
        name = f"bench-topic-{os.getpid()}"
        topic = shmlink.Topic.create(name, 1 << 20)
        procs = [ctx.Process(target=_bench_shm_sub, args=(name, n, r, out, batch)) for r in readies]
        for p in procs:
            p.start()
        for r in readies:
            assert r.wait(60)
        publish = topic.publish
        t0 = time.monotonic()
        for _ in range(n):
            publish(msg)
    else:
        import zmq
        zctx = zmq.Context()
        addr = f"ipc:///tmp/shmlink-bench-{os.getpid()}"
        pub = zctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind(addr)
        procs = [ctx.Process(target=_bench_zmq_sub, args=(addr, n, r, out, batch)) for r in readies]
        for p in procs:
            p.start()
        while not all(r.is_set() for r in readies):
            pub.send(b"hello")
            time.sleep(0.01)
        pub.send(b"go")
        send = pub.send
        t0 = time.monotonic()
        for _ in range(n):
            send(msg)
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    if kind == "shmlink":
        topic.unlink()
        topic.close()
    else:
        pub.close(0)
        zctx.term()
    return min(got / (end - t0) for end, got in results)


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bench"])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--subs", default="1,4")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    for subs in map(int, a.subs.split(",")):
        best = {}
        for kind in ("shmlink", "pyzmq"):
            rates = [bench_fanout(kind, subs, a.count, a.size) for _ in range(a.repeat)]
            best[kind] = max(rates)
            print(f"{kind:8} 1 pub x {subs} sub, {a.size} B: {best[kind] / 1e6:6.2f} M msg/s per "
                  f"subscriber (runs: {', '.join(f'{r / 1e6:.2f}' for r in rates)})", flush=True)
        print(f"         ratio shmlink/pyzmq: {best['shmlink'] / best['pyzmq']:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
