"""Scenario base class and the registry.

A scenario is one module in this package that defines ``SCENARIO``, an instance of a
``Scenario`` subclass. The registry imports every public module of the package and keeps
those that have one, so adding a scenario is adding one module. A scenario

- lists its ``cases`` (one per competitor and mode, each over a list of sizes), with a skip
  reason on the cases that cannot run here;
- measures a case once per size (``measure``) through one of the drivers in ``_drivers.py``;
  the suite calls it once per round (``--repeat`` rounds, every case in each round, so that
  a burst of noise from the rest of the machine does not land on all runs of one case) and
  turns the runs into one record per size with ``summarize`` (medians);
- names the record each record is compared with (``baseline``), for the ratio column, and
  the columns of its table.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _harness as H


@dataclass
class Case:
    scenario: str
    competitor: str             # shown in tables, e.g. "pyzmq PAIR"
    key: str                    # matched by --only, e.g. "zmq"
    mode: str                   # "single", "batch", "view", or a scenario's own variants
    sizes: list[int]
    link: Any = None
    params: dict = field(default_factory=dict)
    skip: str | None = None                              # the whole case cannot run here
    size_skips: dict[int, str] = field(default_factory=dict)  # size -> reason

    @property
    def label(self) -> str:
        extra = "" if self.mode in ("", "single") else f" [{self.mode}]"
        k = self.params.get("subscribers")
        if k is not None:
            extra += f" to {k} subscriber{'s' if k != 1 else ''}"
        return f"{self.competitor}{extra}"


def record(case: Case, size: int, *, status: str, reason: str | None = None,
           metrics: dict | None = None, runs: list | None = None) -> dict:
    return {"scenario": case.scenario, "competitor": case.competitor, "key": case.key,
            "mode": case.mode, "size": size, "params": dict(case.params), "status": status,
            "reason": reason, "metrics": metrics or {}, "runs": runs or [],
            "baseline": None, "ratio": None}


@dataclass
class Column:
    header: str
    cell: Callable[[dict], str]
    width: int = 10


class Scenario:
    name = ""
    title = ""
    order = 100
    #: The metric the ratio is taken on, and which way is better.
    metric = ""
    higher_is_better = True
    ratio_note = ""
    ratio_header = "shmlink/peer"

    def cases(self, opts: Any) -> list[Case]:
        raise NotImplementedError

    def group(self, rec: dict) -> str:
        """Records in one group share a table; by default, one table per size."""
        return H.fmt_size(rec["size"])

    def baseline(self, rec: dict) -> tuple[str, str] | None:
        """(competitor, mode) of the shmlink record ``rec`` is compared with; None: none."""
        return None

    def columns(self) -> list[Column]:
        raise NotImplementedError

    def extra_ratios(self) -> list[tuple[str, str]]:
        """Further ratio columns: (header, shmlink competitor in the same mode)."""
        return []

    def chart(self, records: list[dict], path: str) -> bool:
        """Draw ``records`` into ``path``; return False when there is nothing to draw."""
        return False

    def plan(self, opts: Any, size: int, mode: str = "single") -> dict:
        """Warm-up, count and time limits of one run, from the --quick switch."""
        raise NotImplementedError

    def measure(self, case: Case, ws: H.Workspace, opts: Any,
                on_run: Callable[[int, int, dict], None]) -> dict[int, list[dict]]:
        """One run of ``case`` for each of its runnable sizes: {size: [result]}.

        Raises on failure (a payload that does not check, a role that dies or times out).
        """
        raise NotImplementedError

    def summarize(self, runs: list[dict]) -> dict:
        """The metrics of a record from its runs (medians)."""
        raise NotImplementedError

    def show(self, run: dict) -> str:
        """One run, in a few words, for the progress lines."""
        return ""


def median_of(runs: list[dict], keys: list[str]) -> dict:
    return {k: H.median([r[k] for r in runs]) for k in keys}


_registry: dict[str, Scenario] = {}


def scenarios() -> list[Scenario]:
    """Every scenario module of the package, in their ``order``."""
    if not _registry:
        from . import __path__ as pkg_path
        for info in pkgutil.iter_modules(pkg_path):
            if info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{__package__}.{info.name}")
            sc = getattr(mod, "SCENARIO", None)
            if isinstance(sc, Scenario):
                _registry[sc.name] = sc
    return sorted(_registry.values(), key=lambda s: (s.order, s.name))
