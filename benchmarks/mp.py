"""Scenario "mp": shmlink.multiprocessing against the standard multiprocessing, in one run.

    python -m benchmarks --only mp        (in the suite: medians of --repeat rounds)
    python -m benchmarks.mp [--n N]       (one quick table)

Prints one line per scenario and competitor and the ratio: Queue one-way
throughput (64 B and 4 KiB objects, a producer process and this consumer),
Pipe round trips, and ProcessPoolExecutor.map over a trivial function
(chunksize 1 and 64, 2 workers) with the standard "spawn" context against
shmlink's (the standard executor, only its result queue moves) and against
``shmlink.multiprocessing.ProcessPoolExecutor`` (its own task protocol).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import shmlink.multiprocessing as smp


def _item(size: int, pickled: bool):  # type: ignore[no-untyped-def]
    """The object sent: bytes of ``size``, or a tuple that pickles to about ``size`` bytes
    (shmlink's Queue sends exact bytes and str without pickling, anything else pickled)."""
    if not pickled:
        return b"x" * size
    return (12345, 3.25, "reading", b"x" * max(0, size - 45))


def _produce(q, n, size, pickled=False):  # type: ignore[no-untyped-def]
    payload = _item(size, pickled)
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


def queue_rate(ctx, n: int, size: int, pickled: bool = False) -> float:  # type: ignore[no-untyped-def]
    q = ctx.Queue()
    p = ctx.Process(target=_produce, args=(q, n, size, pickled))
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


def pool_rate(ctx, n: int, chunksize: int, cls=ProcessPoolExecutor) -> float:  # type: ignore[no-untyped-def]
    with cls(2, mp_context=ctx) as ex:
        list(ex.map(_f, range(100)))  # workers up
        t0 = time.perf_counter()
        list(ex.map(_f, range(n), chunksize=chunksize))
        return n / (time.perf_counter() - t0)


def pipe_rate(ctx, n: int, size: int) -> float:  # type: ignore[no-untyped-def]
    """Round trips per second (the suite's metric is a rate, higher is better)."""
    return 1e6 / pipe_rtt(ctx, n, size)


# -- the suite's scenario ---------------------------------------------------------------

from typing import Any  # noqa: E402

from . import _harness as H  # noqa: E402
from ._scenario import Case, Column, Scenario, median_of  # noqa: E402

#: mode -> (what is measured, its unit, sizes, the function)
MODES = {
    "Queue put/get": ("one-way throughput, a producer process to this one", "msg/s",
                      [64, 4096], queue_rate),
    "Queue put/get, pickled objects": ("the same with a tuple (int, float, str, bytes)",
                                       "msg/s", [64, 4096],
                                       lambda ctx, n, s: queue_rate(ctx, n, s, True)),
    "Pipe round trip": ("send_bytes / recv_bytes echo through a child", "round trips/s",
                        [64, 4096], pipe_rate),
    "ProcessPoolExecutor.map chunksize=1": ("2 workers, a trivial function", "tasks/s", [0],
                                            lambda ctx, n, _s: pool_rate(ctx, n, 1)),
    "ProcessPoolExecutor.map chunksize=64": ("2 workers, a trivial function", "tasks/s", [0],
                                             lambda ctx, n, _s: pool_rate(ctx, n, 64)),
}
STD = "multiprocessing (spawn)"
OURS = "shmlink.multiprocessing (spawn)"
SUB = "shmlink.multiprocessing.ProcessPoolExecutor (spawn)"  # its own task protocol


class MpScenario(Scenario):
    name = "mp"
    title = "multiprocessing drop-in: queues, pipes and ProcessPoolExecutor"
    order = 60
    metric = "rate"
    higher_is_better = True
    ratio_note = ("shmlink.multiprocessing rate / multiprocessing rate, same start method "
                  "(spawn), same run: above 1 means shmlink is faster")

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for comp, key in ((OURS, "shmlink"), (STD, "multiprocessing")):
            for mode, (_what, _unit, sizes, _fn) in MODES.items():
                out.append(Case(self.name, comp, key, mode, list(sizes)))
        for mode in MODES:
            if mode.startswith("ProcessPoolExecutor"):
                out.append(Case(self.name, SUB, "shmlink", mode, [0], params={"own_executor": True}))
        return out

    def extra_ratios(self) -> list[tuple[str, str]]:
        return [("executor/peer", SUB)]

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        n = {True: 2_000, False: 20_000}[bool(opts.quick)]
        if mode.startswith("Pipe"):
            n //= 4
        elif mode.endswith("chunksize=1"):
            n //= 4
        elif mode.endswith("chunksize=64"):
            n *= 4
        return {"count": n}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        import multiprocessing as std_mp
        ctx = smp.get_context("spawn") if case.key == "shmlink" else std_mp.get_context("spawn")
        fn = MODES[case.mode][3]
        if case.params.get("own_executor"):
            cs = int(case.mode.rsplit("=", 1)[1])
            fn = lambda c, n, _s: pool_rate(c, n, cs, smp.ProcessPoolExecutor)  # noqa: E731
        out: dict[int, list[dict]] = {}
        for size in case.sizes:
            n = self.plan(opts, size, case.mode)["count"]
            res = {"rate": fn(ctx, n, size), "n": n, "unit": MODES[case.mode][1]}
            on_run(size, 0, res)
            out[size] = [res]
        return out

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, ["rate"]), n=sum(r["n"] for r in runs),
                    unit=runs[0]["unit"])

    def show(self, r: dict) -> str:
        return f"{H.fmt_rate(r['rate'])} {r['unit']}  ({r['n']})"

    def group(self, rec: dict) -> str:
        size = f", {H.fmt_size(rec['size'])} objects" if rec["size"] else ""
        return f"{rec['mode']}{size}"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return None if rec["competitor"] == SUB else (OURS, rec["mode"])

    def columns(self) -> list[Column]:
        return [Column("rate", lambda r: f"{H.fmt_rate(r['metrics']['rate'])} "
                                         f"{r['metrics'].get('unit', '')}", width=22)]


SCENARIO = MpScenario()


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 20000
    std = mp.get_context("spawn")
    ours = smp.get_context("spawn")
    rows = []
    for size in (64, 4096):
        a, b = queue_rate(std, n, size), queue_rate(ours, n, size)
        rows.append((f"Queue throughput {size} B (msg/s)", a, b, b / a))
    for size in (64, 4096):
        a, b = queue_rate(std, n, size, True), queue_rate(ours, n, size, True)
        rows.append((f"Queue throughput {size} B tuple (msg/s)", a, b, b / a))
    for size in (64, 4096):
        a, b = pipe_rtt(std, n // 4, size), pipe_rtt(ours, n // 4, size)
        rows.append((f"Pipe round trip {size} B (us)", a, b, a / b))
    for cs in (1, 64):
        m = n // 4 if cs == 1 else n * 4
        a, b = pool_rate(std, m, cs), pool_rate(ours, m, cs)
        c = pool_rate(ours, m, cs, smp.ProcessPoolExecutor)
        rows.append((f"ProcessPoolExecutor.map chunksize={cs} (tasks/s)", a, b, b / a))
        rows.append(("  ... shmlink.multiprocessing.ProcessPoolExecutor", a, c, c / a))
    print(f"{'scenario':48} {'multiprocessing':>16} {'shmlink':>12} {'speed-up':>9}")
    for name, a, b, r in rows:
        print(f"{name:48} {a:16,.1f} {b:12,.1f} {r:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
