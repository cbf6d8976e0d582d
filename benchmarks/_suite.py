"""Command line of the suite: ``python -m benchmarks`` and ``benchmarks.main(argv)``."""
from __future__ import annotations

import argparse
import os
import signal
import threading
import sys
import time
from typing import Sequence

from . import _harness as H
from . import _report
from ._scenario import Case, record, scenarios

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="shmlink benchmark suite: every measurement runs in separate spawned "
                    "processes, checks every payload, and reports shmlink / peer ratios.")
    p.add_argument("--quick", action="store_true",
                   help="small counts and 1 run each (CI smoke test; well under 60 s)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="run each measurement N times and report the median "
                        "(default 3, or 1 with --quick)")
    p.add_argument("--only", default="", metavar="NAME,...",
                   help="scenarios and/or competitors to run (see --list); shmlink always "
                        "runs alongside the competitors named, for the ratios")
    p.add_argument("--json", default=os.path.join(RESULTS, "latest.json"), metavar="PATH",
                   help="where to write the results (default benchmarks/results/latest.json); "
                        "charts go to the same directory")
    p.add_argument("--no-chart", action="store_true", help="do not draw PNG charts")
    p.add_argument("--list", action="store_true", help="list scenarios and competitors, then exit")
    return p


def _select(tokens: list[str], all_cases: dict[str, list[Case]]) -> tuple[set[str], set[str]] | str:
    """(scenario names, competitor keys) selected by --only; a string is an error."""
    sc_names = set(all_cases)
    comp: dict[str, str] = {}
    for cases in all_cases.values():
        for c in cases:
            comp[c.key.lower()] = c.key
            comp[c.competitor.lower()] = c.key
    want_sc, want_comp, bad = set(), set(), []
    for t in tokens:
        t = t.strip().lower()
        if not t:
            continue
        if t in sc_names:
            want_sc.add(t)
        elif t in comp:
            want_comp.add(comp[t])
        else:
            bad.append(t)
    if bad:
        return (f"unknown name(s) in --only: {', '.join(bad)}. Scenarios: {', '.join(sorted(sc_names))};"
                f" competitors: {', '.join(sorted(set(comp.values())))}")
    if want_comp:
        want_comp.add("shmlink")
    return (want_sc or sc_names), want_comp


def _on_sigint(signum: int, frame: object) -> None:
    H.STOP_REQUESTED[0] = True
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; return the exit status (0 ok, 1 a measurement failed, 2 bad usage,
    130 interrupted)."""
    H.STOP_REQUESTED[0] = False
    # SIGINT (Ctrl-C) and SIGTERM (a CI timeout, `kill`) both end the run the same way: the
    # children are reaped, what they made is removed, and what was measured is reported.
    # Only Python's default handlers are replaced; SIG_IGN and an embedder's handler stay.
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig, default in defaults.items():
            if signal.getsignal(sig) is default:
                saved[sig] = default
                signal.signal(sig, _on_sigint)
    try:
        return _main(argv)
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `shmlink bench -- --quick` hands the separator through
        argv = argv[1:]
    opts = build_parser().parse_args(argv)
    opts.argv = argv
    if opts.repeat is None:
        opts.repeat = 1 if opts.quick else 3
    if opts.repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2

    scs = scenarios()
    all_cases = {s.name: s.cases(opts) for s in scs}
    if opts.list:
        for s in scs:
            print(f"{s.name:<12} {s.title}")
            for c in all_cases[s.name]:
                state = f"  (skipped: {c.skip})" if c.skip else ""
                print(f"    {c.key:<14} {c.label}{state}")
        return 0
    sel = _select(opts.only.split(","), all_cases)
    if isinstance(sel, str):
        print(sel, file=sys.stderr)
        return 2
    want_sc, want_comp = sel
    chosen = [s for s in scs if s.name in want_sc]

    notes: list[str] = []
    plan = [(s, c) for s in chosen for c in all_cases[s.name]
            if not want_comp or c.key in want_comp]
    runs: dict[int, dict[int, list[dict]]] = {i: {} for i in range(len(plan))}
    failed: dict[int, str] = {}
    ws = H.Workspace()
    t0 = time.monotonic()
    interrupted = False
    load0 = os.getloadavg()
    H.progress(f"shmlink benchmarks: {'quick, ' if opts.quick else ''}{opts.repeat} round(s); "
               f"scenarios: {', '.join(s.name for s in chosen)}; load average {load0[0]:.2f} "
               f"on {os.cpu_count()} CPUs")
    if load0[0] > (os.cpu_count() or 1) / 2:
        H.progress("note: other processes are keeping this machine busy; expect noisy numbers")
    try:
        for rnd in range(opts.repeat):
            if opts.repeat > 1:
                H.progress(f"== round {rnd + 1}/{opts.repeat}")
            last_sc = None
            for i, (s, c) in enumerate(plan):
                H.check_stop()
                if s is not last_sc:
                    H.progress(f"== {s.name}: {s.title}")
                    last_sc = s
                if c.skip:
                    if rnd == 0:
                        H.progress(f"  {c.label}: skipped: {c.skip}")
                    continue
                if i in failed:
                    continue
                H.progress(f"  {c.label}  ({time.monotonic() - t0:.0f} s)")

                def on_run(size: int, _rep: int, res: dict, c: Case = c, s=s) -> None:
                    res["load1"] = os.getloadavg()[0]
                    H.progress(f"    {H.fmt_size(size):>7}: {s.show(res)}")
                try:
                    got = s.measure(c, ws, opts, on_run)
                except Exception as e:
                    msg = str(e) or type(e).__name__
                    failed[i] = msg
                    H.progress(f"    FAILED: {msg}")
                else:
                    for size, rs in got.items():
                        runs[i].setdefault(size, []).extend(rs)
                removed = ws.sweep()
                if removed:
                    notes.append(f"{c.label}: removed leftovers {removed}")
                    H.progress(f"    removed leftovers: {', '.join(removed)}")
    except KeyboardInterrupt:
        interrupted = True
        H.progress("interrupted; reporting what was measured")
    finally:
        left = ws.close()
        if left:
            notes.append(f"removed at exit: {left}")
    still = ws.leftovers()
    if still:
        notes.append(f"left behind in /dev/shm: {still}")
        H.progress(f"warning: left behind in /dev/shm: {still}")

    records: list[dict] = []
    for i, (s, c) in enumerate(plan):
        for size in c.sizes:
            if c.skip or size in c.size_skips:
                records.append(record(c, size, status="skipped", reason=c.skip or c.size_skips[size]))
            elif i in failed:
                r = record(c, size, status="failed", reason=failed[i].splitlines()[0],
                           runs=runs[i].get(size, []))
                r["detail"] = failed[i]
                records.append(r)
            elif runs[i].get(size):
                records.append(record(c, size, status="ok", metrics=s.summarize(runs[i][size]),
                                      runs=runs[i][size]))
            else:
                records.append(record(c, size, status="skipped", reason="not run (interrupted)"))
    opts.load = {"start": load0, "end": os.getloadavg()}

    _report.add_ratios(chosen, records)
    print(_report.tables(chosen, records, opts.repeat))
    _report.write_json(opts.json, opts, records, notes)
    H.progress(f"results: {opts.json}")
    if not opts.no_chart:
        why = _report.matplotlib_missing()
        if why:
            H.progress(f"note: {why}")
            notes.append(why)
        else:
            outdir = os.path.dirname(os.path.abspath(opts.json))
            for s in chosen:
                path = os.path.join(outdir, f"{s.name}.png")
                try:
                    if s.chart([r for r in records if r["scenario"] == s.name], path):
                        H.progress(f"chart: {path}")
                except Exception as e:  # a chart is never worth failing the run for
                    H.progress(f"note: chart {path} not drawn: {e}")
    bad = [r for r in records if r["status"] == "failed"]
    H.progress(f"done in {time.monotonic() - t0:.0f} s"
               + (f"; {len(bad)} measurement(s) FAILED" if bad else ""))
    if interrupted:
        return 130
    return 1 if bad else 0
