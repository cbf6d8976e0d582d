"""What every ``shmlink`` sub-command shares: the parser, argument types, output, input.

Argument values are checked where argparse reads them (the ``*_arg``
types): a bad value is a usage error (exit 2): the sub-command's usage, then
one line naming the option and the value.  Problems found while running
(input that is not text, a name that does not exist) are user errors (exit 1).

Output for scripts: :func:`emit_json` writes one JSON document, and
:func:`emit_message` one message (text, ``--raw`` bytes, or a JSON line).
Commands that wait for messages wait through :func:`wait_sliced`, which
notices a reader that went away (``shmlink sub t | head -1``) between
messages, not only at the next write.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import json
import math
import os
import re
import select
import sys
import time
from fractions import Fraction
from typing import Any, Callable, Mapping, NoReturn, TypeVar

from ..errors import ShmlinkError, Timeout
from ..segment import KIND_CLASSES, Segment, info

__all__ = ["Parser", "UsageError", "UserError", "out", "age", "table", "shown", "parse_size",
           "size_arg", "mode_arg", "timeout_arg", "count_arg", "offset_arg", "encoding_arg",
           "text_arg", "input_bytes", "decode_input", "encode_text", "open_any", "open_segment",
           "emit_json", "message_json", "emit_message", "human_size", "owner_name",
           "stdout_gone", "wait_sliced", "SLICE"]

_T = TypeVar("_T")


class UsageError(Exception):
    """A wrong combination of arguments: ``main`` reports it as a usage error (exit 2)."""


class UserError(Exception):
    """Input the command cannot use (not text, ...): ``main`` prints it on one line, exit 1."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors show its own usage, then one line (exit 2).

    Sub-command parsers are Parsers too, so ``shmlink create x`` shows the
    usage of ``shmlink create``, not of ``shmlink``.  ``commands`` maps each
    sub-command's name to its parser (set by ``build_parser``).
    """

    commands: Mapping[str, argparse.ArgumentParser] = {}
    #: True for a sub-command's parser (``build_parser`` sets it).
    is_command = False
    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A sub-command reads options and positionals in any order, and reports leftovers.

        ``shmlink send q --create 64k hello`` works (the message after an
        option), and an argument the sub-command does not take is its own
        usage error, shown with its own usage rather than ``shmlink``'s.
        """
        if not self.is_command or self._intermixing:  # (intermixed parsing calls us back)
            return super().parse_known_args(args, namespace)
        if any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions):
            # argparse cannot intermix around nested sub-commands or a REMAINDER
            ns, extras = super().parse_known_args(args, namespace)
        else:
            self._intermixing = True
            try:
                ns, extras = super().parse_known_intermixed_args(args, namespace)
            finally:
                self._intermixing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {line} "
                     f"(see '{self.prog} --help')\n")


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


def table(rows: list[list[str]], header: list[str], indent: str = "") -> None:
    """Print ``rows`` under ``header`` in left-aligned columns, each line after ``indent``."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out(indent + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        out(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


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
    cls: Any = KIND_CLASSES.get(si.kind)
    if cls is None:
        raise ShmlinkError(f"{name!r} is a {si.kind}, which this shmlink cannot open")
    if si.kind == "segment":
        return cls.open(name, readonly=readonly)
    return cls.open(name)


def open_segment(name: str, readonly: bool = False) -> Segment:
    """Open a plain segment by name."""
    return Segment.open(name, readonly=readonly)


# --- output for people and scripts -------------------------------------------------------------


def emit_json(obj: Any) -> None:
    """Write ``obj`` as one indented JSON document (numbers as numbers, no NaN)."""
    out(json.dumps(obj, indent=2, allow_nan=False))


def message_json(data: bytes, encoding: str = "utf-8") -> dict[str, Any]:
    """The keys every message carries in ``--json`` output.

    ``length`` (bytes), ``text`` (the bytes decoded with ``encoding``, or
    None when they are not valid in it) and ``base64`` (the bytes, always).
    """
    try:
        text: str | None = data.decode(encoding)
    except UnicodeDecodeError:
        text = None
    return {"length": len(data), "text": text, "base64": base64.b64encode(data).decode("ascii")}


def emit_message(data: bytes, a: argparse.Namespace, **extra: Any) -> None:
    """Print one received message: a JSON line (``--json``), the bytes (``--raw``) or text.

    ``extra`` goes first in the JSON object (``seq``, ``version`` ...).  Text
    is decoded with ``a.encoding`` (UTF-8 when the command has none), bytes
    that are not valid shown as ``\\xNN`` escapes.
    """
    encoding = getattr(a, "encoding", None) or "utf-8"
    if getattr(a, "json", False):
        line = json.dumps({**extra, **message_json(data, encoding)}, allow_nan=False)
        sys.stdout.write(line + "\n")
    elif getattr(a, "raw", False):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data.decode(encoding, "backslashreplace") + "\n")
    sys.stdout.flush()


_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def human_size(n: int) -> str:
    """``n`` bytes as a person would have typed it: ``64 KiB (65536 bytes)``, ``100 bytes``.

    A unit is used only when ``n`` is a whole number of it, so the value
    shown is exact (and :func:`parse_size` reads it back).
    """
    for unit, label in _UNITS:
        if n >= unit and n % unit == 0:
            return f"{n // unit} {label} ({n} bytes)"
    return f"{n} byte" + ("" if n == 1 else "s")


def owner_name(uid: int) -> str:
    """The user name of ``uid`` (its number when the system has no name for it)."""
    if uid < 0:
        return "?"
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


# --- waiting in a pipeline ---------------------------------------------------------------------

#: Longest single wait of a command that waits for messages: how soon it notices that
#: the reader of its stdout went away.
SLICE = 0.25


def stdout_gone() -> bool:
    """True when nobody can read our stdout any more (the pipe's reader exited).

    A pipe whose reader closed reports POLLERR to its writer; a socket or
    terminal that hung up reports POLLHUP.  A regular file or an in-memory
    stream never is gone.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    p = select.poll()
    p.register(fd, 0)  # POLLERR, POLLHUP and POLLNVAL are reported whatever the mask
    try:
        events = p.poll(0)
    except OSError:
        return False
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events)


def wait_sliced(call: Callable[..., _T], timeout: float | None, what: str) -> _T:
    """``call(timeout=...)`` in slices of at most :data:`SLICE` seconds until it returns.

    Between slices it checks that stdout still has a reader: a command at
    the head of ``| head -1`` ends (BrokenPipeError, which ``main`` turns
    into a quiet exit 0) as soon as ``head`` exits, not at the next message.

    Parameters
    ----------
    call : callable
        A blocking call with a ``timeout=`` keyword that raises
        :class:`~shmlink.Timeout` when it runs out (``queue.recv`` ...).
    timeout : float or None
        The whole wait in seconds (None: no limit).
    what : str
        What did not come, for the message when ``timeout`` runs out
        (``"queue 'q': no message"``).

    Raises
    ------
    Timeout
        After ``timeout`` seconds, with a message naming the whole wait
        and the option that sets it.
    BrokenPipeError
        When stdout's reader went away.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
        try:
            return call(timeout=left)
        except Timeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"{what} within {timeout:g} s; pass a longer --timeout, or leave "
                              "it out to wait without a limit") from None
        if stdout_gone():
            raise BrokenPipeError(32, "the reader of stdout went away")
