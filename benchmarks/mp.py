"""shmlink.multiprocessing against the standard multiprocessing, in one run.

    python -m benchmarks.mp [--n N]

Prints one line per scenario and competitor and the ratio: Queue one-way
throughput (64 B and 4 KiB objects, a producer process and this consumer),
Pipe round trips, and ProcessPoolExecutor.map over a trivial function
(chunksize 1 and 64, 2 workers) with the standard "spawn" context against
shmlink's.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import shmlink.multiprocessing as smp


def _produce(q, n, size):  # type: ignore[no-untyped-def]
    payload = b"x" * size
    for _ in range(n):
        q.put(payload)
    q.put(None)


def _echo(conn):  # type: ignore[no-untyped-def]
    while True:
        m = conn.recv_bytes()
        if not m:
            return
        conn.send_bytes(m)


def _f(x):  # type: ignore[no-untyped-def]
    return x


def queue_rate(ctx, n: int, size: int) -> float:  # type: ignore[no-untyped-def]
    q = ctx.Queue()
    p = ctx.Process(target=_produce, args=(q, n, size))
    p.start()
    q.get()  # the producer is up: time from its first message on
    t0 = time.perf_counter()
    got = 0
    while q.get() is not None:
        got += 1
    dt = time.perf_counter() - t0
    p.join(30)
    q.close()
    return got / dt


def pipe_rtt(ctx, n: int, size: int) -> float:  # type: ignore[no-untyped-def]
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    msg = b"x" * size
    for _ in range(100):
        a.send_bytes(msg)
        a.recv_bytes()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes()
    dt = time.perf_counter() - t0
    a.send_bytes(b"")
    p.join(30)
    a.close()
    b.close()
    return dt / n * 1e6


def pool_rate(ctx, n: int, chunksize: int) -> float:  # type: ignore[no-untyped-def]
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(_f, range(100)))  # workers up
        t0 = time.perf_counter()
        list(ex.map(_f, range(n), chunksize=chunksize))
        return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 20000
    std = mp.get_context("spawn")
    ours = smp.get_context("spawn")
    rows = []
    for size in (64, 4096):
        a, b = queue_rate(std, n, size), queue_rate(ours, n, size)
        rows.append((f"Queue throughput {size} B (msg/s)", a, b, b / a))
    for size in (64, 4096):
        a, b = pipe_rtt(std, n // 4, size), pipe_rtt(ours, n // 4, size)
        rows.append((f"Pipe round trip {size} B (us)", a, b, a / b))
    for cs in (1, 64):
        m = n // 4 if cs == 1 else n * 4
        a, b = pool_rate(std, m, cs), pool_rate(ours, m, cs)
        rows.append((f"ProcessPoolExecutor.map chunksize={cs} (tasks/s)", a, b, b / a))
    print(f"{'scenario':48} {'multiprocessing':>16} {'shmlink':>12} {'speed-up':>9}")
    for name, a, b, r in rows:
        print(f"{name:48} {a:16,.1f} {b:12,.1f} {r:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
