"""shmlink.multiprocessing with real processes: pipes, queues, pools, shared memory.

Every child is a real OS process (spawn, fork or forkserver); every wait has a
timeout.  CPython's own test classes run in tests/test_mp_cpython.py; these
are the behaviours the issue names that those classes do not reach (crashes,
``shmlink gc``, the start methods, pools, the unbounded buffer and its exit rule).
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.pool
import os
import pickle
import queue
import signal
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import shmlink
import shmlink.multiprocessing as smp
from shmlink.multiprocessing import _channel, queues as mpq
from shmlink.segment import PREFIX, shm_dir
from support import join_all, kill, python_env, run_python, wait_for
from workers import mp as W

METHODS = [m for m in ("spawn", "fork", "forkserver")
           if m in multiprocessing.get_all_start_methods()]


def _mine() -> set[str]:
    """Channel segments this process made (their names carry our PID)."""
    tag = f"{PREFIX}mp."
    pid = f".{os.getpid()}."
    return {e for e in os.listdir(shm_dir()) if e.startswith(tag) and pid in e}


# -- pipes -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_pipe_handle_passes_to_child(method):
    ctx = smp.get_context(method)
    a, b = ctx.Pipe()
    p = ctx.Process(target=W.echo_once, args=(b,))
    p.start()
    b.close()  # the child holds its own handle now
    a.send({"x": 1})
    assert a.poll(20)
    tag, pid, got = a.recv()
    assert (tag, pid, got) == ("pid", p.pid, {"x": 1})
    join_all([p], 30)
    # the child closed its end and exited: EOF, not a hang
    assert a.poll(5)
    with pytest.raises(EOFError):
        a.recv()
    a.close()


def test_peer_killed_gives_eof():
    ctx = smp.get_context("spawn")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=W.hold_forever, args=(ctx.Queue(), b, b))
    # hold_forever sends its pid on `ready` (b) and then sleeps holding b
    p.start()
    b.close()
    assert a.poll(30)
    assert a.recv() == p.pid
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    t0 = time.monotonic()
    with pytest.raises(EOFError):
        a.recv()
    assert time.monotonic() - t0 < 5
    a.close()


def test_peer_exit_without_close_gives_eof_after_data():
    ctx = smp.get_context("fork" if "fork" in METHODS else "spawn")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=W.send_then_exit, args=(b, 5))
    p.start()
    b.close()
    join_all([p], 30)
    assert [a.recv() for _ in range(5)] == list(range(5))
    with pytest.raises(EOFError):
        a.recv()
    a.close()


# -- shmlink gc after a crash -----------------------------------------------------------

def test_gc_removes_channels_of_killed_process():
    code = textwrap.dedent("""
        import os, sys, time
        import shmlink.multiprocessing as smp
        q = smp.Queue(); a, b = smp.Pipe()
        q.put(1)
        print(q._ch.name, a.name, flush=True)
        time.sleep(60)
    """)
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=python_env())
    try:
        names = proc.stdout.readline().split()
        assert len(names) == 2
        paths = [os.path.join(shm_dir(), PREFIX + n) for n in names]
        assert all(os.path.exists(p) for p in paths)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert all(os.path.exists(p) for p in paths)  # a crash leaves them ...
    removed = shmlink.gc()
    assert set(names) <= set(removed)  # ... and gc removes them
    assert not any(os.path.exists(p) for p in paths)


# -- pools ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_map_and_apply_async(method):
    if method not in METHODS:
        pytest.skip(f"no {method}")
    ctx = smp.get_context(method)
    with multiprocessing.pool.Pool(2, context=ctx) as pool:
        assert isinstance(pool._inqueue, smp.SimpleQueue)
        assert pool.map(W.square, range(50)) == [x * x for x in range(50)]
        r = pool.apply_async(W.square, (12,))
        assert r.get(30) == 144
        assert sorted(pool.imap_unordered(W.square, range(20))) == [x * x for x in range(20)]
        pool.close()
        pool.join()
        names = [q._reader.name for q in (pool._inqueue, pool._outqueue)]
    # the standard Pool never closes its queues: they go when the pool is collected
    del pool, r
    import gc
    gc.collect()
    assert not any(os.path.exists(os.path.join(shm_dir(), PREFIX + n)) for n in names)


def test_process_pool_executor_results():
    ctx = smp.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(W.square, range(200))) == [x * x for x in range(200)]
        assert list(ex.map(W.square, range(300), chunksize=16)) == [x * x for x in range(300)]
        assert ex.submit(W.square, 7).result(30) == 49
        assert isinstance(ex._result_queue, smp.SimpleQueue)


# -- Queue semantics ----------------------------------------------------------------------

def test_unbounded_put_beyond_ring_does_not_block(monkeypatch):
    monkeypatch.setattr(mpq, "CAPACITY", 1 << 16)
    q = smp.Queue()
    item = b"y" * 4000
    t0 = time.monotonic()
    for _ in range(100):  # ~400 KB into a 64 KiB ring, nobody reading
        q.put(item)
    assert time.monotonic() - t0 < 2.0
    assert len(q._buffer) > 0 and q._thread is not None  # buffered in this process
    assert q.qsize() == 100
    got = [q.get(timeout=10) for _ in range(100)]
    assert got == [item] * 100
    assert q.empty() and q.qsize() == 0
    q.close()
    q.join_thread()


def test_terminate_broken_drops_what_nobody_will_read(monkeypatch):
    """A feeder blocked on a full ring, in the middle of a large item, gives up when the
    queue is terminated as broken (the standard's hook, gh-94777): close and join return."""
    monkeypatch.setattr(mpq, "CAPACITY", 1 << 16)
    q = smp.Queue()
    q.put(b"z" * (1 << 20))  # sixteen rings' worth, nobody reading
    q.put(b"small")
    wait_for(lambda: q._infeeder, timeout=10, what="the feeder to start sending")
    t0 = time.monotonic()
    done = threading.Event()
    threading.Thread(target=lambda: (q._terminate_broken(), done.set()), daemon=True).start()
    assert done.wait(30), "the feeder did not give up"
    assert time.monotonic() - t0 < 10
    assert not q._thread.is_alive()


class _Bytes(bytes):
    pass


ITEMS = [b"", b"x" * 64, _Bytes(b"sub"), bytearray(b"ba"), "", "h\u00e9llo \u2603", "\ud800",
         b"L" * (3 << 20), "s" * (2 << 20), {"k": (1, 2.5, None)}, None, 0]


@pytest.mark.parametrize("method", ["spawn"])
def test_items_of_every_kind_round_trip(method):
    """Exact bytes and str travel without pickling (tagged), everything else pickled;
    each comes back equal and of its own type, also larger than the ring's largest
    record (the parts path) and across processes."""
    ctx = smp.get_context(method)
    qin, qout = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=W.echo_items, args=(qin, qout, len(ITEMS)))
    p.start()
    for item in ITEMS:
        qin.put(item)
    got = [qout.get(timeout=30) for _ in ITEMS]
    join_all([p], 30)
    assert got == ITEMS
    assert [type(g) for g in got] == [type(i) for i in ITEMS]
    assert qin.qsize() == 0 and qout.qsize() == 0
    qin.close()
    qout.close()


def test_put_keeps_pace_with_a_draining_reader(monkeypatch):
    """A full ring makes put wait while the reader takes items, instead of buffering
    everything behind a feeder thread (which runs only when the GIL lets it)."""
    monkeypatch.setattr(mpq, "CAPACITY", 1 << 16)
    monkeypatch.setattr(mpq, "PATIENCE", 5.0)  # a reader descheduled under load is not idle
    ctx = smp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    n, size = 3000, 4000  # 12 MB through a 64 KiB ring
    p = ctx.Process(target=W.drain_check, args=(q, n, size, out))
    p.start()
    q.put(bytes([0]) * size)
    for i in range(1, n):
        q.put(bytes([i % 256]) * size)
    assert out.get(timeout=60) == n
    join_all([p], 30)
    assert q._thread is None  # nothing was ever buffered
    q.close()
    out.close()


def test_a_writer_killed_mid_item_is_noticed_at_once(monkeypatch):
    """A reader taking the parts of a large item whose writer was killed half-way raises
    CorruptSegment as soon as it has taken what is there (the writer's lock is free or
    its holder dead), not after waiting PART_WAIT (30 s) for a part that cannot come."""
    monkeypatch.setattr(mpq, "CAPACITY", 1 << 16)
    ctx = smp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=W.put_many, args=(q, 1, 1 << 20))  # 16 ring-fulls
    p.start()
    lock = q._ch.writer_lock(0)
    try:
        try:
            wait_for(lambda: q._mem.load32(lock) == p.pid and q._ch.has_data(0), timeout=60,
                     what="the writer to be half-way")
        finally:
            kill(p)
        t = time.monotonic()
        with pytest.raises(shmlink.errors.CorruptSegment, match="half-way"):
            q.get(timeout=60)
        assert time.monotonic() - t < 15  # generous: the slice is 0.05 s, the old wait 30 s
    finally:
        q.close()


def test_malformed_item_is_dropped_with_corrupt_segment():
    """A foreign writer's frame with no payload, or a str tag with bytes that are not
    UTF-8, is taken and reported; the items after it are intact.  In a child process:
    a decoder that went wrong there would crash the interpreter."""
    code = textwrap.dedent("""
        import shmlink, shmlink.multiprocessing as smp
        from shmlink.multiprocessing import _channel
        q = smp.Queue()
        for bad in (b"", b"\\x02\\xff\\xfe"):
            q._mem.add32(_channel._OFF_ITEMS, 1)
            assert q._ring.try_send_frame(_channel.FRAME_MSG, 0, bad)
        q.put("fine")
        for _ in range(2):
            try:
                q.get(timeout=5)
            except shmlink.errors.CorruptSegment as e:
                assert "malformed" in str(e), e
            else:
                raise AssertionError("a malformed item was returned")
        assert q.get(timeout=5) == "fine" and q.qsize() == 0
        try:
            shmlink._core.chan_decode(b"", lambda b: b)
        except shmlink.errors.CorruptSegment:
            pass
        else:
            raise AssertionError("an empty payload decoded")
        q.close()
        print("ok")
    """)
    r = run_python(code, env=python_env())
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


@pytest.mark.parametrize("cancel", [False, True])
def test_buffered_items_at_exit(monkeypatch, cancel):
    """A child whose puts are still buffered waits for its feeder at exit (the standard
    rule); after cancel_join_thread it does not (and the buffered items are lost)."""
    ctx = smp.get_context("fork" if "fork" in METHODS else "spawn")
    monkeypatch.setattr(mpq, "CAPACITY", 1 << 16)
    q = ctx.Queue()
    n, size = 60, 4000  # ~240 KB: more than the 64 KiB ring holds
    target = W.put_many_cancel if cancel else W.put_many
    p = ctx.Process(target=target, args=(q, n, size))
    p.start()
    if not cancel:
        # nobody reads yet: the child must not be done before its buffer is flushed
        time.sleep(1.0)
        assert p.is_alive(), "exited with its buffer unflushed"
        got = [q.get(timeout=20) for _ in range(n)]
        assert [g[0] for g in got] == [i % 256 for i in range(n)]
        join_all([p], 30)
    else:
        join_all([p], 30)  # exits at once although the ring is full
        got = []
        while True:
            try:
                got.append(q.get(timeout=0.5))
            except queue.Empty:
                break
        assert 0 < len(got) < n
    q.close()


def test_maxsize_counts_items():
    q = smp.Queue(3)
    for i in range(3):
        q.put(b"z" * 10_000)  # large items: the ring has room, the count does not
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put(1, block=False)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(1, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 3
    q.get()
    assert not q.full() and q.qsize() == 2
    q.put_nowait(1)
    assert [len(q.get()) for _ in range(2)] == [10_000, 10_000] and q.get() == 1
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    q.close()


@pytest.mark.parametrize("method", METHODS)
def test_joinable_queue_across_processes(method):
    ctx = smp.get_context(method)
    q = ctx.JoinableQueue()
    results = ctx.Queue()
    procs = [ctx.Process(target=W.worker_tasks, args=(q, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for i in range(40):
        q.put(i)
    q.put(None)
    q.put(None)
    q.join()  # every task_done seen
    got = sorted(results.get(timeout=10) for _ in range(40))
    assert got == [2 * i for i in range(40)]
    join_all(procs, 30)
    with pytest.raises(ValueError):
        q.task_done()
    q.close()
    results.close()


# -- SharedMemory -------------------------------------------------------------------------

def test_shared_memory_exact_size_child_attach_no_tracker_warning():
    code = textwrap.dedent("""
        import multiprocessing as mp
        import shmlink.multiprocessing as smp
        from workers import mp as W
        if __name__ == "__main__":
            m = smp.SharedMemory(create=True, size=1001)
            assert m.size == 1001 and len(m.buf) == 1001, m.size
            m.buf[:5] = b"hello"
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            p = ctx.Process(target=W.attach_shm, args=(m.name, 5, out))
            p.start()
            size, data = out.get(timeout=30)
            p.join(30)
            assert p.exitcode == 0 and size == 1001 and data == b"hello", (size, data)
            assert m.buf[0] == 42
            m.close(); m.unlink()
            print("ok")
    """)
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        r = subprocess.run([sys.executable, f.name], capture_output=True, text=True,
                           timeout=60, env=python_env())
    finally:
        os.unlink(f.name)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "resource_tracker" not in r.stderr and "leaked" not in r.stderr, r.stderr


# -- nothing left behind ------------------------------------------------------------------

def test_clean_run_leaves_nothing_in_dev_shm():
    code = textwrap.dedent("""
        import os
        import shmlink.multiprocessing as smp
        from concurrent.futures import ProcessPoolExecutor
        from workers import mp as W
        if __name__ == "__main__":
            ctx = smp.get_context("spawn")
            q = ctx.Queue(); jq = ctx.JoinableQueue(); sq = ctx.SimpleQueue(); a, b = ctx.Pipe()
            q.put(1); sq.put(2); a.send(3)
            assert q.get(timeout=5) == 1 and sq.get() == 2 and b.recv() == 3
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                assert list(ex.map(W.square, range(20))) == [x * x for x in range(20)]
            print(os.getpid(), flush=True)
            # no explicit close of q, jq, sq, a, b: exit must remove them
    """)
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        r = subprocess.run([sys.executable, f.name], capture_output=True, text=True,
                           timeout=90, env=python_env())
    finally:
        os.unlink(f.name)
    assert r.returncode == 0, r.stderr
    pid = r.stdout.strip()
    left = [e for e in os.listdir(shm_dir()) if e.startswith(PREFIX + "mp.") and f".{pid}." in e]
    assert not left, left


# -- pickling -----------------------------------------------------------------------------

class _Registered:
    def __init__(self, v):
        self.v = v


def _reduce_registered(obj):
    return (_Registered, (obj.v * 10,))  # visibly different from the default reduction


def test_queue_pickles_with_forking_pickler_reducers():
    """Objects go through multiprocessing's reducers (ForkingPickler.register), as in the
    standard queue, also on the fast pickling path."""
    from multiprocessing.reduction import ForkingPickler
    ForkingPickler.register(_Registered, _reduce_registered)
    try:
        q = smp.Queue()
        a, b = smp.Pipe()
        q.put(_Registered(4))
        a.send([_Registered(5), b"x", "y", 1.5])
        assert q.get(timeout=5).v == 40
        got = b.recv()
        assert got[0].v == 50 and got[1:] == [b"x", "y", 1.5]
        for plain in (b"abc", "s", 7, 2.5, None, True, bytearray(b"z"), 1j):
            q.put(plain)
            assert q.get(timeout=5) == plain
        q.close()
        a.close()
        b.close()
    finally:
        ForkingPickler._extra_reducers.pop(_Registered, None)


class _Int(int):
    pass


class _Str(str):
    pass


_Point = collections.namedtuple("_Point", "x")


def _deep(n):
    x = None
    for _ in range(n):
        x = [x]
    return x


def _reduce_complex(z):
    return (complex, (z.real + 100, z.imag))  # visibly different from copyreg's


def test_plain_trees_pickle_as_forking_pickler_would(monkeypatch):
    """Trees of the types the C pickler writes itself go to pickle.dumps (no pickler kept
    per thread); the result is byte for byte ForkingPickler's.  Anything that could meet a
    reducer (a subclass, complex, a registered type anywhere inside), a cycle, a deep or
    large tree takes the full pickler, which gives ForkingPickler's bytes too, reducers
    registered for builtin types included."""
    from multiprocessing.reduction import ForkingPickler
    from shmlink import _core
    from shmlink.multiprocessing._channel import PROTOCOL, dumps

    cyclic: list = []
    cyclic.append(cyclic)
    shared_s, shared_l = "shared" * 3, [1.5]
    plain = [None, True, 7, 2**100, -(2**5000), -1.5, "s\udc80", b"b", bytearray(b"ba"),
             (), [], {}, (12345, 3.25, "reading", b"x" * 19),
             {"k": [1, (2.0, {"n": None})], 3: b""}, (shared_s, shared_s), [shared_l, shared_l],
             _deep(16), list(range(4095)), b"x" * 100_000]
    other = [1j, _Int(3), _Str("s"), (1, _Int(3)), {"k": 1j}, [frozenset()], {1, 2},
             collections.OrderedDict(a=1), _Point(1),
             {"k": _Str("v")}, cyclic, _deep(17), list(range(4096)), _Registered(1),
             ("x", [_Registered(2)])]
    for obj in plain:
        assert _core.plain(obj) is True, obj
    for obj in other:
        assert _core.plain(obj) is False, obj

    fast = []
    monkeypatch.setattr(_channel.dumps, "__defaults__",
                        (_core.plain, lambda o, proto: fast.append(o) or pickle.dumps(o, proto)))
    ForkingPickler.register(_Registered, _reduce_registered)
    ForkingPickler.register(complex, _reduce_complex)
    try:
        for obj in plain + other:
            assert bytes(dumps(obj)) == bytes(ForkingPickler.dumps(obj, PROTOCOL)), obj
        assert pickle.loads(dumps((1, 2j)))[1] == 100 + 2j  # the registered reducer ran
    finally:
        ForkingPickler._extra_reducers.pop(_Registered, None)
        ForkingPickler._extra_reducers.pop(complex, None)
    assert [id(o) for o in fast] == [id(o) for o in plain]  # those, and only those


class _Interrupts:
    def __reduce__(self):
        raise KeyboardInterrupt  # Ctrl-C while the item is pickled


@pytest.mark.parametrize("maxsize", [0, 1])
def test_interrupted_put_takes_its_counts_back(maxsize):
    """A put that ends in KeyboardInterrupt (or a pickling error) leaves no item count, no
    room taken and no unfinished task behind: join() and a bounded put still work."""
    q = smp.JoinableQueue(maxsize)
    with pytest.raises(KeyboardInterrupt):
        q.put(_Interrupts())
    q.put(lambda: 1)  # cannot be pickled: reported through the feeder-error hook, not raised
    assert q.qsize() == 0 and q.empty()
    assert q._mem.load32(_channel._OFF_UNFINISHED) == 0
    q.put("next", timeout=5)  # the bounded queue's room is all there
    assert q.get(timeout=5) == "next"
    q.task_done()
    import threading
    joiner = threading.Thread(target=q.join, daemon=True)  # join() has no timeout
    joiner.start()
    joiner.join(10)
    assert not joiner.is_alive(), "join() waits for a task that was never put"
    q.close()


class _Kept:
    pass


def test_pickled_items_are_not_kept_alive():
    """The reused pickler forgets what it pickled (CPython's executor tests check the same
    for call items: test_no_stale_references)."""
    import gc
    import weakref
    q = smp.Queue()
    obj = _Kept()
    ref = weakref.ref(obj)
    q.put(obj)
    del obj
    gc.collect()
    assert ref() is None
    assert isinstance(q.get(timeout=5), _Kept)
    q.close()


# -- Listener / Client ------------------------------------------------------------------

def test_client_that_exits_before_accept():
    """As with a socket in the backlog, a client that connected, sent and exited
    (normally, with atexit: spawn) is still accepted, its message read, then EOF."""
    from shmlink.multiprocessing.connection import Listener
    ctx = multiprocessing.get_context("spawn")
    with Listener() as l:
        p = ctx.Process(target=W.client_then_exit, args=(l.address,))
        p.start()
        p.join(1.5)  # connected, sent, and exiting: it waits at exit for the accept
        import threading
        got: list = []
        t = threading.Thread(target=lambda: got.append(l.accept()), daemon=True)
        t.start()
        t.join(10)
        assert got, "the connection went away with its client"
        conn = got[0]
        assert conn.recv() == "hello"
        join_all([p], 30)
        with pytest.raises(EOFError):
            conn.recv()
        conn.close()
