"""Ratios, tables, JSON and charts from the records of a run."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

from . import _harness as H
from ._scenario import Scenario


def add_ratios(scenarios: list[Scenario], records: list[dict]) -> None:
    """Fill ``baseline`` and ``ratio`` (shmlink / peer on the scenario's metric) in place."""
    by_name = {s.name: s for s in scenarios}
    index = {}
    for r in records:
        if r["status"] == "ok":
            sc = by_name[r["scenario"]]
            index[(r["scenario"], sc.group(r), r["competitor"], r["mode"])] = r
    for r in records:
        sc = by_name[r["scenario"]]
        r["ratios"] = {}
        if r["status"] != "ok":
            continue
        wanted = [(sc.ratio_header, sc.baseline(r))]
        wanted += [(hdr, (comp, r["mode"])) for hdr, comp in sc.extra_ratios()]
        for hdr, base in wanted:
            if base is None:
                continue
            b = index.get((r["scenario"], sc.group(r), base[0], base[1]))
            if b is None:
                continue
            v, bv = r["metrics"].get(sc.metric), b["metrics"].get(sc.metric)
            if v and bv:
                r["ratios"][hdr] = bv / v
                if hdr == sc.ratio_header:
                    r["baseline"] = f"{base[0]}" + (f" [{base[1]}]" if base[1] not in ("", "single") else "")
                    r["ratio"] = bv / v


def tables(scenarios: list[Scenario], records: list[dict], repeat: int) -> str:
    out = []
    for sc in scenarios:
        recs = [r for r in records if r["scenario"] == sc.name]
        if not recs:
            continue
        groups: dict[str, list[dict]] = {}
        for r in recs:
            groups.setdefault(sc.group(r), []).append(r)
        cols = sc.columns()
        ratio_hdrs = [sc.ratio_header] + [h for h, _ in sc.extra_ratios()]
        for g, rs in groups.items():
            out.append("")
            out.append(f"{sc.title} - {g}  (median of {repeat} run{'s' if repeat != 1 else ''}; "
                       f"ratio: {sc.ratio_note})")
            name_w = max(28, max(len(r["competitor"]) for r in rs) + 2)
            head = f"  {'competitor':<{name_w}}" + "".join(f"{c.header:>{c.width + 2}}" for c in cols)
            head += "".join(f"{h:>14}" for h in ratio_hdrs)
            out.append(head)
            out.append("  " + "-" * (len(head) - 2))
            for r in rs:
                line = f"  {r['competitor']:<{name_w}}"
                if r["status"] != "ok":
                    what = "skipped" if r["status"] == "skipped" else "FAILED"
                    mode = "" if r["mode"] in ("", "single") else f"[{r['mode']}] "
                    out.append(line + f"  {mode}{what}: {r['reason']}")
                    continue
                line += "".join(f"{c.cell(r):>{c.width + 2}}" for c in cols)
                for h in ratio_hdrs:
                    v = r["ratios"].get(h)
                    line += f"{'-' if v is None else f'{v:.2f}':>14}"
                out.append(line)
    return "\n".join(out) + "\n"


def _versions() -> dict[str, str]:
    from importlib import metadata
    out = {}
    for dist in ("shmlink", "pyzmq", "faster-fifo", "posix_ipc", "iceoryx2", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import zmq
        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "platform": platform.platform()}


def write_json(path: str, opts: Any, records: list[dict], notes: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(opts.argv),
        "quick": opts.quick,
        "repeat": opts.repeat,
        "machine": machine(),
        "load_average": getattr(opts, "load", None),
        "versions": _versions(),
        "notes": notes,
        "results": records,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); no chart drawn"
    return None


def bar_chart(records: list[dict], path: str, title: str, *, value: Callable[[dict], float],
              ylabel: str, upper: Callable[[dict], float] | None = None, log: bool = False,
              label: Callable[[dict], str] | None = None,
              group: Callable[[dict], str] | None = None) -> bool:
    """One panel per group (size by default), one horizontal bar per competitor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return False
    label = label or (lambda r: r["competitor"])
    group = group or (lambda r: H.fmt_size(r["size"]))
    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault(group(r), []).append(r)
    n = len(groups)
    ncols = n if n <= 3 else 2
    nrows = -(-n // ncols)
    height = max(len(rs) for rs in groups.values()) * 0.38 + 1.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (g, rs) in zip(flat, groups.items()):
        names = [label(r) for r in rs]
        vals = [value(r) for r in rs]
        colors = ["#d62728" if r["key"] == "shmlink" else "#1f77b4" for r in rs]
        ys = list(range(len(rs)))[::-1]
        if upper is not None:
            ups = [max(0.0, upper(r) - v) for r, v in zip(rs, vals)]
            ax.barh(ys, vals, color=colors, xerr=[[0] * len(vals), ups], capsize=2,
                    error_kw={"elinewidth": 0.8})
        else:
            ax.barh(ys, vals, color=colors)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(ylabel, fontsize=8)
        ax.set_title(g, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def eprint(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)
