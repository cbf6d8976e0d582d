"""Connection and Listener: duplex request/response between processes.

Servers and clients run in spawned processes (see workers/connection.py) except
where a test is about this process's own threads.  Every wait is bounded.
"""

from __future__ import annotations

import os
import pickle
import queue as pyqueue
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import shmlink
from shmlink import (
    Connection,
    CorruptSegment,
    MessageTooLarge,
    PeerDisconnected,
    RemoteError,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    Timeout,
)
from shmlink.segment import PREFIX, shm_dir

from workers import connection as W
from support import CTX, join_all, kill, wait_for

WAIT = 30.0


def _conn_files(name: str) -> list[str]:
    prefix = PREFIX + name + ".c"
    return sorted(e for e in os.listdir(shm_dir()) if e.startswith(prefix))


def _start(target, *args) -> "CTX.Process":
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _server(name: str, clients: int, kind: str = "derive", **kw):
    ready = CTX.Event()
    p = _start(W.server, name, ready, clients, kind, kw.get("entered"), kw.get("served"))
    assert ready.wait(WAIT), "the server did not start listening"
    return p


def _pair_in_threads(name: str, **kw):
    """A listener, and a client and a server end in this process."""
    lst = shmlink.listen(name, **kw)
    got: list = []
    t = threading.Thread(target=lambda: got.append(lst.accept(timeout=WAIT)))
    t.start()
    client = shmlink.connect(name, timeout=WAIT)
    t.join(WAIT)
    return lst, client, got[0]


def _get(q, timeout: float = WAIT):
    try:
        return q.get(timeout=timeout)
    except pyqueue.Empty:
        raise AssertionError(f"no report from a child within {timeout} s") from None


# --- API -----------------------------------------------------------------------


def test_request_send_recv_objects_with_a_server_process(name):
    p = _server(name, 1, "upper")
    with shmlink.connect(name, timeout=WAIT) as conn:
        assert conn.role == "client"
        assert conn.peer_pid == p.pid
        assert not conn.closed and not conn.peer_closed
        assert conn.request(b"hello", timeout=WAIT) == b"HELLO"
        assert conn.request(bytearray(b"abc")) == b"ABC"
        assert conn.request(memoryview(b"xyz")) == b"XYZ"
        assert conn.request(b"") == b""
        assert conn.request(b"pid") == str(p.pid).encode()
        big = bytes(range(256)) * 200
        assert conn.request(big) == big.upper()
        assert conn.max_message_size == (1 << 16) - 16
        with pytest.raises(RemoteError, match="asked to fail"):
            conn.request(b"fail", timeout=WAIT)
        assert conn.request(b"still works") == b"STILL WORKS"  # usable after a remote error
        with pytest.raises(MessageTooLarge):
            conn.request(b"x" * conn.max_message_size + b"y")
        assert repr(conn).startswith("<shmlink.Connection")
    assert conn.closed
    join_all([p], WAIT)
    wait_for(lambda: not _conn_files(name), what="the connection segment to go")


def test_plain_messages_objects_and_try_recv(name):
    lst, c, s = _pair_in_threads(name)
    try:
        assert s.role == "server" and s.peer_pid == os.getpid()
        assert c.try_recv() is None and s.try_recv() is None
        c.send(b"one")
        c.send(b"")
        c.send_object({"k": [1, 2]})
        assert s.recv(timeout=WAIT) == b"one"
        assert s.recv(timeout=WAIT) == b""
        assert s.recv_object(timeout=WAIT) == {"k": [1, 2]}
        s.send(b"back")
        assert wait_for(c.try_recv, WAIT, what="try_recv") == b"back"
        with pytest.raises(Timeout):
            s.recv(timeout=0.05)
        with pytest.raises(Timeout):
            s.recv(timeout=0)
        with pytest.raises(ValueError):
            s.recv(timeout=-1)
        with pytest.raises(TypeError):
            pickle.dumps(c)
    finally:
        c.close()
        s.close()
        lst.close()
    assert not _conn_files(name)
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name))


def test_recv_request_and_reply_interleaved_with_messages(name):
    lst, c, s = _pair_in_threads(name)
    try:
        out: list = []
        t = threading.Thread(target=lambda: out.append(c.request(b"q1", timeout=WAIT)))
        c.send(b"before")
        t.start()
        req = s.recv_request(timeout=WAIT)
        assert req.data == b"q1" and req.id > 0
        assert s.recv(timeout=WAIT) == b"before"  # the plain message was kept for recv()
        s.reply(req, b"a1")
        t.join(WAIT)
        assert out == [b"a1"]
        with pytest.raises(Timeout):
            s.recv_request(timeout=0.05)
    finally:
        c.close()
        s.close()
        lst.close()


def test_a_response_read_by_another_threads_recv_completes_the_request(name):
    # One thread blocks in recv() and so holds the reader role; a request from
    # another thread must get its response through its future, routed by the
    # receiving thread, while that thread still waits for its message.
    lst, c, s = _pair_in_threads(name)
    try:
        got_msg: list = []
        answered = threading.Event()
        receiver = threading.Thread(target=lambda: got_msg.append(c.recv(timeout=WAIT)))
        receiver.start()
        wait_for(lambda: c._rlock.locked(), WAIT, what="the receiver to take the reader role")

        def serve_one() -> None:
            req = s.recv_request(timeout=WAIT)
            s.reply(req, b"answer to " + req.data)
            answered.wait(WAIT)  # the message goes out only once the request returned
            s.send(b"the message")

        server = threading.Thread(target=serve_one)
        server.start()
        assert c.request(b"q", timeout=WAIT) == b"answer to q"
        assert receiver.is_alive()  # the response came while the receiver still waited
        answered.set()
        receiver.join(WAIT)
        server.join(WAIT)
        assert got_msg == [b"the message"]
        assert not c._pending
    finally:
        c.close()
        s.close()
        lst.close()


def test_timeouts_and_late_responses_are_dropped(name):
    p = _server(name, 1)
    with shmlink.connect(name, timeout=WAIT) as conn:
        with pytest.raises(Timeout):
            conn.request(b"sleep:0.3", timeout=0.05)
        # the late response to that request must not answer this one
        assert conn.request(b"next", timeout=WAIT) == W.derive(b"next")
        assert conn.request(b"again", timeout=WAIT) == W.derive(b"again")
        with pytest.raises(Timeout):
            conn.recv(timeout=0.05)
        assert not conn._pending  # no future left behind by the abandoned request
    join_all([p], WAIT)


def test_a_flooding_peer_is_bounded_by_max_buffered(name):
    # The peer sends far more messages than the bound (and than its ring holds)
    # while this end waits for a response: the request raises BufferFull, the
    # kept messages stay within the bound plus one frame, the rest waits in the
    # ring, and recv() then gets every message in order; later requests work.
    n, size, bound = 400, 1000, 32 * 1024
    ready = CTX.Event()
    p = _start(W.flooding_server, name, ready, n, size)
    assert ready.wait(WAIT), "the server did not start listening"
    with shmlink.connect(name, timeout=WAIT, max_buffered=bound) as conn:
        assert conn.max_buffered == bound
        with pytest.raises(shmlink.BufferFull, match=r"recv\(\)/recv_request\(\)") as ei:
            conn.request(b"first", timeout=WAIT)
        assert isinstance(ei.value, BufferError)
        assert "waiting for a response" in str(ei.value)
        held = conn.stats()["buffered_bytes"]
        assert bound < held <= bound + size
        # still full: raised before anything more is read (or sent)
        t0 = time.monotonic()
        with pytest.raises(shmlink.BufferFull):
            conn.request(b"second", timeout=WAIT)
        assert time.monotonic() - t0 < WAIT / 2
        assert conn.stats()["buffered_bytes"] == held
        got, peak = [], held
        for _ in range(n):
            got.append(conn.recv(timeout=WAIT))
            peak = max(peak, conn.stats()["buffered_bytes"])
        assert got == [W.flood_msg(i, size) for i in range(n)]  # none lost, none reordered
        assert peak <= bound + size
        assert conn.stats()["buffered_bytes"] == 0
        assert conn.request(b"later", timeout=WAIT) == b"re:later"
        assert conn.stats()["dropped"] == 1  # the answer to "first", whose caller gave up
    join_all([p], WAIT)


def test_max_buffered_is_checked(name):
    for bad in (-1, 1.5, True, "16M"):
        with pytest.raises(shmlink.InvalidArgument, match="max_buffered"):
            shmlink.listen(name, max_buffered=bad)
        with pytest.raises(shmlink.InvalidArgument, match="max_buffered"):
            shmlink.connect(name, timeout=1, max_buffered=bad)


def test_connect_errors(name):
    with pytest.raises(SegmentNotFound):
        shmlink.connect(name, timeout=1)
    with shmlink.listen(name, backlog=1) as lst:
        with pytest.raises(Timeout):
            lst.accept(timeout=0.05)
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            shmlink.connect(name, timeout=0.2)  # nobody accepts
        assert time.monotonic() - t0 >= 0.2
        # the abandoned connect is skipped by the next accept; a live one is accepted
        got: list = []
        t = threading.Thread(target=lambda: got.append(shmlink.connect(name, timeout=WAIT)))
        t.start()
        conn = lst.accept(timeout=WAIT)
        t.join(WAIT)
        assert conn.peer_pid == os.getpid()
        conn.close()
        got[0].close()
        with pytest.raises(SegmentExists):
            shmlink.listen(name)  # a live server holds the name
    assert not _conn_files(name)


def test_a_full_backlog_makes_connect_wait(name):
    with shmlink.listen(name, backlog=2) as lst:
        got: list = []
        ts = [threading.Thread(target=lambda: got.append(shmlink.connect(name, timeout=WAIT)))
              for _ in range(2)]
        for t in ts:
            t.start()
        # both connects have posted on the accept ring (a connect creates its
        # segment first, then posts: waiting for the segments alone races)
        wait_for(lambda: lst.stats()["pending"] == 2, what="two pending connects")
        with pytest.raises(Timeout, match="backlog"):
            shmlink.connect(name, timeout=0.3)
        conns = [lst.accept(timeout=WAIT) for _ in range(2)]
        for t in ts:
            t.join(WAIT)
        assert len(got) == 2
        assert sorted(c.peer_pid for c in conns) == [os.getpid()] * 2
        for c in conns + got:
            c.close()
    wait_for(lambda: not _conn_files(name), what="connection segments to go")


def test_bad_arguments(name):
    with pytest.raises(shmlink.InvalidName):
        shmlink.listen("x" * 190)
    with pytest.raises(shmlink.InvalidSize):
        shmlink.listen(name, capacity=8)
    with pytest.raises(shmlink.InvalidSize):
        shmlink.listen(name, backlog=0)
    with pytest.raises(ValueError):
        shmlink.listen(name, wait="sometimes")


def test_closing_the_listener_refuses_waiting_connects_and_wakes_accept(name):
    lst = shmlink.listen(name)
    errors: list = []

    def connecting():
        try:
            shmlink.connect(name, timeout=WAIT)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=connecting)
    t.start()
    wait_for(lambda: _conn_files(name), what="the pending connect")
    lst.close()
    t.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], PeerDisconnected), errors
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name))
    # a thread blocked in accept() is woken by close()
    lst = shmlink.listen(name)
    t0 = time.monotonic()
    outcome: list = []

    def accepting():
        try:
            lst.accept(timeout=WAIT)
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    t = threading.Thread(target=accepting)
    t.start()
    time.sleep(0.1)
    lst.close()
    t.join(WAIT)
    assert not t.is_alive() and time.monotonic() - t0 < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], SegmentClosed), outcome
    wait_for(lambda: not _conn_files(name), what="refused connection segments to go")


def test_hostile_frames_raise_corrupt_segment(name):
    lst, c, s = _pair_in_threads(name)
    try:
        c._out.try_send(b"abc")  # shorter than a frame header
        with pytest.raises(CorruptSegment):
            s.recv(timeout=WAIT)
        c._out.try_send(struct.pack("<Q", 99))  # unknown frame kind
        with pytest.raises(CorruptSegment):
            s.recv(timeout=WAIT)
        c._out.try_send(struct.pack("<Q", 7 << 8) + b"x")  # a message with a request id
        with pytest.raises(CorruptSegment):
            s.recv(timeout=WAIT)
        c._out.try_send(struct.pack("<Q", 1) + b"x")  # a request without one
        with pytest.raises(CorruptSegment):
            s.recv(timeout=WAIT)
        c._out.try_send(struct.pack("<Q", 2) + b"x")  # a response without one
        with pytest.raises(CorruptSegment):
            s.recv(timeout=WAIT)
        c.send(b"fine")
        assert s.recv(timeout=WAIT) == b"fine"
    finally:
        c.close()
        s.close()
        lst.close()


def test_frames_are_built_and_checked_by_the_header(name):
    """Python sends and takes frames through connection.h (Ring.*_frame), never by hand."""
    from shmlink import InvalidArgument, _core

    lst, c, s = _pair_in_threads(name)
    try:
        # a kind/id pair the protocol forbids is refused before anything is sent
        for kind, rid in [(_core.FRAME_RESP, 0), (_core.FRAME_MSG, 5), (9, 0),
                          (_core.FRAME_REQ, 1 << 56), (_core.FRAME_REQ, -1)]:
            with pytest.raises(InvalidArgument):
                c._out.try_send_frame(kind, rid, b"x")
        with pytest.raises(InvalidArgument):
            s.reply(0, b"x")  # a response needs its request's id
        c.send(b"fine")
        assert s.recv(timeout=WAIT) == b"fine"  # nothing else went out
        # the wire format is the header's: little-endian id << 8 | kind, then the payload
        assert c._out.try_send_frame(_core.FRAME_REQ, 0x123456, b"abc")
        assert s._in.try_recv() == struct.pack("<Q", 0x123456 << 8 | _core.FRAME_REQ) + b"abc"
        c._out.try_send(struct.pack("<Q", 3 << 8 | _core.FRAME_RESP) + b"r")
        assert s._in.try_recv_frame() == (_core.FRAME_RESP, 3, b"r")
        c._out.try_send(struct.pack("<Q", _core.FRAME_MSG))  # just a header: an empty message
        assert s._in.try_recv_frame() == (_core.FRAME_MSG, 0, b"")
        big = os.urandom(c.max_message_size)  # the largest payload, built off the stack
        assert c._out.try_send_frame(_core.FRAME_MSG, 0, big)
        assert s.recv(timeout=WAIT) == big
        with pytest.raises(MessageTooLarge, match="max_message_size"):
            c.send(big + b"!")
        c._out.try_send(b"\x07" * 3)
        with pytest.raises(CorruptSegment, match="malformed frame"):
            s._in.try_recv_frame()
        assert s._in.try_recv_frame() is None  # the bad frame was taken
    finally:
        c.close()
        s.close()
        lst.close()


def test_inspection_handles_and_cli_info(name, capsys):
    from shmlink.cli import main

    p = _server(name, 2)
    connected, release = CTX.Semaphore(0), CTX.Event()
    clients = [_start(W.holding_client, name, connected, release) for _ in range(2)]
    for _ in clients:
        assert connected.acquire(timeout=WAIT)
    with shmlink.Listener.open(name) as lst:
        state = lst.stats()
        assert state["server_pid"] == p.pid and state["server_alive"] and not state["closed"]
        assert state["accepted"] == 2
        assert {c["client_pid"] for c in state["clients"]} == {c.pid for c in clients}
        assert {c["accept"] for c in state["clients"]} == {"accepted"}
        assert {c["client_pid"] for c in lst.clients()} == {c.pid for c in clients}
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kind: +listener$", out, re.M), out
    for c in clients:  # a row of the clients table: PID, alive, state, connection
        assert re.search(rf"^  {c.pid} +yes +connected +{name}\.c", out, re.M), out
    conn_name = _conn_files(name)[0][len(PREFIX):]
    with Connection.open(conn_name) as insp:
        st = insp.stats()
        assert st["accept"] == "accepted" and st["server_pid"] == p.pid and st["server_alive"]
        assert st["client_pid"] in {c.pid for c in clients} and st["client_alive"]
        assert st["client_to_server"]["sent"] >= 0 and "depth" in st["server_to_client"]
        with pytest.raises(SegmentClosed):
            insp.send(b"x")
    assert main(["info", conn_name]) == 0
    assert "client to server" in capsys.readouterr().out
    release.set()
    join_all(clients + [p], WAIT)
    wait_for(lambda: not _conn_files(name), what="connection segments to go")


# --- disconnects -------------------------------------------------------------------


def test_clean_close_by_client_delivers_everything_then_ends_iteration(name):
    ready, results = CTX.Event(), CTX.Queue()
    srv = _start(W.echo_server_once, name, ready, results)
    assert ready.wait(WAIT)
    sender = _start(W.sending_client, name, 500)
    got = _get(results)
    assert got == [b"m%d" % i for i in range(500)]
    join_all([sender, srv], WAIT)
    wait_for(lambda: not _conn_files(name), what="the connection segment to go")


def test_clean_close_by_server_wakes_blocked_client_at_once(name):
    ready, results = CTX.Event(), CTX.Queue()
    srv = _start(W.closing_server, name, ready, results, 0.3)
    assert ready.wait(WAIT)
    with shmlink.connect(name, timeout=WAIT) as conn:
        t0 = time.monotonic()
        with pytest.raises(PeerDisconnected, match="closed"):
            conn.recv(timeout=WAIT)
        seen = time.monotonic()
        assert seen - t0 < WAIT
        kind, closing = _get(results)
        assert seen - closing < 1.0, f"disconnect seen {seen - closing:.3f} s after the close"
        assert conn.peer_closed
        with pytest.raises(PeerDisconnected):
            conn.send(b"x")
        with pytest.raises(PeerDisconnected):
            conn.request(b"x")
        assert list(conn) == []
    join_all([srv], WAIT)
    wait_for(lambda: not _conn_files(name), what="the connection segment to go")


def test_close_from_another_thread_wakes_this_process(name):
    lst, c, s = _pair_in_threads(name)
    try:
        outcome: list = []

        def blocked_recv():
            try:
                s.recv(timeout=WAIT)
            except BaseException as e:  # noqa: BLE001
                outcome.append(e)

        t = threading.Thread(target=blocked_recv)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        s.close()
        t.join(WAIT)
        assert isinstance(outcome[0], SegmentClosed)
        assert time.monotonic() - t0 < 1.0
        # the client sees the server's close
        with pytest.raises(PeerDisconnected):
            c.recv(timeout=WAIT)
        # serve() returns when its connection is closed from another thread, or stopped
        c.close()
        lst.close()
        lst, c, s = _pair_in_threads(name)
        served: list = []
        t = threading.Thread(target=lambda: served.append(s.serve(lambda b: b)))
        t.start()
        assert c.request(b"ping", timeout=WAIT) == b"ping"
        s.stop()
        t.join(WAIT)
        assert served == [1]
        t = threading.Thread(target=lambda: served.append(s.serve(lambda b: b)))
        t.start()
        assert c.request(b"ping", timeout=WAIT) == b"ping"
        s.close()
        t.join(WAIT)
        assert served == [1, 1] and not t.is_alive()
        # a handler that closes its own connection ends serve() too
        c.close()
        lst.close()
        lst, c, s = _pair_in_threads(name)
        t = threading.Thread(target=lambda: served.append(s.serve(lambda b: s.close())))
        t.start()
        with pytest.raises(PeerDisconnected):
            c.request(b"bye", timeout=WAIT)
        t.join(WAIT)
        assert served[-1] == 0 and s.closed
    finally:
        c.close()
        s.close()
        lst.close()
    assert not _conn_files(name)


def test_server_killed_is_reported_to_every_blocked_client(name):
    entered = CTX.Semaphore(0)
    n = 4
    srv = _server(name, n, entered=entered)
    results = CTX.Queue()
    clients = [_start(W.blocked_client, name, results) for _ in range(n)]
    for _ in range(n):
        assert entered.acquire(timeout=WAIT), "clients did not get blocked in request()"
    time.sleep(0.05)
    t_kill = time.monotonic()
    kill(srv)
    delays = []
    for _ in range(n):
        what, value = _get(results)
        assert what == "disconnected", value
        delays.append(value - t_kill)
    assert max(delays) < 2.0, f"disconnects seen after {delays} s"
    join_all(clients, WAIT)
    # the survivors closed their ends: with the server dead, that removed the segments;
    # the listener of the dead server is taken over by the next listen()
    wait_for(lambda: not _conn_files(name), what="connection segments to go")
    with shmlink.listen(name):
        pass
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name))


def test_server_killed_wakes_clients_blocked_in_recv(name):
    srv = _server(name, 2)
    results = CTX.Queue()
    clients = [_start(W.blocked_recv_client, name, results) for _ in range(2)]
    for _ in clients:
        assert _get(results)[0] == "connected"
    time.sleep(0.1)
    t_kill = time.monotonic()
    kill(srv)
    for _ in clients:
        what, value = _get(results)
        assert what == "disconnected", value
        assert value - t_kill < 2.0
    join_all(clients, WAIT)
    wait_for(lambda: not _conn_files(name), what="connection segments to go")
    assert name in shmlink.gc() or not os.path.exists(os.path.join(shm_dir(), PREFIX + name))


def test_client_killed_mid_request_does_not_disturb_the_others(name):
    entered, served = CTX.Semaphore(0), CTX.Queue()
    srv = _server(name, 4, entered=entered, served=served)
    connected = CTX.Event()
    victim = _start(W.slow_client, name, connected)
    assert connected.wait(WAIT)
    assert entered.acquire(timeout=WAIT), "the victim's request did not reach the handler"
    others = [_start(W.client, name, i, 2000) for i in range(3)]
    kill(victim)
    join_all(others, WAIT * 2)
    join_all([srv], WAIT)
    counts = dict(_get(served) for _ in range(4))
    assert counts[victim.pid] == 1  # answered (into a ring nobody reads), then seen dead
    assert all(counts[p.pid] == 2000 for p in others)
    wait_for(lambda: not _conn_files(name), what="connection segments to go")


def test_both_sides_killed_are_collected_by_gc(name):
    connected, release = CTX.Semaphore(0), CTX.Event()
    srv = _server(name, 1)
    cl = _start(W.holding_client, name, connected, release)
    assert connected.acquire(timeout=WAIT)
    files = _conn_files(name)
    assert len(files) == 1
    kill(cl)
    kill(srv)
    removed = shmlink.gc()
    assert files[0][len(PREFIX):] in removed
    assert name in removed
    assert not _conn_files(name)


# --- many clients, threads, reconnects -----------------------------------------------


def test_eight_clients_ten_thousand_requests_each(name):
    n_clients, n = 8, 10_000
    served = CTX.Queue()
    srv = _server(name, n_clients, served=served)
    t0 = time.monotonic()
    clients = [_start(W.client, name, i, n) for i in range(n_clients)]
    join_all(clients, 120)
    join_all([srv], WAIT)
    elapsed = time.monotonic() - t0
    counts = dict(_get(served) for _ in range(n_clients))
    assert sorted(counts) == sorted(c.pid for c in clients)
    assert all(v == n for v in counts.values()), counts
    assert elapsed < 60, f"{n_clients} x {n} requests took {elapsed:.1f} s"
    wait_for(lambda: not _conn_files(name), what="connection segments to go")


def test_concurrent_requests_from_four_threads(name):
    srv = _server(name, 1)
    cl = _start(W.threaded_client, name, 4, 2000)
    join_all([cl], WAIT * 2)
    join_all([srv], WAIT)


def test_concurrent_requests_from_threads_in_this_process(name):
    srv = _server(name, 1)
    errors: list = []
    with shmlink.connect(name, timeout=WAIT) as conn:
        def run(t):
            try:
                for i in range(300):
                    req = b"%d/%d" % (t, i)
                    if i % 50 == 7:
                        conn.send(req)  # plain messages go to the server's inbox meanwhile
                    resp = conn.request(req, timeout=WAIT)
                    assert resp == W.derive(req), (req, resp)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT)
        assert not errors, errors
        assert not conn._pending
    join_all([srv], WAIT)


def test_reconnect_after_a_client_leaves(name):
    ready = CTX.Event()
    srv = _start(W.server, name, ready, 4)  # 3 from here, 1 from a child
    assert ready.wait(WAIT)
    for i in range(3):
        with shmlink.connect(name, timeout=WAIT) as conn:
            assert conn.request(b"r%d" % i, timeout=WAIT) == W.derive(b"r%d" % i)
            assert PREFIX + conn.name in _conn_files(name)
        p = _start(W.client, name, 100 + i, 50) if i == 1 else None
        if p is not None:
            join_all([p], WAIT)
    join_all([srv], WAIT)
    wait_for(lambda: not _conn_files(name), what="connection segments to go")


def test_pair_whoever_comes_first_serves(name):
    results = CTX.Queue()
    peers = [_start(W.pair_peer, name, results) for _ in range(2)]
    got = [_get(results) for _ in range(2)]
    join_all(peers, WAIT)
    roles = sorted(r for r, _, _ in got)
    assert roles == ["client", "server"]
    (_, a, a_peer), (_, b, b_peer) = got
    assert a_peer == b and b_peer == a
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name))
    wait_for(lambda: not _conn_files(name), what="the connection segment to go")


# --- Ctrl-C and the CLI ---------------------------------------------------------------


def test_ctrl_c_interrupts_accept(name):
    code = (
        "import sys, shmlink\n"
        "lst = shmlink.listen(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    lst.accept()\n"
        "except KeyboardInterrupt:\n"
        "    lst.close()\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        assert p.wait(WAIT) == 3
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(WAIT)
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name))


def test_cli_serve_and_request(name):
    srv = subprocess.Popen([sys.executable, "-m", "shmlink", "serve", name, "--count", "1"],
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(shm_dir(), PREFIX + name)), WAIT,
                 what="the CLI server to listen")
        out = subprocess.run([sys.executable, "-m", "shmlink", "request", name, "hello there"],
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello there\n"
        assert srv.wait(WAIT) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait(WAIT)
    bad = subprocess.run([sys.executable, "-m", "shmlink", "request", name, "x"],
                         capture_output=True, text=True, timeout=WAIT)
    assert bad.returncode == 1 and "nothing listens" in bad.stderr


def test_close_advances_the_outbound_event_count_without_arming_it(name):
    """close() wakes peers waiting on its outbound ring's event count by advancing it
    (connection.h's rule), never by adding 1 by hand: that would flip the armed bit
    and make every later notify pay a futex wake for a sleeper that does not exist."""
    lst, client, server = _pair_in_threads(name)
    try:
        off = client._out_ec  # the same offset in both mappings
        before = server._mem.load32(off)
        assert before % 2 == 0, "nobody waits on it yet"
        client.close()
        after = server._mem.load32(off)
        assert after != before, "close() did not advance the event count"
        assert after % 2 == 0, "close() left the event count armed with nobody asleep"
    finally:
        server.close()
        lst.close()
