"""Handles that cannot crash: close under a waiting call, temporary handles, views.

Everything dangerous runs in a child interpreter (``sys.executable -c``):
before the fixes these children died with SIGSEGV, which here fails one
test instead of ending the run.  Each child prints one line per check and
exits 0; the parent asserts on both.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Shared by every child: unique names, a waiter thread, the timing of close.
PRELUDE = '''
import os, random, signal, sys, threading, time, uuid
import shmlink
from shmlink.errors import SegmentClosed, SegmentBusy

def uname(tag):
    return f"t-hdl-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

def close_under(call, close, *, delay=0.2):
    """Run call() in a thread, close() from this one after delay; report
    what the call raised and how long after close() it returned."""
    out = {}
    def run():
        try:
            out["result"] = call()
        except BaseException as e:  # noqa: BLE001  (reported)
            out["exc"] = e
        out["t"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(delay)
    t0 = time.monotonic()
    close()
    t.join(5)
    assert not t.is_alive(), "the waiting call did not return within 5 s of close()"
    exc = out.get("exc")
    return (type(exc).__name__ if exc is not None else "returned"), out["t"] - t0
'''


def run_child(body: str, *, timeout: float = 60) -> str:
    code = PRELUDE + textwrap.dedent(body)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, (
        f"child exited with {p.returncode} (negative: killed by signal {-p.returncode})\n"
        f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p.stdout


def assert_closed_fast(out: str, n: int = 1) -> None:
    lines = [ln for ln in out.splitlines() if ln.startswith("CLOSED ")]
    assert len(lines) == n, out
    for ln in lines:
        _, what, exc, dt = ln.split()
        assert exc == "SegmentClosed", ln
        assert float(dt) < 0.75, f"{what}: the waiter took {dt} s to notice close()"


# --- 1. close() while another thread of this process waits in the handle ---------

CLOSE_CASES = {
    "queue-recv": '''
        q = shmlink.Queue.create(uname("q"), 4096); q.unlink()
        exc, dt = close_under(lambda: q.recv(timeout=5), q.close)
    ''',
    "queue-send": '''
        q = shmlink.Queue.create(uname("q"), 4096); q.unlink()
        while q.try_send(b"x" * 100):
            pass
        exc, dt = close_under(lambda: q.send(b"y" * 100, timeout=5), q.close)
    ''',
    "queue-recv-view": '''
        q = shmlink.Queue.create(uname("q"), 4096); q.unlink()
        exc, dt = close_under(lambda: q.recv_view(timeout=5), q.close)
    ''',
    "subscriber-recv": '''
        t = shmlink.Topic.create(uname("t"), 4096); t.unlink()
        s = t.subscribe()
        exc, dt = close_under(lambda: s.recv(timeout=5), t.close)
    ''',
    "topic-publish-full": '''
        name = uname("t")
        t = shmlink.Topic.create(name, 4096, delivery="lossless")
        reader = shmlink.Topic.open(name)       # another handle, same mapping
        reader.unlink()
        s = reader.subscribe()                  # never reads: the topic fills up
        while t.try_publish(b"x" * 200):
            pass
        exc, dt = close_under(lambda: t.publish(b"y" * 200, timeout=5), t.close)
        # closing one handle left the other (same mapping) working
        assert s.recv(timeout=1) == b"x" * 200
        reader.close()
    ''',
    "board-wait-for-change": '''
        b = shmlink.Board.create(uname("b"), 64); b.unlink()
        v = b.version
        exc, dt = close_under(lambda: b.wait_for_change(v, timeout=5), b.close)
    ''',
    "event-wait": '''
        e = shmlink.Event.create(uname("e")); e.unlink()
        exc, dt = close_under(lambda: e.wait(timeout=5), e.close)
    ''',
    "mutex-acquire": '''
        import subprocess
        name = uname("m")
        m = shmlink.Mutex.create(name)
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import shmlink, sys, time\\n"
             "m = shmlink.Mutex.open(sys.argv[1]); m.acquire(timeout=5)\\n"
             "print('held', flush=True); time.sleep(30)", name],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            exc, dt = close_under(lambda: m.acquire(timeout=5), m.close)
        finally:
            holder.kill(); holder.wait(5)
            shmlink.Mutex.open(name).unlink()
    ''',
    "connection-request": '''
        name = uname("l")
        lst = shmlink.Listener.create(name)
        box = {}
        srv = threading.Thread(target=lambda: box.setdefault("c", lst.accept(timeout=5)))
        srv.start()
        conn = shmlink.connect(name, timeout=5)
        srv.join(5)
        exc, dt = close_under(lambda: conn.request(b"ping", timeout=5), conn.close)
        box["c"].close(); lst.close()
    ''',
    "connection-recv": '''
        name = uname("l")
        lst = shmlink.Listener.create(name)
        box = {}
        srv = threading.Thread(target=lambda: box.setdefault("c", lst.accept(timeout=5)))
        srv.start()
        conn = shmlink.connect(name, timeout=5)
        srv.join(5)
        exc, dt = close_under(lambda: conn.recv(timeout=5), conn.close)
        box["c"].close(); lst.close()
    ''',
    "listener-accept": '''
        lst = shmlink.Listener.create(uname("l"))
        exc, dt = close_under(lambda: lst.accept(timeout=5), lst.close)
    ''',
}


@pytest.mark.parametrize("case", sorted(CLOSE_CASES))
def test_close_wakes_a_waiting_thread_with_segment_closed(case):
    out = run_child(textwrap.dedent(CLOSE_CASES[case]) + f'''
print("CLOSED {case}", exc, f"{{dt:.3f}}")
''')
    assert_closed_fast(out)


def test_close_at_random_moments_never_crashes():
    """Close at random points of a send/recv storm: every interleaving of a
    call entering, waiting, copying and leaving against close()."""
    out = run_child('''
        random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else None)
        outcomes = set()
        for i in range(60):
            name = uname("r")
            q = shmlink.Queue.create(name, 1024, wait=random.choice(["block", "hybrid", "spin"]))
            q.unlink()
            stop = threading.Event()
            def worker(fn):
                try:
                    while not stop.is_set():
                        fn()
                except SegmentClosed:
                    outcomes.add("SegmentClosed")
                except shmlink.Timeout:
                    outcomes.add("Timeout")
            threads = [threading.Thread(target=worker, args=(lambda: q.send(b"m" * 64, timeout=2),)),
                       threading.Thread(target=worker, args=(lambda: q.recv(timeout=2),)),
                       threading.Thread(target=worker, args=(lambda: q.recv_many(4, timeout=2),))]
            for t in threads:
                t.start()
            time.sleep(random.random() * 0.005)
            q.close()
            stop.set()
            for t in threads:
                t.join(5)
                assert not t.is_alive()
        print("OUTCOMES", sorted(outcomes))
    ''', timeout=120)
    assert "SegmentClosed" in out


def test_closing_one_handle_leaves_the_other_handles_waiter_alone():
    out = run_child('''
        name = uname("q")
        a = shmlink.Queue.create(name, 4096)
        b = shmlink.Queue.open(name)          # same mapping, its own handle
        b.unlink()
        got = {}
        def wait_b():
            got["b"] = b.recv(timeout=5)
        t = threading.Thread(target=wait_b); t.start()
        time.sleep(0.2)
        a.close()                             # must not disturb b's waiter
        time.sleep(0.3)
        assert t.is_alive(), got
        b.send(b"for b", timeout=1)            # the surviving handle still works
        t.join(5)
        print("GOT", got["b"])
        b.close()
    ''')
    assert "GOT b'for b'" in out


SIGNAL_CASES = {
    "queue-recv": ('shmlink.Queue.create(uname("q"), 4096)', "obj.recv(timeout=5)"),
    "queue-send-full": ('shmlink.Queue.create(uname("q"), 64)',
                        "[obj.try_send(b'x' * 40), obj.send(b'y' * 40, timeout=5)]"),
    "subscriber-recv": ('shmlink.Topic.create(uname("t"), 4096)',
                        "obj.subscribe().recv(timeout=5)"),
    "event-wait": ('shmlink.Event.create(uname("e"))', "obj.wait(timeout=5)"),
    "board-wait": ('shmlink.Board.create(uname("b"), 64)',
                   "obj.wait_for_change(obj.version, timeout=5)"),
}


@pytest.mark.parametrize("case", sorted(SIGNAL_CASES))
def test_close_from_a_signal_handler_inside_the_call(case):
    """Ctrl-C style: the handler runs inside this thread's own blocking call
    and closes the handle.  close() must not wait for that call (deadlock),
    and the call must raise SegmentClosed, not touch unmapped memory."""
    make, call = SIGNAL_CASES[case]
    out = run_child(f'''
        obj = {make}
        obj.unlink()
        signal.signal(signal.SIGALRM, lambda *a: obj.close())
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        try:
            {call}
            exc = "returned"
        except SegmentClosed:
            exc = "SegmentClosed"
        print("CLOSED {case}", exc, f"{{time.monotonic() - t0 - 0.2:.3f}}")
        assert obj.closed
    ''')
    assert_closed_fast(out)


# --- 2. temporary handles stay alive for the call ------------------------------------


def test_temporary_topic_and_subscriber_handles_work():
    out = run_child('''
        name = uname("t")
        t = shmlink.Topic.create(name, 4096, delivery="lossless")
        keep = t.subscribe()
        shmlink.Topic.open(name).publish(b"one", timeout=1)
        assert shmlink.Topic.open(name).try_publish(b"two")
        assert t.subscribe(start="oldest").recv(timeout=1) == b"one"
        assert t.subscribe(start="oldest").try_recv() == b"one"
        assert keep.recv(timeout=1) == b"one"
        print("OK")
        t.unlink()
        t.close()
    ''')
    assert "OK" in out


# --- 3. zero-copy views never read recycled or unmapped memory ------------------------


def test_numpy_array_from_a_queue_view_blocks_the_release():
    pytest.importorskip("numpy")
    out = run_child('''
        import numpy as np
        q = shmlink.Queue.create(uname("q"), 4096); q.unlink()
        q.send(b"A" * 16, timeout=1); q.send(b"B" * 16, timeout=1)
        mv = q.recv_view(timeout=1)
        try:
            with mv as v:
                arr = np.frombuffer(v, dtype=np.uint8)
        except BufferError as e:
            print("BufferError", "copy" in str(e))
        else:
            print("released while the array lived")
        assert bytes(arr) == b"A" * 16          # still the message, not recycled
        del arr
        mv.release()                             # now it goes, consuming A
        assert q.recv(timeout=1) == b"B" * 16
        # np.ndarray(buffer=...) keeps only a reference, no buffer export
        q.send(b"C" * 16, timeout=1)
        mv = q.recv_view(timeout=1)
        arr = np.ndarray((16,), np.uint8, buffer=mv.data)
        try:
            mv.release()
            print("released while the array lived")
        except BufferError:
            print("BufferError", True)
        del arr
        mv.release()
        q.close()
    ''')
    assert out.count("BufferError True") == 2, out


def test_numpy_array_from_a_topic_view_blocks_the_release():
    pytest.importorskip("numpy")
    out = run_child('''
        import numpy as np
        t = shmlink.Topic.create(uname("t"), 4096, delivery="lossless"); t.unlink()
        s = t.subscribe()
        t.publish(b"A" * 16, timeout=1); t.publish(b"B" * 16, timeout=1)
        mv = s.recv_view(timeout=1)
        try:
            with mv as v:
                arr = np.frombuffer(v, dtype=np.uint8)
        except BufferError:
            print("BufferError")
        assert bytes(arr) == b"A" * 16
        del arr
        mv.release()
        assert s.recv(timeout=1) == b"B" * 16
        t.close()
    ''')
    assert "BufferError" in out


def test_numpy_array_on_segment_buf_blocks_close():
    np = pytest.importorskip("numpy")  # noqa: F841
    out = run_child('''
        import numpy as np
        seg = shmlink.Segment.create(uname("s"), 4096); seg.unlink()
        arr = np.ndarray((4096,), np.uint8, buffer=seg.buf)
        arr[:4] = 7
        try:
            seg.close()
            print("closed under the array")
        except SegmentBusy as e:
            print("SegmentBusy", "release" in str(e))
        assert not seg.closed
        assert int(arr[:4].sum()) == 28          # still mapped
        del arr
        a2 = np.frombuffer(seg.view(0, 16), dtype=np.uint8)
        try:
            seg.close()
        except SegmentBusy:
            print("SegmentBusy", True)
        del a2
        seg.close()
        assert seg.closed
        print("OK")
    ''')
    assert out.count("SegmentBusy True") == 2 and "OK" in out, out


def test_memoryview_of_segment_keeps_close_busy_without_numpy():
    out = run_child('''
        seg = shmlink.Segment.create(uname("s"), 64); seg.unlink()
        v = seg.buf
        part = v[8:16]
        v.release()                   # the slice still points into the mapping
        try:
            seg.close()
        except SegmentBusy:
            print("SegmentBusy")
        part[0] = 1
        part.release()
        seg.close()
        print("OK")
    ''')
    assert "SegmentBusy" in out and "OK" in out


def test_core_module_keeps_its_state_per_module_object():
    """_core uses multi-phase init and heap types: a second module object made
    from the same spec has its own classes, and its handles work and raise the
    typed errors (looked up in shmlink.errors, not cached in C globals)."""
    code = r"""
import importlib.util, mmap
import shmlink, shmlink._core as core
again = importlib.util.module_from_spec(core.__spec__)
core.__spec__.loader.exec_module(again)
assert again is not core and again.Memory is not core.Memory, "one module state for both"
mm = mmap.mmap(-1, 4096)
m = again.Memory(mm)
m.store32(0, 7)
assert m.load32(0) == 7 and type(m).__module__ == "shmlink._core"
m.release()
try:
    m.load32(0)
except shmlink.SegmentClosed:
    pass
else:
    raise AssertionError("no SegmentClosed")
assert type(m)(mm).wait32(0, 0, 0.0) is True  # the word is 7, not 0: no wait
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
