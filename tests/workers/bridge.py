"""Producers and consumers for the bridge tests, run in a network namespace:
``python -m workers.bridge COMMAND ...``.  Messages are 8-byte little-endian
sequence numbers (padded to ``size`` bytes); consumers write what they got to
a file of u64s (``array('Q')``) for the test to check."""

from __future__ import annotations

import json
import os
import sys
import time
from array import array

import shmlink

#: longest a consumer waits for its first message
FIRST_S = 90.0


def report(path: str, **counts: object) -> None:
    """Write ``counts`` to ``path`` as JSON, atomically (a reader never sees half of it)."""
    with open(path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(path + ".tmp", path)


def msg(i: int, size: int) -> bytes:
    return i.to_bytes(8, "little") + b"\0" * (size - 8)


def produce_queue(name: str, n: int, size: int, batch: int, pause: float, progress: str) -> None:
    """Send 0..n-1; write how many were sent to ``progress`` (JSON) as it goes."""
    q = shmlink.Queue.open(name)
    t0 = time.monotonic()
    sent = 0
    last = 0.0
    while sent < n:
        k = min(batch, n - sent)
        q.send_many([msg(i, size) for i in range(sent, sent + k)], timeout=60)
        sent += k
        now = time.monotonic()
        if progress and now - last > 0.05:
            last = now
            report(progress, sent=sent, t=now - t0)
        if pause:
            time.sleep(pause)
    if progress:
        report(progress, sent=sent, t=time.monotonic() - t0, done=True)
    q.close()


def publish_topic(name: str, n: int, size: int, batch: int) -> None:
    t = shmlink.Topic.open(name)
    sent = 0
    while sent < n:
        k = min(batch, n - sent)
        t.publish_many([msg(i, size) for i in range(sent, sent + k)], timeout=60)
        sent += k
    t.close()


def consume(kind: str, name: str, n: int, idle: float, out: str, pace: float,
            ready: str) -> None:
    """Receive until message number ``n - 1`` (the last one sent) or ``idle`` seconds
    without a message (``FIRST_S`` for the first: the producer may still be starting on a
    loaded machine); record the numbers."""
    if kind == "queue":
        obj = shmlink.Queue.open(name)
        src = obj
    else:
        obj = shmlink.Topic.open(name)
        src = obj.subscribe("oldest")
    if ready:
        open(ready, "w").close()
    got = array("Q")
    while not got or got[-1] != n - 1:
        try:
            batch = src.recv_many(1 if pace else 4096, timeout=idle if got else FIRST_S)
        except shmlink.Timeout:
            break
        got.extend(int.from_bytes(m[:8], "little") for m in batch)
        if pace:
            time.sleep(pace)
            if len(got) % 50 == 0:
                report(out + ".progress", received=len(got))
    with open(out, "wb") as f:
        got.tofile(f)
    if src is not obj:
        src.close()
    obj.close()


def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def importer_frames(case: str, queue: str, port: int) -> None:
    """An importing bridge on loopback fed hand-made frames by a raw Zenoh session that plays
    the exporter; print the numbers the local queue got, as JSON.

    ``cut``: frames 0..9, the exporter's liveliness token goes and comes back (a link cut whose
    acknowledgements were lost), the window 0..9 is sent again, then 10..14.
    ``skip``: a frame 3..4 after a gap, then one at ``base`` 5 (messages below 5 were
    acknowledged by an earlier run of this importer), 5..9.
    """
    import zenoh
    from shmlink.bridge import Bridge, BridgeConfig, load_config, parse_route, zenoh_config
    from shmlink.bridge import _frames as F

    key = f"t/frames/{os.getpid()}"
    ep = f"tcp/127.0.0.1:{port}"
    cfg = load_config(routes=[parse_route("import", f"queue:{queue}={key}")], listen=[ep],
                      name=f"tbf-{os.getpid()}")
    sid = 0x5EED
    with Bridge(cfg) as bridge, shmlink.Queue.open(queue) as q:
        route = bridge.routes[0]
        raw = zenoh.open(zenoh_config(BridgeConfig(connect=[ep], connect_timeout=30)))
        try:
            pub = raw.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK,
                                        reliability=zenoh.Reliability.RELIABLE)
            _until(lambda: pub.matching_status.matching, 30, "the importer's subscriber")

            def token():
                t = raw.liveliness().declare_token(f"{key}/_shmlink_exp/{sid:016x}")
                _until(lambda: route.peers, 30, "the importer to see the exporter")
                return t

            def put(base: int, first: int, count: int) -> None:
                pub.put(F.encode_batch(F.DATA, sid, base, first,
                                       [msg(i, 16) for i in range(first, first + count)]))

            tok = token()
            if case == "cut":
                put(0, 0, 10)
                _until(lambda: len(q) == 10, 30, "the first 10 messages")
                tok.undeclare()
                _until(lambda: not route.peers, 30, "the importer to see the cut")
                tok = token()
                put(0, 0, 10)  # the window again: the importer's acknowledgements were lost
                put(0, 10, 5)
                want = 15
            else:
                put(0, 3, 2)
                put(5, 5, 5)
                want = 5
            got = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                m = q.try_recv()
                if m is None:
                    if len(got) >= want:  # and nothing more comes for a while
                        time.sleep(0.5)
                        if len(q) == 0:
                            break
                    time.sleep(0.01)
                    continue
                got.append(int.from_bytes(m[:8], "little"))
            tok.undeclare()
        finally:
            raw.close()
    print(json.dumps(got))


def echo_server(name: str, ready: str, stop: str) -> None:
    """Listen on ``name``; answer each request with ``b"echo:" + request`` (a request
    ``b"boom"`` raises ValueError, which the client sees as RemoteError) until ``stop``
    exists (at most 120 s)."""
    import threading
    lst = shmlink.listen(name)
    open(ready, "w").close()
    conns = []

    def handler(data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("boom from the far server")
        return b"echo:" + data

    deadline = time.monotonic() + 120
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            c = lst.accept(timeout=0.1)
        except shmlink.Timeout:
            continue
        conns.append(c)
        threading.Thread(target=c.serve, args=(handler,), daemon=True).start()
    for c in conns:
        c.stop()
        c.close()
    lst.close()


def request_client(name: str, n: int) -> None:
    """Connect to ``name``, send ``n`` requests and a failing one; print what came back."""
    out: dict = {"ok": 0, "bad": []}
    with shmlink.connect(name, timeout=60) as c:
        for i in range(n):
            r = c.request(b"%d" % i, timeout=60)
            if r == b"echo:%d" % i:
                out["ok"] += 1
            else:
                out["bad"].append(repr(r[:40]))
        try:
            c.request(b"boom", timeout=60)
            out["error"] = None
        except shmlink.RemoteError as e:
            out["error"] = str(e)
    print(json.dumps(out))


def main(argv: list[str]) -> None:
    cmd, *a = argv
    if cmd == "produce":
        produce_queue(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5])
    elif cmd == "publish":
        publish_topic(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "consume":
        consume(a[0], a[1], int(a[2]), float(a[3]), a[4], float(a[5]), a[6])
    elif cmd == "echo-server":
        echo_server(a[0], a[1], a[2])
    elif cmd == "request-client":
        request_client(a[0], int(a[1]))
    elif cmd == "importer-frames":
        importer_frames(a[0], a[1], int(a[2]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
