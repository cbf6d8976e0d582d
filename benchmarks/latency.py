"""Scenario 1: round-trip latency, ping-pong between two processes.

The client sends payload ``seq`` and waits for the server to echo it; each round trip is timed
on its own (``perf_counter_ns``), and the table shows the 50th, 90th and 99th percentiles,
median of the repeats. Sizes: 64 B and 4 KiB. shmlink runs twice: ``wait="hybrid"`` (spin
~50 µs, then sleep on a futex) and ``wait="block"`` (sleep at once); the ratio columns divide
each by the competitor's p50 (below 1: shmlink is faster).
"""
from __future__ import annotations

from typing import Any

from . import _harness as H
from . import peers
from ._drivers import run_roundtrip
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64, 4096]
KEYS = ["p50_ns", "p90_ns", "p99_ns", "mean_ns"]


class Latency(Scenario):
    name = "latency"
    title = "Round-trip latency, ping-pong between 2 processes"
    order = 10
    metric = "p50_ns"
    higher_is_better = False
    ratio_note = "shmlink p50 / peer p50: below 1 means shmlink is faster"
    ratio_header = "hybrid/peer"

    def links(self) -> list:
        return peers.links()

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for link in self.links():
            c = Case(self.name, link.name, link.key, "", list(SIZES), link=link)
            c.skip = link.unavailable()
            for s in SIZES:
                why = link.limit(s)
                if why:
                    c.size_skips[s] = why
            out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        if opts.quick:
            return {"warmup": 100, "count": 20_000, "seconds": 0.05}
        return {"warmup": 2_000, "count": 400_000, "seconds": 1.5}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        sizes = [s for s in case.sizes if s not in case.size_skips]
        return run_roundtrip(case.link, sizes, ws, lambda s: self.plan(opts, s), 1, on_run)

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"p50 {H.fmt_ns(r['p50_ns'])}  p99 {H.fmt_ns(r['p99_ns'])}  ({r['n']} round trips)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        return ("shmlink (hybrid)", "")

    def columns(self) -> list[Column]:
        def ns(k):
            return lambda r: H.fmt_ns(r["metrics"].get(k, float("nan")))
        return [Column("p50", ns("p50_ns")), Column("p90", ns("p90_ns")),
                Column("p99", ns("p99_ns"))]

    def extra_ratios(self) -> list[tuple[str, str]]:
        """Further ratio columns: (header, shmlink competitor)."""
        return [("block/peer", "shmlink (block)")]

    def chart(self, records: list[dict], path: str) -> bool:
        from ._report import bar_chart
        return bar_chart(records, path, self.title + " (p50, whisker to p99; lower is better)",
                         value=lambda r: r["metrics"]["p50_ns"] / 1e3,
                         upper=lambda r: r["metrics"]["p99_ns"] / 1e3,
                         ylabel="round trip (µs, log scale)", log=True)


SCENARIO = Latency()
