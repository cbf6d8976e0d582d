"""Scenario 5: one-way throughput between two hosts, through the shmlink bridge and with
plain Zenoh.

Two network namespaces joined by a veth pair stand for two hosts (root and ``ip netns``
needed; skipped with a note otherwise, and without ``eclipse-zenoh``). ``shmlink bridge``
carries a lossless queue route (producer -> queue -> bridge -> TCP -> bridge -> queue ->
consumer); plain Zenoh runs one Python publisher and one subscriber with the same Zenoh
settings, reliable and blocking. Both producers send one message per call; every message is
checked at the receiver. Sizes: 64 B and 64 KiB. See ``_bridge.py``.

The ratio divides the bridge's messages/s by plain Zenoh's (above 1: the bridge is faster).
"""
from __future__ import annotations

from typing import Any

from . import _bridge as B
from . import _harness as H
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64, 64 << 10]
KEYS = ["msgs_per_s", "mb_per_s", "receiver_msgs_per_s"]
COMPETITORS = [("shmlink bridge", "shmlink"), ("zenoh", "zenoh")]


class BridgeThroughput(Scenario):
    name = "bridge"
    title = "One-way throughput between 2 hosts (network namespaces): bridge vs plain Zenoh"
    order = 50
    metric = "msgs_per_s"
    higher_is_better = True
    ratio_note = "bridge msg/s / plain Zenoh msg/s: above 1 means the bridge is faster"
    ratio_header = "bridge/zenoh"

    def cases(self, opts: Any) -> list[Case]:
        why = B.unavailable()
        out = []
        for comp, key in COMPETITORS:
            c = Case(self.name, comp, key, "", list(SIZES))
            c.skip = why
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        big = size > 4096
        if opts.quick:
            return {"warmup": 20 if big else 500, "count": 300 if big else 5_000,
                    "seconds_max": 60}
        return {"warmup": 200 if big else 5_000, "count": 3_000 if big else 100_000,
                "seconds_max": 300}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        out = {}
        for size in case.sizes:
            H.check_stop()
            r = B.run_oneway(case.key, size, self.plan(opts, size), ws)
            on_run(size, 0, r)
            out[size] = [r]
        return out

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"{H.fmt_rate(r['msgs_per_s'])} msg/s  {r['mb_per_s']:,.1f} MB/s  ({r['n']} msgs)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink bridge", "")

    def columns(self) -> list[Column]:
        return [Column("msg/s", lambda r: H.fmt_rate(r["metrics"].get("msgs_per_s", float("nan")))),
                Column("MB/s", lambda r: f"{r['metrics']['mb_per_s']:,.1f}"
                       if "mb_per_s" in r["metrics"] else "-")]


SCENARIO = BridgeThroughput()
