"""What the two bridge scenarios share: two network namespaces, the roles run inside them, and
the runs of the shmlink bridge and of plain Zenoh between them.

Namespace ``a`` and ``b`` (two "hosts") are joined by a veth pair
(:class:`shmlink.bridge.testing.NetnsPair`); one pair serves every case of a suite run, so
the bridge and plain Zenoh cross the same link. Each role is a process started inside a
namespace with ``ip netns exec`` (``python -m benchmarks._bridge ROLE JSON``); it prints
one JSON line when it is done, and the parent kills it when it overruns its deadline.

- ``shmlink bridge``: producer -> ``Queue`` -> exporting ``shmlink bridge`` -> TCP over the
  veth pair -> importing ``shmlink bridge`` -> ``Queue`` -> consumer (round trip: a second
  route carries the echo back). Lossless routes: acknowledgements, window, de-duplication.
- ``zenoh``: a Zenoh ``Publisher`` in ``a`` and a ``Subscriber`` in ``b`` (round trip: a
  second pair back), the same Zenoh settings as the bridge (peer, TCP endpoints, shared
  memory off, no low-latency transport), ``Reliability.RELIABLE`` and
  ``CongestionControl.BLOCK``.

Both producers send one message per call (``Queue.send``, ``Publisher.put``); every
message is checked at the receiver (sequence number in its head and tail, every byte of the
first and last one), as in the rest of the suite.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from . import _harness as H

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: longest a role may take beyond its own measurement (starting Python and Zenoh included)
ROLE_SLACK_S = 120.0
PORT_BRIDGE = 7460
PORT_ZENOH = 7461


def unavailable() -> str | None:
    """Why the bridge scenarios cannot run here, or None."""
    try:
        import zenoh  # noqa: F401
    except ImportError:
        return "Eclipse Zenoh is not installed (pip install -e '.[zenoh]')"
    from shmlink.bridge.testing import netns_unavailable
    why = netns_unavailable()
    return f"two network namespaces are needed: {why}" if why else None


_net: list[Any] = []


def net() -> Any:
    """The suite run's pair of namespaces (made on first use, removed at exit)."""
    if not _net:
        from shmlink.bridge.testing import NetnsPair
        pair = NetnsPair(subnet="10.214").__enter__()
        atexit.register(pair.close)
        _net.append(pair)
    return _net[0]


# ---------------------------------------------------------------------------------- the parent

class Roles:
    """Role processes of one run; all killed and reaped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, side: str, role: str, **args: Any) -> subprocess.Popen:
        p = net().popen(side, [PY, "-m", "benchmarks._bridge", role, json.dumps(args)],
                        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT))
        self.procs.append((role, p))
        return p

    def bridge(self, side: str, name: str, *args: str) -> subprocess.Popen:
        p = net().popen(side, [PY, "-m", "shmlink", "bridge", "-q", "--name", name,
                               "--connect-timeout", "60", *args],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append((f"bridge {name}", p))
        return p

    def result(self, p: subprocess.Popen, deadline: float) -> dict:
        role = next(r for r, q in self.procs if q is p)
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=10)
            raise H.BenchError(f"{role} did not finish in time") from None
        if p.returncode != 0:
            raise H.BenchError(f"{role} exited {p.returncode}: {err.strip()[-600:]}")
        return json.loads(out.strip().splitlines()[-1])

    def __enter__(self) -> "Roles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every role still running (SIGTERM, then SIGKILL) and reap it; idempotent."""
        procs, self.procs = self.procs, []
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=10)


def _wait_bridges(names: list[str], procs: list[subprocess.Popen], timeout: float) -> None:
    from shmlink.bridge import read_status
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        H.check_stop()
        for p in procs:
            if p.poll() is not None:
                raise H.BenchError(f"a bridge exited {p.returncode}: "
                                   f"{p.stderr.read().strip()[-600:] if p.stderr else ''}")
        ok = 0
        for n in names:
            try:
                routes = read_status("bridge." + n).get("routes", [])
            except Exception:
                routes = []
            ok += bool(routes) and all(r["connected"] for r in routes)
        if ok == len(names):
            return
        time.sleep(0.1)
    raise H.BenchError(f"bridges {names} not connected within {timeout} s")


def _remove(names: list[str]) -> None:
    import shmlink
    for n in names:
        try:
            shmlink.remove(n)
        except FileNotFoundError:
            pass


def run_oneway(competitor: str, size: int, plan: dict, ws: H.Workspace) -> dict:
    """One throughput run: ``plan["count"]`` timed messages of ``size`` bytes from a to b."""
    n, warm = plan["count"], plan["warmup"]
    limit = ROLE_SLACK_S + plan["seconds_max"]
    job = {"size": size, "count": n, "warmup": warm}
    with Roles() as roles:
        if competitor == "zenoh":
            ep = f"tcp/{net().addr_b}:{PORT_ZENOH}"
            key = f"bench/{ws.tag}/{size}"
            cons = roles.start("b", "zsub", listen=ep, key=key, **job)
            _ready(cons, limit)
            prod = roles.start("a", "zpub", connect=ep, key=key, **job)
            deadline = time.monotonic() + limit
            got, sent = roles.result(cons, deadline), roles.result(prod, deadline)
        else:
            src, dst = ws.name("bsrc"), ws.name("bdst")
            names = [ws.name("bexp"), ws.name("bimp")]
            cap = (16 << 20) if size > 4096 else (4 << 20)
            import shmlink
            shmlink.Queue.create(src, cap).close()
            shmlink.Queue.create(dst, cap).close()
            try:
                ep = f"tcp/{net().addr_b}:{PORT_BRIDGE}"
                key = f"bench/{ws.tag}/{size}"
                bi = roles.bridge("b", names[1], "--listen", ep, "--import", f"queue:{dst}={key}")
                be = roles.bridge("a", names[0], "--connect", ep, "--export", f"queue:{src}={key}")
                _wait_bridges(names, [bi, be], ROLE_SLACK_S)
                cons = roles.start("b", "qcons", queue=dst, **job)
                _ready(cons, limit)
                prod = roles.start("a", "qprod", queue=src, **job)
                deadline = time.monotonic() + limit
                got, sent = roles.result(cons, deadline), roles.result(prod, deadline)
            finally:
                roles.close()
                _remove([src, dst] + ["bridge." + x for x in names])
    secs = (got["t_end_ns"] - sent["t0_ns"]) / 1e9
    return {"n": n, "msgs_per_s": n / secs, "mb_per_s": n * size / secs / 1e6,
            "receiver_msgs_per_s": got["recv_rate"]}


def run_roundtrip(competitor: str, size: int, plan: dict, ws: H.Workspace) -> dict:
    """One latency run: ``plan["count"]`` timed round trips a -> b -> a."""
    n, warm = plan["count"], plan["warmup"]
    limit = ROLE_SLACK_S + plan["seconds_max"]
    job = {"size": size, "count": n, "warmup": warm}
    with Roles() as roles:
        if competitor == "zenoh":
            ep = f"tcp/{net().addr_b}:{PORT_ZENOH}"
            key = f"bench/{ws.tag}/rt{size}"
            srv = roles.start("b", "zecho", listen=ep, key=key, **job)
            _ready(srv, limit)
            cli = roles.start("a", "zping", connect=ep, key=key, **job)
            deadline = time.monotonic() + limit
            res = roles.result(cli, deadline)
            roles.result(srv, deadline)
        else:
            import shmlink
            qs = {k: ws.name(k) for k in ("pinga", "pingb", "ponga", "pongb")}
            names = [ws.name("bexp"), ws.name("bimp")]
            for q in qs.values():
                shmlink.Queue.create(q, 1 << 20).close()
            try:
                ep = f"tcp/{net().addr_b}:{PORT_BRIDGE}"
                key = f"bench/{ws.tag}/rt{size}"
                ba = roles.bridge("a", names[0], "--connect", ep,
                                  "--export", f"queue:{qs['pinga']}={key}/ping",
                                  "--import", f"queue:{qs['ponga']}={key}/pong")
                bb = roles.bridge("b", names[1], "--listen", ep,
                                  "--import", f"queue:{qs['pingb']}={key}/ping",
                                  "--export", f"queue:{qs['pongb']}={key}/pong")
                _wait_bridges(names, [ba, bb], ROLE_SLACK_S)
                srv = roles.start("b", "qecho", ping=qs["pingb"], pong=qs["pongb"], **job)
                _ready(srv, limit)
                cli = roles.start("a", "qping", ping=qs["pinga"], pong=qs["ponga"], **job)
                deadline = time.monotonic() + limit
                res = roles.result(cli, deadline)
                roles.result(srv, deadline)
            finally:
                roles.close()
                _remove(list(qs.values()) + ["bridge." + x for x in names])
    return res


def _ready(p: subprocess.Popen, timeout: float) -> None:
    """Wait for a role's "ready" line on stdout."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or box[0].strip() != "ready":
        p.kill()
        err = p.stderr.read().strip()[-600:] if p.stderr else ""
        raise H.BenchError(f"a role did not get ready: {box[:1]} {err}")


# ------------------------------------------------------------------------------------- the roles

def _zenoh_session(listen: str | None = None, connect: str | None = None) -> Any:
    """A Zenoh session with the bridge's own settings (shmlink.bridge.zenoh_config)."""
    import zenoh
    from shmlink.bridge import BridgeConfig, zenoh_config
    cfg = BridgeConfig(listen=[listen] if listen else [], connect=[connect] if connect else [],
                       connect_timeout=60)
    return zenoh.open(zenoh_config(cfg))


def _publisher(s: Any, key: str) -> Any:
    import zenoh
    return s.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK,
                               reliability=zenoh.Reliability.RELIABLE, express=False)


def _wait_matching(pub: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pub.matching_status.matching:
        if time.monotonic() > deadline:
            raise SystemExit("no subscriber matched within 60 s")
        time.sleep(0.01)


class _Checker:
    """Checks the messages of a run in order: head and tail of each, every byte of the first
    and the last timed one."""

    def __init__(self, size: int, total: int) -> None:
        self.size, self.total, self.next = size, total, 0
        self.t_first = self.t_end = 0

    def check(self, m: Any) -> None:
        seq = self.next
        if len(m) != self.size or H.HDR.unpack_from(m, 0)[0] != seq \
                or H.HDR.unpack_from(m, self.size - 8)[0] != seq:
            raise H.PayloadError(H.describe_bad(m, self.size, seq))
        if seq == 0 or seq == self.total - 1:
            H.check_full(m, self.size, seq)
            if seq == 0:
                self.t_first = time.monotonic_ns()
        self.next = seq + 1
        if self.next == self.total:
            self.t_end = time.monotonic_ns()

    def result(self) -> dict:
        secs = max(self.t_end - self.t_first, 1) / 1e9
        return {"t_end_ns": self.t_end, "recv_rate": (self.total - 1) / secs}


def _send_all(send: Any, size: int, count: int, warmup: int) -> dict:
    buf = bytearray(H.template(size))
    t0 = 0
    for i in range(warmup + count):
        if i == warmup:
            t0 = time.monotonic_ns()
        H.stamp(buf, i)
        send(buf)
    return {"t0_ns": t0}


def role_zsub(a: dict) -> dict:
    s = _zenoh_session(listen=a["listen"])
    total = a["warmup"] + a["count"]
    chk = _Checker(a["size"], total)
    done = threading.Event()
    err: list[BaseException] = []

    def cb(sample: Any) -> None:
        if done.is_set():
            return
        try:
            chk.check(sample.payload.to_bytes())
        except BaseException as e:
            err.append(e)
            done.set()
        if chk.next == total:
            done.set()
    sub = s.declare_subscriber(a["key"], cb)
    print("ready", flush=True)
    done.wait()  # bounded by the parent, which kills a role that overruns
    sub.undeclare()
    s.close()
    if err:
        raise err[0]
    return chk.result()


def role_zpub(a: dict) -> dict:
    s = _zenoh_session(connect=a["connect"])
    pub = _publisher(s, a["key"])
    _wait_matching(pub)
    r = _send_all(pub.put, a["size"], a["count"], a["warmup"])
    time.sleep(0.5)  # let the session flush before it closes
    s.close()
    return r


def role_qprod(a: dict) -> dict:
    import shmlink
    with shmlink.Queue.open(a["queue"]) as q:
        return _send_all(lambda b: q.send(b, timeout=H.OP_TIMEOUT), a["size"], a["count"],
                         a["warmup"])


def role_qcons(a: dict) -> dict:
    import shmlink
    total = a["warmup"] + a["count"]
    chk = _Checker(a["size"], total)
    with shmlink.Queue.open(a["queue"]) as q:
        print("ready", flush=True)
        first = True
        while chk.next < total:
            for m in q.recv_many(4096, timeout=ROLE_SLACK_S if first else H.OP_TIMEOUT):
                chk.check(m)
            first = False
    return chk.result()


def _pings(send: Any, recv: Any, size: int, count: int, warmup: int) -> dict:
    buf = bytearray(H.template(size))
    times = []
    pc = time.perf_counter_ns
    for i in range(warmup + count):
        H.stamp(buf, i)
        t = pc()
        send(buf)
        m = recv()
        dt = pc() - t
        if len(m) != size or H.HDR.unpack_from(m, 0)[0] != i:
            raise H.PayloadError(H.describe_bad(m, size, i))
        if i >= warmup:
            times.append(dt)
    times.sort()
    return {"n": count, "p50_ns": H.percentile(times, 50), "p90_ns": H.percentile(times, 90),
            "p99_ns": H.percentile(times, 99), "mean_ns": sum(times) / len(times)}


def role_zecho(a: dict) -> dict:
    s = _zenoh_session(listen=a["listen"])
    print("ready", flush=True)
    pong = _publisher(s, a["key"] + "/pong")
    _wait_matching(pong)  # the client's pong subscriber is there before its ping publisher
    sub = s.declare_subscriber(a["key"] + "/ping")
    for _ in range(a["warmup"] + a["count"]):
        pong.put(sub.recv().payload.to_bytes())  # bounded by the parent's deadline
    time.sleep(0.5)
    s.close()
    return {}


def role_zping(a: dict) -> dict:
    s = _zenoh_session(connect=a["connect"])
    sub = s.declare_subscriber(a["key"] + "/pong")
    ping = _publisher(s, a["key"] + "/ping")
    _wait_matching(ping)
    r = _pings(ping.put, lambda: sub.recv().payload.to_bytes(), a["size"], a["count"],
               a["warmup"])
    s.close()
    return r


def role_qecho(a: dict) -> dict:
    import shmlink
    with shmlink.Queue.open(a["ping"]) as ping, shmlink.Queue.open(a["pong"]) as pong:
        print("ready", flush=True)
        for i in range(a["warmup"] + a["count"]):
            pong.send(ping.recv(timeout=ROLE_SLACK_S if i == 0 else H.OP_TIMEOUT),
                      timeout=H.OP_TIMEOUT)
    return {}


def role_qping(a: dict) -> dict:
    import shmlink
    with shmlink.Queue.open(a["ping"]) as ping, shmlink.Queue.open(a["pong"]) as pong:
        return _pings(lambda b: ping.send(b, timeout=H.OP_TIMEOUT),
                      lambda: pong.recv(timeout=H.OP_TIMEOUT), a["size"], a["count"],
                      a["warmup"])


ROLES = {"zsub": role_zsub, "zpub": role_zpub, "qprod": role_qprod, "qcons": role_qcons,
         "zecho": role_zecho, "zping": role_zping, "qecho": role_qecho, "qping": role_qping}

if __name__ == "__main__":
    out = ROLES[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(out), flush=True)
