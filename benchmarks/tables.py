"""Markdown tables of a results file, for the README: ``python -m benchmarks.tables [PATH]``.

The figures in benchmarks/README.md are pasted from this output, so they are
exactly what the run measured.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from . import _harness as H

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def _index(results: list[dict]) -> dict[tuple, dict]:
    out = {}
    for r in results:
        subs = r.get("params", {}).get("subscribers")
        out[(r["scenario"], r["competitor"], r["mode"], r["size"], subs)] = r
    return out


def _competitors(results: list[dict], scenario: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in results:
        if r["scenario"] == scenario and (r["competitor"], r["mode"]) not in seen:
            seen.append((r["competitor"], r["mode"]))
    return seen


def _lat_table(results: list[dict], scenario: str) -> list[str]:
    idx = _index(results)
    rows = _competitors(results, scenario)
    shm = [c for c, _ in rows if c.startswith("shmlink")]
    lines = ["| competitor | 64 B p50 | 64 B p99 | 4 KiB p50 | 4 KiB p99 | "
             + " | ".join(f"{s.split('(')[-1].rstrip(')')}/peer p50 64 B, 4 KiB" for s in shm) + " |",
             "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in shm) + " |"]
    for comp, mode in rows:
        cells = []
        for size in (64, 4096):
            r = idx.get((scenario, comp, mode, size, None))
            ok = r is not None and r["status"] == "ok"
            cells += [H.fmt_ns(r["metrics"]["p50_ns"]) if ok else "-",
                      H.fmt_ns(r["metrics"]["p99_ns"]) if ok else "-"]
        ratios = []
        for s in shm:
            parts = []
            for size in (64, 4096):
                a = idx.get((scenario, s, "", size, None))
                b = idx.get((scenario, comp, mode, size, None))
                if a and b and a["status"] == b["status"] == "ok":
                    parts.append(f"{a['metrics']['p50_ns'] / b['metrics']['p50_ns']:.2f}")
                else:
                    parts.append("-")
            ratios.append(", ".join(parts))
        lines.append(f"| {comp} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def _rate(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return "skipped"
    m = r["metrics"]
    return f"{H.fmt_rate(m['msgs_per_s'])} ({m['mb_per_s']:,.0f})"


def _tp_table(results: list[dict]) -> list[str]:
    idx = _index(results)
    lines = ["| competitor | mode | 64 B | 4 KiB | 1 MiB | shmlink/peer 64 B, 4 KiB, 1 MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for comp, mode in _competitors(results, "throughput"):
        cells = [_rate(idx.get(("throughput", comp, mode, s, None))) for s in (64, 4096, 1 << 20)]
        ratios = []
        for s in (64, 4096, 1 << 20):
            a = idx.get(("throughput", "shmlink", mode, s, None))
            b = idx.get(("throughput", comp, mode, s, None))
            if comp == "shmlink":
                ratios.append("1.00" if b and b["status"] == "ok" and mode != "view" else "-")
            elif a and b and a["status"] == b["status"] == "ok":
                ratios.append(f"{a['metrics']['msgs_per_s'] / b['metrics']['msgs_per_s']:.2f}")
            else:
                ratios.append("-")
        lines.append(f"| {comp} | {mode} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")
    return lines


def _fan_table(results: list[dict]) -> list[str]:
    idx = _index(results)
    cols = [(64, 1), (4096, 1), (64, 4), (4096, 4)]
    lines = ["| competitor | 64 B ×1 | 4 KiB ×1 | 64 B ×4 | 4 KiB ×4 | shmlink/peer (same order) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    rows = _competitors(results, "fanout")
    shm = next((c for c, _ in rows if c.startswith("shmlink")), None)
    for comp, mode in rows:
        cells, ratios = [], []
        for size, n in cols:
            r = idx.get(("fanout", comp, mode, size, n))
            cells.append(_rate(r).split(" (")[0])
            a = idx.get(("fanout", shm, mode, size, n))
            if a and r and a["status"] == r["status"] == "ok":
                ratios.append(f"{a['metrics']['msgs_per_s'] / r['metrics']['msgs_per_s']:.2f}")
            else:
                ratios.append("-")
        lines.append(f"| {comp} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")
    return lines


def render(data: dict[str, Any]) -> str:
    """The markdown tables of one results file."""
    res = data["results"]
    out = [f"Run of {data['date']}, `{' '.join(data.get('argv', []))}`, load average "
           f"{data['load_average']['start'][0]:.2f} at start, {data['load_average']['end'][0]:.2f} at end.",
           "", "**Round-trip latency (ping-pong)**: ratio = shmlink p50 / peer p50 (below 1: shmlink faster)", ""]
    out += _lat_table(res, "latency")
    out += ["", "**One-way throughput**: messages/s (MB/s); ratio = shmlink / peer in the same mode "
            "(above 1: shmlink faster)", ""]
    out += _tp_table(res)
    out += ["", "**Fan-out** (lossless): messages/s reaching every subscriber; ratio = shmlink / peer", ""]
    out += _fan_table(res)
    out += ["", "**Request/response round trip**: ratio = shmlink p50 / peer p50", ""]
    out += _lat_table(res, "reqrep")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0] if argv else DEFAULT) as f:
        print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
