"""Scenario 5b: asyncio one-way throughput at 64 B between two processes.

The sender awaits ``send`` of each message back to back; the receiver awaits them and times
the first to the last (see ``_aio.py``). Same competitors as ``aio-roundtrip``.
"""
from __future__ import annotations

from typing import Any

from . import _aio
from . import _harness as H
from ._scenario import Case, Column, Scenario, median_of
from .aio_roundtrip import _addr

SIZES = [64]


class AioThroughput(Scenario):
    name = "aio-throughput"
    title = "asyncio one-way throughput (each process runs an event loop)"
    order = 51
    metric = "rate"
    higher_is_better = True
    ratio_note = "shmlink rate / peer rate: above 1 means shmlink is faster (target: >= 3 x zmq.asyncio)"

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for key, label in _aio.COMPETITORS:
            c = Case(self.name, label, key, "", list(SIZES))
            c.skip = _aio.unavailable(key)
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"warmup": 500, "count": 20_000}
        return {"warmup": 5_000, "count": 200_000}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for size in case.sizes:
            task = dict(self.plan(opts, size), size=size, mode="throughput")
            res = _aio.run_pair(case.key, _addr(case.key, ws), task, 300)
            on_run(size, 0, res)
            out[size] = [res]
        return out

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, ["rate"]), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"{H.fmt_rate(r['rate'])}  ({r['n']} messages)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink.asyncio Connection", rec["mode"])

    def columns(self) -> list[Column]:
        return [Column("msg/s", lambda r: H.fmt_rate(r["metrics"].get("rate", float("nan"))))]


SCENARIO = AioThroughput()
