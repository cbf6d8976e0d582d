"""What every ``shmlink`` sub-command shares: the parser, argument types, output, input.

Argument values are checked where argparse reads them (the ``*_arg``
types): a bad value is a usage error (exit 2) whose one line names the
option and the value.  Problems found while running (input that is not
text, a name that does not exist) are user errors (exit 1).
"""

from __future__ import annotations

import argparse
import codecs
import math
import os
import re
import sys
from fractions import Fraction
from typing import Any, NoReturn

from ..errors import ShmlinkError
from ..segment import KIND_CLASSES, Segment, info

__all__ = ["Parser", "UsageError", "UserError", "out", "age", "table", "shown", "parse_size",
           "size_arg", "mode_arg", "timeout_arg", "count_arg", "offset_arg", "encoding_arg",
           "text_arg", "input_bytes", "decode_input", "encode_text", "open_any", "open_segment"]


class UsageError(Exception):
    """A wrong combination of arguments: ``main`` reports it as a usage error (exit 2)."""


class UserError(Exception):
    """Input the command cannot use (not text, ...): ``main`` prints it on one line, exit 1."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see '{self.prog} --help')\n")


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut short when long (a 400-digit size ...)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


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
    """Bytes from ``4096``, ``64k``, ``1M``, ``2GiB``, ``1.5k`` ...; UsageError if it is not a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise UsageError(f"size {shown(text)} is not a number of bytes (examples: 4096, 64k, 1M)")
    if len(m.group(1)) > 30:
        raise UsageError(f"size {shown(text)} is far more than any machine can map")
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(Fraction(m.group(1)) * unit)


def _typed(check: Any) -> Any:
    """An argparse ``type=`` from a check that raises UsageError (its message is the line)."""
    def convert(text: str) -> Any:
        try:
            return check(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = check.__name__
    return convert


size_arg = _typed(parse_size)
size_arg.__doc__ = """:func:`parse_size` as an argparse ``type=`` (a bad size is a usage error)."""


@_typed
def mode_arg(text: str) -> int:
    """Octal permission bits (``600``, ``0644``, ``0o640``) as an int, at most ``0o777``."""
    digits = text.strip().lower()
    digits = digits[2:] if digits.startswith("0o") else digits
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise UsageError(f"mode {shown(text)} is not octal permission bits from 000 to 777 "
                         "(examples: 600, 640, 666)")
    return int(digits, 8)


@_typed
def timeout_arg(text: str) -> float:
    """Seconds to wait: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"timeout {shown(text)} is not a number of seconds >= 0 "
                         "(leave --timeout out to wait without a limit)")
    return value


@_typed
def count_arg(text: str) -> int:
    """A count of at least 1."""
    if not re.fullmatch(r"\s*\+?\d{1,18}\s*", text) or int(text) < 1:
        raise UsageError(f"count {shown(text)} is not a whole number of at least 1")
    return int(text)


@_typed
def offset_arg(text: str) -> int:
    """A byte offset or length: a whole number >= 0."""
    if not re.fullmatch(r"\s*\+?\d{1,20}\s*", text):
        raise UsageError(f"{shown(text)} is not a whole number of bytes >= 0")
    return int(text)


@_typed
def encoding_arg(text: str) -> str:
    """The name of a text encoding Python knows (``utf-8``, ``latin-1``, ``utf-16-le`` ...)."""
    try:
        known = codecs.lookup(text)
        "".encode(text)
        b"".decode(text)
    except (LookupError, ValueError):
        raise UsageError(f"encoding {shown(text)} is not a text encoding Python knows "
                         "(examples: utf-8, latin-1, utf-16-le)") from None
    return known.name


@_typed
def text_arg(text: str) -> str:
    """Text given as an argument: it must be valid UTF-8 (bytes go through --file or stdin)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(text)  # the bytes as they were on the command line
        try:
            raw.decode("utf-8")
            where = ""
        except UnicodeDecodeError as e:
            where = f" (byte 0x{raw[e.start]:02x} at offset {e.start})"
        raise UsageError(f"{shown(text)} is not valid UTF-8{where}; pass bytes through "
                         "--file or stdin") from None
    return text


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


def decode_input(data: bytes, a: argparse.Namespace, hint: str) -> str:
    """``data`` (from ``--file`` or stdin) as UTF-8 text; UserError naming where and ``hint``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        source = "stdin" if getattr(a, "file", None) in (None, "-") else f"file {a.file!r}"
        raise UserError(f"{source} is not valid UTF-8 text (byte 0x{data[e.start]:02x} at "
                        f"offset {e.start}); {hint}") from None


def encode_text(text: str, encoding: str) -> bytes:
    """``text`` in ``encoding``; UserError when it has characters the encoding lacks."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as e:
        raise UserError(f"the text has {text[e.start:e.end]!r} (at character {e.start}), which "
                        f"{encoding} cannot encode; pass another --encoding") from None
    except UnicodeError as e:  # codecs such as idna refuse whole inputs
        raise UserError(f"the text cannot be encoded in {encoding} ({e}); pass another "
                        "--encoding") from None


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
