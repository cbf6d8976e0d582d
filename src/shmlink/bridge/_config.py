"""Bridge configuration: :class:`BridgeConfig` and :class:`RouteSpec`, from TOML or arguments.

A config file::

    [bridge]
    name = "host-a"                    # status board "bridge.host-a" (default: host-PID)
    listen = ["tcp/10.0.0.1:7447"]     # Zenoh endpoints this bridge accepts links on
    connect = ["tcp/10.0.0.2:7447"]    # endpoints it links to (retried after a cut)
    connect_timeout = 10               # seconds to reach them at start, else exit 1
    scouting = false                   # multicast scouting (off unless asked for)
    window = 1024                      # lossless routes: messages in flight
    window_bytes = 33554432            # ... and bytes in flight
    lease = 10                         # seconds a silent link lives (Zenoh's lease)

    [bridge.zenoh]                     # further Zenoh settings, "path/in/config" = value
    "transport/link/tx/batch_size" = 65535

    [[route]]
    export = "queue:jobs"              # or: import = "queue:jobs"
    key = "lab/jobs"                   # the Zenoh key expression (no wildcards)
    mode = "lossless"                  # topics: "lossless" or "latest"
    capacity = 1048576                 # import: used when the local object is created

TOML is read with :mod:`tomllib` (Python 3.11+) or the ``tomli`` package on 3.10
(part of the ``zenoh`` extra).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import BridgeConfigError

__all__ = ["RouteSpec", "BridgeConfig", "load_config", "parse_route", "KINDS", "MODES"]

KINDS = ("queue", "topic", "board", "connection")
#: the modes each kind allows; the first is the default
MODES = {"queue": ("lossless",), "topic": ("lossless", "latest"), "board": ("latest",),
         "connection": ("request",)}
_DEFAULT_CAPACITY = {"queue": 1 << 20, "topic": 1 << 20, "board": 1 << 16, "connection": 1 << 20}
_ROUTE_KEYS = {"export", "import", "key", "mode", "capacity"}
_BRIDGE_KEYS = {"name", "listen", "connect", "connect_timeout", "scouting", "window",
                "window_bytes", "lease", "zenoh"}
#: Zenoh settings the bridge decides itself (lossless routes depend on them)
_FIXED_ZENOH = {
    "transport/shared_memory/enabled": "the bytes must cross the link: Zenoh shared memory stays off",
    "transport/unicast/lowlatency": "the low-latency transport loses large messages",
    "mode": "bridges are Zenoh peers",
    "listen/endpoints": "use 'listen'",
    "connect/endpoints": "use 'connect'",
}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


@dataclass(frozen=True)
class RouteSpec:
    """One route: carry local ``kind`` ``object`` to (export) or from (import) Zenoh ``key``."""

    direction: str          # "export" | "import"
    kind: str               # "queue" | "topic" | "board" | "connection"
    object: str             # the local object's name
    key: str                # the Zenoh key expression
    mode: str               # "lossless" | "latest" | "request" (connections)
    capacity: int           # import: capacity of the local object if it is created

    @property
    def label(self) -> str:
        arrow = "->" if self.direction == "export" else "<-"
        return f"{self.kind}:{self.object} {arrow} {self.key}"


@dataclass
class BridgeConfig:
    """Everything one bridge process runs: its Zenoh session and its routes."""

    routes: list[RouteSpec] = field(default_factory=list)
    name: str = ""
    listen: list[str] = field(default_factory=list)
    connect: list[str] = field(default_factory=list)
    connect_timeout: float = 10.0
    scouting: bool = False
    window: int = 1024
    window_bytes: int = 32 << 20
    lease: float = 10.0
    zenoh: dict[str, Any] = field(default_factory=dict)

    def check(self, where: str = "the bridge configuration") -> "BridgeConfig":
        """Validate everything; BridgeConfigError naming ``where`` and the fix."""
        if not self.name:
            self.name = f"{socket.gethostname()}-{os.getpid()}"
        if not _NAME_RE.fullmatch(self.name):
            raise BridgeConfigError(f"{where}: name {self.name!r} must be 1-100 letters, digits, "
                                    "'_', '.' or '-'")
        for what in ("listen", "connect"):
            eps = getattr(self, what)
            if not isinstance(eps, list) or not all(isinstance(e, str) and "/" in e for e in eps):
                raise BridgeConfigError(f"{where}: {what} must be a list of Zenoh endpoints such "
                                        f"as \"tcp/10.0.0.2:7447\", not {eps!r}")
        if not self.routes:
            raise BridgeConfigError(f"{where}: no routes; add [[route]] tables or "
                                    "--export/--import options")
        _number(where, "connect_timeout", self.connect_timeout, 0.1, 3600)
        _number(where, "lease", self.lease, 0.5, 3600)
        _integer(where, "window", self.window, 1, 1 << 20)
        _integer(where, "window_bytes", self.window_bytes, 1 << 10, 1 << 40)
        if not isinstance(self.scouting, bool):
            raise BridgeConfigError(f"{where}: scouting must be true or false")
        if not isinstance(self.zenoh, dict):
            raise BridgeConfigError(f"{where}: [bridge.zenoh] must be a table of "
                                    "\"path/in/zenoh/config\" = value")
        for k in self.zenoh:
            for fixed, why in _FIXED_ZENOH.items():
                if k.strip("/") == fixed:
                    raise BridgeConfigError(f"{where}: [bridge.zenoh] may not set {k!r}: {why}")
        seen: dict[tuple[str, str], RouteSpec] = {}
        for r in self.routes:
            dk = (r.direction, r.key)
            if dk in seen:
                raise BridgeConfigError(f"{where}: routes {seen[dk].label!r} and {r.label!r} "
                                        f"both {r.direction} key {r.key!r}; give each its own key")
            seen[dk] = r
        return self


def _number(where: str, name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BridgeConfigError(f"{where}: {name} must be a number of seconds from {lo} to {hi}, "
                                f"not {value!r}")


def _integer(where: str, name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BridgeConfigError(f"{where}: {name} must be a whole number from {lo} to {hi}, "
                                f"not {value!r}")


def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str) or not key.strip("/"):
        raise BridgeConfigError(f"{where}: key must be a Zenoh key expression such as "
                                f"\"lab/jobs\", not {key!r}")
    if any(c in key for c in "*$?#") or key.startswith("/") or key.endswith("/") or "//" in key:
        raise BridgeConfigError(f"{where}: key {key!r} must be a plain key expression: chunks "
                                "separated by '/', no wildcards ('*', '**', '$*'), no '?' or '#'")
    if any(chunk.startswith("_shmlink") or chunk.startswith("@") for chunk in key.split("/")):
        raise BridgeConfigError(f"{where}: key {key!r}: chunks starting with '_shmlink' or '@' "
                                "are reserved")
    return key


def make_route(where: str, direction: str, target: Any, key: Any, mode: Any = None,
               capacity: Any = None) -> RouteSpec:
    """A checked :class:`RouteSpec`; ``target`` is ``"KIND:OBJECT"``."""
    if not isinstance(target, str) or ":" not in target:
        raise BridgeConfigError(f"{where}: {direction} must be \"KIND:OBJECT\" with KIND one of "
                                f"{', '.join(KINDS)} (example: \"queue:jobs\"), not {target!r}")
    kind, _, obj = target.partition(":")
    if kind not in KINDS:
        raise BridgeConfigError(f"{where}: {kind!r} is not a kind a route carries; use one of "
                                f"{', '.join(KINDS)}")
    if not _NAME_RE.fullmatch(obj):
        raise BridgeConfigError(f"{where}: object name {obj!r} must be 1-100 letters, digits, "
                                "'_', '.' or '-'")
    key = _check_key(where, key)
    allowed = MODES[kind]
    mode = allowed[0] if mode is None else mode
    if mode not in allowed:
        raise BridgeConfigError(f"{where}: a {kind} route's mode is {' or '.join(map(repr, allowed))}, "
                                f"not {mode!r}")
    capacity = _DEFAULT_CAPACITY[kind] if capacity is None else capacity
    if isinstance(capacity, str):
        capacity = _size(where, capacity)
    _integer(where, "capacity", capacity, 64, 1 << 40)
    return RouteSpec(direction, kind, obj, key, mode, capacity)


def _size(where: str, text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise BridgeConfigError(f"{where}: capacity {text!r} is not a size (4096, 64k, 1M)")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]


def parse_route(direction: str, text: str) -> RouteSpec:
    """A route from the command line: ``KIND:OBJECT=KEY[,mode=M][,capacity=C]``."""
    where = f"--{direction} {text!r}"
    head, *opts = text.split(",")
    if "=" not in head:
        raise BridgeConfigError(f"{where}: write KIND:OBJECT=KEY (example: queue:jobs=lab/jobs)")
    target, _, key = head.partition("=")
    extra: dict[str, str] = {}
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq or k not in ("mode", "capacity"):
            raise BridgeConfigError(f"{where}: options after the key are mode=... and "
                                    f"capacity=..., not {o!r}")
        extra[k] = v
    return make_route(where, direction, target, key, extra.get("mode"), extra.get("capacity"))


def _toml_load(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise BridgeConfigError(f"{path}: reading TOML on Python 3.10 needs the 'tomli' "
                                    "package: pip install 'shmlink[zenoh]'") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BridgeConfigError(f"config file {path!r} does not exist") from None
    except OSError as e:
        raise BridgeConfigError(f"config file {path!r} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BridgeConfigError(f"config file {path!r} is not valid TOML: {e}") from None


def load_config(path: str | None = None, *, routes: Iterable[RouteSpec] = (),
                **overrides: Any) -> BridgeConfig:
    """A checked :class:`BridgeConfig` from a TOML file, extra routes and overrides.

    Parameters
    ----------
    path : str, optional
        A TOML file (see the module docstring for its tables).
    routes : iterable of RouteSpec
        Routes added to the file's.
    **overrides
        Fields of :class:`BridgeConfig` that replace the file's (None: keep).

    Raises
    ------
    BridgeConfigError
        Naming the file, table and key at fault.
    """
    cfg = BridgeConfig()
    where = "the bridge configuration" if path is None else f"config file {path!r}"
    if path is not None:
        doc = _toml_load(path)
        unknown = set(doc) - {"bridge", "route"}
        if unknown:
            raise BridgeConfigError(f"{where}: unknown table(s) {sorted(unknown)}; the file has "
                                    "[bridge] and [[route]] tables")
        b = doc.get("bridge", {})
        if not isinstance(b, dict):
            raise BridgeConfigError(f"{where}: 'bridge' must be a table ([bridge])")
        bad = set(b) - _BRIDGE_KEYS
        if bad:
            raise BridgeConfigError(f"{where}: unknown key(s) {sorted(bad)} in [bridge]; known: "
                                    f"{', '.join(sorted(_BRIDGE_KEYS))}")
        for k, v in b.items():
            setattr(cfg, k, v)
        raw_routes = doc.get("route", [])
        if not isinstance(raw_routes, list):
            raise BridgeConfigError(f"{where}: routes are [[route]] tables")
        for i, r in enumerate(raw_routes, 1):
            rw = f"{where}, route {i}"
            bad = set(r) - _ROUTE_KEYS
            if bad:
                raise BridgeConfigError(f"{rw}: unknown key(s) {sorted(bad)}; known: "
                                        f"{', '.join(sorted(_ROUTE_KEYS))}")
            dirs = [d for d in ("export", "import") if d in r]
            if len(dirs) != 1:
                raise BridgeConfigError(f"{rw}: give exactly one of export = \"KIND:OBJECT\" or "
                                        "import = \"KIND:OBJECT\"")
            if "key" not in r:
                raise BridgeConfigError(f"{rw}: key = \"...\" (the Zenoh key expression) is missing")
            cfg.routes.append(make_route(rw, dirs[0], r[dirs[0]], r["key"], r.get("mode"),
                                         r.get("capacity")))
    cfg.routes.extend(routes)
    for k, v in overrides.items():
        if v is not None:
            if not hasattr(cfg, k):
                raise TypeError(f"load_config() got an unknown setting {k!r}")
            setattr(cfg, k, v)
    return cfg.check(where)
