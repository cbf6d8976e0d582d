"""``shmlink ls | info | create | write | read | clear | rm | gc``: segments of any kind."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from typing import Any

from ..errors import ShmlinkError
from ..segment import Segment, SegmentInfo, gc, info, list_segments, remove
from . import bridge
from ._common import (age, decode_input, emit_json, encode_text, encoding_arg, human_size,
                      input_bytes, message_json, mode_arg, offset_arg, open_any, open_segment,
                      out, owner_name, size_arg, table, text_arg)
from ._advice import advise
from ._reference import OBJECT_KEYS


def _object_json(si: SegmentInfo) -> dict[str, Any]:
    """The keys ``ls --json`` gives for one object (``_reference.OBJECT_KEYS``)."""
    d = si.as_dict()
    d["owner"] = owner_name(si.uid)
    return {k: d[k] for k, _, _ in OBJECT_KEYS}


def cmd_ls(a: argparse.Namespace) -> None:
    items = list_segments()
    if a.json:
        emit_json([_object_json(i) for i in items])
        return
    if not items:
        out("no shmlink segments")
        return
    rows = []
    for i in items:
        if i.error:
            rows.append([owner_name(i.uid), f"{i.mode:04o}", str(i.size), "invalid", "-", "-",
                         "-", f"{i.name}  (`shmlink info {i.name}` says why)"])
            continue
        users = ",".join(map(str, i.participants)) or ("(in use)" if i.in_use else "-")
        name = i.name
        if i.dead_participants:
            name += f"  (dead: {','.join(map(str, i.dead_participants))})"
        note = bridge.ls_note(i)
        if note:
            name += f"  ({note})"
        rows.append([owner_name(i.uid), f"{i.mode:04o}", str(i.size), i.kind, i.lifetime,
                     age(i.age), users, name])
    table(rows, ["OWNER", "MODE", "SIZE", "KIND", "LIFETIME", "AGE", "PIDS", "NAME"])


#: Keys that this side of a connection keeps for itself: an inspecting handle always says 0.
_OWN_END_KEYS = ("dropped", "buffered_bytes", "max_buffered")


def _state_of(si: SegmentInfo) -> tuple[dict[str, Any] | None, str | None]:
    """The object's ``stats()`` (``{}`` for a plain segment) and why it is None when it is."""
    if si.error:
        return None, None
    if si.kind == "segment":
        return {}, None
    try:
        obj = open_any(si.name)
    except ShmlinkError as e:
        return None, str(e)
    try:
        stats = {**dict(obj.stats()), **bridge.info_state(si)}
    finally:
        obj.close()
    if si.kind == "connection":
        for k in _OWN_END_KEYS:
            stats.pop(k, None)
    return stats, None


def _info_json(si: SegmentInfo) -> dict[str, Any]:
    state, why = _state_of(si)
    return {**_object_json(si), "state": state, "state_error": why}


#: ``stats()`` keys that are sizes in bytes (shown as 64 KiB (65536 bytes)).
_SIZES = {"size", "capacity", "max_message_size", "used_bytes", "length", "buffered_bytes",
          "max_buffered"}


def _shown(key: str, value: Any) -> str:
    """One state value as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in _SIZES and isinstance(value, int):
        return human_size(value)
    if key.endswith("_pid"):
        return f"PID {value}"
    return str(value)


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _rows_of(kind: str, key: str, value: Any) -> tuple[str, list[list[str]], list[str]] | None:
    """A state value that is a list or a pair of ends, as (summary, rows, header); else None."""
    if kind == "topic" and key == "subscribers":
        rows = [[str(s["slot"]), str(s["pid"]), _yes(s["alive"]), str(s["lag"]),
                 str(s["missed"]), str(s["received"])] for s in value]
        return str(len(value)), rows, ["SLOT", "PID", "ALIVE", "LAG", "MISSED", "RECEIVED"]
    if key == "routes" and isinstance(value, list):  # a bridge's status board (cli/bridge.py)
        rows = [[str(r["route"]), str(r["mode"]), _yes(r["connected"]), str(r["forwarded"]),
                 str(r["lag"]), str(r["missed"]), str(r["retransmitted"]), str(r["duplicates"]),
                 str(r["error"] or "-")] for r in value]
        return str(len(value)), rows, ["ROUTE", "MODE", "CONNECTED", "FORWARDED", "LAG",
                                       "MISSED", "RESENT", "DUPLICATES", "ERROR"]
    if kind == "listener" and key == "clients":
        rows = []
        for c in value:
            state = c["accept"]
            if state == "accepted":
                state = "closing" if c["client_closed"] or c["server_closed"] else "connected"
            rows.append([str(c["client_pid"] or "-"), _yes(c["client_alive"]), state, c["name"]])
        return str(len(value)), rows, ["PID", "ALIVE", "STATE", "CONNECTION"]
    return None


def _print_state(kind: str, state: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The state as (label, value, table or None) lines, in ``stats()`` order."""
    lines: list[tuple[str, str, Any]] = []
    if kind == "connection":
        ends = [[end, _shown("pid", state[f"{end}_pid"]), _yes(state[f"{end}_alive"]),
                 _yes(state[f"{end}_closed"])] for end in ("client", "server")]
        lines.append(("accept", str(state["accept"]), None))
        lines.append(("ends", "", (ends, ["END", "PID", "ALIVE", "CLOSED"])))
        traffic = []
        for key in ("client_to_server", "server_to_client"):
            d = state.get(key)
            if d is not None:
                traffic.append([key.replace("_", " "), str(d["sent"]), str(d["received"]),
                                str(d["depth"])])
        lines.append(("messages", "", (traffic, ["DIRECTION", "SENT", "RECEIVED", "DEPTH"])))
        return lines
    for key, value in state.items():
        rows = _rows_of(kind, key, value)
        label = key.replace("_", " ")
        if rows is not None:
            summary, body, header = rows
            lines.append((label, summary, (body, header) if body else None))
        else:
            lines.append((label, _shown(key, value), None))
    return lines


def cmd_info(a: argparse.Namespace) -> None:
    si = info(a.name)
    if a.json:
        emit_json(_info_json(si))
        return
    _print_info(si)


def _print_info(si: SegmentInfo) -> None:
    lines: list[tuple[str, str, Any]] = [
        ("name", si.name, None), ("kind", si.kind, None), ("path", si.path, None),
        ("owner", f"{owner_name(si.uid)} (uid {si.uid})", None),
        ("mode", f"{si.mode:04o}", None),
    ]
    if si.error:
        lines.append(("error", si.error, None))
    else:
        created = _dt.datetime.fromtimestamp(si.created).isoformat(sep=" ", timespec="seconds") \
            if si.created else "?"
        lines += [
            ("size", human_size(si.size), None),
            ("creator", f"PID {si.creator_pid}", None),
            ("created", f"{created} ({age(si.age)} ago)", None),
            ("lifetime", si.lifetime, None),
            ("participants", ", ".join(map(str, si.participants)) or "-", None),
        ]
        if si.dead_participants:
            lines.append(("dead", ", ".join(map(str, si.dead_participants)), None))
        lines.append(("in use", "yes" if si.in_use else "no", None))
        state, why = _state_of(si)
        if why is not None:
            lines.append(("state", f"unreadable: {why}", None))
        elif state:
            lines += _print_state(si.kind, state)
    width = max(len(label) for label, _, _ in lines) + 2
    for label, value, rows in lines:
        out(f"{label + ':':<{width}}{value}".rstrip())
        if rows is not None:
            body, header = rows
            table(body, header, indent="  ")


def cmd_create(a: argparse.Namespace) -> None:
    seg = Segment.create(a.name, a.size, mode=a.mode, lifetime=a.lifetime)
    try:
        if a.json:
            emit_json(_info_json(info(a.name)))
        else:
            out(f"created {seg.name!r}: {human_size(seg.size)} at {seg.path}")
    finally:
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
        if a.json:
            if a.length is not None:
                data = seg.read(a.offset, a.length)
            else:  # the bytes of the text the default output prints: up to its NUL
                text = seg.read_text(a.encoding, a.offset, errors="surrogateescape")
                data = text.encode(a.encoding, "surrogateescape")
            emit_json({"name": a.name, "offset": a.offset, "encoding": a.encoding,
                       **message_json(data, a.encoding)})
        elif a.raw or a.hex:
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
                print(f"shmlink: error: {advise(str(e), 'rm')}", file=sys.stderr)
                rc = 1
    return rc


def cmd_gc(a: argparse.Namespace) -> None:
    removed = gc(dry_run=a.dry_run)
    if a.json:
        emit_json({"removed": removed, "dry_run": a.dry_run})
        return
    verb = "would remove" if a.dry_run else "removed"
    if not removed:
        out("nothing to collect")
    for n in removed:
        out(f"{verb} {n}")


def add_parsers(sub: Any) -> None:
    """Add ``ls``, ``info``, ``create``, ``write``, ``read``, ``clear``, ``rm`` and ``gc``."""
    s = sub.add_parser("ls", help="list objects with owner, mode, size and kind (--json for scripts)")
    s.add_argument("--json", action="store_true", help="a JSON list (keys below)")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("info", help="show one object's header and state")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="a JSON object (keys below)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("create", help="create a plain segment")
    s.add_argument("name")
    s.add_argument("size", type=size_arg, help="bytes (4096, 64k, 1M ...)")
    s.add_argument("--mode", type=mode_arg, default=0o600,
                   help="octal permission bits (default 600)")
    s.add_argument("--lifetime", choices=["persist", "auto"], default="persist")
    s.add_argument("--json", action="store_true", help="print what info --json prints")
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
    g.add_argument("--json", action="store_true",
                   help="a JSON object: the text (or --length bytes) and their base64")
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
    s.add_argument("--json", action="store_true", help="a JSON object (keys below)")
    s.set_defaults(func=cmd_gc)
