"""Scenario 6: round-trip latency between two hosts, through the shmlink bridge and with
plain Zenoh.

The same two network namespaces as the ``bridge`` scenario. A client in one sends a
message and waits for its echo from a server in the other: through two lossless queue routes
(ping there, pong back) of ``shmlink bridge``, and with plain Zenoh publishers and
subscribers (``Subscriber.recv``). Each round trip is timed on its own; p50/p90/p99,
median of the repeats. Size: 64 B.

The ratio, on plain Zenoh's row, is the bridge's p50 divided by Zenoh's (above 1: the bridge
is slower).
"""
from __future__ import annotations

from typing import Any

from . import _bridge as B
from . import _harness as H
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64]
KEYS = ["p50_ns", "p90_ns", "p99_ns", "mean_ns"]


class BridgeLatency(Scenario):
    name = "bridge_latency"
    title = "Round-trip latency between 2 hosts (network namespaces): bridge vs plain Zenoh"
    order = 51
    metric = "p50_ns"
    higher_is_better = False
    ratio_note = "bridge p50 / plain Zenoh p50: above 1 means the bridge is slower"
    ratio_header = "bridge/zenoh"

    def cases(self, opts: Any) -> list[Case]:
        why = B.unavailable()
        out = []
        for comp, key in (("shmlink bridge", "shmlink"), ("zenoh", "zenoh")):
            c = Case(self.name, comp, key, "", list(SIZES))
            c.skip = why
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"warmup": 50, "count": 300, "seconds_max": 60}
        return {"warmup": 200, "count": 3_000, "seconds_max": 300}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        out = {}
        for size in case.sizes:
            H.check_stop()
            r = B.run_roundtrip(case.key, size, self.plan(opts, size), ws)
            on_run(size, 0, r)
            out[size] = [r]
        return out

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"p50 {H.fmt_ns(r['p50_ns'])}  p99 {H.fmt_ns(r['p99_ns'])}  ({r['n']} round trips)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink bridge", "")

    def columns(self) -> list[Column]:
        def ns(k):
            return lambda r: H.fmt_ns(r["metrics"].get(k, float("nan")))
        return [Column("p50", ns("p50_ns")), Column("p90", ns("p90_ns")),
                Column("p99", ns("p99_ns"))]


SCENARIO = BridgeLatency()
