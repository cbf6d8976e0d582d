"""Races: gc against openers, open() against foreign locks, Ctrl-C at any instruction.

The interrupt tests run a child that hammers one call with SIGINTs from a
timer of random short intervals; after each interrupt the child checks
that the object is still usable and that no lock leaked (other processes
are not wedged).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

import shmlink
from shmlink.segment import PREFIX
from support import CTX, join_all, python_env, run_python


@pytest.fixture
def private_dir(monkeypatch):
    """A shared-memory directory of this test's own (gc there touches nobody else)."""
    d = tempfile.mkdtemp(prefix="shmlink-races-", dir="/dev/shm")
    monkeypatch.setenv("SHMLINK_DIR", d)
    yield d
    for e in os.listdir(d):
        os.unlink(os.path.join(d, e))
    os.rmdir(d)


def _gc_forever(d: str, seconds: float) -> None:
    os.environ["SHMLINK_DIR"] = d
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        shmlink.gc()


def _dead_participant(seg: shmlink.Segment) -> None:
    """Record a participant that died without closing: gc may remove the segment."""
    from shmlink.segment import _OFF_PARTICIPANTS, MAX_PARTICIPANTS
    mem = seg._mapping().memory
    off = _OFF_PARTICIPANTS + 16 * (MAX_PARTICIPANTS - 1)
    mem.store32(off, 4_194_000)  # above any pid_max in use here: never alive
    mem.store64(off + 8, 1)


def test_gc_never_removes_a_segment_an_opener_holds(private_dir):
    gc_proc = CTX.Process(target=_gc_forever, args=(private_dir, 60.0))
    gc_proc.start()
    lost = opened = 0
    try:
        for i in range(300):
            n = f"race-{i}"
            with shmlink.Segment.create(n, 64) as s:
                _dead_participant(s)
            try:
                seg = shmlink.Segment.open(n, timeout=5)
            except shmlink.SegmentNotFound:
                continue  # gc was first: fine
            opened += 1
            st = os.fstat(seg._mapping().fd)
            time.sleep(0.002)  # gc runs meanwhile: it must see the segment in use
            try:
                now = os.stat(seg.path)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    lost += 1
            except FileNotFoundError:
                lost += 1
            seg.close()
            try:
                shmlink.remove(n)
            except shmlink.SegmentNotFound:
                pass
    finally:
        gc_proc.kill()
        gc_proc.join(10)
    assert opened > 0
    assert lost == 0, f"{lost} of {opened} opened segments were removed by gc while open"


def test_open_honours_timeout_while_another_process_holds_an_exclusive_lock(name):
    seg = shmlink.Segment.create(name, 64, mode=0o644)
    path = seg.path
    seg.close()
    p = subprocess.Popen([sys.executable, "-c",
                          "import fcntl, os, sys, time\n"
                          "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                          "print('held', flush=True)\n"
                          "time.sleep(30)\n", path], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        r = run_python(
            "import shmlink, sys, time\n"
            "t = time.monotonic()\n"
            "try:\n    shmlink.Segment.open(sys.argv[1], timeout=1)\n"
            "except shmlink.Timeout as e:\n"
            "    print('timeout', round(time.monotonic() - t, 1), 'exclusive lock' in str(e))\n",
            name, timeout=30, env=python_env())
        out = r.stdout.split()
        assert out[:1] == ["timeout"], (r.stdout, r.stderr)
        assert 1.0 <= float(out[1]) < 3.0 and out[2] == "True"
    finally:
        p.kill()
        p.wait(10)
    # and once the lock is gone, the open works
    shmlink.Segment.open(name, timeout=1).close()


def _hammer(kind: str, name: str, seconds: float = 4.0, seed: int = 0) -> tuple[int, int]:
    r = subprocess.run([sys.executable, "-m", "workers.races", kind, name, str(seconds),
                        str(seed)], capture_output=True, text=True, timeout=seconds + 60,
                       env=python_env())
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.stdout, r.stderr[-3000:])
    _, calls, hits = r.stdout.split()
    return int(calls), int(hits)


def test_ctrl_c_anywhere_in_queue_recv_view(name):
    with shmlink.Queue.create(name, 1 << 16) as q:
        calls, hits = _hammer("queue", name, seed=1)
        assert hits > 50, (calls, hits)
        # and another process is not wedged: it receives at once
        q.send(b"after")
        r = run_python("import shmlink, sys\n"
                       "print(shmlink.Queue.open(sys.argv[1]).recv(timeout=2).decode())\n",
                       name, env=python_env())
        assert r.stdout.strip() == "after", r.stderr


def test_ctrl_c_anywhere_in_mutex_acquire(name):
    m = shmlink.Mutex.create(name)  # (a Mutex's with-block would take the lock)
    try:
        calls, hits = _hammer("mutex", name, seed=2)
        assert hits > 50, (calls, hits)
        assert not m.locked()
    finally:
        m.close()


def test_ctrl_c_anywhere_in_connection_request(name):
    from workers.races import echo_server
    ready = CTX.Event()
    srv = CTX.Process(target=echo_server, args=(name, ready))
    srv.start()
    try:
        assert ready.wait(30)
        calls, hits = _hammer("request", name, seed=3)
        assert hits > 50, (calls, hits)
    finally:
        join_all([srv], timeout=30)


def test_ctrl_c_anywhere_in_subscriber_recv_view(name):
    with shmlink.Topic.create(name, 1 << 16, delivery="lossless") as t:
        calls, hits = _hammer("subscriber", name, seed=4)
        assert hits > 50, (calls, hits)
        t.publish(b"still works")


def _stale_listener_named(name: str) -> None:
    """A listener whose server died without closing (forked, exits without cleanup)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            shmlink.listen(name)
            os.write(w, b"k")
        finally:
            os._exit(0)  # no atexit: the name stays, its server is dead
    os.close(w)
    assert os.read(r, 1) == b"k"
    os.close(r)
    os.waitpid(pid, 0)


def test_two_servers_taking_over_a_stale_listener_leave_exactly_one(name):
    from workers.races import listen_racer
    rounds = 40
    barrier = CTX.Barrier(3)
    results = CTX.Queue()
    racers = [CTX.Process(target=listen_racer, args=(name, barrier, results, rounds))
              for _ in range(2)]
    for p in racers:
        p.start()
    try:
        for _ in range(rounds):
            _stale_listener_named(name)
            barrier.wait(60)
            got = dict(results.get(timeout=30) for _ in range(2))
            winners = [pid for pid, ok in got.items() if ok]
            assert len(winners) == 1, f"{len(winners)} servers think they listen: {got}"
            info = shmlink.info(name)
            assert info.kind == "listener" and winners[0] in info.participants
            barrier.wait(30)
            barrier.wait(30)
    finally:
        join_all(racers, timeout=60)


def _fill_participant_table(seg) -> None:
    """Every participant slot names a live process (PID 1, with its real start time)."""
    from shmlink.segment import _OFF_PARTICIPANTS, MAX_PARTICIPANTS
    mem = seg._mapping().memory
    start = shmlink._core.process_start_time(1)
    for i in range(MAX_PARTICIPANTS):
        off = _OFF_PARTICIPANTS + 16 * i
        mem.store32(off, 1)
        mem.store64(off + 8, start)


def test_a_full_participant_table_refuses_no_subscriber(name):
    # 128 slots must not cap a topic made for 1024 subscribers
    with shmlink.Topic.create(name, 1 << 14, max_subscribers=1024) as t:
        _fill_participant_table(t)
        r = run_python("import shmlink, sys\n"
                       "t = shmlink.Topic.open(sys.argv[1])\n"
                       "sub = t.subscribe()\n"
                       "print('subscribed', len(t.stats()['subscribers']))\n",
                       name, env=python_env(), timeout=60)
        assert r.stdout.split() == ["subscribed", "1"], r.stderr


def test_a_full_participant_table_refuses_no_open(name):
    with shmlink.Queue.create(name, 4096) as q:
        _fill_participant_table(q)
        q.send(b"hello")
        r = run_python("import shmlink, sys\n"
                       "print(shmlink.Queue.open(sys.argv[1]).recv(timeout=5).decode())\n",
                       name, env=python_env(), timeout=60)
        assert r.stdout.strip() == "hello", r.stderr
