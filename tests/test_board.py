"""Board: a shared latest value, read without tearing and watched for change."""

from __future__ import annotations

import array
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest

import shmlink
from shmlink import Board
from shmlink import board as board_mod
from shmlink.board import _LEN, _W_LOCK

from workers import board as W
from support import CTX, asleep_in_futex, join_all, run_python, wait_for


def _get(q, timeout: float = 20.0):
    return q.get(timeout=timeout)


def _ask(conn, request, timeout: float = 30.0):
    conn.send(request)
    assert conn.poll(timeout), f"no answer to {request[0]!r} within {timeout} s"
    return conn.recv()


def _slot_base(b: Board, version: int) -> int:
    return b._slots[version & 1]


# --- API ---------------------------------------------------------------------------


def test_new_board_is_empty_at_version_0(name):
    with Board.create(name, 100) as b:
        assert b.created and b.capacity == 100
        assert b.version == 0 and b.length == 0
        assert b.read() == b"" and b.read_versioned() == (0, b"")
        assert b.read_text() == "" and b.read_object() is None
        assert repr(b) == f"<shmlink.Board {name!r} capacity=100 version=0>"
        b.unlink()


def test_write_read_and_version(name):
    with Board.create(name, 64) as b:
        try:
            assert b.write(b"one") == 1
            assert b.write(bytearray(b"two!")) == 2
            assert b.read() == b"two!" and b.length == 4
            assert b.read_versioned() == (2, b"two!")
            assert b.write(memoryview(b"xthreex")[1:-1]) == 3
            assert b.read() == b"three"
            ints = array.array("i", [1, 2, 3])
            assert b.write(ints) == 4
            assert b.read() == ints.tobytes()
            assert b.write(b"") == 5 and b.read() == b""
            assert b.version == 5
        finally:
            b.unlink()


def test_value_of_exactly_size_fits_and_one_more_is_too_large(name):
    with Board.create(name, 10) as b:
        try:
            b.write(b"0123456789")
            with pytest.raises(shmlink.MessageTooLarge, match="at most 10 bytes") as e:
                b.write(b"0123456789A")
            assert isinstance(e.value, ValueError)
            assert b.version == 1 and b.read() == b"0123456789"  # nothing written
            with pytest.raises(shmlink.MessageTooLarge):
                b.write_text("é" * 6)  # 12 bytes in UTF-8
            with pytest.raises(shmlink.MessageTooLarge):
                b.write_object(list(range(10)))
            assert b.version == 1
        finally:
            b.unlink()


def test_clear_empties_and_bumps_version(name):
    with Board.create(name, 32) as b:
        try:
            b.write_text("hello")
            assert b.clear() == 2
            assert b.read() == b"" and b.version == 2 and b.length == 0
            assert b.read_object(default="nothing") == "nothing"
        finally:
            b.unlink()


def test_text_round_trips(name):
    with Board.create(name, 256) as b:
        try:
            b.write_text("grüße, 世界")
            assert b.read_text() == "grüße, 世界"
            b.write_text("wide ✓", encoding="utf-16-le")
            assert b.read() == "wide ✓".encode("utf-16-le")
            assert b.read_text("utf-16-le") == "wide ✓"
            b.write(b"\xff\xfe\xfd")
            with pytest.raises(shmlink.TextDecodeError, match="not valid utf-8"):
                b.read_text()
            assert b.read_text(errors="replace") == "\ufffd" * 3
            with pytest.raises(TypeError):
                b.write_text(b"bytes")  # type: ignore[arg-type]
        finally:
            b.unlink()


def test_object_round_trips(name):
    with Board.create(name, 4096) as b:
        try:
            for obj in ({"a": 1, "b": [1.5, None]}, (1, "two"), None, 0, b"", "text"):
                b.write_object(obj)
                assert b.read_object(default="EMPTY") == obj
        finally:
            b.unlink()


def test_bad_sizes_names_and_kinds(name, names):
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(shmlink.InvalidSize):
            Board.create(name, bad)  # type: ignore[arg-type]
    with pytest.raises(shmlink.SegmentNotFound):
        Board.open(name)
    with pytest.raises(shmlink.InvalidName):
        Board.create("bad/name", 10)
    q = shmlink.Queue.create(names("q"), 1024)
    try:
        with pytest.raises(shmlink.WrongKind, match="not a board"):
            Board.open(q.name)
    finally:
        q.unlink()
        q.close()
    with Board.create(name, 10) as b:
        try:
            with pytest.raises(shmlink.SegmentExists):
                Board.create(name, 10)
            with pytest.raises(shmlink.WrongKind):
                shmlink.Queue.open(name)
        finally:
            b.unlink()


def test_create_or_open_refuses_another_capacity(name):
    a = Board.create_or_open(name, 100)
    try:
        with pytest.raises(shmlink.SettingsMismatch, match="capacity 100, not 5000"):
            Board.create_or_open(name, 5000)
        b = Board.create_or_open(name, 100)
        assert a.created and not b.created and b.capacity == 100
        a.write(b"shared")
        assert b.read() == b"shared"
        b.close()
    finally:
        a.unlink()
        a.close()


def test_closed_handle_raises(name):
    b = Board.create(name, 10)
    b.unlink()
    b.close()
    b.close()  # idempotent
    assert repr(b) == f"<shmlink.Board {name!r} closed>"
    for call in (b.read, lambda: b.write(b"x"), lambda: b.version, lambda: b.wait_for_change(0)):
        with pytest.raises(shmlink.SegmentClosed):
            call()


def test_handle_pickles_by_name(name):
    with Board.create(name, 10) as b:
        try:
            b.write(b"by name")
            c = pickle.loads(pickle.dumps(b))
            assert c.read() == b"by name"
            c.close()
        finally:
            b.unlink()


def test_wait_for_change(name):
    with Board.create(name, 10) as b:
        try:
            assert b.wait_for_change(5, timeout=0) == 0  # already differs
            t = time.monotonic()
            with pytest.raises(shmlink.Timeout, match="no write within 0.2 s") as e:
                b.wait_for_change(0, timeout=0.2)
            assert time.monotonic() - t >= 0.2
            assert isinstance(e.value, TimeoutError)
            with pytest.raises(shmlink.Timeout):
                b.wait_for_change(0, timeout=0)
            with pytest.raises(ValueError):
                b.wait_for_change(0, timeout=-1)
            with pytest.raises(TypeError):
                b.wait_for_change("0")  # type: ignore[arg-type]
            b.write(b"x")
            assert b.wait_for_change(0, timeout=5) == 1
            assert not b.stats()["armed"]  # the write cleared what the timed-out wait armed
        finally:
            b.unlink()


def test_watch_yields_latest_and_skips(name):
    with Board.create(name, 10) as b:
        try:
            b.write(b"before")
            w = b.watch(timeout=5)  # starting point: "before", taken now
            b.write(b"a")
            b.write(b"b")
            b.write(b"c")
            assert next(w) == b"c"  # a latest value, not a queue: a and b are skipped
            b.write(b"d")
            assert next(w) == b"d"
            with pytest.raises(shmlink.Timeout):
                next(b.watch(timeout=0.05))
            w2 = b.watch(initial=True, timeout=0.05)
            assert next(w2) == b"d"
            with pytest.raises(shmlink.Timeout):
                next(w2)
        finally:
            b.unlink()


def test_stats_and_shmlink_info(name):
    from shmlink.cli import main

    with Board.create(name, 50) as b:
        try:
            b.write(b"12345")
            st = b.stats()
            assert st["version"] == 1 and st["capacity"] == 50 and st["length"] == 5
            assert st["last_writer_pid"] == os.getpid() and st["writer_pid"] is None
            r = run_python("import sys\nfrom shmlink.cli import main\n"
                           "sys.exit(main(['info', '--json', sys.argv[1]]))", name)
            assert r.returncode == 0, r.stderr
            info = json.loads(r.stdout)
            assert info["kind"] == "board"
            assert {k: info["state"][k] for k in ("version", "capacity", "length")} == \
                {"version": 1, "capacity": 50, "length": 5}
            assert main(["info", name]) == 0
        finally:
            b.unlink()


def test_corrupt_control_block_is_reported(name):
    b = Board.create(name, 16)
    try:
        b.write(b"ok")
        mem = b._memory
        base = _slot_base(b, 1)
        mem.store64(base + _LEN, 1 << 40)  # a length no board of 16 bytes has
        with pytest.raises(shmlink.CorruptSegment, match="at most 16"):
            b.read()
        with pytest.raises(shmlink.CorruptSegment):
            b.stats()
        mem.store64(base + _LEN, 2)
        assert b.read() == b"ok"
        mem.store64(base, 12345)  # the published slot's sequence, gone wrong ...
        mem.store32(_W_LOCK, os.getpid())  # ... and the writers' lock held by a live process
        with pytest.raises(shmlink.CorruptSegment, match="sequence"):
            b.read()  # told, without waiting for the lock
        mem.store32(_W_LOCK, 0)
        mem.store32(board_mod._C_MAGIC, 0xDEAD)
        r = run_python("import sys, shmlink\ntry:\n shmlink.Board.open(sys.argv[1])\n"
                       "except shmlink.CorruptSegment as e:\n print('corrupt', e)\n", name)
        assert r.stdout.startswith("corrupt"), (r.stdout, r.stderr)
    finally:
        b.unlink()
        b.close()


# --- across processes --------------------------------------------------------------


def test_value_written_in_one_process_is_read_in_another(name):
    with Board.create(name, 100) as b:
        try:
            b.write_object({"pid": os.getpid()})
            r = run_python("import sys, shmlink\nb = shmlink.Board.open(sys.argv[1])\n"
                           "print(b.read_object()['pid'], b.version)\n"
                           "b.write_text('from child')\n", name)
            assert r.returncode == 0, r.stderr
            assert r.stdout.split() == [str(os.getpid()), "1"]
            assert b.read_versioned() == (2, b"from child")
        finally:
            b.unlink()


def test_wait_for_change_across_processes(name):
    with Board.create(name, 100) as b:
        try:
            results = CTX.Queue()
            p = CTX.Process(target=W.waiter, args=(name, 0, 30.0, results))
            p.start()
            assert _get(results)[0] == "ready"
            wait_for(lambda: b.stats()["armed"] and asleep_in_futex(p.pid),
                     what="the child to wait")
            b.write_text("wake up")
            assert _get(results) == ("changed", 1, "wake up")
            join_all([p])
            # and a waiter that times out
            p = CTX.Process(target=W.waiter, args=(name, 1, 0.2, results))
            p.start()
            assert _get(results)[0] == "ready"
            assert _get(results)[0] == "timeout"
            join_all([p])
        finally:
            b.unlink()


def test_many_waiters_all_woken(name):
    with Board.create(name, 100) as b:
        try:
            results = CTX.Queue()
            procs = [CTX.Process(target=W.waiter, args=(name, 0, 30.0, results)) for _ in range(4)]
            for p in procs:
                p.start()
            for _ in procs:
                assert _get(results)[0] == "ready"
            wait_for(lambda: b.stats()["armed"] and asleep_in_futex(*(p.pid for p in procs)),
                     what="4 waiters")
            b.write_text("all")
            got = [_get(results) for _ in procs]
            assert got == [("changed", 1, "all")] * 4
            join_all(procs)
        finally:
            b.unlink()


def test_watch_across_processes(name):
    with Board.create(name, 100) as b:
        try:
            results = CTX.Queue()
            p = CTX.Process(target=W.watcher, args=(name, 5, 30.0, results))
            p.start()
            assert _get(results) == ("ready", 0)
            # Lock-step: each value is seen before the next is written.
            for i in range(5):
                b.write_text(f"value {i}")
                assert _get(results) == ("value", f"value {i}")
            join_all([p])
        finally:
            b.unlink()


def test_no_lost_wakeups_in_ping_pong(names):
    """2000 round trips through two boards.  A waiter sleeps in slices of 0.1 s (to
    run signal handlers), so a lost wake-up shows as a round trip of a whole slice:
    count them.  (tests/test_c_events.py plays the same game against a C peer whose
    sleeps last 30 s, where a lost wake-up hangs.)"""
    ping_name, pong_name = names("ping"), names("pong")
    rounds = 2000
    code = f"""
import sys, shmlink
ping, pong = shmlink.Board.open({ping_name!r}), shmlink.Board.open({pong_name!r})
seen = 0
for i in range({rounds}):
    seen = ping.wait_for_change(seen, timeout=20)
    pong.write(ping.read())
"""
    with Board.create(ping_name, 16) as ping, Board.create(pong_name, 16) as pong:
        try:
            child = subprocess.Popen([sys.executable, "-c", code])
            slow = 0
            last = 0
            for i in range(rounds):
                t = time.monotonic()
                ping.write(str(i).encode())
                last = pong.wait_for_change(last, timeout=20)
                slow += time.monotonic() - t >= 0.1
                assert pong.read() == str(i).encode()
            assert child.wait(30) == 0
            assert slow <= rounds // 100, f"{slow} round trips took a whole sleep slice"
        finally:
            ping.unlink()
            pong.unlink()


def test_ctrl_c_interrupts_a_wait(name):
    with Board.create(name, 10) as b:
        try:
            code = ("import sys, shmlink\nb = shmlink.Board.open(sys.argv[1])\n"
                    "print('waiting', flush=True)\n"
                    "try:\n b.wait_for_change(0)\nexcept KeyboardInterrupt:\n"
                    " print('interrupted', flush=True)\n")
            child = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                                     text=True)
            try:
                assert child.stdout.readline().strip() == "waiting"
                wait_for(lambda: b.stats()["armed"] and asleep_in_futex(child.pid),
                         what="the child to sleep")
                child.send_signal(signal.SIGINT)
                out, _ = child.communicate(timeout=10)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(10)
            assert out.strip() == "interrupted" and child.returncode == 0
            # the interrupted waiter left at most its armed bit: one futex wake, then none
            wakes = b.stats()["wakes"]
            for i in range(10):
                b.write(b"x")
            assert b.stats()["wakes"] - wakes <= 1 and not b.stats()["armed"]
        finally:
            b.unlink()


# --- tearing and crashes -------------------------------------------------------------


def test_no_torn_reads_with_concurrent_writers(name):
    """2 writer processes and 2 reader processes; over a million self-checked reads."""
    max_len = 2048
    with Board.create(name, max_len + 16) as b:
        try:
            b.write(W.checked_value(0, 0))
            stop, results = CTX.Event(), CTX.Queue()
            writers = [CTX.Process(target=W.checked_writer,
                                   args=(name, 1000 + i, max_len, stop, results))
                       for i in range(2)]
            readers = [CTX.Process(target=W.checked_reader, args=(name, 520_000, 80.0, results))
                       for _ in range(2)]
            for p in writers + readers:
                p.start()
            reads = []
            try:
                for _ in readers:
                    reads.append(_get(results, 60))
            finally:
                stop.set()
            writes = [_get(results, 30) for _ in writers]
            join_all(writers + readers)
            assert [r[0] for r in reads + writes] == ["reader"] * 2 + ["writer"] * 2
            total = sum(r[2] for r in reads)
            torn = sum(r[3] for r in reads)
            changes = sum(r[4] for r in reads)
            assert torn == 0, f"{torn} torn reads, e.g. {[r[5] for r in reads]}"
            assert total >= 1_000_000, f"only {total} reads in 80 s"
            assert changes >= 1000, "the readers hardly ever saw a new value: no contention"
            assert all(w[2] > 0 for w in writes)
            assert b.version >= sum(w[2] for w in writes)
            assert W.check_value(b.read())
        finally:
            b.unlink()


def test_dead_lock_holder_blocks_neither_readers_nor_writers(name):
    with Board.create(name, 100) as b:
        try:
            b.write(b"published")
            r = run_python("import sys, os, shmlink\nfrom shmlink.board import _W_LOCK\n"
                           "b = shmlink.Board.open(sys.argv[1])\n"
                           "assert b._memory.lock_acquire(_W_LOCK, None) == 0\n"
                           "os._exit(0)  # dies holding the writers' lock\n", name)
            assert r.returncode == 0, r.stderr
            mem = b._memory
            dead = mem.load32(_W_LOCK)
            assert dead not in (0, os.getpid())
            assert b.read() == b"published"  # no waiting, no take-over needed
            assert mem.load32(_W_LOCK) == dead
            assert b.write(b"next", timeout=10) == 2  # takes the lock over
            assert b.read_versioned() == (2, b"next")
            assert b.stats()["takeovers"] == 1 and mem.load32(_W_LOCK) == 0
        finally:
            b.unlink()


def test_read_under_the_lock_when_writers_keep_overtaking(name, monkeypatch):
    """The fallback a reader takes after too many retries: read with writers held off."""
    monkeypatch.setattr(board_mod, "_OPTIMISTIC_TRIES", 0)  # always the fallback
    with Board.create(name, 2064) as b:
        try:
            b.write(W.checked_value(1, 100))
            assert b.read_versioned() == (1, W.checked_value(1, 100))
            # a dead holder of the writers' lock is taken over by the reader
            r = run_python("import sys, os, shmlink\nfrom shmlink.board import _W_LOCK\n"
                           "b = shmlink.Board.open(sys.argv[1])\n"
                           "b._memory.lock_acquire(_W_LOCK, None)\nos._exit(0)\n", name)
            assert r.returncode == 0, r.stderr
            assert b.read() == W.checked_value(1, 100)
            assert b.stats()["takeovers"] == 1 and b._memory.load32(_W_LOCK) == 0
            # and it stays whole against live writers
            stop, results = CTX.Event(), CTX.Queue()
            w = CTX.Process(target=W.checked_writer, args=(name, 7, 2048, stop, results))
            w.start()
            try:
                wait_for(lambda: b.version > 100, timeout=30, what="the writer to write")
                bad = [v for v, d in (b.read_versioned() for _ in range(20_000))
                       if not W.check_value(d)]
            finally:
                stop.set()
            assert _get(results)[0] == "writer"
            join_all([w])
            assert bad == []
        finally:
            b.unlink()


def test_writer_killed_mid_write(name):
    """SIGKILL a writer of large values at random moments, 30 times: the board keeps
    the last complete value, readers carry on while the dead writer holds the lock,
    and the next writer proceeds."""
    size = 1 << 21
    rounds = 30
    with Board.create(name, size) as b:
        try:
            b.write(W.stamped_value(1, size // 2))
            stop, results = CTX.Event(), CTX.Queue()
            counters = CTX.RawArray("Q", 2)
            readers = [CTX.Process(target=W.stamped_reader, args=(name, i, counters, stop, results))
                       for i in range(2)]
            conn, child_conn = CTX.Pipe()
            forker = CTX.Process(target=W.fork_server, args=(child_conn,))
            for p in readers + [forker]:
                p.start()
            mem = b._memory
            rng = random.Random()
            held_by_dead = 0
            try:
                wait_for(lambda: all(counters), timeout=30, what="the readers to start")
                for _ in range(rounds):
                    base = b.version
                    pid = _ask(conn, ("writer", name, base, size // 2, size))
                    try:
                        wait_for(lambda: b.version >= base + 2, timeout=30,
                                 what="the writer to write")
                        time.sleep(rng.uniform(0, 0.01))
                    finally:
                        os.kill(pid, signal.SIGKILL)
                        assert _ask(conn, ("reap", pid)) == signal.SIGKILL
                    # The last complete value is there, whole, and is the one published.
                    version, data = b.read_versioned()
                    assert version >= base + 2 and W.stamp_of(data) == version
                    if mem.load32(_W_LOCK) == pid:
                        held_by_dead += 1
                        # Readers do not wait for the dead writer's lock.
                        seen = list(counters)
                        wait_for(lambda: all(c > s + 3 for c, s in zip(counters, seen)),
                                 timeout=30, what="readers to read past a dead writer")
                        assert mem.load32(_W_LOCK) == pid
                    # The next writer proceeds.
                    assert b.write(W.stamped_value(version + 1, size), timeout=10) == version + 1
                    assert W.stamp_of(b.read()) == version + 1
            finally:
                stop.set()
                conn.send(("exit",))
            outcomes = [_get(results, 60) for _ in readers]
            join_all(readers + [forker])
            assert held_by_dead >= 1, "no kill landed mid-write"
            assert b.stats()["takeovers"] == held_by_dead
            for _, _, reads, torn, backwards, _slowest in outcomes:
                assert reads > rounds and torn == 0 and backwards == 0
        finally:
            b.unlink()


# --- the shmlink command ---------------------------------------------------------------


def _cli(*args: str, input: str | bytes | None = None, timeout: float = 30.0):
    return subprocess.run([sys.executable, "-m", "shmlink", *args], capture_output=True,
                          input=input.encode() if isinstance(input, str) else input,
                          timeout=timeout)


def test_cli_write_read_clear(name):
    r = _cli("board", "write", name, "hello")
    assert r.returncode == 1 and b"does not exist" in r.stderr
    r = _cli("board", "write", name, "hello", "--create", "64")
    assert r.returncode == 0, r.stderr
    try:
        r = _cli("board", "read", name)
        assert (r.returncode, r.stdout) == (0, b"hello\n")
        r = _cli("board", "write", name, input=b"\x00\x01from stdin")
        assert r.returncode == 0, r.stderr
        r = _cli("board", "read", name, "--raw")
        assert r.stdout == b"\x00\x01from stdin"
        r = _cli("board", "write", name, "x" * 65)
        assert r.returncode == 1 and b"at most 64 bytes" in r.stderr
        r = _cli("board", "read", name, "extra")
        assert r.returncode == 2
        r = _cli("board", "clear", name)
        assert r.returncode == 0
        with Board.open(name) as b:
            assert b.read_versioned() == (3, b"")
    finally:
        shmlink.remove(name)


def test_cli_watch(name):
    with Board.create(name, 64) as b:
        try:
            child = subprocess.Popen([sys.executable, "-m", "shmlink", "board", "watch", name,
                                      "--count", "2", "--timeout", "30"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                wait_for(lambda: b.stats()["armed"] and asleep_in_futex(child.pid), timeout=30,
                         what="the watcher")
                b.write_text("first")
                assert child.stdout.readline() == b"first\n"  # lock-step: nothing skipped
                b.write_text("second")
                out, err = child.communicate(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(10)
            assert child.returncode == 0, err
            assert out == b"second\n"
            r = _cli("board", "watch", name, "--timeout", "0.1")
            assert r.returncode == 1 and b"no write within" in r.stderr
        finally:
            b.unlink()
