"""Readiness by file descriptor: fileno() on every waitable object, the doorbells
behind it (include/shmlink/doorbell.h), and shmlink.wait.

Every change comes from another real process; every wait is bounded.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

import shmlink
from shmlink import _core
from support import CTX, run_python, wait_for

DATA_BELLS = shmlink.segment.DATA_OFFSET + _core.LAYOUT["ring"]["data_bells"][0]


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def slots(q: shmlink.Queue) -> list[int]:
    return [q._memory.load64(DATA_BELLS + 8 * i) for i in range(_core.BELL_SLOTS)]


def in_child(code: str, *args: str) -> None:
    r = run_python("import shmlink, sys, time\n" + code, *args, timeout=60)
    assert r.returncode == 0, r.stderr


# -- every kind: idle, then ready after another process acts ---------------------------


def test_queue_recv_and_send_sides(name):
    with shmlink.Queue.create(name, 256) as q:
        fd = q.fileno()
        assert not readable(fd)
        in_child("shmlink.Queue.open(sys.argv[1]).send(b'x')", name)
        assert readable(fd, 10)
        assert q.try_recv() == b"x"
        assert q.try_recv() is None  # also makes a stale readiness idle
        assert not readable(fd)
        # send side: full queue -> idle; a consumer in another process -> ready
        while q.try_send(b"y" * 40):
            pass
        while q.try_send(b""):  # send_fileno: room for at least an empty message
            pass
        sfd = q.send_fileno()
        assert not readable(sfd)
        in_child("shmlink.Queue.open(sys.argv[1]).recv(timeout=5)", name)
        assert readable(sfd, 10)
        assert q.try_send(b"y")


def test_subscriber_board_event(name):
    more = name
    with shmlink.Topic.create(name + "-t", 4096) as t, t.subscribe() as sub, \
            shmlink.Board.create(name + "-b", 64) as b, \
            shmlink.Event.create(name + "-e", auto_reset=True) as e:
        fds = [sub.fileno(), b.fileno(), e.fileno()]
        assert not any(readable(fd) for fd in fds)
        in_child("shmlink.Topic.open(sys.argv[1] + '-t').publish(b'm')\n"
                 "shmlink.Board.open(sys.argv[1] + '-b').write(b'v')\n"
                 "shmlink.Event.open(sys.argv[1] + '-e').set()", more)
        assert all(readable(fd, 10) for fd in fds)
        assert sub.try_recv() == b"m" and sub.try_recv() is None
        assert not readable(fds[0])
        assert b.read() == b"v"
        assert shmlink.wait([b], timeout=0) == []  # read since: not changed any more
        assert e.try_wait() and not e.try_wait()
        assert not readable(fds[2])


def test_connection_message_then_peer_death(name):
    with shmlink.listen(name) as lst:
        lfd = lst.fileno()
        assert not readable(lfd)
        child = subprocess.Popen([sys.executable, "-c", (
            "import shmlink, sys, time\n"
            "c = shmlink.connect(sys.argv[1], timeout=10)\n"
            "c.send(b'hello')\n"
            "sys.stdin.readline()\n"
            "import os; os._exit(0)  # dies without closing: no CLOSE frame\n"), name],
            stdin=subprocess.PIPE)
        try:
            assert readable(lfd, 10)
            conn = wait_for(lst.try_accept, what="an accepted connection")
            with conn:
                fd = conn.fileno()
                assert readable(fd, 10)
                assert conn.try_recv() == b"hello"
                assert conn.try_recv() is None
                assert not readable(fd)
                child.stdin.close()  # the child exits
                t0 = time.monotonic()
                assert readable(fd, 10)  # its pidfd, not a slice of liveness polling
                assert time.monotonic() - t0 < 5
                with pytest.raises(shmlink.PeerDisconnected):
                    conn.try_recv()
        finally:
            child.wait(10)


# -- selectors and shmlink.wait on a mix of kinds ---------------------------------------------


def test_selectors_and_wait_on_a_mix(name):
    a, b = socket.socketpair()
    with a, b, shmlink.Queue.create(name + "-q", 4096) as q, \
            shmlink.Event.create(name + "-e") as ev, \
            shmlink.Board.create(name + "-b", 32) as bd:
        t0 = time.monotonic()
        assert shmlink.wait([q, ev, bd, a, b.fileno()], timeout=0.2) == []
        assert time.monotonic() - t0 >= 0.19
        sel = selectors.DefaultSelector()
        for o in (q, ev, bd, a):
            sel.register(o, selectors.EVENT_READ)
        assert sel.select(0) == []
        in_child("shmlink.Queue.open(sys.argv[1] + '-q').send(b'1')\n"
                 "shmlink.Board.open(sys.argv[1] + '-b').write(b'2')", name)
        b.send(b"!")
        got = {k.fileobj for k, _ in sel.select(10)}
        wait_for(lambda: got.update(k.fileobj for k, _ in sel.select(0.1)) or len(got) == 3)
        assert got == {q, bd, a}
        sel.close()
        assert shmlink.wait([ev, q, a, bd], timeout=5) == [q, a, bd]  # in the order given
        ev.set()
        assert shmlink.wait([ev], timeout=5) == [ev]
        with pytest.raises(shmlink.InvalidArgument):
            shmlink.wait([q], timeout=-1)


def _pingpong(a: str, b: str, n: int) -> None:
    qa, qb = shmlink.Queue.open(a), shmlink.Queue.open(b)
    for _ in range(n):
        assert shmlink.wait([qa], timeout=10) == [qa]
        m = qa.try_recv()
        while m is None:  # readiness may be spurious, never missed
            assert shmlink.wait([qa], timeout=10) == [qa]
            m = qa.try_recv()
        qb.send(m)


def test_wait_loses_no_wake_up(name):
    # Each side sleeps in poll() on the other's doorbell for every message: a
    # lost ring is a 10 s stall and a failure.
    n = 2000
    with shmlink.Queue.create(name + "-a", 4096) as qa, shmlink.Queue.create(name + "-b", 4096) as qb:
        p = CTX.Process(target=_pingpong, args=(name + "-a", name + "-b", n))
        p.start()
        try:
            for i in range(n):
                qa.send(str(i).encode())
                assert shmlink.wait([qb], timeout=10) == [qb]
                m = qb.try_recv()
                while m is None:
                    assert shmlink.wait([qb], timeout=10) == [qb]
                    m = qb.try_recv()
                assert m == str(i).encode()
        finally:
            p.join(30)
        assert p.exitcode == 0


# -- descriptors: closed, never leaked, one per handle, fork ----------------------------------


def test_descriptors_closed_on_close(name):
    with shmlink.Queue.create(name + "-w", 4096) as warm:  # the process's one sender socket
        warm.fileno()
        warm.send(b"x")
    before = nfds()
    for _ in range(3):
        with shmlink.Queue.create(name + "-q", 4096) as q, shmlink.Event.create(name + "-e") as e, \
                shmlink.Board.create(name + "-b", 16) as b, \
                shmlink.Topic.create(name + "-t", 4096) as t, t.subscribe() as s, \
                shmlink.listen(name + "-l") as lst:
            for o in (q, e, b, s, lst):
                o.fileno()
            q.send_fileno()
            assert q.fileno() == q.fileno()  # one descriptor per handle and wait
            assert nfds() > before
            shmlink.remove(name + "-q")
            shmlink.remove(name + "-e")
            shmlink.remove(name + "-b")
            shmlink.remove(name + "-t")
        assert nfds() == before


def _child_fileno(name: str) -> None:
    q = shmlink.Queue.open(name)
    assert readable(q.fileno(), 10)  # spawn: its own doorbell, rung by the parent's send
    assert q.try_recv() == b"s"


def test_fork_gets_its_own_doorbell_and_spawn_works(name):
    with shmlink.Queue.create(name, 4096) as q:
        fd = q.fileno()
        parent_ids = {s for s in slots(q) if s}
        assert len(parent_ids) == 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new doorbell, its own slot; the parent's stays
            try:
                cfd = q.fileno()
                ids = {s for s in slots(q) if s}
                ok = parent_ids < ids and len(ids) == 2
                os.write(w, b"1" if ok else b"0")
                ok = ok and readable(cfd, 10)  # the parent sends below
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        assert os.read(r, 1) == b"1"
        q.send(b"f")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert readable(fd, 5)  # the parent's doorbell was rung too, and still works
        assert q.try_recv() == b"f"
        os.close(r)
        os.close(w)
        p = CTX.Process(target=_child_fileno, args=(name,))
        p.start()
        wait_for(lambda: len([s for s in slots(q) if s]) >= 2, what="the spawned child's slot")
        q.send(b"s")
        p.join(30)
        assert p.exitcode == 0


# -- dead and hostile waiters ---------------------------------------------------------------


def _time_sends(q: shmlink.Queue, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        q.try_send(b"m")
        q.try_recv()
    return time.perf_counter() - t0


def test_killed_waiter_costs_one_wake(name):
    with shmlink.Queue.create(name, 4096) as q:
        baseline = _time_sends(q, 100_000)
        child = subprocess.Popen([sys.executable, "-c", (
            "import shmlink, sys, time\n"
            "q = shmlink.Queue.open(sys.argv[1])\n"
            "q.fileno()  # registered and armed\n"
            "print('armed', flush=True)\n"
            "time.sleep(60)\n"), name], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "armed"
            assert any(slots(q))
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(10)
        q.send(b"wake")  # the one wake: the dead doorbell's slot is cleared
        q.try_recv()
        assert not any(slots(q))
        after = _time_sends(q, 100_000)
        assert after < 3 * baseline + 1.0, (baseline, after)


def test_garbage_slots_neither_crash_nor_block_a_sender(name):
    code = (
        "import shmlink, sys, os\n"
        "from shmlink import _core\n"
        "q = shmlink.Queue.open(sys.argv[1])\n"
        "off = shmlink.segment.DATA_OFFSET + _core.LAYOUT['ring']['data_bells'][0]\n"
        "for i in range(_core.BELL_SLOTS):\n"
        "    q._memory.store64(off + 8 * i, int.from_bytes(os.urandom(8), 'little') | 1)\n"
        "ec = shmlink.segment.DATA_OFFSET + _core.LAYOUT['ring']['data_ec'][0]\n"
        "q._memory.ec_arm(ec)\n"
        "for _ in range(1000):\n"
        "    q.send(b'x', timeout=5); q.recv(timeout=5)\n"
        "    q._memory.ec_arm(ec)\n"
        "print(sum(1 for i in range(_core.BELL_SLOTS) if q._memory.load64(off + 8 * i)))\n")
    with shmlink.Queue.create(name, 4096):
        r = run_python(code, name, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "0"  # each garbage id cost one failed ring, then was cleared


def test_full_table_is_a_typed_error_and_frees_on_close(name):
    with shmlink.Queue.create(name, 4096) as q:
        handles = [shmlink.Queue.open(name) for _ in range(_core.BELL_SLOTS)]
        try:
            for h in handles:
                h.fileno()
            with pytest.raises(shmlink.TooManyParticipants, match="descriptor waiters"):
                q.fileno()
            handles.pop().close()
            assert q.fileno() >= 0
        finally:
            for h in handles:
                h.close()


# -- C peers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def epoll_peer(tmp_path_factory):
    import shutil
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    here = os.path.dirname(os.path.abspath(__file__))
    include = os.path.join(os.path.dirname(shmlink.__file__), "include")
    exe = tmp_path_factory.mktemp("c") / "epoll_peer"
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", include,
                    os.path.join(here, "c", "epoll_peer.c"), "-o", str(exe)], check=True,
                   timeout=120)
    return str(exe)


def test_c_program_waits_with_epoll_on_a_python_queue(name, epoll_peer):
    n = 3000
    with shmlink.Queue.create(name, 1024) as q:
        p = subprocess.Popen([epoll_peer, name, str(n), "10"], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            for i in range(n):
                q.send(str(i).encode(), timeout=10)
                if i % 500 == 0:
                    time.sleep(0.05)  # let it go to sleep in epoll_wait
            out = p.stdout.readline().split()
        finally:
            p.wait(30)
        assert p.returncode == 0
        assert out[:2] == ["got", str(n)] and int(out[3]) >= 1  # it slept and was rung


def test_python_fd_waiter_is_rung_by_a_c_sender(name):
    import shutil
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    here = os.path.dirname(os.path.abspath(__file__))
    include = os.path.join(os.path.dirname(shmlink.__file__), "include")
    exe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ring_peer_{os.getpid()}")
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", include,
                    os.path.join(here, "c", "ring_peer.c"), "-o", exe], check=True, timeout=120)
    try:
        with shmlink.Queue.create(name, 1 << 16) as q:
            fd = q.fileno()
            p = subprocess.Popen([exe, "send", name, "200"])
            got = []
            try:
                while len(got) < 200:
                    assert readable(fd, 10)
                    m = q.try_recv()
                    while m is not None:
                        got.append(m)
                        m = q.try_recv()
            finally:
                p.wait(30)
            assert got == [str(i).encode() for i in range(200)]
    finally:
        os.unlink(exe)


def test_wait_takes_multiprocessing_pipes_and_asyncio_wrappers(name):
    import multiprocessing

    import shmlink.asyncio as sa

    r, w = multiprocessing.Pipe(duplex=False)
    with shmlink.Queue.create(name, 4096) as q:
        aq = sa.Queue(shmlink.Queue.open(name))
        try:
            assert shmlink.wait([r, aq], timeout=0.05) == []
            w.send("x")
            assert shmlink.wait([r, aq], timeout=5) == [r]
            q.send(b"m")
            assert shmlink.wait([r, aq], timeout=5) == [r, aq]
        finally:
            aq.close()
            r.close()
            w.close()
