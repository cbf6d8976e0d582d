"""Children for tests/test_races.py: one call hammered with KeyboardInterrupts.

:func:`hammer` runs in a subprocess (``python -c``): it arms a one-shot
timer of a random short interval whose handler raises KeyboardInterrupt,
makes the call, disarms, and then checks the invariants of the object (no
lock leaked, next call works).  It prints one line: ``ok <calls>
<interrupts>``, or raises (non-zero exit) when an invariant broke.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import shmlink


def _boom(*_):
    raise KeyboardInterrupt


def _settled(check) -> None:
    """Run an invariant check; a stray late interrupt inside it (its handler
    ran after the timer was disarmed) is one more interrupt: check again."""
    for _ in range(5):
        try:
            check()
            return
        except KeyboardInterrupt:
            continue
    raise AssertionError("interrupted five times after the timer was disarmed")


def _tick() -> None:
    """Entering a Python function runs signal handlers still pending.

    (Not every call does: a signal that arrived just before the timer was
    disarmed may otherwise run its handler in the invariant checks.)"""


class _Armed:
    """Arm the timer on entry, disarm on exit; count interrupts that landed."""

    def __init__(self, rnd: random.Random, most_s: float) -> None:
        self.rnd = rnd
        self.most = most_s
        self.hits = 0

    def run(self, op) -> None:
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, self.rnd.uniform(1e-6, self.most))
                op()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _tick()
        except KeyboardInterrupt:
            self.hits += 1


def hammer(kind: str, name: str, seconds: float, seed: int, peer: str = "") -> None:
    signal.signal(signal.SIGALRM, _boom)
    rnd = random.Random(seed)
    armed = _Armed(rnd, 2e-4)
    end = time.monotonic() + seconds
    calls = 0
    if kind == "queue":
        q = shmlink.Queue.open(name)

        def op() -> None:
            with q.recv_view(timeout=1) as mv:
                bytes(mv)

        while time.monotonic() < end:
            q.send(b"m" * rnd.randrange(1, 200))
            armed.run(op)
            calls += 1
            # the consumer lock is free: a receive works, and the queue drains
            q.send(b"probe")

            def drain() -> None:
                while len(q):
                    q.recv(timeout=2)
            _settled(drain)
        q.close()  # no open receive left behind: no SegmentBusy
    elif kind == "mutex":
        m = shmlink.Mutex.open(name)

        def op() -> None:
            m.acquire(timeout=1)
            m.release()

        while time.monotonic() < end:
            armed.run(op)
            calls += 1

            def check() -> None:
                if m.holder_pid == os.getpid():
                    m.release()  # interrupted after acquire() returned: ours; release() works
                assert not m.locked(), f"lock leaked: held by {m.holder_pid}"
                assert m.acquire(timeout=2)
                m.release()
            _settled(check)
        m.close()
    elif kind == "request":
        c = shmlink.connect(name, timeout=10)

        def op() -> None:
            c.request(b"x" * rnd.randrange(0, 100), timeout=2)

        while time.monotonic() < end:
            armed.run(op)
            calls += 1

            def check() -> None:
                assert c.request(b"probe", timeout=5) == b"probe"
            _settled(check)
        assert len(c._pending) == 0, c._pending
        c.close()
    elif kind == "subscriber":
        t = shmlink.Topic.open(name)
        sub = t.subscribe()

        def op() -> None:
            with sub.recv_view(timeout=1) as mv:
                bytes(mv)

        while time.monotonic() < end:
            t.publish(b"m" * rnd.randrange(1, 200))
            armed.run(op)
            calls += 1
            t.publish(b"probe")

            def drain() -> None:
                while sub.recv(timeout=2) != b"probe":
                    pass
            _settled(drain)
        sub.close()
        t.close()
    else:
        raise ValueError(kind)
    print("ok", calls, armed.hits, flush=True)


def echo_server(name: str, ready) -> None:
    with shmlink.listen(name) as lst:
        ready.set()
        conn = lst.accept(timeout=30)
        try:
            conn.serve(lambda b: b)
        except shmlink.PeerDisconnected:
            pass
        conn.close()


if __name__ == "__main__":
    hammer(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))


def flood_server(name: str, ready, count: int) -> None:
    """A hostile server: answers a request only after ``count`` responses nobody asked for."""
    from shmlink.connection._layout import _RESP

    with shmlink.listen(name) as lst:
        ready.set()
        conn = lst.accept(timeout=30)
        req = conn.recv_request(timeout=30)
        junk = b"j" * 1024
        for i in range(count // 2):  # strangers: ids nobody used
            conn._send_frame(_RESP, 1_000_000 + i, junk, None)
        conn.reply(req, b"the real answer")
        for i in range(count - count // 2):  # duplicates of the real answer
            conn._send_frame(_RESP, req.id, junk, None)
        try:
            conn.recv_request(timeout=30)  # until the client closes
        except (shmlink.PeerDisconnected, shmlink.Timeout):
            pass
        conn.close()


def listen_racer(name: str, barrier, results, rounds: int) -> None:
    """Each round: take over ``name`` (made stale by the test) together with another racer."""
    for _ in range(rounds):
        barrier.wait(30)
        try:
            lst = shmlink.listen(name)
        except shmlink.SegmentExists:
            lst = None
        # still ours? (a racer that removed the other's fresh listener would find it so)
        results.put((os.getpid(), lst is not None))
        barrier.wait(30)  # the test has looked at the name
        if lst is not None:
            lst.close()
        barrier.wait(30)


def forge_lock_holder(name: str, which: str) -> None:
    """A hostile process with write access: record PID 1 as the holder of a queue lock.

    It maps the file itself (it is no participant) and exits at once.
    """
    import mmap

    from shmlink.segment import DATA_OFFSET, _name_path

    off = DATA_OFFSET + {"producer": 64, "consumer": 128}[which]
    fd = os.open(_name_path(name), os.O_RDWR)
    mm = mmap.mmap(fd, DATA_OFFSET + 4096)
    os.close(fd)
    mem = shmlink._core.Memory(mm)
    mem.store64(off + 8, shmlink._core.process_start_time(1))
    mem.store32(off, 1)
    mem.release()
    mm.close()


def hold_lock(name: str, which: str, seconds: float, ready) -> None:
    """A genuine participant that holds a queue lock for a long time (as if stopped)."""
    from shmlink.segment import DATA_OFFSET

    q = shmlink.Queue.open(name)
    off = DATA_OFFSET + {"producer": 64, "consumer": 128}[which]
    mem = q._memory
    assert mem.lock_acquire(off, None, 0) == 0
    ready.set()
    time.sleep(seconds)
    mem.lock_release(off)
    q.close()
