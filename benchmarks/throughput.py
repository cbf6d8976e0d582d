"""Scenario 2: one-way throughput between two processes.

A sender pushes as many messages as it can (to a count or a time limit) and a receiver checks
each one; messages/s and MB/s (10^6 bytes) are measured from the sender's first timed send to
the arrival of the stop marker that follows the last message. Sizes: 64 B, 4 KiB, 1 MiB.

Modes:

- ``single``: one ``send`` / ``recv`` per message (every competitor);
- ``batch``: ``send_many`` / ``recv_many`` (shmlink), ``put_many`` / ``get_many``
  (faster-fifo); 64 messages per call up to 4 KiB, 4 per call at 1 MiB. The other
  competitors have no batch form and appear in ``single`` only;
- ``view``: shmlink's zero-copy ``recv_view`` at 1 MiB, against everyone else's copy into
  ``bytes`` (iceoryx2 included: its sample is copied out, so all receivers end up owning the
  data; iceoryx2 could hand out a view of the sample too, which this suite does not measure).

The ratio column divides shmlink's messages/s in the same mode by the competitor's (above 1:
shmlink is faster); the ``view`` row is compared with nothing.
"""
from __future__ import annotations

from typing import Any

from . import _harness as H
from . import peers
from ._drivers import run_oneway
from ._scenario import Case, Column, Scenario, median_of

SIZES = [64, 4096, 1 << 20]
KEYS = ["msgs_per_s", "mb_per_s", "receiver_msgs_per_s"]


class Throughput(Scenario):
    name = "throughput"
    title = "One-way throughput between 2 processes"
    order = 20
    metric = "msgs_per_s"
    higher_is_better = True
    ratio_note = "shmlink msg/s / peer msg/s in the same mode: above 1 means shmlink is faster"

    def cases(self, opts: Any) -> list[Case]:
        out = []
        for link in peers.links():
            if isinstance(link, peers.ShmlinkQueue) and link.wait != "hybrid":
                continue  # throughput: the default wait strategy only
            for mode in link.modes:
                sizes = [1 << 20] if mode == "view" else list(SIZES)
                name = "shmlink" if isinstance(link, peers.ShmlinkQueue) else link.name
                c = Case(self.name, name, link.key, mode, sizes, link=link)
                c.skip = link.unavailable()
                for s in sizes:
                    why = link.limit(s)
                    if why:
                        c.size_skips[s] = why
                out.append(c)
        return out

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        big = size > (64 << 10)
        if opts.quick:
            return {"mode": mode, "warmup": 8 if big else 128,
                    "count": 2_000 if big else 200_000, "seconds": 0.05}
        return {"mode": mode, "warmup": 32 if big else 4_096,
                "count": 100_000 if big else 10_000_000, "seconds": 1.5}

    def measure(self, case: Case, ws: H.Workspace, opts: Any, on_run) -> dict[int, list[dict]]:
        sizes = [s for s in case.sizes if s not in case.size_skips]
        return run_oneway(case.link, sizes, ws, lambda s: self.plan(opts, s, case.mode), 1, on_run)

    def summarize(self, runs: list[dict]) -> dict:
        return dict(median_of(runs, KEYS), n=sum(r["n"] for r in runs))

    def show(self, r: dict) -> str:
        return f"{H.fmt_rate(r['msgs_per_s'])} msg/s  {r['mb_per_s']:,.0f} MB/s  ({r['n']} msgs)"

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        if rec["mode"] == "view":
            return None
        return ("shmlink", rec["mode"])

    def columns(self) -> list[Column]:
        return [Column("mode", lambda r: r["mode"], 6),
                Column("msg/s", lambda r: H.fmt_rate(r["metrics"].get("msgs_per_s", float("nan")))),
                Column("MB/s", lambda r: f"{r['metrics']['mb_per_s']:,.0f}"
                       if "mb_per_s" in r["metrics"] else "-")]

    def chart(self, records: list[dict], path: str) -> bool:
        from ._report import bar_chart
        return bar_chart(records, path, self.title + " (higher is better)",
                         value=lambda r: r["metrics"]["msgs_per_s"],
                         ylabel="messages / s (log scale)", log=True,
                         label=lambda r: r["competitor"] + ("" if r["mode"] == "single"
                                                            else f" [{r['mode']}]"))


SCENARIO = Throughput()
