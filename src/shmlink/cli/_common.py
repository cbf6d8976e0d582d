"""What every ``shmlink`` sub-command shares: output, sizes, input, opening by kind."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from ..errors import ShmlinkError
from ..segment import KIND_CLASSES, Segment, info

__all__ = ["UsageError", "out", "age", "table", "parse_size", "size_arg", "input_bytes",
           "open_any", "open_segment"]


class UsageError(Exception):
    """A wrong combination of arguments: ``main`` reports it as a usage error (exit 2)."""


def out(text: str = "") -> None:
    """Write one line to stdout and flush (the output may be a pipe)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def age(seconds: float) -> str:
    """``seconds`` as a short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def table(rows: list[list[str]], header: list[str]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        out("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64k``, ``1M``, ``2GiB`` ...; UsageError if it is not a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise UsageError(f"size {text!r} is not a number of bytes (examples: 4096, 64k, 1M)")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)])


def size_arg(text: str) -> int:
    """:func:`parse_size` as an argparse ``type=`` (a bad size is a usage error)."""
    try:
        return parse_size(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def input_bytes(a: argparse.Namespace) -> bytes | None:
    """The bytes of ``--file`` or stdin, or None when the text argument holds the input."""
    if a.file is not None:
        if a.file == "-":
            return sys.stdin.buffer.read()
        with open(a.file, "rb") as f:
            return f.read()
    if a.text is None or a.text == "-":
        return sys.stdin.buffer.read()
    return None


def open_any(name: str, readonly: bool = False) -> Any:
    """Open a named object with the class its header says it is."""
    si = info(name)
    if si.error:
        raise ShmlinkError(si.error)
    cls = KIND_CLASSES.get(si.kind)
    if cls is None:
        raise ShmlinkError(f"{name!r} is a {si.kind}, which this shmlink cannot open")
    if si.kind == "segment":
        return cls.open(name, readonly=readonly)
    return cls.open(name)


def open_segment(name: str, readonly: bool = False) -> Segment:
    """Open a plain segment by name."""
    return Segment.open(name, readonly=readonly)
