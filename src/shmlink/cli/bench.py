"""``shmlink bench``: run the benchmark suite of the source checkout this shmlink comes from.

The suite (``benchmarks/`` beside ``src/``) is not part of an installed
wheel.  The command finds it from the location of the ``shmlink`` package
itself, never from the current directory: a ``benchmarks`` directory (or
module) wherever the command happens to run is not imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

import shmlink

from ..errors import ShmlinkError


def checkout_root() -> str | None:
    """The source checkout holding the imported ``shmlink`` package and a ``benchmarks/`` suite.

    Returns
    -------
    str or None
        The checkout's root directory (``<root>/src/shmlink`` is the package
        in use), or None when ``shmlink`` is not imported from a checkout
        that has the suite (an installed wheel).
    """
    pkg = os.path.dirname(os.path.realpath(shmlink.__file__))
    src = os.path.dirname(pkg)
    root = os.path.dirname(src)
    if os.path.basename(src) != "src" or not os.path.isfile(os.path.join(root, "pyproject.toml")):
        return None
    if not os.path.isfile(os.path.join(root, "benchmarks", "__init__.py")):
        return None
    return root


def load_suite() -> Any:
    """Import the checkout's ``benchmarks`` package (and only that one).

    The checkout's root goes first on ``sys.path``, so that this process and
    the benchmark's spawned children (which inherit ``sys.path``) resolve
    ``benchmarks`` to it rather than to anything in the current directory.

    Raises
    ------
    ShmlinkError
        When this shmlink is not imported from a source checkout with the
        suite, or ``benchmarks`` resolves elsewhere.
    """
    root = checkout_root()
    if root is None:
        raise ShmlinkError(
            f"the benchmark suite is not installed with this shmlink ({os.path.dirname(shmlink.__file__)}); "
            "it lives in the source checkout: install that with `pip install -e .` and run "
            "`shmlink bench` again, or run `python -m benchmarks` in the checkout"
        )
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    mod = sys.modules.get("benchmarks")
    if mod is None:
        mod = importlib.import_module("benchmarks")
    where = os.path.dirname(os.path.realpath(getattr(mod, "__file__", None) or "?"))
    if where != os.path.join(os.path.realpath(root), "benchmarks"):
        raise ShmlinkError(f"`benchmarks` was imported from {where}, not from the checkout's "
                           f"{os.path.join(root, 'benchmarks')}; run `shmlink bench` in a clean "
                           "interpreter")
    return mod


def cmd_bench(a: argparse.Namespace) -> int:
    args = list(a.args)
    if args[:1] == ["--"]:
        args = args[1:]
    return int(load_suite().main(args) or 0)


def add_parsers(sub: Any) -> None:
    """Add ``bench`` (its arguments are the suite's own: ``main`` passes them through)."""
    s = sub.add_parser("bench", help="run the benchmark suite (source checkout; "
                       "`shmlink bench --help` for its options)", add_help=False)
    s.set_defaults(func=cmd_bench, args=[])
