"""The two measurement shapes every scenario is built from.

*Round trip* (``run_roundtrip``): a client sends payload ``seq`` and waits for the reply, a
server echoes it. The client times each round trip with ``time.perf_counter_ns`` (stamping
and checking stay outside the timed region) and reports percentiles; the server keeps a count
and a checksum of what it echoed, which the parent compares with the client's count.

*One way* (``run_oneway``): one sender, one or more receivers. After a warm-up that every
receiver must have consumed (relayed through the parent), the sender stamps its start time
and sends as fast as it can until its count or time budget runs out, then sends a stop
marker carrying the count. Each receiver checks every payload, and stamps the time the stop
marker arrives. Throughput = messages / (last receiver's end - sender's start); both stamps
come from ``time.monotonic_ns`` (CLOCK_MONOTONIC, one clock for all processes on Linux).
The receiver-only time (first to last timed message) is kept in the JSON as well.

Per-task parameters (``task`` dicts) come from the scenario: size, mode, warm-up count, count
limit, seconds limit.
"""
from __future__ import annotations

import time
from array import array
from typing import Any, Callable

from . import _harness as H
from ._harness import HDR, Group, PayloadError, Role

#: Messages per send_many/recv_many call, by message size.
def batch_for(size: int) -> int:
    """Messages per batch: about 16 KiB of small messages, 4 large ones."""
    return 256 if size <= 256 else 64 if size <= 4096 else 4


# ================================================================================ round trip

def _open_all(link: Any, specs: dict, side: str) -> dict:
    eps = {}
    try:
        for size, spec in specs.items():
            eps[size] = link.open(spec, side)
    except BaseException:
        for ep in eps.values():
            ep.close()
        raise
    return eps


def roundtrip_client(spec: Any, ctl: H.Control) -> None:
    link, specs = spec
    eps = _open_all(link, specs, "a")
    ctl.ready()
    try:
        for task in ctl.tasks():
            ctl.result(_ping(eps[task["size"]], task))
    finally:
        for ep in eps.values():
            ep.close()


def _ping(ep: Any, task: dict) -> dict:
    size, warm, count = task["size"], task["warmup"], task["count"]
    limit_ns = int(task["seconds"] * 1e9)
    send, recv = ep.send, ep.recv
    fresh = not ep.copies_on_send
    unpack, clock, stamp = HDR.unpack_from, time.perf_counter_ns, H.stamp
    buf = bytearray(H.template(size))
    samples = array("q", bytes(8 * count))
    last = size - 8
    deadline = None
    n = 0
    seq = 0
    m: Any = b""
    roundtrip = getattr(ep, "roundtrip", None)  # a request/response call, where there is one
    for seq in range(warm + count):
        stamp(buf, seq)
        out = bytes(buf) if fresh else buf
        if roundtrip is not None:
            t0 = clock()
            m = roundtrip(out)
            t1 = clock()
        else:
            t0 = clock()
            send(out)
            m = recv()
            t1 = clock()
        if len(m) != size or unpack(m, 0)[0] != seq or unpack(m, last)[0] != seq:
            raise PayloadError(H.describe_bad(m, size, seq))
        if seq >= warm:
            samples[n] = t1 - t0
            n += 1
            if deadline is None:
                H.check_full(m, size, seq)
                deadline = t1 + limit_ns
            elif t1 > deadline:
                break
    H.check_full(m, size, seq)
    send(H.stop_marker(n))
    echo = recv()
    if H.stop_count(echo) != n:
        raise PayloadError("the server did not echo the stop marker")
    v = sorted(samples[:n])
    return {"n": n, "warmup": warm, "last_seq": seq,
            "p50_ns": H.percentile(v, 50), "p90_ns": H.percentile(v, 90),
            "p99_ns": H.percentile(v, 99), "min_ns": float(v[0]), "max_ns": float(v[-1]),
            "mean_ns": sum(v) / n}


def roundtrip_server(spec: Any, ctl: H.Control) -> None:
    link, specs = spec
    eps = _open_all(link, specs, "b")
    ctl.ready()
    try:
        for task in ctl.tasks():
            ctl.result(_echo(eps[task["size"]], task["size"]))
    finally:
        for ep in eps.values():
            ep.close()


def _echo(ep: Any, size: int) -> dict:
    send, recv, unpack = ep.send, ep.recv, HDR.unpack_from
    count = 0
    csum = 0
    while True:
        m = recv()
        if len(m) != size:
            if H.stop_count(m) is None:
                raise PayloadError(H.describe_bad(m, size, count))
            send(m)
            break
        send(m)
        csum += unpack(m, 0)[0]  # bookkeeping after the reply: off the client's clock
        count += 1
    return {"echoed": count, "checksum": csum}


def run_roundtrip(link: Any, sizes: list[int], ws: H.Workspace, plan: Callable[[int], dict],
                  repeat: int, on_run: Callable[[int, int, dict], None]) -> dict[int, list[dict]]:
    """Run ``repeat`` round-trip measurements per size; return {size: [client results]}."""
    states, specs_a, specs_b = [], {}, {}
    try:
        for size in sizes:
            a, b, st = link.create(ws, size, True)
            states.append(st)
            specs_a[size], specs_b[size] = a, b
        roles = [Role("server", "benchmarks._drivers:roundtrip_server", (link, specs_b), first=True),
                 Role("client", "benchmarks._drivers:roundtrip_client", (link, specs_a))]
        out: dict[int, list[dict]] = {s: [] for s in sizes}
        with Group(roles) as g:
            for size in sizes:
                for rep in range(repeat):
                    task = dict(plan(size), size=size)
                    res = g.run(task, timeout=task["seconds"] + 60.0)
                    c, s = res["client"], res["server"]
                    total = c["warmup"] + c["n"]
                    if s["echoed"] != total or s["checksum"] != H.seq_sum(0, total):
                        raise PayloadError(f"server echoed {s['echoed']} messages with checksum "
                                           f"{s['checksum']}, client sent {total}")
                    out[size].append(c)
                    on_run(size, rep, c)
        return out
    finally:
        for st in states:
            try:
                link.destroy(st)
            except Exception as e:
                H.progress(f"  warning: cleanup of {link.name}: {e}")


# =================================================================================== one way

def _batch_maker(size: int, b: int, *, rows: bool) -> Callable[[int], Any]:
    """A function seq -> the batch of payloads seq .. seq+b-1.

    Built with numpy (one vectorised stamp per batch) so that making the
    payloads does not limit what is measured.  ``rows``: hand the batch over
    as a 2-D array (one message per row), for competitors whose batch send
    takes one; otherwise as a list of ``bytes``.
    """
    import numpy as np

    base = np.tile(np.frombuffer(H.template(size), dtype=np.uint8), (b, 1))
    words = base.view("<u8")
    offsets = np.arange(b, dtype=np.uint64)

    def make(seq: int) -> Any:
        stamped = offsets + np.uint64(seq)
        words[:, 0] = stamped
        words[:, -1] = stamped
        if rows:
            return base
        blob = base.tobytes()
        return [blob[i * size:(i + 1) * size] for i in range(b)]

    return make


class _BatchChecker:
    """Checks every byte of a batch of payloads against what was sent, vectorised."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.np = np
        self.size = size
        body = np.frombuffer(H.template(size), dtype="<u8")
        self.middle = body[1:-1]

    def check(self, ms: list, seq: int) -> bool:
        """True if ``ms`` are exactly payloads seq, seq+1, ...; False if a
        message has another length (the stop marker: check those one by one)."""
        np, size, k = self.np, self.size, len(ms)
        joined = b"".join(ms)
        if len(joined) != size * k or any(len(m) != size for m in ms):
            return False
        w = np.frombuffer(joined, dtype="<u8").reshape(k, size // 8)
        want = np.arange(seq, seq + k, dtype=np.uint64)
        if not (np.array_equal(w[:, 0], want) and np.array_equal(w[:, -1], want)
                and (w[:, 1:-1] == self.middle).all()):
            raise PayloadError(f"a batch starting at message {seq} differs from what was sent")
        return True


def oneway_sender(spec: Any, ctl: H.Control) -> None:
    link, specs, receivers = spec
    eps = _open_all(link, specs, "a")
    ctl.ready()
    try:
        for task in ctl.tasks():
            ctl.result(_send(eps[task["size"]], task, ctl, receivers))
    finally:
        for ep in eps.values():
            ep.close()


def _send(ep: Any, task: dict, ctl: H.Control, receivers: int) -> dict:
    size, mode, warm, count = task["size"], task["mode"], task["warmup"], task["count"]
    limit_ns = int(task["seconds"] * 1e9)
    stamp, clock = H.stamp, time.monotonic_ns
    if mode == "batch":
        b = batch_for(size)
        send_many = ep.send_many
        make = _batch_maker(size, b, rows=getattr(ep, "accepts_rows", False))
        seq = 0
        while seq < warm:
            send_many(make(seq))
            seq += b
        warm = seq
        ctl.wait_go(receivers)
        t_start = clock()
        deadline = t_start + limit_ns
        end = warm + count
        while seq < end:
            send_many(make(seq))
            seq += b
            if clock() > deadline:
                break
    else:
        send = ep.send
        fresh = not ep.copies_on_send
        buf = bytearray(H.template(size))
        for seq in range(warm):
            stamp(buf, seq)
            send(bytes(buf) if fresh else buf)
        ctl.wait_go(receivers)
        t_start = clock()
        deadline = t_start + limit_ns
        seq = warm
        end = warm + count
        while seq < end:
            stamp(buf, seq)
            send(bytes(buf) if fresh else buf)
            seq += 1
            if seq & 63 == 0 and clock() > deadline:
                break
    t_sent = clock()
    ep.send(H.stop_marker(seq - warm))
    return {"t_start": t_start, "t_sent": t_sent, "sent": seq - warm, "warmup": warm}


def oneway_receiver(spec: Any, ctl: H.Control) -> None:
    link, specs = spec
    eps = _open_all(link, specs, "b")
    ctl.ready()
    try:
        for task in ctl.tasks():
            ctl.result(_receive(eps[task["size"]], task, ctl))
    finally:
        for ep in eps.values():
            ep.close()


def _receive(ep: Any, task: dict, ctl: H.Control) -> dict:
    size, mode = task["size"], task["mode"]
    warm = task["warmup"]
    if mode == "batch":
        b = batch_for(size)
        warm = -(-warm // b) * b  # the sender rounds its warm-up up to whole batches
    unpack, clock = HDR.unpack_from, time.monotonic_ns
    last = size - 8
    recv = ep.recv
    # Warm-up: same checks, not timed; then tell the sender (through the parent) to start.
    seq = 0
    while seq < warm:
        m = recv()
        if len(m) != size or unpack(m, 0)[0] != seq or unpack(m, last)[0] != seq:
            raise PayloadError(H.describe_bad(m, size, seq))
        seq += 1
    ctl.signal("warm")
    first = seq
    csum = 0
    if mode == "view":
        recv_view = ep.recv_view
        stop = None
        with recv_view() as mv:
            t_first = clock()
            if len(mv) != size or unpack(mv, 0)[0] != seq or unpack(mv, last)[0] != seq:
                raise PayloadError(H.describe_bad(mv, size, seq))
            H.check_full(mv, size, seq)
        csum += seq
        seq += 1
        while True:
            with recv_view() as mv:
                if len(mv) != size:
                    stop = H.stop_count(mv)
                    if stop is None:
                        raise PayloadError(H.describe_bad(mv, size, seq))
                    break
                h = unpack(mv, 0)[0]
                if h != seq or unpack(mv, last)[0] != seq:
                    raise PayloadError(H.describe_bad(mv, size, seq))
                if seq & 1023 == 0:
                    H.check_full(mv, size, seq)  # no copy is kept: check one in 1024 in full
            csum += h
            seq += 1
        t_end = clock()
        lastmsg = None
    elif mode == "batch":
        recv_many = ep.recv_many
        b = batch_for(size)
        stop = None
        t_first = 0
        lastmsg: Any = None
        checker = _BatchChecker(size) if size % 8 == 0 else None
        while stop is None:
            ms = recv_many(b)
            if not t_first:
                t_first = clock()
                H.check_full(ms[0], size, seq)
            if checker is not None and checker.check(ms, seq):
                k = len(ms)
                csum += H.seq_sum(seq, k)
                seq += k
                lastmsg = ms[-1]
                continue
            for m in ms:
                if len(m) != size:
                    stop = H.stop_count(m)
                    if stop is None:
                        raise PayloadError(H.describe_bad(m, size, seq))
                    break
                h = unpack(m, 0)[0]
                if h != seq or unpack(m, last)[0] != seq:
                    raise PayloadError(H.describe_bad(m, size, seq))
                csum += h
                seq += 1
                lastmsg = m
        t_end = clock()
    else:
        m = recv()
        t_first = clock()
        if len(m) != size or unpack(m, 0)[0] != seq or unpack(m, last)[0] != seq:
            raise PayloadError(H.describe_bad(m, size, seq))
        H.check_full(m, size, seq)
        csum += seq
        seq += 1
        lastmsg = m
        while True:
            m = recv()
            if len(m) != size:
                stop = H.stop_count(m)
                if stop is None:
                    raise PayloadError(H.describe_bad(m, size, seq))
                break
            h = unpack(m, 0)[0]
            if h != seq or unpack(m, last)[0] != seq:
                raise PayloadError(H.describe_bad(m, size, seq))
            csum += h
            seq += 1
            lastmsg = m
        t_end = clock()
    got = seq - first
    if lastmsg is not None:
        H.check_full(lastmsg, size, seq - 1)
    if stop != got or csum != H.seq_sum(first, got):
        raise PayloadError(f"received {got} messages with checksum {csum}; "
                           f"the sender's stop marker says {stop}")
    return {"received": got, "checksum": csum, "t_first": t_first, "t_end": t_end}


def run_oneway(link: Any, sizes: list[int], ws: H.Workspace, plan: Callable[[int], dict],
               repeat: int, on_run: Callable[[int, int, dict], None],
               receivers: int = 1) -> dict[int, list[dict]]:
    """Run ``repeat`` one-way measurements per size; return {size: [summaries]}.

    ``link.create_oneway(ws, size, receivers)`` must return (sender spec, [receiver specs],
    parent state).
    """
    states, spec_tx, spec_rx = [], {}, [dict() for _ in range(receivers)]
    try:
        for size in sizes:
            tx, rxs, st = link.create_oneway(ws, size, receivers)
            states.append(st)
            spec_tx[size] = tx
            for i, rx in enumerate(rxs):
                spec_rx[i][size] = rx
        names = ["receiver"] if receivers == 1 else [f"receiver{i + 1}" for i in range(receivers)]
        roles = [Role(nm, "benchmarks._drivers:oneway_receiver", (link, spec_rx[i]), first=True)
                 for i, nm in enumerate(names)]
        roles.append(Role("sender", "benchmarks._drivers:oneway_sender", (link, spec_tx, receivers),
                          waits_go=True))
        out: dict[int, list[dict]] = {s: [] for s in sizes}
        with Group(roles) as g:
            for size in sizes:
                for rep in range(repeat):
                    task = dict(plan(size), size=size)
                    res = g.run(task, timeout=task["seconds"] + 90.0)
                    s = res["sender"]
                    rs = [res[nm] for nm in names]
                    for nm, r in zip(names, rs):
                        if r["received"] != s["sent"]:
                            raise PayloadError(f"{nm} received {r['received']} of {s['sent']}")
                    n = s["sent"]
                    t_end = max(r["t_end"] for r in rs)
                    elapsed = max(1, t_end - s["t_start"])
                    recv_only = max(1, max(r["t_end"] - r["t_first"] for r in rs))
                    summary = {"n": n, "elapsed_ns": elapsed,
                               "msgs_per_s": n / (elapsed / 1e9),
                               "mb_per_s": n * size / (elapsed / 1e9) / 1e6,
                               "receiver_msgs_per_s": max(0, n - 1) / (recv_only / 1e9),
                               "sender_ns": s["t_sent"] - s["t_start"]}
                    out[size].append(summary)
                    on_run(size, rep, summary)
        return out
    finally:
        for st in states:
            try:
                link.destroy(st)
            except Exception as e:
                H.progress(f"  warning: cleanup of {link.name}: {e}")
