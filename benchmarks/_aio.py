"""The asyncio scenarios' children: two processes, each running an event loop.

Competitors (``COMPETITORS``): ``shmlink.asyncio`` Connection (``listen`` / ``accept`` /
``connect``, awaited ``send`` / ``recv``), pyzmq's ``zmq.asyncio`` PAIR over ``ipc://``, and
asyncio streams over a UNIX socket (4-byte length prefix, ``readexactly``). Each side is a
spawned process with its own default event loop; the parent only starts them and collects
one result over a pipe (bounded by a deadline: a child that hangs is killed and the case
fails).

Tasks:

- ``roundtrip``: the client awaits ``send`` then ``recv`` of a 64 B message ``count`` times
  (after a warm-up); the server echoes. Percentiles of the round trip, measured in the client.
- ``throughput``: the client awaits ``send`` of ``count`` 64 B messages back to back; the
  server awaits them and times first to last. Messages per second.
- ``idle``: the server awaits ``recv`` while the client sends nothing for ``idle_s`` seconds;
  the server's CPU time (``getrusage``) over that wait, as a percentage of one CPU.

Every message carries its sequence number in its first 8 bytes and is checked by whoever
receives it.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import struct
import time
from typing import Any

COMPETITORS = [("shmlink", "shmlink.asyncio Connection"), ("zmq", "zmq.asyncio PAIR (ipc)"),
               ("streams", "asyncio streams (UNIX socket)")]
_CONNECT_S = 30.0
_OP_S = 10.0


def unavailable(key: str) -> str | None:
    if key == "zmq":
        try:
            import zmq.asyncio  # noqa: F401
        except ImportError as e:
            return f"pyzmq is not installed ({e}); pip install -e .[bench]"
    if key == "shmlink":
        try:
            import shmlink.asyncio  # noqa: F401
        except ImportError as e:
            return f"shmlink.asyncio is not importable ({e})"
    return None


class _Shm:
    async def open(self, addr: str, server: bool) -> None:
        import shmlink
        import shmlink.asyncio as sa
        if server:
            self.lst = sa.listen(addr, capacity=1 << 20)
            self.c = await self.lst.accept(timeout=_CONNECT_S)
        else:
            self.lst = None
            deadline = time.monotonic() + _CONNECT_S
            while True:
                try:
                    self.c = await sa.connect(addr, timeout=_CONNECT_S)
                    break
                except FileNotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.005)
        self.send, self.recv = self.c.send, self.c.recv
        self._shmlink = shmlink

    def close(self) -> None:
        self.c.close()
        if self.lst is not None:
            self.lst.close()


class _Zmq:
    async def open(self, addr: str, server: bool) -> None:
        import zmq
        import zmq.asyncio
        self.ctx = zmq.asyncio.Context()
        self.s = self.ctx.socket(zmq.PAIR)
        self.s.setsockopt(zmq.LINGER, 0)
        if server:
            self.s.bind(addr)
        else:
            self.s.connect(addr)
        s = self.s

        async def send(m: bytes) -> None:
            await s.send(m, copy=True)

        async def recv() -> bytes:
            return await s.recv(copy=True)  # type: ignore[no-any-return]
        self.send, self.recv = send, recv

    def close(self) -> None:
        self.s.close(0)
        self.ctx.term()


class _Streams:
    async def open(self, addr: str, server: bool) -> None:
        if server:
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                got.set_result((r, w))  # the streams live on after the handler returns

            self.srv = await asyncio.start_unix_server(on_client, addr)
            self.r, self.w = await asyncio.wait_for(got, _CONNECT_S)
        else:
            self.srv = None
            deadline = time.monotonic() + _CONNECT_S
            while True:
                try:
                    self.r, self.w = await asyncio.open_unix_connection(addr)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.005)
        r, w = self.r, self.w
        pack = struct.Struct("<I").pack
        unpack = struct.Struct("<I").unpack

        async def send(m: bytes) -> None:
            w.write(pack(len(m)) + m)
            await w.drain()

        async def recv() -> bytes:
            (n,) = unpack(await r.readexactly(4))
            return await r.readexactly(n)
        self.send, self.recv = send, recv

    def close(self) -> None:
        self.w.close()
        if self.srv is not None:
            self.srv.close()


_KINDS = {"shmlink": _Shm, "zmq": _Zmq, "streams": _Streams}


def _msg(seq: int, size: int) -> bytes:
    return seq.to_bytes(8, "little") + bytes(size - 8)


def _check(m: bytes, seq: int, size: int) -> None:
    if len(m) != size or int.from_bytes(m[:8], "little") != seq:
        raise RuntimeError(f"message {seq}: got {len(m)} bytes, seq "
                           f"{int.from_bytes(m[:8], 'little')}")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _side(key: str, addr: str, server: bool, task: dict) -> dict:
    ep = _KINDS[key]()
    await ep.open(addr, server)
    send, recv, size = ep.send, ep.recv, task["size"]
    try:
        mode, warm, count = task["mode"], task["warmup"], task["count"]
        if mode == "roundtrip":
            if server:
                for i in range(warm + count):
                    m = await asyncio.wait_for(recv(), _OP_S)
                    _check(m, i, size)
                    await send(m)
                return {}
            lat = []
            pc = time.perf_counter_ns
            for i in range(warm + count):
                m = _msg(i, size)
                t = pc()
                await send(m)
                r = await recv()
                if i >= warm:
                    lat.append(pc() - t)
                _check(r, i, size)
            lat.sort()
            return {"p50_ns": lat[len(lat) // 2], "p99_ns": lat[int(len(lat) * 0.99)],
                    "n": len(lat)}
        if mode == "throughput":
            total = warm + count
            if server:
                for i in range(warm):
                    _check(await asyncio.wait_for(recv(), _OP_S), i, size)
                t0 = time.perf_counter()
                for i in range(warm, total):
                    _check(await recv(), i, size)
                dt = time.perf_counter() - t0
                await send(b"done")
                return {"rate": count / dt, "n": count}
            for i in range(total):
                await send(_msg(i, size))
            await asyncio.wait_for(recv(), 60)
            return {}
        if mode == "idle":
            if server:
                await send(b"go")
                c0, w0 = _cpu(), time.monotonic()
                m = await asyncio.wait_for(recv(), task["idle_s"] + _OP_S)
                cpu, wall = _cpu() - c0, time.monotonic() - w0
                _check(m, 0, size)
                return {"idle_cpu_pct": 100 * cpu / wall, "idle_s": wall}
            await recv()
            await asyncio.sleep(task["idle_s"])
            await send(_msg(0, size))
            return {}
        raise ValueError(mode)
    finally:
        ep.close()


def _child(key: str, addr: str, server: bool, task: dict, conn: Any) -> None:
    try:
        conn.send(("ok", asyncio.run(_side(key, addr, server, task))))
    except BaseException as e:  # reported to the parent, which fails the case
        conn.send(("error", f"{'server' if server else 'client'}: {type(e).__name__}: {e}"))


def run_pair(key: str, addr: str, task: dict, timeout: float) -> dict:
    """Run one task with a server and a client process; the merged results."""
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    for server in (True, False):
        a, b = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(key, addr, server, task, b), daemon=True)
        p.start()
        b.close()
        procs.append(p)
        conns.append(a)
    out: dict = {}
    deadline = time.monotonic() + timeout
    try:
        for a, p in zip(conns, procs):
            left = deadline - time.monotonic()
            if not a.poll(max(0.0, left)):
                raise TimeoutError(f"{key} {task['mode']}: no result within {timeout:.0f} s")
            status, res = a.recv()
            if status != "ok":
                raise RuntimeError(res)
            out.update(res)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if addr.startswith("/") and os.path.exists(addr):
            os.unlink(addr)
    return out
