"""shmlink.asyncio: awaitable waits woken by the doorbell descriptors.

Feeders are real processes; every await is bounded; each test runs on the
default loop and on uvloop (when it installs).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import shmlink
import shmlink.asyncio as sa

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None

LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(getattr(uvloop, "new_event_loop", None), id="uvloop",
                      marks=pytest.mark.skipif(uvloop is None, reason="uvloop not installed"))]


@pytest.fixture(params=LOOPS)
def run(request):
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""
    factory = request.param

    def go(coro, timeout: float = 60):
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            loop.close()

    return go


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import shmlink, sys, time, os\n" + code,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 30) -> None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err


class Ticker:
    """A loop timer: its worst delay shows whether some call blocked the loop."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.monotonic() - t - self.period)

    def stop(self) -> float:
        self.task.cancel()
        return self.worst


# -- many awaits on many objects of every kind ------------------------------------------------

FEED = """
n, k = sys.argv[1], int(sys.argv[2])
qs = [shmlink.Queue.open(f"{n}-q{i}") for i in range(k)]
ts = [shmlink.Topic.open(f"{n}-t{i}") for i in range(k)]
bs = [shmlink.Board.open(f"{n}-b{i}") for i in range(k)]
es = [shmlink.Event.open(f"{n}-e{i}") for i in range(k)]
cs = [shmlink.connect(f"{n}-l", timeout=20) for i in range(k)]
print("connected", flush=True)
sys.stdin.readline()  # the loop awaits everything now
for j in range(10):
    for i in range(k):
        qs[i].send(f"q{i}.{j}".encode())
        ts[i].publish(f"t{i}.{j}".encode())
        cs[i].send(f"c{i}.{j}".encode())
for b in bs:
    b.write(b"changed")
for j in range(10):  # auto-reset: each set wakes one awaiter; set again once consumed
    for e in es:
        deadline = time.monotonic() + 20
        while e.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.001)
        e.set()
sys.stdin.readline()
for c in cs:
    c.close()
"""


def test_a_thousand_awaits_on_a_hundred_objects(run, name):
    k = 20  # 20 each of queue, subscriber, board, event, connection: 100 objects
    lst = sa.listen(name + "-l", backlog=64)
    qs = [sa.Queue.create(f"{name}-q{i}", 4096) for i in range(k)]
    ts = [sa.Topic.create(f"{name}-t{i}", 4096) for i in range(k)]
    subs = [t.subscribe() for t in ts]
    bs = [sa.Board.create(f"{name}-b{i}", 32) for i in range(k)]
    es = [sa.Event.create(f"{name}-e{i}", auto_reset=True) for i in range(k)]
    feeder = subprocess.Popen([sys.executable, "-c", "import shmlink, sys, time\n" + FEED,
                               name, str(k)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)

    async def main():
        conns = [await lst.accept(timeout=20) for _ in range(k)]
        assert feeder.stdout.readline().strip() == "connected"
        ticker = Ticker()
        got: list[bytes] = []

        async def take(obj):
            got.append(await obj.recv(timeout=30))

        async def changed(b):
            assert await b.wait_for_change(0, timeout=30) >= 1

        async def fired(e):
            assert await e.wait(timeout=30)

        aws = []
        for objs in (qs, subs, conns):
            for o in objs:
                aws += [take(o) for _ in range(10)]
        aws += [changed(b) for b in bs for _ in range(10)]
        aws += [fired(e) for e in es for _ in range(10)]
        assert len(aws) == 1000
        tasks = [asyncio.ensure_future(a) for a in aws]
        await asyncio.sleep(0.2)  # everyone awaits
        feeder.stdin.write("go\n")
        feeder.stdin.flush()
        await asyncio.gather(*tasks)
        worst = ticker.stop()
        expect = {f"{p}{i}.{j}".encode() for p in "qtc" for i in range(k) for j in range(10)}
        assert len(got) == len(expect) and set(got) == expect  # each exactly once
        assert not any(e.sync.is_set() for e in es)  # every set consumed by one awaiter
        # nothing blocked the loop: a blocking wait would stall it until the
        # feeder's next step or a 30 s timeout (the bound is generous for CI
        # machines under load; a quiet machine shows milliseconds)
        assert worst < 5.0, f"the loop stalled {worst:.3f} s"
        feeder.stdin.write("done\n")
        feeder.stdin.flush()
        for c in conns:
            c.close()

    try:
        run(main(), 120)
        finish(feeder)
    finally:
        if feeder.poll() is None:
            feeder.kill()
        for o in [lst, *subs, *qs, *ts, *bs, *es]:
            o.close()
        for o in (*qs, *ts, *bs, *es):
            shmlink.remove(o.name)


# -- cancellation never loses or duplicates a message --------------------------------------


def test_cancellation_storm(run, name):
    n = 3000
    q = sa.Queue.create(name, 1 << 14)
    p = spawn("q = shmlink.Queue.open(sys.argv[1])\n"
              "for i in range(int(sys.argv[2])):\n"
              "    q.send(str(i).encode(), timeout=30)\n"
              "    if i % 50 == 0: time.sleep(0.002)\n", name, str(n))

    async def main():
        got: list[int] = []
        rnd = random.Random(1)

        async def receiver():
            while True:
                got.append(int(await q.recv()))

        tasks = {asyncio.ensure_future(receiver()) for _ in range(20)}
        cancelled = 0
        deadline = time.monotonic() + 60
        while len(got) < n:
            assert time.monotonic() < deadline, f"{len(got)} of {n} received"
            await asyncio.sleep(rnd.random() * 0.003)
            victims = rnd.sample(sorted(tasks, key=id), len(tasks) // 2)
            for t in victims:
                t.cancel()
                cancelled += 1
            await asyncio.gather(*victims, return_exceptions=True)
            tasks -= set(victims)
            tasks |= {asyncio.ensure_future(receiver()) for _ in victims}
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert sorted(got) == list(range(n))  # each exactly once
        assert q.sync.try_recv() is None
        assert cancelled > 100

    try:
        run(main(), 120)
        finish(p)
    finally:
        q.close()
        shmlink.remove(name)


# -- peers that die, objects that close ----------------------------------------------------------


def test_killed_connection_peer_raises_peer_disconnected(run, name):
    lst = sa.listen(name)
    p = spawn("c = shmlink.connect(sys.argv[1], timeout=20)\n"
              "c.send(b'first')\n"
              "print('sent', flush=True)\n"
              "time.sleep(60)\n", name)

    async def main():
        c = await lst.accept(timeout=20)
        assert await c.recv(timeout=10) == b"first"
        pending = asyncio.ensure_future(c.recv())
        request = asyncio.ensure_future(c.request(b"?"))
        await asyncio.sleep(0.1)
        assert not pending.done()
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(shmlink.PeerDisconnected):
            await asyncio.wait_for(pending, 10)
        with pytest.raises(shmlink.PeerDisconnected):
            await asyncio.wait_for(request, 10)
        assert time.monotonic() - t0 < 5
        c.close()

    try:
        run(main())  # accepts first: the child's connect waits for that
    finally:
        p.kill()
        p.wait(10)
        lst.close()


def test_killed_queue_sender_leaves_the_loop_working(run, name):
    q = sa.Queue.create(name, 4096)
    p = spawn("q = shmlink.Queue.open(sys.argv[1])\n"
              "q.send(b'one')\n"
              "print('sent', flush=True)\n"
              "time.sleep(60)\n", name)

    async def main():
        assert await q.recv(timeout=10) == b"one"
        with pytest.raises(shmlink.Timeout):
            await q.recv(timeout=0.3)  # the sender died: nothing more, no hang
        waiting = asyncio.ensure_future(q.recv(timeout=20))
        await asyncio.sleep(0.05)
        p2 = spawn("shmlink.Queue.open(sys.argv[1]).send(b'two')", name)
        assert await waiting == b"two"
        finish(p2)

    try:
        assert p.stdout.readline().strip() == "sent"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        run(main())
    finally:
        p.kill()
        q.close()
        shmlink.remove(name)


def test_close_wakes_awaiters_with_an_error(run, name):
    async def main():
        q = sa.Queue.create(name + "-q", 4096)
        e = sa.Event.create(name + "-e")
        lst = sa.listen(name + "-l")
        tasks = [asyncio.ensure_future(c) for c in (q.recv(), q.recv(), e.wait(), lst.accept())]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)
        q.close()
        e.close()
        lst.close()
        for t in tasks:
            with pytest.raises(shmlink.SegmentClosed):
                await asyncio.wait_for(t, 5)
        shmlink.remove(name + "-q")
        shmlink.remove(name + "-e")

    run(main())


def test_descriptors_do_not_leak(run, name):
    async def main():
        async with sa.Queue.create(name + "-w", 4096) as w:  # the one sender socket
            await w.send(b"x")
            await w.recv()
        shmlink.remove(name + "-w")
        before = nfds()
        for _ in range(3):
            async with sa.Queue.create(name, 4096) as q, sa.Event.create(name + "-e") as e:
                t = asyncio.ensure_future(q.recv(timeout=5))
                te = asyncio.ensure_future(e.wait(timeout=5))
                await asyncio.sleep(0.01)
                await q.send(b"m")
                e.sync.set()
                assert await t == b"m" and await te
                shmlink.remove(name)
                shmlink.remove(name + "-e")
        assert nfds() == before

    run(main())


# -- the rest of the surface -----------------------------------------------------------------


def test_async_for_callbacks_board_and_request(run, name):
    q = sa.Queue.create(name + "-q", 4096)
    b = sa.Board.create(name + "-b", 32)
    lst = sa.listen(name + "-l")
    p = spawn("import shmlink.asyncio\n"
              "q = shmlink.Queue.open(sys.argv[1] + '-q')\n"
              "b = shmlink.Board.open(sys.argv[1] + '-b')\n"
              "c = shmlink.connect(sys.argv[1] + '-l', timeout=20)\n"
              "for i in range(5): q.send(b'%d' % i)\n"
              "for i in range(3): print(c.request(b'r%d' % i, timeout=20).decode(), flush=True)\n"
              "b.write(b'v1')\n"
              "c.close()\n", name)

    async def main():
        seen: list[bytes] = []
        task = q.on_message(seen.append)
        conn = await lst.accept(timeout=20)

        async def handler(data: bytes) -> bytes:
            await asyncio.sleep(0)
            return data.upper()

        served = await asyncio.wait_for(conn.serve(handler), 20)
        assert served == 3
        assert await b.wait_for_change(0, timeout=20) >= 1
        assert b.read() == b"v1"
        while len(seen) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        assert seen == [b"0", b"1", b"2", b"3", b"4"]
        got = [m async for m in conn]  # the peer closed: iteration ends
        assert got == []
        conn.close()

    try:
        run(main())
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert out.split() == ["R0", "R1", "R2"]
    finally:
        for o in (q, b, lst):
            o.close()
        shmlink.remove(name + "-q")
        shmlink.remove(name + "-b")


def test_send_awaits_room_and_mutex(run, name):
    q = sa.Queue.create(name, 256)
    m = sa.Mutex.create(name + "-m")
    p = spawn("q = shmlink.Queue.open(sys.argv[1])\n"
              "m = shmlink.Mutex.open(sys.argv[1] + '-m')\n"
              "m.acquire(timeout=5); print('held', flush=True); time.sleep(0.3); m.release()\n"
              "time.sleep(0.2)\n"
              "got = [q.recv(timeout=20) for _ in range(50)]\n"
              "assert got == [b'%02d' % i for i in range(50)], got\n", name)

    async def main():
        assert p.stdout.readline().strip() == "held"
        ticker = Ticker()
        async with m:  # awaited, not blocked
            pass
        for i in range(50):  # far more than fits: each send awaits room
            await q.send(b"%02d" % i, timeout=20)
        assert ticker.stop() < 5.0  # generous: see the thousand-awaits test

    try:
        run(main())
        finish(p)
    finally:
        q.close()
        m.close()
        shmlink.remove(name)
        shmlink.remove(name + "-m")


def _forked_or_spawned(name: str) -> None:
    async def main():
        inbox, outbox = sa.Queue.open(name + "-in"), sa.Queue.open(name + "-out")
        assert await inbox.recv(timeout=20) == b"for the child"
        await outbox.send(b"from the child")
        inbox.close()
        outbox.close()

    asyncio.run(main())


def test_fork_and_spawn_children(name):
    inbox = shmlink.Queue.create(name + "-in", 4096)
    outbox = shmlink.Queue.create(name + "-out", 4096)
    try:
        outbox.fileno()  # the parent has a doorbell; the children must not share it
        for ctx in ("fork", "spawn"):
            p = multiprocessing.get_context(ctx).Process(target=_forked_or_spawned, args=(name,))
            p.start()
            time.sleep(0.2)
            inbox.send(b"for the child")
            deadline = time.monotonic() + 20
            msg = None
            while msg != b"from the child":
                assert time.monotonic() < deadline
                assert shmlink.wait([outbox], timeout=20) == [outbox]
                msg = outbox.try_recv()
            p.join(20)
            assert p.exitcode == 0
    finally:
        inbox.close()
        outbox.close()
        shmlink.remove(name + "-in")
        shmlink.remove(name + "-out")


def test_wait_coroutine(run, name):
    async def main():
        q = sa.Queue.create(name, 4096)
        e = sa.Event.create(name + "-e")
        assert await sa.wait([q, e], timeout=0.05) == []
        p = spawn("shmlink.Event.open(sys.argv[1] + '-e').set()", name)
        assert await sa.wait([q, e], timeout=20) == [e]
        finish(p)
        q.close()
        e.close()
        shmlink.remove(name)
        shmlink.remove(name + "-e")

    run(main())
