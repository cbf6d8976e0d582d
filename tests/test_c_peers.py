"""C programs built on the protocol headers, against Python peers.

The programs live in tests/c/ and are compiled here with ``cc``; the tests
skip when there is none.  Each C process and each Python peer is a real OS
process on the same shared memory, given names only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import closing

import pytest

import shmlink
from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _build(tmp_path_factory, source: str, *defines: str) -> str:
    exe = tmp_path_factory.mktemp("c") / os.path.splitext(source)[0]
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", INCLUDE,
                    *defines, os.path.join(HERE, "c", source), "-o", str(exe)],
                   check=True, timeout=120)
    return str(exe)


@pytest.fixture(scope="module")
def ring_peer(tmp_path_factory):
    return _build(tmp_path_factory, "ring_peer.c")


@pytest.fixture(scope="module")
def ring_peer_long_sleeps(tmp_path_factory):
    # A sleep on an event count lasts up to 30 s: a lost wake-up shows as a
    # stall that the test's timeout turns into a failure.
    return _build(tmp_path_factory, "ring_peer.c", "-DSHMLINK_WAIT_SLICE_S=30")


@pytest.fixture(scope="module")
def mutex_peer(tmp_path_factory):
    return _build(tmp_path_factory, "mutex_peer.c")


def run(*argv: str, timeout: float = 30, **kw) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, (argv, r.returncode, r.stdout, r.stderr)
    return r.stdout.strip()


class Holder:
    """A child process that takes something, says so on stdout, and waits to be killed."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self._readline(20)
        assert line == "held", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def _readline(self, timeout: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return out[0].strip() if out else ""

    def kill(self) -> int:
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return pid

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


# --- Mutex ------------------------------------------------------------------------

PY_COUNTER = """
import sys, shmlink
m = shmlink.Mutex.open(sys.argv[1])
s = shmlink.Segment.open(sys.argv[2])
buf = s.buf
for _ in range(int(sys.argv[3])):
    m.acquire(timeout=20)
    v = int.from_bytes(buf[0:8], "little")
    buf[0:8] = (v + 1).to_bytes(8, "little")
    m.release()
buf.release()
s.close()
m.close()
"""

PY_HOLDER = """
import sys, time, shmlink
m = shmlink.Mutex.open(sys.argv[1])
m.acquire(timeout=10)
print("held", flush=True)
time.sleep(120)
"""


def test_c_and_python_exclude_each_other_on_one_mutex(mutex_peer, name):
    n = 10000
    # (not `with m`: a Mutex's with-block holds the lock)
    with closing(shmlink.Mutex.create(name)) as m, \
            shmlink.Segment.create(name + "-count", 8) as counter:
        py = subprocess.Popen([sys.executable, "-c", PY_COUNTER, m.name, counter.name, str(n)],
                              stderr=subprocess.PIPE, text=True)
        try:
            out = run(mutex_peer, "count", m.name, counter.name, str(n), timeout=90)
            _, err = py.communicate(timeout=90)
        finally:
            if py.poll() is None:
                py.kill()
                py.wait(10)
        assert py.returncode == 0, err
        assert out == f"counted {n}"
        # every increment was a read-modify-write under the lock: none lost
        assert int.from_bytes(counter.read(0, 8), "little") == 2 * n
        assert m.state()["acquisitions"] == 2 * n
        assert m.consistent and not m.locked()
        m.unlink()
        counter.unlink()


def test_python_is_told_when_a_c_holder_dies(mutex_peer, name):
    with closing(shmlink.Mutex.create(name)) as m:
        with Holder([mutex_peer, "hold", m.name]) as holder:
            assert m.holder_pid == holder.proc.pid
            assert run(mutex_peer, "trylock", m.name) == "EBUSY"
            dead = holder.kill()
        with pytest.raises(shmlink.OwnerDied) as info:
            m.acquire(timeout=5)
        assert info.value.previous_pid == dead
        m.mark_consistent()
        m.release()
        assert m.consistent
        m.unlink()


def test_c_is_told_when_a_python_holder_dies(mutex_peer, name):
    with closing(shmlink.Mutex.create(name)) as m:
        with Holder([sys.executable, "-c", PY_HOLDER, m.name]) as holder:
            assert run(mutex_peer, "trylock", m.name) == "EBUSY"
            dead = holder.kill()
        assert not m.consistent or m.locked()
        assert run(mutex_peer, "take", m.name) == f"owner-died {dead}"
        # the C side marked it consistent and unlocked it
        assert m.consistent and not m.locked()
        assert run(mutex_peer, "take", m.name) == "ok"
        m.acquire(timeout=5)
        m.release()
        m.unlink()


def test_c_refuses_a_segment_that_is_not_a_mutex(mutex_peer, name):
    with shmlink.Queue.create(name, 4096) as q:
        r = subprocess.run([mutex_peer, "trylock", q.name], capture_output=True, text=True,
                           timeout=20)
        q.unlink()
    assert r.returncode == 1 and r.stdout.strip() == "open: EPROTO"


# --- Queue: "lock busy" is not "full" / "empty" -------------------------------------------

def test_try_forms_tell_lock_busy_from_full_and_empty(ring_peer, name):
    with shmlink.Queue.create(name, 4096) as q:
        assert run(ring_peer, "tryrecv", q.name) == "EAGAIN"  # empty
        q.send(b"a")
        with q.recv_view(timeout=5):  # a Python consumer holds the consumer lock
            assert run(ring_peer, "tryrecv", q.name) == "EBUSY"
        with Holder([ring_peer, "hold", q.name, "prod"]) as holder:
            assert run(ring_peer, "trysend", q.name) == "EBUSY"
            holder.kill()
        # the holder died: a try takes its lock over and sends
        assert run(ring_peer, "trysend", q.name) == "0"
        assert q.recv(timeout=5) == b"x"
        while q.try_send(b"fill"):
            pass
        assert run(ring_peer, "trysend", q.name) == "EAGAIN"  # full
        q.unlink()


def test_blocking_recv_sleeps_while_another_consumer_holds_a_view(ring_peer, name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send(b"first")
        q.send(b"second")
        with q.recv_view(timeout=5) as view:
            assert bytes(view) == b"first"
            c = subprocess.Popen([ring_peer, "recv", q.name, "20"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            try:
                # the C consumer waits for the lock we hold; it must sleep, not spin
                subprocess.run(["sleep", "1"], timeout=10)
                assert c.poll() is None
            except BaseException:
                c.kill()
                c.wait(10)
                raise
        out, err = c.communicate(timeout=20)
        assert c.returncode == 0, (out, err)
        got, cpu = out.split(" cpu ")
        assert got == "got second"
        assert float(cpu) < 0.25, f"the waiting C consumer used {cpu} s of CPU in ~1 s"
        q.unlink()


def test_blocking_send_loses_no_wakeup_when_the_ring_is_full(ring_peer_long_sleeps, name):
    n = 20000
    with shmlink.Queue.create(name, 256) as q:  # ~16 records: the C producer is often blocked
        c = subprocess.Popen([ring_peer_long_sleeps, "send", q.name, str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for i in range(n):
                assert q.recv(timeout=20) == str(i).encode()
            out, err = c.communicate(timeout=20)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait(10)
        assert c.returncode == 0, (out, err)
        assert out.strip() == f"sent {n}"
        q.unlink()


def test_blocking_recv_and_send_lose_no_wakeup_in_a_ping_pong(ring_peer_long_sleeps, name):
    n = 5000
    with shmlink.Queue.create(name + "-in", 256) as q_in, \
            shmlink.Queue.create(name + "-out", 256) as q_out:
        c = subprocess.Popen([ring_peer_long_sleeps, "echo", q_in.name, q_out.name, str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for i in range(n):
                q_in.send(str(i).encode(), timeout=20)
                assert q_out.recv(timeout=20) == str(i).encode()
            out, err = c.communicate(timeout=20)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait(10)
        assert c.returncode == 0, (out, err)
        q_in.unlink()
        q_out.unlink()


def test_ring_init_clamps_max_message_to_the_record_length(ring_peer):
    # a ring larger than 4 GiB: its records still carry 32-bit lengths
    out = run(ring_peer, "clamp")
    assert out == "init 0 attach 0 max_message 4294967288"


def test_c_opens_segments_in_shmlink_dir(ring_peer, name, tmp_path, monkeypatch):
    monkeypatch.setenv("SHMLINK_DIR", str(tmp_path))
    with shmlink.Queue.create(name, 4096) as q:
        assert q.path.startswith(str(tmp_path))
        assert run(ring_peer, "trysend", q.name) == "0"
        assert q.recv(timeout=5) == b"x"
        q.unlink()
    monkeypatch.delenv("SHMLINK_DIR")
    r = subprocess.run([ring_peer, "trysend", name], capture_output=True, text=True, timeout=20,
                       env={k: v for k, v in os.environ.items() if k != "SHMLINK_DIR"})
    assert r.returncode == 1 and "No such file" in r.stderr


# --- Topic ------------------------------------------------------------------------------

def test_c_publisher_blocks_for_room_and_python_gets_everything(ring_peer_long_sleeps, name):
    n = 5000
    with shmlink.Topic.create(name, 1024) as t:  # lossless, small: the publisher waits often
        sub = t.subscribe()
        c = subprocess.Popen([ring_peer_long_sleeps, "publish", t.name, str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for i in range(n):
                assert sub.recv(timeout=20) == str(i).encode()
            out, err = c.communicate(timeout=20)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait(10)
        assert c.returncode == 0, (out, err)
        sub.close()
        t.unlink()


def test_c_subscriber_gets_everything_a_python_publisher_sends(ring_peer_long_sleeps, name):
    n = 5000
    with shmlink.Topic.create(name, 1024) as t:
        c = subprocess.Popen([ring_peer_long_sleeps, "subscribe", t.name, str(n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert c.stdout.readline().strip() == "ready"
            for i in range(n):
                t.publish(str(i).encode(), timeout=20)
            out, err = c.communicate(timeout=20)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait(10)
        assert c.returncode == 0, (out, err)
        assert out.strip() == f"received {n} missed 0"
        t.unlink()
