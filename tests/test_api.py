"""One API across kinds: ``mode=`` is permission bits, one capacity vocabulary,
one ``stats()``, ``create_or_open`` refuses contradicting settings, and a clean
interpreter exit releases what a process still has open.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shmlink
from shmlink.segment import shm_dir


def _path(name: str) -> str:
    return os.path.join(shm_dir(), "shmlink." + name)


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)


# --- mode= means permission bits on every kind ------------------------------------


def test_mode_is_permission_bits_on_every_kind(names):
    made = [
        shmlink.Segment.create(names(), 8, mode=0o640),
        shmlink.Mutex.create(names(), mode=0o640),
        shmlink.Event.create(names(), mode=0o640),
        shmlink.Queue.create(names(), 4096, mode=0o640),
        shmlink.Topic.create(names(), 4096, delivery="latest", mode=0o640),
        shmlink.Board.create(names(), 16, mode=0o640),
    ]
    try:
        for obj in made:
            assert obj.mode == 0o640, obj
            assert os.stat(obj.path).st_mode & 0o777 == 0o640
        assert made[4].delivery == "latest"
    finally:
        for obj in made:
            obj.unlink()
            obj.close()


def test_topic_takes_no_delivery_mode_in_mode(name):
    with pytest.raises(ValueError, match="permission bits"):
        shmlink.Topic.create(name, 4096, mode="latest")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmlink.Topic.create(name, 4096, permissions=0o600)  # type: ignore[call-arg]
    assert not os.path.exists(_path(name))


def test_bad_option_values_are_shmlink_errors(name):
    bad = [
        lambda: shmlink.Queue.create(name, wait="fast"),  # type: ignore[arg-type]
        lambda: shmlink.Segment.create(name, 8, lifetime="forever"),  # type: ignore[arg-type]
        lambda: shmlink.Segment.create(name, 8, mode=0o1777),
        lambda: shmlink.Topic.create(name, delivery="fastest"),  # type: ignore[arg-type]
        lambda: shmlink.Topic.create(name, max_subscribers=0),
    ]
    for make in bad:
        with pytest.raises(shmlink.InvalidArgument):
            make()
    assert not os.path.exists(_path(name))
    m = shmlink.Mutex.create(name + "-m", lifetime="auto")
    with pytest.raises(shmlink.InvalidArgument):
        m.acquire(timeout=-1)
    with m:  # a with-block holds the mutex
        with pytest.raises(shmlink.InvalidState):
            m.acquire()
    m.close()
    with shmlink.Topic.create(name, 4096, lifetime="auto") as t:
        with pytest.raises(shmlink.InvalidArgument):
            t.subscribe("middle")  # type: ignore[arg-type]
        with t.subscribe() as sub:
            sub.on_message(lambda msg: None)
            with pytest.raises(shmlink.InvalidState):
                sub.on_message(lambda msg: None)


def test_queue_recv_text_raises_text_decode_error(name):
    with shmlink.Queue.create(name, 4096, lifetime="auto") as q:
        q.send(b"\xff\xfe")
        with pytest.raises(shmlink.TextDecodeError):
            q.recv_text()


# --- one word for capacities ---------------------------------------------------------


def test_capacity_vocabulary(names):
    q = shmlink.Queue.create(names(), 1000)
    t = shmlink.Topic.create(names(), 1000)
    b = shmlink.Board.create(names(), 1000)
    s = shmlink.Segment.create(names(), 1000)
    try:
        # capacity: payload bytes (rounded to the record alignment for rings)
        assert (q.capacity, t.capacity, b.capacity) == (1000, 1008, 1000)
        assert (q.max_message_size, t.max_message_size) == (992, 992)
        assert s.size == 1000
        # size is a Segment's alone: the other kinds do not have one
        for obj in (q, t, b):
            assert not hasattr(obj, "size"), obj
        with pytest.raises(TypeError):
            shmlink.Board.create(names(), size=10)  # type: ignore[call-arg]
    finally:
        for obj in (q, t, b, s):
            obj.unlink()
            obj.close()


# --- one stats() -------------------------------------------------------------------------


def test_stats_keys_are_one_vocabulary(names):
    q = shmlink.Queue.create(names(), 4096)
    t = shmlink.Topic.create(names(), 4096)
    b = shmlink.Board.create(names(), 64)
    m = shmlink.Mutex.create(names())
    e = shmlink.Event.create(names())
    try:
        q.send(b"abc")
        sub = t.subscribe()
        t.publish(b"abc")
        b.write(b"abc")
        qs, ts, bs = q.stats(), t.stats(), b.stats()
        assert set(qs) == {"capacity", "max_message_size", "used_bytes", "depth", "sent",
                           "received", "writer_pid"}
        assert set(ts) == {"delivery", "capacity", "max_message_size", "max_subscribers",
                           "used_bytes", "published", "evicted", "writer_pid", "subscribers"}
        assert set(bs) == {"capacity", "version", "length", "writer_pid", "last_writer_pid",
                           "takeovers", "wakes", "armed"}
        assert set(m.stats()) == {"holder_pid", "consistent", "acquisitions"}
        assert set(e.stats()) == {"set", "auto_reset", "set_count", "wakes", "armed"}
        # the shared keys mean the same thing everywhere
        assert (qs["capacity"], ts["capacity"], bs["capacity"]) == (4096, 4096, 64)
        assert qs["max_message_size"] == q.max_message_size
        assert ts["max_message_size"] == t.max_message_size
        assert (qs["used_bytes"], ts["used_bytes"]) == (16, 32)
        assert qs["writer_pid"] is ts["writer_pid"] is bs["writer_pid"] is None
        assert (qs["sent"], qs["depth"], ts["published"], ts["delivery"]) == (1, 1, 1, "lossless")
        assert [s["lag"] for s in ts["subscribers"]] == [1]
        sub.close()
        for obj in (q, t, b, m, e):
            assert not hasattr(obj, "state"), obj
    finally:
        for obj in (q, t, b, m, e):
            obj.unlink()
            obj.close()


# --- create_or_open refuses settings that contradict the existing object ----------------


def _refused(make, match: str) -> shmlink.SettingsMismatch:
    with pytest.raises(shmlink.SettingsMismatch, match=match) as exc:
        make()
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, shmlink.ShmlinkError)
    assert "open it with" in str(exc.value)
    return exc.value


@pytest.mark.parametrize("kind", ["queue", "topic", "board", "event", "segment"])
def test_create_or_open_refuses_contradicting_settings(name, kind):
    Q, T, B, E, S = shmlink.Queue, shmlink.Topic, shmlink.Board, shmlink.Event, shmlink.Segment
    # (create it, [(a contradicting call, its message)], [calls that agree])
    cases = {
        "queue": (lambda: Q.create(name, 4096, max_message_size=100, lifetime="auto"),
                  [(lambda: Q.create_or_open(name, 8192), "capacity 4096, not 8192"),
                   (lambda: Q.create_or_open(name, 4000), "capacity 4096, not 4000"),
                   (lambda: Q.create_or_open(name, max_message_size=50),
                    "max_message_size 100, not 50")],
                  [lambda: Q.create_or_open(name), lambda: Q.create_or_open(name, 4090),
                   lambda: Q.create_or_open(name, 4096, max_message_size=100)]),
        "topic": (lambda: T.create(name, 4096, delivery="latest", max_subscribers=4,
                                   lifetime="auto"),
                  [(lambda: T.create_or_open(name, delivery="lossless"),
                    "delivery 'latest', not 'lossless'"),
                   (lambda: T.create_or_open(name, 1 << 20), "capacity 4096, not 1048576"),
                   (lambda: T.create_or_open(name, max_subscribers=64),
                    "max_subscribers 4, not 64"),
                   (lambda: T.create_or_open(name, 8192, delivery="lossless"),
                    "delivery 'latest', not 'lossless'; capacity 4096, not 8192")],
                  [lambda: T.create_or_open(name), lambda: T.create_or_open(name, 4090),
                   lambda: T.create_or_open(name, delivery="latest", max_subscribers=4)]),
        "board": (lambda: B.create(name, 100, lifetime="auto"),
                  [(lambda: B.create_or_open(name, 101), "board .* capacity 100, not 101")],
                  [lambda: B.create_or_open(name, 100)]),
        "event": (lambda: E.create(name, auto_reset=True, lifetime="auto"),
                  [(lambda: E.create_or_open(name, auto_reset=False),
                    "event .* auto_reset True, not False")],
                  [lambda: E.create_or_open(name), lambda: E.create_or_open(name, auto_reset=True)]),
        "segment": (lambda: S.create(name, 100, lifetime="auto"),
                    [(lambda: S.create_or_open(name, 99), "segment .* size 100, not 99")],
                    [lambda: S.create_or_open(name, 100)]),
    }
    create, bad, good = cases[kind]
    first = create()
    for make, match in bad:
        err = _refused(make, match)
        assert err.differences  # type: ignore[attr-defined]
    for make in good:
        h = make()
        assert not h.created
        h.close()
    first.close()
    # Every refused handle was closed: the auto object went with its last handle.
    assert not os.path.exists(_path(name))


def test_refusal_names_the_object_and_the_next_step(name):
    with shmlink.Queue.create(name, 1 << 16, lifetime="auto"):
        err = _refused(lambda: shmlink.Queue.create_or_open(name, 1 << 20), "exists with")
        assert str(err) == (f"queue {name!r} exists with capacity 65536, not 1048576: open it "
                            "with Queue.open or pass matching settings")


# --- a clean exit releases what the process still has open ----------------------------------


def test_auto_objects_are_removed_at_a_clean_exit(names):
    ns = [names(k) for k in ("seg", "mutex", "event", "queue", "topic", "board", "keep")]
    r = _run("""
        import sys, threading, time, shmlink
        seg, mutex, event, queue, topic, board, keep = sys.argv[1:]
        objs = [shmlink.Segment.create(seg, 64, lifetime="auto"),
                shmlink.Mutex.create(mutex, lifetime="auto"),
                shmlink.Event.create(event, lifetime="auto"),
                shmlink.Queue.create(queue, 4096, lifetime="auto"),
                shmlink.Topic.create(topic, 4096, lifetime="auto"),
                shmlink.Board.create(board, 64, lifetime="auto"),
                shmlink.Segment.create(keep, 64)]         # persist: stays
        sub = objs[4].subscribe()
        objs[3].send(b"left behind")
        # A worker thread still holds them at exit (so no __del__ closes them
        # during finalisation): no close(), no unlink().
        keep_alive = threading.Thread(target=lambda o=(objs, sub): time.sleep(60), daemon=True)
        keep_alive.start()
        del objs, sub
        print("made")
        """, *ns)
    assert r.returncode == 0 and r.stdout == "made\n" and r.stderr == "", r.stderr
    for n in ns[:-1]:
        assert not os.path.exists(_path(n)), n
    info = shmlink.info(ns[-1])
    # The persist segment stays, released cleanly: gc keeps it.
    assert info.participants == [] and info.dead_participants == [] and not info.in_use
    assert ns[-1] not in shmlink.gc(dry_run=True)


def test_exit_leaves_objects_others_still_use(name):
    with shmlink.Queue.create(name, 4096, lifetime="auto") as q:
        r = _run("""
            import sys, shmlink
            q = shmlink.Queue.open(sys.argv[1])
            q.send(b"from the child")
            """, name)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert os.path.exists(_path(name))
        assert q.recv(timeout=5) == b"from the child"
        assert q.participants() == [os.getpid()]
    assert not os.path.exists(_path(name))


def test_exit_removes_only_the_segment_it_opened(name):
    # The child's auto segment is unlinked and re-created (persist) by another
    # process before the child exits: the exit must not remove the new one.
    r = _run("""
        import subprocess, sys, shmlink
        name = sys.argv[1]
        mine = shmlink.Segment.create(name, 64, lifetime="auto")
        mine.unlink()
        subprocess.run([sys.executable, "-c",
                        "import sys, shmlink; shmlink.Segment.create(sys.argv[1], 32).close()",
                        name], check=True, timeout=60)
        """, name)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with shmlink.Segment.open(name) as seg:
        assert seg.size == 32
        seg.unlink()


def test_a_forked_child_does_not_release_its_parents_objects(names):
    parent_obj, child_obj = names("parent"), names("child")
    r = _run("""
        import os, sys, shmlink
        q = shmlink.Queue.create(sys.argv[1], 4096, lifetime="auto")
        pid = os.fork()
        if pid == 0:
            # The child exits through the normal interpreter exit (atexit runs),
            # with an auto object of its own.
            shmlink.Segment.create(sys.argv[2], 8, lifetime="auto")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        print(os.path.exists(q.path), os.path.exists(q.path.replace(sys.argv[1], sys.argv[2])))
        q.send(b"still mine")
        assert q.recv(timeout=5) == b"still mine"
        """, parent_obj, child_obj)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split() == ["True", "False"]
    assert not os.path.exists(_path(parent_obj))


def test_exit_does_not_wait_for_a_thread_blocked_in_a_call(name):
    r = _run("""
        import sys, threading, time, shmlink
        q = shmlink.Queue.create(sys.argv[1], 4096, lifetime="auto")
        t = threading.Thread(target=lambda: q.recv(timeout=None), daemon=True)
        t.start()
        time.sleep(0.2)
        print("exiting")
        """, name)
    assert r.returncode == 0 and r.stdout == "exiting\n" and r.stderr == "", r.stderr
    assert not os.path.exists(_path(name))


def test_exit_hook_of_a_kind_runs_once_and_never_raises(name, tmp_path):
    marker = tmp_path / "hook"
    r = _run("""
        import sys, shmlink
        name, marker = sys.argv[1:]

        class Noisy(shmlink.Segment):
            def _at_exit(self):
                with open(marker, "a") as f:
                    f.write(self.name + "\\n")
                raise RuntimeError("an exit hook that fails must not spoil the exit")

        kept = Noisy.create(name, 8, lifetime="auto")
        closed = Noisy.open(name)
        closed.close()                                    # closed: no hook
        """, name, str(marker))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert marker.read_text() == name + "\n"
    assert not os.path.exists(_path(name))


def test_listener_and_connections_are_removed_at_a_clean_exit(name):
    """A server that exits without close() leaves nothing, and its client hears at once."""
    client = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time, shmlink
            name = sys.argv[1]
            deadline = time.monotonic() + 30
            while True:
                try:
                    conn = shmlink.connect(name, timeout=30)
                    break
                except shmlink.SegmentNotFound:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            conn.send(b"hello")
            t0 = time.monotonic()
            try:
                conn.recv(timeout=30)
            except shmlink.PeerDisconnected:
                print(f"disconnected {time.monotonic() - t0:.3f}")
            conn.close()
            """), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = _run("""
            import sys, threading, time, shmlink
            lst = shmlink.listen(sys.argv[1])
            conn = lst.accept(timeout=30)
            assert conn.recv(timeout=30) == b"hello"
            # held by a daemon thread, so no __del__ runs at exit: no close()
            threading.Thread(target=lambda o=(lst, conn): time.sleep(60), daemon=True).start()
            del lst, conn
            print("served")
            """, name)
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert r.returncode == 0 and r.stdout == "served\n" and r.stderr == "", r.stderr
    assert client.returncode == 0, err
    assert out.startswith("disconnected "), (out, err)
    # told by the exit hook, not by the liveness check of a later slice
    assert float(out.split()[1]) < 5.0
    left = [e for e in os.listdir(shm_dir()) if name in e]
    assert left == [], left
