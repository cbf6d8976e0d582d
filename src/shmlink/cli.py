"""The ``shmlink`` command: named shared memory from the shell and other languages.

User errors print one line on stderr (``shmlink: error: ...``) and exit 1;
usage errors exit 2; Ctrl-C exits 130.  ``--json`` output is for scripts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

from . import __version__
from ._commands import COMMANDS as _COMMANDS
from ._commands import command
from .errors import ShmlinkError
from .segment import KIND_CLASSES, SegmentInfo, gc, info, list_segments, remove

__all__ = ["main", "command"]

class UsageError(Exception):
    pass


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    _out("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        _out("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _open_any(name: str, readonly: bool = False) -> Any:
    """Open a named object with the class its header says it is."""
    si = info(name)
    if si.error:
        raise ShmlinkError(si.error)
    _load_kinds()
    cls = KIND_CLASSES.get(si.kind)
    if cls is None:
        raise ShmlinkError(f"{name!r} is a {si.kind}, which this shmlink cannot open")
    if si.kind == "segment":
        return cls.open(name, readonly=readonly)
    return cls.open(name)


def _load_kinds() -> None:
    import importlib

    for mod in ("queue", "sync", "topic", "board", "connection"):
        try:
            importlib.import_module(f"shmlink.{mod}")
        except ImportError:
            pass


def _segment(name: str, readonly: bool = False) -> Any:
    from .segment import Segment
    return Segment.open(name, readonly=readonly)


# --- commands -----------------------------------------------------------------


def cmd_ls(a: argparse.Namespace) -> None:
    items = list_segments()
    if a.json:
        _out(json.dumps([i.as_dict() for i in items], indent=2))
        return
    if not items:
        _out("no shmlink segments")
        return
    rows = []
    for i in items:
        if i.error:
            rows.append([i.name, "invalid", str(i.size), "-", "-", "-", i.error[:60]])
            continue
        users = ",".join(map(str, i.participants)) or ("(in use)" if i.in_use else "-")
        extra = ""
        if i.dead_participants:
            extra = f"dead: {','.join(map(str, i.dead_participants))}"
        rows.append([i.name, i.kind, str(i.size), str(i.creator_pid), users, _age(i.age),
                     (i.lifetime + ("  " + extra if extra else ""))])
    _table(rows, ["NAME", "KIND", "SIZE", "CREATOR", "PIDS", "AGE", "LIFETIME"])


def _state_of(si: SegmentInfo) -> dict[str, Any]:
    if si.error or si.kind == "segment":
        return {}
    try:
        obj = _open_any(si.name)
    except ShmlinkError as e:
        return {"error": str(e)}
    try:
        state = getattr(obj, "stats", None) or getattr(obj, "state", None)
        return state() if state else {}
    finally:
        obj.close()


def cmd_info(a: argparse.Namespace) -> None:
    si = info(a.name)
    d = si.as_dict()
    d["state"] = _state_of(si)
    if a.json:
        _out(json.dumps(d, indent=2, default=str))
        return
    created = _dt.datetime.fromtimestamp(si.created).isoformat(sep=" ", timespec="seconds") \
        if si.created else "?"
    _out(f"name:          {si.name}")
    _out(f"path:          {si.path}")
    _out(f"kind:          {si.kind}")
    if si.error:
        _out(f"error:         {si.error}")
        return
    _out(f"size:          {si.size} bytes")
    _out(f"creator:       PID {si.creator_pid}")
    _out(f"created:       {created} ({_age(si.age)} ago)")
    _out(f"lifetime:      {si.lifetime}")
    _out(f"participants:  {', '.join(map(str, si.participants)) or '-'}")
    if si.dead_participants:
        _out(f"dead:          {', '.join(map(str, si.dead_participants))}")
    _out(f"in use:        {'yes' if si.in_use else 'no'}")
    for k, v in d["state"].items():
        if isinstance(v, list):
            _out(f"{k + ':':<15}{len(v)}")
            for item in v:
                _out(f"  - {item}")
        else:
            _out(f"{k + ':':<15}{v}")


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise UsageError(f"size {text!r} is not a number of bytes (examples: 4096, 64k, 1M)")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)])


def cmd_create(a: argparse.Namespace) -> None:
    from .segment import Segment
    seg = Segment.create(a.name, _parse_size(a.size), mode=int(a.mode, 8), lifetime=a.lifetime)
    _out(f"created {seg.name!r}: {seg.size} bytes at {seg.path}")
    seg.close()


def _input_bytes(a: argparse.Namespace) -> bytes | None:
    if a.file is not None:
        if a.file == "-":
            return sys.stdin.buffer.read()
        with open(a.file, "rb") as f:
            return f.read()
    if a.text is None or a.text == "-":
        return sys.stdin.buffer.read()
    return None


def cmd_write(a: argparse.Namespace) -> None:
    seg = _segment(a.name)
    try:
        data = _input_bytes(a)
        if data is None:
            n = seg.write_text(a.text, encoding=a.encoding, offset=a.offset)
        elif a.binary:
            n = seg.write(data, offset=a.offset)
        else:
            n = seg.write_text(data.decode("utf-8"), encoding=a.encoding, offset=a.offset)
        _out(f"wrote {n} bytes to {a.name!r}") if a.verbose else None
    finally:
        seg.close()


def cmd_read(a: argparse.Namespace) -> None:
    seg = _segment(a.name, readonly=True)
    try:
        if a.raw or a.hex:
            data = seg.read(a.offset, a.length)
            if a.raw:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                for i in range(0, len(data), 16):
                    chunk = data[i:i + 16]
                    hexed = " ".join(f"{b:02x}" for b in chunk)
                    text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
                    _out(f"{a.offset + i:08x}  {hexed:<47}  {text}")
        else:
            _out(seg.read_text(a.encoding, a.offset))
    finally:
        seg.close()


def cmd_clear(a: argparse.Namespace) -> None:
    seg = _segment(a.name)
    try:
        seg.clear()
    finally:
        seg.close()


def cmd_rm(a: argparse.Namespace) -> int:
    rc = 0
    for n in a.names:
        try:
            remove(n)
        except FileNotFoundError as e:
            if not a.force:
                print(f"shmlink: error: {e}", file=sys.stderr)
                rc = 1
    return rc


def cmd_gc(a: argparse.Namespace) -> None:
    removed = gc(dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    if a.json:
        _out(json.dumps({"removed" if not a.dry_run else "would_remove": removed}))
        return
    if not removed:
        _out("nothing to collect")
    for n in removed:
        _out(f"{verb} {n}")


def cmd_send(a: argparse.Namespace) -> None:
    from .queue import Queue
    if a.create:
        q = Queue.create_or_open(a.queue, _parse_size(a.create))
    else:
        q = Queue.open(a.queue)
    try:
        data = _input_bytes(a)
        q.send(a.text.encode() if data is None else data, timeout=a.timeout)
    finally:
        q.close()


def cmd_recv(a: argparse.Namespace) -> None:
    from .queue import Queue
    q = Queue.open(a.queue)
    try:
        got = 0
        while a.follow or got < a.count:
            msg = q.recv(timeout=None if a.follow and a.timeout is None else a.timeout)
            got += 1
            if a.raw:
                sys.stdout.buffer.write(msg)
                sys.stdout.flush()
            else:
                _out(msg.decode("utf-8", "backslashreplace"))
    finally:
        q.close()


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(rounds=a.rounds)


def cmd_bench(a: argparse.Namespace) -> int:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the suite lives in a source checkout
    try:
        import benchmarks
    except ImportError:
        here = os.getcwd()
        raise ShmlinkError(
            f"the benchmark suite is not importable from {here}; run `shmlink bench` "
            "(or `python -m benchmarks`) from a shmlink source checkout"
        ) from None
    args = list(a.args)
    if args[:1] == ["--"]:
        args = args[1:]
    return benchmarks.main(args) or 0


# --- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shmlink",
        description="Inspect and use shmlink named shared memory: segments, queues, topics, boards.",
    )
    p.add_argument("--version", action="version", version=f"shmlink {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("ls", help="list segments (a table; --json for scripts)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="show one object's header and state")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("create", help="create a plain segment")
    s.add_argument("name")
    s.add_argument("size", help="bytes (4096, 64k, 1M ...)")
    s.add_argument("--mode", default="600", help="octal permission bits (default 600)")
    s.add_argument("--lifetime", choices=["persist", "auto"], default="persist")
    s.set_defaults(func=cmd_create)

    s = sub.add_parser("write", help="write NUL-terminated text (or bytes) into a segment")
    s.add_argument("name")
    s.add_argument("text", nargs="?", help="text to write; '-' or omitted: read stdin")
    s.add_argument("--file", help="write this file's contents ('-' = stdin)")
    s.add_argument("--binary", action="store_true", help="write the input bytes as they are")
    s.add_argument("--encoding", default="utf-8", help="text encoding (utf-8, latin-1, utf-16-le ...)")
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_write)

    s = sub.add_parser("read", help="read a segment as text, hex, or raw bytes")
    s.add_argument("name")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--hex", action="store_true", help="hex dump")
    g.add_argument("--raw", action="store_true", help="raw bytes to stdout")
    s.add_argument("--encoding", default="utf-8")
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--length", type=int, default=None)
    s.set_defaults(func=cmd_read)

    s = sub.add_parser("clear", help="zero a segment's data")
    s.add_argument("name")
    s.set_defaults(func=cmd_clear)

    s = sub.add_parser("rm", help="remove objects by name")
    s.add_argument("names", nargs="+")
    s.add_argument("-f", "--force", action="store_true", help="ignore missing names")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("gc", help="remove segments whose participants are all dead")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("send", help="send a message to a queue")
    s.add_argument("queue")
    s.add_argument("text", nargs="?", help="message; '-' or omitted: read stdin")
    s.add_argument("--file", help="send this file's contents")
    s.add_argument("--create", metavar="CAPACITY", help="create the queue if missing")
    s.add_argument("--timeout", type=float, default=None)
    s.set_defaults(func=cmd_send)

    s = sub.add_parser("recv", help="receive messages from a queue")
    s.add_argument("queue")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--follow", action="store_true", help="keep receiving until Ctrl-C")
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--raw", action="store_true", help="write raw bytes, no newline")
    s.set_defaults(func=cmd_recv)

    s = sub.add_parser("demo", help="two processes exchanging text through shared memory")
    s.add_argument("--rounds", type=int, default=3)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bench", help="run the benchmark suite (source checkout; "
                       "`shmlink bench --help` for its options)", add_help=False)
    s.set_defaults(func=cmd_bench, args=[])

    _load_kinds()  # lets messaging modules register their commands
    for cname, (chelp, setup, run) in sorted(_COMMANDS.items()):
        s = sub.add_parser(cname, help=chelp)
        setup(s)
        s.set_defaults(func=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shmlink`` command; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # everything after "bench" belongs to the benchmark suite's own parser
        args = argparse.Namespace(func=cmd_bench, args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except UsageError as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (ShmlinkError, OSError) as e:
        print(f"shmlink: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
