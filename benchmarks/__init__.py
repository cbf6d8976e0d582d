"""shmlink benchmark suite.

Run it with ``python -m benchmarks`` (or ``shmlink bench``) from a source checkout; see
README.md. ``main(argv)`` is the entry point both use.

Layout: ``_harness`` (processes, payloads, cleanup), ``_drivers`` (round-trip and one-way
measurements), ``_scenario`` (the base class and the registry), ``_report`` (ratios, tables,
JSON, charts), ``peers`` (point-to-point competitors), and one module per scenario:
``latency``, ``throughput``, ``fanout``, ``reqrep``. A new scenario is a new module that
defines ``SCENARIO``.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite with command-line arguments ``argv``; return the exit status."""
    from ._suite import main as _main
    return _main(argv)
