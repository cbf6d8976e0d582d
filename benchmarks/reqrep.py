"""Scenario 3b: request/response round trip over a connection.

The round-trip driver of the latency scenario, over connection-shaped competitors: a client
sends a request and waits for the response (the server echoes the request). Percentiles of
the round trip at 64 B and 4 KiB.

Competitors:

- shmlink ``connect`` / ``listen``: the client calls ``Connection.request`` (one call: send,
  wait for the matching response), the server ``recv_request`` / ``reply``; both with
  ``wait="hybrid"`` (the default) and ``wait="block"``, as in the latency scenario. Skipped
  with a note where ``shmlink.connect`` does not exist;
- ``multiprocessing.connection``: ``Client`` / a listening AF_UNIX socket whose accepted end is
  wrapped in ``multiprocessing.connection.Connection`` (what ``Listener.accept`` does), so
  accept and every read are bounded by kernel socket timeouts; ``send_bytes`` /
  ``recv_bytes``;
- pyzmq REQ/REP over ``ipc://``.
"""
from __future__ import annotations

from functools import partial

import os
import socket
import time
from typing import Any

from . import _harness as H
from . import peers
from ._drivers import run_roundtrip
from ._harness import OP_TIMEOUT
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64, 4096]
KEYS = ["p50_ns", "p90_ns", "p99_ns", "mean_ns"]
CONNECT_TIMEOUT = 30.0


class ShmlinkConnection(peers.Link):
    key = "shmlink"

    def __init__(self, wait: str = "hybrid") -> None:
        self.wait = wait
        self.name = f"shmlink Connection ({wait})"

    def unavailable(self):
        try:
            import shmlink
        except ImportError as e:
            return f"shmlink is not importable ({e})"
        if not (hasattr(shmlink, "connect") and hasattr(shmlink, "listen")):
            return "shmlink.connect / shmlink.listen do not exist yet in this checkout"
        return None

    def create(self, ws, size, duplex):
        spec = (ws.name("conn"), size, self.wait)
        return spec, spec, None

    def open(self, spec, side):
        return _ShmlinkConnEndpoint(*spec, side)


class _ShmlinkConnEndpoint(peers.Endpoint):
    """Request/response the way a shmlink user writes it.

    Client: ``Connection.request(data)`` (send and wait for the matching response, one call).
    Server: ``recv_request()`` then ``reply(request, data)``; the driver's recv/send pair maps
    onto those, the request id carried between them.
    """

    def __init__(self, name, size, wait, side):
        import shmlink
        t = OP_TIMEOUT
        if side == "b":
            self._listener = shmlink.listen(name, capacity=peers.capacity_for(size), wait=wait)
            self._c = c = self._listener.accept(timeout=CONNECT_TIMEOUT)
            rr, rp = c.recv_request, c.reply
            last = [0]

            def recv():
                req = rr(timeout=t)
                last[0] = req.id
                return req.data

            def send(buf):
                rp(last[0], buf, timeout=t)
            self.recv, self.send = recv, send
        else:
            self._listener = None
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:  # like a socket connect: the server may not listen yet
                try:
                    c = shmlink.connect(name, timeout=CONNECT_TIMEOUT, wait=wait)
                    break
                except FileNotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
            self._c = c
            self.roundtrip = partial(c.request, timeout=t)
            last_resp = [b""]

            def send(buf):  # outside timed loops (the stop marker): same call underneath
                last_resp[0] = c.request(buf, timeout=t)

            def recv():
                return last_resp[0]
            self.send, self.recv = send, recv

    def close(self):
        self._c.close()
        if self._listener is not None:
            self._listener.close()


class MpConnection(peers.Link):
    key = "mp-connection"
    name = "multiprocessing.connection"

    def create(self, ws, size, duplex):
        path = ws.path("mpconn") + ".sock"
        return path, path, path

    def destroy(self, path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def open(self, spec, side):
        from multiprocessing.connection import Client, Connection
        if side == "b":
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                ls.bind(spec)
                ls.listen(1)
                ls.settimeout(CONNECT_TIMEOUT)
                s, _ = ls.accept()
            finally:
                ls.close()
            s.setblocking(True)
            conn = Connection(s.detach())
        else:
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:
                try:
                    conn = Client(spec, family="AF_UNIX")
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no listener at {spec} within {CONNECT_TIMEOUT} s")
                    time.sleep(0.005)
        return peers._ConnectionEndpoint(conn)


class ZmqReqRep(peers.Link):
    key = "zmq"
    name = "pyzmq REQ/REP"

    def unavailable(self):
        return peers._missing("zmq")

    def create(self, ws, size, duplex):
        addr = "ipc://" + ws.path("zmq-rr") + ".sock"
        return (addr, size), (addr, size), None

    def open(self, spec, side):
        import zmq
        addr, size = spec
        ep = peers._ZmqEndpoint.__new__(peers._ZmqEndpoint)
        s = peers.zmq_socket(zmq.REP if side == "b" else zmq.REQ, size)
        if side == "b":
            s.bind(addr)
        else:
            s.connect(addr)
        peers._ZmqEndpoint._wire(ep, s)
        return ep


class ReqRep(Scenario):
    name = "reqrep"
    title = "Request/response round trip over a connection"
    order = 40
    metric = "p50_ns"
    higher_is_better = False
    ratio_note = "shmlink p50 / peer p50: below 1 means shmlink is faster"
    ratio_header = "hybrid/peer"

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for link in (ShmlinkConnection("hybrid"), ShmlinkConnection("block"), MpConnection(),
                     ZmqReqRep()):
            c = Case(self.name, link.name, link.key, "", list(SIZES), link=link)
            c.skip = link.unavailable()
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"warmup": 100, "count": 20_000, "seconds": 0.05}
        return {"warmup": 2_000, "count": 400_000, "seconds": 1.5}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        sizes = [s for s in case.sizes if s not in case.size_skips]
        return run_roundtrip(case.link, sizes, ws, lambda s: self.plan(opts, s), 1, on_run)

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"p50 {H.fmt_ns(r['p50_ns'])}  p99 {H.fmt_ns(r['p99_ns'])}  ({r['n']} round trips)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink Connection (hybrid)", rec["mode"])

    def extra_ratios(self) -> list[tuple[str, str]]:
        return [("block/peer", "shmlink Connection (block)")]

    def columns(self) -> list[Column]:
        def ns(k):
            return lambda r: H.fmt_ns(r["metrics"].get(k, float("nan")))
        return [Column("p50", ns("p50_ns")), Column("p90", ns("p90_ns")),
                Column("p99", ns("p99_ns"))]

    def chart(self, records: list[dict], path: str) -> bool:
        from ._report import bar_chart
        return bar_chart(records, path, self.title + " (p50, whisker to p99; lower is better)",
                         value=lambda r: r["metrics"]["p50_ns"] / 1e3,
                         upper=lambda r: r["metrics"]["p99_ns"] / 1e3,
                         ylabel="round trip (µs, log scale)", log=True)


SCENARIO = ReqRep()
