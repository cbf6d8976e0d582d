"""``shmlink ls | info | create | write | read | clear | rm | gc``: segments of any kind."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any

from ..errors import ShmlinkError
from ..segment import Segment, SegmentInfo, gc, info, list_segments, remove
from . import bridge
from ._common import (age, decode_input, encode_text, encoding_arg, input_bytes, mode_arg,
                      offset_arg, open_any, open_segment, out, size_arg, table, text_arg)


def cmd_ls(a: argparse.Namespace) -> None:
    items = list_segments()
    if a.json:
        out(json.dumps([i.as_dict() for i in items], indent=2))
        return
    if not items:
        out("no shmlink segments")
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
        extra = "  ".join(x for x in (extra, bridge.ls_note(i)) if x)
        rows.append([i.name, i.kind, str(i.size), str(i.creator_pid), users, age(i.age),
                     (i.lifetime + ("  " + extra if extra else ""))])
    table(rows, ["NAME", "KIND", "SIZE", "CREATOR", "PIDS", "AGE", "LIFETIME"])


def _state_of(si: SegmentInfo) -> dict[str, Any]:
    if si.error or si.kind == "segment":
        return {}
    try:
        obj = open_any(si.name)
    except ShmlinkError as e:
        return {"error": str(e)}
    try:
        stats = getattr(obj, "stats", None)
        return {**(stats() if stats else {}), **bridge.info_state(si)}
    finally:
        obj.close()


def cmd_info(a: argparse.Namespace) -> None:
    si = info(a.name)
    d = si.as_dict()
    d["state"] = _state_of(si)
    if a.json:
        out(json.dumps(d, indent=2, default=str))
        return
    created = _dt.datetime.fromtimestamp(si.created).isoformat(sep=" ", timespec="seconds") \
        if si.created else "?"
    out(f"name:          {si.name}")
    out(f"path:          {si.path}")
    out(f"kind:          {si.kind}")
    if si.error:
        out(f"error:         {si.error}")
        return
    out(f"size:          {si.size} bytes")
    out(f"creator:       PID {si.creator_pid}")
    out(f"created:       {created} ({age(si.age)} ago)")
    out(f"lifetime:      {si.lifetime}")
    out(f"participants:  {', '.join(map(str, si.participants)) or '-'}")
    if si.dead_participants:
        out(f"dead:          {', '.join(map(str, si.dead_participants))}")
    out(f"in use:        {'yes' if si.in_use else 'no'}")
    for k, v in d["state"].items():
        if isinstance(v, list):
            out(f"{k + ':':<15}{len(v)}")
            for item in v:
                out(f"  - {item}")
        else:
            out(f"{k + ':':<15}{v}")


def cmd_create(a: argparse.Namespace) -> None:
    seg = Segment.create(a.name, a.size, mode=a.mode, lifetime=a.lifetime)
    out(f"created {seg.name!r}: {seg.size} bytes at {seg.path}")
    seg.close()


def cmd_write(a: argparse.Namespace) -> None:
    seg = open_segment(a.name)
    try:
        data = input_bytes(a)
        if data is not None and a.binary:
            n = seg.write(data, offset=a.offset)
        else:
            text = a.text if data is None else decode_input(
                data, a, "pass --binary to write the bytes as they are")
            encode_text(text, a.encoding)  # a character the encoding lacks: one clear line
            n = seg.write_text(text, encoding=a.encoding, offset=a.offset)
        if a.verbose:
            out(f"wrote {n} bytes to {a.name!r}")
    finally:
        seg.close()


def cmd_read(a: argparse.Namespace) -> None:
    seg = open_segment(a.name, readonly=True)
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
                    out(f"{a.offset + i:08x}  {hexed:<47}  {text}")
        else:
            out(seg.read_text(a.encoding, a.offset))
    finally:
        seg.close()


def cmd_clear(a: argparse.Namespace) -> None:
    seg = open_segment(a.name)
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
        out(json.dumps({"removed" if not a.dry_run else "would_remove": removed}))
        return
    if not removed:
        out("nothing to collect")
    for n in removed:
        out(f"{verb} {n}")


def add_parsers(sub: Any) -> None:
    """Add ``ls``, ``info``, ``create``, ``write``, ``read``, ``clear``, ``rm`` and ``gc``."""
    s = sub.add_parser("ls", help="list segments (a table; --json for scripts)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="show one object's header and state")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("create", help="create a plain segment")
    s.add_argument("name")
    s.add_argument("size", type=size_arg, help="bytes (4096, 64k, 1M ...)")
    s.add_argument("--mode", type=mode_arg, default=0o600,
                   help="octal permission bits (default 600)")
    s.add_argument("--lifetime", choices=["persist", "auto"], default="persist")
    s.set_defaults(func=cmd_create)

    s = sub.add_parser("write", help="write NUL-terminated text (or bytes) into a segment")
    s.add_argument("name")
    s.add_argument("text", nargs="?", type=text_arg,
                   help="text to write; '-' or omitted: read stdin")
    s.add_argument("--file", help="write this file's contents ('-' = stdin)")
    s.add_argument("--binary", action="store_true", help="write the input bytes as they are")
    s.add_argument("--encoding", type=encoding_arg, default="utf-8",
                   help="text encoding (utf-8, latin-1, utf-16-le ...)")
    s.add_argument("--offset", type=offset_arg, default=0)
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_write)

    s = sub.add_parser("read", help="read a segment as text, hex, or raw bytes")
    s.add_argument("name")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--hex", action="store_true", help="hex dump")
    g.add_argument("--raw", action="store_true", help="raw bytes to stdout")
    s.add_argument("--encoding", type=encoding_arg, default="utf-8")
    s.add_argument("--offset", type=offset_arg, default=0)
    s.add_argument("--length", type=offset_arg, default=None)
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
