"""Child-process bodies for test_connection.py.

Spawned children import their targets from here.  Each gets the listener's
*name* (plus multiprocessing events, semaphores or queues for coordination),
makes its own connection, and bounds every wait, so a broken library makes
a child fail (non-zero exit code, which ``join_all`` reports), never hang.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import shmlink

WAIT_S = 30.0  # upper bound on any wait inside a child


def derive(req: bytes) -> bytes:
    """The response every test server gives: checkable from the request alone."""
    return b"R" + req[::-1]


def _handler(kind: str, entered=None):
    def handle(req: bytes) -> bytes:
        if req.startswith(b"sleep:"):
            if entered is not None:
                entered.release()
            time.sleep(float(req[6:]))
            return b"slept"
        if req == b"block":
            if entered is not None:
                entered.release()
            time.sleep(3600)  # until the test kills this process
        if req == b"fail":
            raise ValueError("the handler was asked to fail")
        if req == b"pid":
            return str(os.getpid()).encode()
        if kind == "upper":
            return req.upper()
        return derive(req)
    return handle


def server(name: str, ready, clients: int, kind: str = "derive", entered=None,
           served=None, capacity: int = 1 << 16) -> None:
    """Listen, accept ``clients`` connections, serve each in a thread until it disconnects."""
    lst = shmlink.listen(name, capacity=capacity)
    ready.set()
    handler = _handler(kind, entered)
    threads = []
    counts: dict[int, int] = {}

    def run(conn: shmlink.Connection) -> None:
        with conn:
            counts[conn.peer_pid] = conn.serve(handler)

    try:
        for _ in range(clients):
            conn = lst.accept(timeout=WAIT_S)
            t = threading.Thread(target=run, args=(conn,), daemon=True)
            t.start()
            threads.append(t)
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            sys.exit("a serving thread did not finish")
    finally:
        lst.close()
    if served is not None:
        for pid, n in counts.items():
            served.put((pid, n))


def client(name: str, cid: int, n: int) -> None:
    """Connect and make ``n`` requests, checking each response."""
    with shmlink.connect(name, timeout=WAIT_S) as conn:
        assert conn.role == "client"
        for i in range(n):
            req = b"c%d-%d" % (cid, i)
            resp = conn.request(req, timeout=WAIT_S)
            if resp != derive(req):
                raise AssertionError(f"client {cid}: request {req!r} got {resp!r}")


def slow_client(name: str, connected) -> None:
    """Connect, then block in a request the server answers slowly (killed meanwhile)."""
    conn = shmlink.connect(name, timeout=WAIT_S)
    connected.set()
    conn.request(b"sleep:0.5", timeout=WAIT_S)
    time.sleep(WAIT_S)


def blocked_client(name: str, results) -> None:
    """Block in a request the server never answers; report when the disconnect is seen."""
    conn = shmlink.connect(name, timeout=WAIT_S)
    try:
        conn.request(b"block", timeout=WAIT_S)
    except shmlink.PeerDisconnected:
        results.put(("disconnected", time.monotonic()))
    except BaseException as e:  # noqa: BLE001  (reported to the test)
        results.put(("error", repr(e)))
    else:
        results.put(("error", "the request returned"))
    finally:
        conn.close()


def blocked_recv_client(name: str, results) -> None:
    """Block in recv() (no request); report when the disconnect is seen."""
    conn = shmlink.connect(name, timeout=WAIT_S)
    results.put(("connected", os.getpid()))
    try:
        conn.recv(timeout=WAIT_S)
    except shmlink.PeerDisconnected:
        results.put(("disconnected", time.monotonic()))
    except BaseException as e:  # noqa: BLE001
        results.put(("error", repr(e)))
    finally:
        conn.close()


def holding_client(name: str, connected, release) -> None:
    """Connect, say so, and keep the connection until told to leave."""
    with shmlink.connect(name, timeout=WAIT_S) as conn:
        assert conn.request(b"x", timeout=WAIT_S) == derive(b"x")
        connected.release()
        release.wait(WAIT_S)


def sending_client(name: str, n: int) -> None:
    """Send ``n`` plain messages, then close at once."""
    with shmlink.connect(name, timeout=WAIT_S) as conn:
        for i in range(n):
            conn.send(b"m%d" % i, timeout=WAIT_S)


def echo_server_once(name: str, ready, results) -> None:
    """Accept one client; echo its plain messages until it disconnects; report what arrived."""
    with shmlink.listen(name) as lst:
        ready.set()
        with lst.accept(timeout=WAIT_S) as conn:
            got = []
            for msg in conn:  # ends when the client closes
                got.append(msg)
            results.put(got)


def closing_server(name: str, ready, results, delay: float) -> None:
    """Accept one client, wait ``delay`` seconds, report the time, close cleanly."""
    with shmlink.listen(name) as lst:
        ready.set()
        conn = lst.accept(timeout=WAIT_S)
        time.sleep(delay)
        results.put(("closing", time.monotonic()))
        conn.close()


def pair_peer(name: str, results) -> None:
    """Meet a peer with Connection.pair and swap PIDs."""
    with shmlink.Connection.pair(name, timeout=WAIT_S) as conn:
        conn.send(str(os.getpid()).encode(), timeout=WAIT_S)
        other = int(conn.recv(timeout=WAIT_S))
        if other != conn.peer_pid:
            raise AssertionError(f"peer said PID {other}, peer_pid is {conn.peer_pid}")
        results.put((conn.role, os.getpid(), other))
        # wait for the peer to be done too, so neither sees a disconnect mid-exchange
        conn.send(b"bye", timeout=WAIT_S)
        assert conn.recv(timeout=WAIT_S) == b"bye"


def threaded_client(name: str, threads: int, n: int) -> None:
    """Several threads of one process make requests on one connection."""
    errors: list[str] = []
    with shmlink.connect(name, timeout=WAIT_S) as conn:
        def run(t: int) -> None:
            try:
                for i in range(n):
                    req = b"t%d-%d" % (t, i)
                    resp = conn.request(req, timeout=WAIT_S)
                    if resp != derive(req):
                        errors.append(f"thread {t}: {req!r} got {resp!r}")
                        return
            except BaseException as e:  # noqa: BLE001
                errors.append(f"thread {t}: {e!r}")

        ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT_S * 2)
        if any(t.is_alive() for t in ts):
            errors.append("a thread hung")
    if errors:
        raise AssertionError("; ".join(errors[:5]))


def flood_msg(i: int, size: int) -> bytes:
    """The ``i``-th message of :func:`flooding_server`: its number, padded to ``size`` bytes."""
    return (b"%08d" % i).ljust(size, b".")


def flooding_server(name: str, ready, n: int, size: int) -> None:
    """Accept one client, send it ``n`` messages of ``size`` bytes, then answer its requests."""
    with shmlink.listen(name, capacity=1 << 16) as lst:
        ready.set()
        with lst.accept(timeout=WAIT_S) as conn:
            for i in range(n):
                conn.send(flood_msg(i, size), timeout=WAIT_S)
            conn.serve(lambda req: b"re:" + req)  # until the client closes
