"""``shmlink bridge``: run routes that carry local objects to other hosts over Zenoh.

Also what ``shmlink ls`` and ``shmlink info`` show of a running bridge: its
status board ``bridge.<name>`` holds its routes and their state.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from ..errors import ShmlinkError
from ._common import count_arg, out, size_arg, timeout_arg

def _state(name: str, kind: str) -> dict[str, Any] | None:
    """The state on a bridge's status board ``name``; None if it is not one ({} unreadable)."""
    from ..bridge import STATUS_PREFIX, read_status
    if kind != "board" or not name.startswith(STATUS_PREFIX):
        return None
    try:
        return read_status(name)
    except (ShmlinkError, ValueError):
        return {}


def ls_note(si: Any) -> str:
    """For ``shmlink ls``: ``bridge: 2 routes, 2 connected`` on a bridge's status board
    (``bridge: not running`` for a killed one's), "" on any other segment."""
    state = _state(si.name, si.kind)
    if state is None:
        return ""
    if not state.get("running", False):
        return "bridge: not running"
    routes = state.get("routes", [])
    up = sum(1 for r in routes if r.get("connected"))
    return f"bridge: {len(routes)} route{'s' if len(routes) != 1 else ''}, {up} connected"


def info_state(si: Any) -> dict[str, Any]:
    """For ``shmlink info``: ``running`` and the routes (one dict each: route, mode,
    connected, forwarded, lag, missed, retransmitted, duplicates, error) of a bridge's status
    board, {} on any other segment."""
    state = _state(si.name, si.kind)
    if state is None:
        return {}
    keys = ("route", "mode", "connected", "forwarded", "lag", "missed", "retransmitted",
            "duplicates", "error")
    return {"running": state.get("running", False),
            "routes": [{k: r.get(k) for k in keys} for r in state.get("routes", [])]}


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("shmlink bridge: %(levelname)s: %(message)s"))
    lg = logging.getLogger("shmlink.bridge")
    lg.handlers[:] = [handler]
    lg.setLevel(level)
    lg.propagate = False


def _keep_freed_buffers() -> None:
    """Let glibc keep the bridge's freed frame buffers (up to 1 MiB each, several per frame:
    the frame, Zenoh's copy, the receiver's bytes) in the heap: by default each is a fresh
    mmap whose page faults cost more than the copy (2x at 64 KiB messages).  The bridge owns
    its process, so this is its setting to make; elsewhere (not glibc) it does nothing."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def cmd_bridge(a: argparse.Namespace) -> int:
    try:
        from .. import bridge as B
    except ImportError as e:  # pragma: no cover - the package imports only the standard library
        raise ShmlinkError(f"the bridge cannot load: {e}") from None
    routes = [B.parse_route("export", t) for t in a.export] + \
             [B.parse_route("import", t) for t in a.import_]
    cfg = B.load_config(a.config, routes=routes, name=a.name, listen=a.listen or None,
                        connect=a.connect or None, window=a.window,
                        window_bytes=a.window_bytes, connect_timeout=a.connect_timeout,
                        lease=a.lease, scouting=True if a.scouting else None)
    _setup_logging(-1 if a.quiet else a.verbose)
    _keep_freed_buffers()
    stop = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        stop.set()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with B.Bridge(cfg) as bridge:
            logging.getLogger("shmlink.bridge").info(
                "bridge %s running %d route(s); status: shmlink info %s%s", cfg.name,
                len(cfg.routes), B.STATUS_PREFIX, cfg.name)
            while not stop.is_set():
                if bridge.wait(0.2):
                    bad = [r for r in bridge.routes if r.error]
                    msg = "; ".join(f"{r.spec.label}: {r.error}" for r in bad)
                    print(f"shmlink: error: bridge {cfg.name!r}: {msg}", file=sys.stderr)
                    return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``bridge``."""
    s = sub.add_parser(
        "bridge", help="carry queues, topics and boards to other hosts over Zenoh",
        description="Run routes between local objects and Zenoh key expressions until "
                    "SIGTERM or Ctrl-C. Routes: KIND:OBJECT=KEY[,mode=lossless|latest]"
                    "[,capacity=SIZE], KIND one of queue, topic, board, connection. Needs "
                    "pip install 'shmlink[zenoh]'. State: shmlink info bridge.NAME")
    s.add_argument("--config", metavar="FILE", help="TOML file with [bridge] and [[route]] tables")
    s.add_argument("--name", help="this bridge's name (status board bridge.NAME)")
    s.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                   help="accept links on a Zenoh endpoint, e.g. tcp/0.0.0.0:7447 (repeatable)")
    s.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                   help="link to a Zenoh endpoint, e.g. tcp/10.0.0.2:7447 (repeatable)")
    s.add_argument("--export", action="append", default=[], metavar="KIND:OBJECT=KEY",
                   help="publish a local object on a key (repeatable)")
    s.add_argument("--import", dest="import_", action="append", default=[],
                   metavar="KIND:OBJECT=KEY", help="write a key into a local object (repeatable)")
    s.add_argument("--window", type=count_arg, help="lossless routes: messages in flight "
                   "(default 1024)")
    s.add_argument("--window-bytes", type=size_arg, help="lossless routes: bytes in flight "
                   "(default 32M)")
    s.add_argument("--connect-timeout", type=timeout_arg,
                   help="seconds to reach the connect endpoints at start (default 10)")
    s.add_argument("--lease", type=timeout_arg,
                   help="seconds a silent link is kept before it counts as cut (default 10)")
    s.add_argument("--scouting", action="store_true", help="find peers by multicast scouting")
    s.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    s.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    s.set_defaults(func=cmd_bridge)
