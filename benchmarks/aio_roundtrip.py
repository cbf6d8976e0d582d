"""Scenario 5a: asyncio round trip between two processes, and what an idle awaiter costs.

Each side runs an event loop (see ``_aio.py``): ``shmlink.asyncio`` Connection against
``zmq.asyncio`` PAIR over ``ipc://`` and asyncio streams over a UNIX socket, 64 B messages,
echoed. Reported: round-trip p50 / p99 measured by the client, and the CPU an awaiting
process uses while nothing arrives (``idle``, % of one CPU over 1 s).
"""
from __future__ import annotations

from typing import Any

from . import _aio
from . import _harness as H
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64]


class AioRoundTrip(Scenario):
    name = "aio-roundtrip"
    title = "asyncio round trip (each process runs an event loop)"
    order = 50
    metric = "p50_ns"
    higher_is_better = False
    ratio_note = "shmlink p50 / peer p50: below 1 means shmlink is faster (target: <= 0.2 of zmq.asyncio)"

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for key, label in _aio.COMPETITORS:
            c = Case(self.name, label, key, "", list(SIZES))
            c.skip = _aio.unavailable(key)
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"warmup": 100, "count": 2_000, "idle_s": 0.3}
        return {"warmup": 1_000, "count": 20_000, "idle_s": 1.0}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for size in case.sizes:
            p = self.plan(opts, size)
            addr = _addr(case.key, ws)
            res = _aio.run_pair(case.key, addr, dict(p, size=size, mode="roundtrip"), 300)
            res.update(_aio.run_pair(case.key, _addr(case.key, ws),
                                     dict(p, size=size, mode="idle"), 60))
            on_run(size, 0, res)
            out[size] = [res]
        return out

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, ["p50_ns", "p99_ns", "idle_cpu_pct"]),
                    n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return (f"p50 {H.fmt_ns(r['p50_ns'])}  p99 {H.fmt_ns(r['p99_ns'])}  "
                f"idle CPU {r['idle_cpu_pct']:.2f} %")

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink.asyncio Connection", rec["mode"])

    def columns(self) -> list[Column]:
        def ns(k):
            return lambda r: H.fmt_ns(r["metrics"].get(k, float("nan")))
        return [Column("p50", ns("p50_ns")), Column("p99", ns("p99_ns")),
                Column("idle CPU", lambda r: f"{r['metrics'].get('idle_cpu_pct', float('nan')):.2f} %")]


def _addr(key: str, ws: H.Workspace) -> str:
    if key == "shmlink":
        return ws.name("aio")
    if key == "zmq":
        return "ipc://" + ws.path("aio-zmq") + ".sock"
    return ws.path("aio-streams") + ".sock"


SCENARIO = AioRoundTrip()
