"""Bridge benchmark: one-way throughput between two network namespaces (as root).

``python -m benchmarks.bridge [--quick]`` moves N messages from namespace A to
namespace B (a) through ``shmlink bridge`` (producer -> queue -> exporting
bridge -> TCP over a veth pair -> importing bridge -> queue -> consumer, every
message checked in order at the consumer) and (b) with plain Zenoh Python
publishers and subscribers (one ``put`` per message, ``CongestionControl.BLOCK``,
reliable, shared memory off), in the same run, at 64 B and 64 KiB, and prints
msgs/s and the ratio.  The producer of each side sends one message per call.
Not a ``_scenario`` yet (it needs root and network namespaces).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

PY = sys.executable
ZENOH_PEER = r'''
import json, sys, time, zenoh
role, ep, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = zenoh.Config()
for k, v in [("mode", "peer"), ("scouting/multicast/enabled", False),
             ("transport/shared_memory/enabled", False),
             ("listen/endpoints" if role == "sub" else "connect/endpoints", [ep])]:
    c.insert_json5(k, json.dumps(v))
s = zenoh.open(c)
if role == "sub":
    st = {"n": 0, "t0": 0.0, "t1": 0.0, "bad": 0}
    def cb(sample):
        b = sample.payload.to_bytes()
        if int.from_bytes(b[:8], "little") != st["n"]: st["bad"] += 1
        if st["n"] == 0: st["t0"] = time.perf_counter()
        st["n"] += 1
        st["t1"] = time.perf_counter()
    sub = s.declare_subscriber("bench/plain", cb)
    t = time.time()
    while st["n"] < n and time.time() - t < 120: time.sleep(0.01)
    print(json.dumps({"n": st["n"], "bad": st["bad"], "rate": (st["n"] - 1) / max(st["t1"] - st["t0"], 1e-9)}))
else:
    pub = s.declare_publisher("bench/plain", congestion_control=zenoh.CongestionControl.BLOCK,
                              reliability=zenoh.Reliability.RELIABLE)
    time.sleep(1.5)
    pad = b"\0" * (size - 8)
    for i in range(n): pub.put(i.to_bytes(8, "little") + pad)
    time.sleep(2)
s.close()
'''
SHM_PRODUCER = r'''
import sys, shmlink
name, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
q = shmlink.Queue.open(name)
pad = b"\0" * (size - 8)
for i in range(n): q.send(i.to_bytes(8, "little") + pad)
'''
SHM_CONSUMER = r'''
import json, sys, time, shmlink
name, n = sys.argv[1], int(sys.argv[2])
q = shmlink.Queue.open(name)
got = bad = 0
t0 = None
while got < n:
    for m in q.recv_many(4096, timeout=60):
        if t0 is None: t0 = time.perf_counter()
        if int.from_bytes(m[:8], "little") != got: bad += 1
        got += 1
print(json.dumps({"n": got, "bad": bad, "rate": (got - 1) / (time.perf_counter() - t0)}))
'''


def plain(net, n: int, size: int) -> dict:
    ep = f"tcp/{net.addr_b}:7460"
    sub = net.popen("b", [PY, "-c", ZENOH_PEER, "sub", ep, str(n), str(size)],
                    stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    pub = net.popen("a", [PY, "-c", ZENOH_PEER, "pub", ep, str(n), str(size)])
    out, _ = sub.communicate(timeout=180)
    pub.wait(30)
    return json.loads(out)


def bridged(net, n: int, size: int) -> dict:
    import shmlink
    tag = uuid.uuid4().hex[:6]
    src, dst = f"bb-{tag}-a", f"bb-{tag}-b"
    cap = max(1 << 20, 16 * (size + 8))
    shmlink.Queue.create(src, cap).close()
    shmlink.Queue.create(dst, cap).close()
    ep = f"tcp/{net.addr_b}:7461"
    procs = []
    try:
        procs.append(net.popen("b", [PY, "-m", "shmlink", "bridge", "-q", "--name", f"bb-{tag}-i",
                                     "--listen", ep, "--import", f"queue:{dst}=bench/{tag}"]))
        procs.append(net.popen("a", [PY, "-m", "shmlink", "bridge", "-q", "--name", f"bb-{tag}-e",
                                     "--connect", ep, "--export", f"queue:{src}=bench/{tag}"]))
        time.sleep(3.0)
        cons = net.popen("b", [PY, "-c", SHM_CONSUMER, dst, str(n)], stdout=subprocess.PIPE,
                         text=True)
        prod = net.popen("a", [PY, "-c", SHM_PRODUCER, src, str(n), str(size)])
        out, _ = cons.communicate(timeout=180)
        prod.wait(30)
        return json.loads(out)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        for name in (src, dst):
            shmlink.remove(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bridge")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    from shmlink.bridge.testing import NetnsPair, netns_unavailable
    why = netns_unavailable()
    if why:
        print(f"bridge benchmark skipped: {why}")
        return 0
    cases = [(64, 20_000 if a.quick else 200_000), (65536, 500 if a.quick else 5_000)]
    repeat = 1 if a.quick else a.repeat
    with NetnsPair() as net:
        for size, n in cases:
            rates = {"zenoh": [], "bridge": []}
            for _ in range(repeat):
                for what, fn in (("zenoh", plain), ("bridge", bridged)):
                    r = fn(net, n, size)
                    assert r["n"] == n and r["bad"] == 0, (what, r)
                    rates[what].append(r["rate"])
            med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
            print(f"{size:>6} B  plain zenoh {med['zenoh']:>10.0f} msg/s   shmlink bridge "
                  f"{med['bridge']:>10.0f} msg/s   ratio {med['bridge'] / med['zenoh']:.2f}x"
                  f"   (n={n}, median of {repeat})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
