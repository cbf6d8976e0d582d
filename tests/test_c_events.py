"""Event and Board from C (include/shmlink/event.h, board.h) against Python peers.

The programs are tests/c/event_peer.c and tests/c/board_peer.c, compiled here
with ``cc`` (the tests skip when there is none), some with 30-second sleep
slices so that a lost wake-up shows as a stall the test's timeout turns into
a failure.  Every C process and every Python peer is a real OS process on the
same shared memory, given names only.  Sleepers are not counted in shared
memory any more: a test knows a waiter sleeps when the event count is armed
and the process sleeps in a futex wait (/proc/PID/wchan).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import closing, contextmanager

import pytest

import shmlink
from shmlink import Board, Event
from shmlink import board as board_mod
from support import asleep_in_futex, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _build(tmp_path_factory, source: str, *defines: str) -> str:
    exe = tmp_path_factory.mktemp("c") / (os.path.splitext(source)[0] + "".join(defines))
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", INCLUDE,
                    *defines, os.path.join(HERE, "c", source), "-o", str(exe)],
                   check=True, timeout=120)
    return str(exe)


@pytest.fixture(scope="module")
def event_peer(tmp_path_factory):
    # A sleep lasts up to 30 s: a lost wake-up is a stall, not a 0.1 s hiccup.
    return _build(tmp_path_factory, "event_peer.c", "-DSHMLINK_WAIT_SLICE_S=30")


@pytest.fixture(scope="module")
def board_peer(tmp_path_factory):
    return _build(tmp_path_factory, "board_peer.c", "-DSHMLINK_WAIT_SLICE_S=30")


def run(*argv: str, timeout: float = 30) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (argv, r.returncode, r.stdout, r.stderr)
    return r.stdout.strip()


class Child:
    """A child process that prints "waiting" before it waits; killed on exit if still alive."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self._readline(30)
        assert line == "waiting", (line, self.proc.stderr.read() if self.proc.poll() is not None
                                   else "")

    def _readline(self, timeout: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return out[0].strip() if out else ""

    def asleep(self, obj) -> bool:
        return bool(obj.stats()["armed"]) and asleep_in_futex(self.proc.pid)

    def finish(self, timeout: float = 10) -> str:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args[:2]} did not finish within {timeout} s: "
                        "a wake-up was lost")
        assert self.proc.returncode == 0, (out, err)
        return out.strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


PY_EVENT_WAIT = """
import sys, shmlink
e = shmlink.Event.open(sys.argv[1])
print("waiting", flush=True)
e.wait(timeout=float(sys.argv[2]))
print("ok", flush=True)
"""

PY_EVENT_CONSUME = """
import sys, shmlink
e = shmlink.Event.open(sys.argv[1])
print("waiting", flush=True)
n = 0
while True:
    try:
        e.wait(timeout=float(sys.argv[2]))
    except shmlink.Timeout:
        break
    n += 1
print("consumed", n, flush=True)
"""


# --- Event ------------------------------------------------------------------------


@pytest.mark.parametrize("auto_reset", [False, True], ids=["manual", "auto"])
def test_c_waiter_is_woken_by_python_set(event_peer, name, auto_reset):
    with closing(Event.create(name, auto_reset=auto_reset)) as ev:
        with Child([event_peer, "wait", ev.name, "60"]) as c:
            wait_for(lambda: c.asleep(ev), timeout=30, what="the C waiter to sleep")
            ev.set()
            assert c.finish() == "ok"
        # auto-reset: the C waiter consumed the set; manual: it stays set
        assert ev.is_set() is (not auto_reset)
        assert ev.stats()["wakes"] == 1 and not ev.stats()["armed"]
        ev.unlink()


@pytest.mark.parametrize("auto_reset", [False, True], ids=["manual", "auto"])
def test_python_waiter_is_woken_by_c_set(event_peer, name, auto_reset):
    with closing(Event.create(name, auto_reset=auto_reset)) as ev:
        with Child([sys.executable, "-c", PY_EVENT_WAIT, ev.name, "60"]) as c:
            wait_for(lambda: c.asleep(ev), timeout=30, what="the Python waiter to sleep")
            assert run(event_peer, "set", ev.name) == "woke 1"
            assert c.finish() == "ok"
        assert run(event_peer, "state", ev.name) == ("clear" if auto_reset else "set")
        ev.unlink()


def test_c_creates_python_opens(event_peer, name):
    assert run(event_peer, "create", name, "auto") == "created"
    with closing(Event.open(name)) as ev:
        assert ev.auto_reset and not ev.is_set()
        ev.set()
        assert run(event_peer, "wait", name, "5") == "waiting\nok"
        assert not ev.is_set()  # consumed by C
        ev.unlink()


def test_auto_reset_each_set_releases_exactly_one_consumer_of_c_and_python(event_peer, name):
    """Two C and two Python consumers on one auto-reset event; 200 sets, alternately
    from Python and from C, each only once the previous one was consumed.  Every set
    is consumed exactly once: the consumers' counts add up to 200."""
    rounds = 200
    with closing(Event.create(name, auto_reset=True)) as ev:
        argv = [[event_peer, "consume", ev.name, "3"]] * 2 + \
               [[sys.executable, "-c", PY_EVENT_CONSUME, ev.name, "3"]] * 2
        children = [Child(a) for a in argv]
        try:
            wait_for(lambda: ev.stats()["armed"]
                     and asleep_in_futex(*(c.proc.pid for c in children)),
                     timeout=30, what="four consumers asleep")
            for i in range(rounds):
                if i % 2:
                    run(event_peer, "set", ev.name)
                else:
                    ev.set()
                wait_for(lambda: not ev.is_set(), timeout=10, what=f"set {i} to be consumed")
            counts = [int(c.finish(timeout=30).split()[1]) for c in children]
        finally:
            for c in children:
                c.__exit__()
        assert sum(counts) == rounds, counts
        assert ev.set_count == rounds
        ev.unlink()


def test_c_waiter_killed_asleep_costs_one_futex_wake_then_none(event_peer, name):
    with closing(Event.create(name)) as ev:
        with Child([event_peer, "wait", ev.name, "60"]) as c:
            wait_for(lambda: c.asleep(ev), timeout=30, what="the C waiter to sleep")
            c.kill()
        wakes = ev.stats()["wakes"]
        for _ in range(1000):
            ev.set()
            ev.clear()
        # The dead waiter left its armed bit, which the first set cleared with one
        # futex wake; with a sleeper count every set would have paid one.
        assert ev.stats()["wakes"] - wakes <= 1
        assert not ev.stats()["armed"]
        ev.unlink()


def test_python_waiter_killed_asleep_costs_c_set_one_futex_wake_then_none(event_peer, name):
    with closing(Event.create(name, auto_reset=True)) as ev:
        with Child([sys.executable, "-c", PY_EVENT_WAIT, ev.name, "60"]) as c:
            wait_for(lambda: c.asleep(ev), timeout=30, what="the Python waiter to sleep")
            c.kill()
        assert run(event_peer, "set", ev.name, "1000") == "woke 1"
        assert run(event_peer, "set", ev.name, "1000") == "woke 0"
        assert run(event_peer, "stats", ev.name) == "sets 2000 wakes 1 armed 0"
        ev.unlink()


def test_set_after_a_killed_waiter_makes_no_futex_system_call(event_peer, name):
    """The same, seen from the kernel: strace counts the futex calls of 1000 sets."""
    if shutil.which("strace") is None:
        pytest.skip("no strace")
    with closing(Event.create(name)) as ev:
        with Child([event_peer, "wait", ev.name, "60"]) as c:
            wait_for(lambda: c.asleep(ev), timeout=30, what="the C waiter to sleep")
            c.kill()
        r = subprocess.run(["strace", "-f", "-c", "-e", "trace=futex", event_peer, "set",
                            ev.name, "1000"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and "ptrace" in r.stderr:
            pytest.skip("strace cannot trace here: " + r.stderr.strip()[:200])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "woke 1"
        calls = [int(line.split()[3]) for line in r.stderr.splitlines()
                 if line.strip().endswith("futex")]
        assert sum(calls) <= 1, r.stderr
        ev.unlink()


def test_old_event_layout_is_refused_by_c_and_python(event_peer, name):
    # Made by a shmlink that counted sleepers: header kind_version 0.
    with Event.create(name) as ev:
        ev._memory.store32(72, 0)  # struct shmlink_header.kind_version
    try:
        r = subprocess.run([event_peer, "state", name], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 1 and r.stdout.strip() == "open: EPROTO"
        with pytest.raises(shmlink.IncompatibleSegment, match="event layout 0.*speaks 3"):
            Event.open(name)
    finally:
        shmlink.remove(name)


# --- Board ------------------------------------------------------------------------


@contextmanager
def _unlinking(obj):
    try:
        yield obj
    finally:
        obj.unlink()


def value(v: int, capacity: int) -> bytes:
    """board_peer.c's rule: version v holds 1 + 37v % capacity bytes of v % 251 + 1."""
    return b"" if v == 0 else bytes([v % 251 + 1]) * (1 + (v * 37) % capacity)


PY_BOARD_WRITER = """
import sys, shmlink
b = shmlink.Board.open(sys.argv[1])
cap = b.capacity
while True:  # until killed
    v = b.version + 1
    assert b.write(b"" if v == 0 else bytes([v % 251 + 1]) * (1 + (v * 37) % cap)) == v
"""

PY_BOARD_WAIT = """
import sys, shmlink
b = shmlink.Board.open(sys.argv[1])
print("waiting", flush=True)
print(b.wait_for_change(int(sys.argv[2]), timeout=60), flush=True)
"""


def test_c_writer_python_reader_never_torn(board_peer, name):
    cap = 3000
    with Board.create(name, cap) as b, _unlinking(b):
        writer = subprocess.Popen([board_peer, "write", name, "1000000"], stdout=subprocess.PIPE,
                                  text=True)
        try:
            reads, versions, last = 0, set(), 0
            while writer.poll() is None or reads == 0:
                v, data = b.read_versioned()
                assert v >= last, f"version went back from {last} to {v}"
                assert data == value(v, cap), f"torn or wrong value at version {v}"
                versions.add(v)
                last = v
                reads += 1
            out, _ = writer.communicate(timeout=60)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait(10)
        assert writer.returncode == 0 and out.strip() == "wrote 1000000"
        assert b.read_versioned() == (1000000, value(1000000, cap))
        assert len(versions) > 10, "the reader hardly saw the writer write"


def test_python_writer_c_reader_never_torn(board_peer, name):
    cap = 3000
    with Board.create(name, cap) as b:
        try:
            writer = subprocess.Popen([sys.executable, "-c", PY_BOARD_WRITER, name])
            try:
                wait_for(lambda: b.version > 100, timeout=30, what="the writer to start")
                v0 = b.version
                out = run(board_peer, "check", name, "300000", timeout=120)
                v1 = b.version
                assert writer.poll() is None, "the writer died"
            finally:
                writer.kill()
                writer.wait(10)
            reads, versions = int(out.split()[0]), int(out.split()[3])
            assert reads == 300000 and versions > 1, out
            assert v1 - v0 > 100, "the writer did not run during the check"
            assert run(board_peer, "check", name, "1") == "1 whole reads, 1 versions"
        finally:
            b.unlink()


def test_c_creates_python_reads_and_writes(board_peer, name):
    assert run(board_peer, "create", name, "100") == "created"
    with Board.open(name) as b:
        assert b.capacity == 100 and b.read_versioned() == (0, b"")
        run(board_peer, "write", name, "3")
        assert b.read_versioned() == (3, value(3, 100))
        b.write(value(4, 100))
        assert run(board_peer, "check", name, "10") == "10 whole reads, 1 versions"
        b.unlink()


def test_wait_for_change_across_c_and_python(board_peer, name):
    with Board.create(name, 100) as b:
        # a C waiter (30 s sleep slices) woken by a Python write
        with Child([board_peer, "wait", name, "0", "60"]) as c:
            wait_for(lambda: c.asleep(b), timeout=30, what="the C waiter to sleep")
            assert b.write(b"x") == 1
            assert c.finish() == "version 1"
        # a Python waiter woken by a C write
        with Child([sys.executable, "-c", PY_BOARD_WAIT, name, "1"]) as c:
            wait_for(lambda: c.asleep(b), timeout=30, what="the Python waiter to sleep")
            run(board_peer, "write", name, "1")
            assert c.finish() == "2"
        assert b.stats()["wakes"] == 2 and not b.stats()["armed"]
        b.unlink()


def test_no_lost_wakeups_in_ping_pong_with_a_c_peer(board_peer, names):
    """1000 strict round trips, the C side sleeping in 30 s slices: a lost wake-up
    stalls the round (its 20 s wait fails) instead of costing a slice."""
    rounds = 1000
    with Board.create(names("ping"), 16) as ping, Board.create(names("pong"), 16) as pong:
        c = subprocess.Popen([board_peer, "pong", ping.name, pong.name, str(rounds)],
                             stdout=subprocess.PIPE, text=True)
        try:
            last = 0
            for i in range(rounds):
                ping.write(str(i).encode())
                last = pong.wait_for_change(last, timeout=20)
                assert pong.read() == str(i).encode()
            out, _ = c.communicate(timeout=30)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait(10)
        assert c.returncode == 0 and out.strip() == f"ponged {rounds}"
        ping.unlink()
        pong.unlink()


def test_c_watcher_killed_asleep_costs_one_futex_wake_then_none(board_peer, name):
    with Board.create(name, 100) as b:
        with Child([board_peer, "wait", name, "0", "60"]) as c:
            wait_for(lambda: c.asleep(b), timeout=30, what="the C waiter to sleep")
            c.kill()
        wakes = b.stats()["wakes"]
        for i in range(1000):
            b.write(b"%d" % i)
        assert b.stats()["wakes"] - wakes <= 1
        assert not b.stats()["armed"]
        assert run(board_peer, "stats", name) == "version 1000 wakes 1 armed 0"
        b.unlink()


def test_old_board_layout_is_refused_by_c_and_python(board_peer, name):
    # Made by a shmlink that counted sleepers: board layout 1 (layout 2, without the
    # doorbell table, is refused the same way).
    with Board.create(name, 16) as b:
        b._memory.store32(board_mod._C_LAYOUT, 1)
    try:
        r = subprocess.run([board_peer, "stats", name], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 1 and r.stdout.strip() == "open: EPROTO"
        with pytest.raises(shmlink.IncompatibleSegment, match="board layout 1.*speaks 3"):
            Board.open(name)
    finally:
        shmlink.remove(name)


def test_close_wakes_a_thread_in_event_wait_and_wait_for_change(name):
    """The binding's waits are registered with the handle: close() from another
    thread ends them promptly with SegmentClosed (in a child: a crash fails the test)."""
    code = """
import sys, threading, time, shmlink
ev = shmlink.Event.create(sys.argv[1] + "-e", lifetime="auto")
b = shmlink.Board.create(sys.argv[1] + "-b", 16, lifetime="auto")
for op, h in ((lambda: ev.wait(timeout=20), ev), (lambda: b.wait_for_change(0, timeout=20), b)):
    got = []
    def run():
        try:
            op()
        except shmlink.SegmentClosed:
            got.append(time.monotonic())
    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    h.close()
    t.join(10)
    assert got and got[0] - t0 < 1.0, got
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined", "-g"]


def test_both_peers_under_address_and_undefined_sanitizers(tmp_path_factory, names):
    """The headers' event and board code, built with ASan + UBSan, against Python."""
    tmp = tmp_path_factory.mktemp("sanitized")
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    r = subprocess.run(["cc", *SANITIZE, str(probe), "-o", str(tmp / "probe")],
                       capture_output=True, timeout=60)
    if r.returncode != 0 or subprocess.run([str(tmp / "probe")], timeout=30).returncode != 0:
        pytest.skip("cc cannot build with -fsanitize=address,undefined here")
    ev_peer = _build(tmp_path_factory, "event_peer.c", *SANITIZE)
    bd_peer = _build(tmp_path_factory, "board_peer.c", *SANITIZE)
    ev_name, ping_name, pong_name = names("ev"), names("ping"), names("pong")
    try:
        assert run(ev_peer, "create", ev_name, "auto") == "created"
        with closing(Event.open(ev_name)) as ev:
            with Child([ev_peer, "consume", ev_name, "2"]) as c:
                wait_for(lambda: c.asleep(ev), timeout=30, what="the C consumer to sleep")
                for i in range(50):
                    ev.set()
                    wait_for(lambda: not ev.is_set(), timeout=10, what=f"set {i} consumed")
                assert c.finish(timeout=30) == "consumed 50"
        assert run(bd_peer, "create", ping_name, "64") == "created"
        with Board.open(ping_name) as ping, Board.create(pong_name, 64) as pong:
            c = subprocess.Popen([bd_peer, "pong", ping_name, pong_name, "200"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                last = 0
                for i in range(200):
                    ping.write(str(i).encode() * 3)
                    last = pong.wait_for_change(last, timeout=20)
                    assert pong.read() == str(i).encode() * 3
                out, err = c.communicate(timeout=30)
            finally:
                if c.poll() is None:
                    c.kill()
                    c.wait(10)
            assert c.returncode == 0 and out.strip() == "ponged 200", err
            assert run(bd_peer, "write", ping_name, "2000") == "wrote 2000"
            assert run(bd_peer, "check", ping_name, "1000") == "1000 whole reads, 1 versions"
    finally:
        for n in (ev_name, ping_name, pong_name):
            try:
                shmlink.remove(n)
            except shmlink.SegmentNotFound:
                pass
