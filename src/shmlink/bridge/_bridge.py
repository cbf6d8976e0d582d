"""One bridge process: a Zenoh session, its routes, and a status board others can read."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from ..board import Board
from ..errors import (BridgeConfigError, EndpointUnreachable, SegmentExists, SegmentNotFound,
                      ShmlinkError)
from ..segment import info, remove
from ._config import BridgeConfig
from ._routes import Route, make_route

log = logging.getLogger("shmlink.bridge")

__all__ = ["Bridge", "STATUS_PREFIX", "STATUS_CAPACITY", "read_status", "zenoh_config"]

#: a bridge's status board is named STATUS_PREFIX + its name
STATUS_PREFIX = "bridge."
STATUS_CAPACITY = 64 << 10
STATUS_EVERY_S = 0.5


def _import_zenoh() -> Any:
    try:
        import zenoh
    except ImportError:
        raise ShmlinkError("the bridge needs Eclipse Zenoh: pip install 'shmlink[zenoh]'") from None
    return zenoh


def zenoh_config(cfg: BridgeConfig) -> Any:
    """The ``zenoh.Config`` of a bridge: a peer, explicit endpoints, no shared memory."""
    zenoh = _import_zenoh()
    c = zenoh.Config()
    settings: list[tuple[str, Any]] = [
        ("mode", "peer"),
        ("scouting/multicast/enabled", cfg.scouting),
        # the bytes must really cross the link, and large messages must not vanish
        ("transport/shared_memory/enabled", False),
        ("transport/unicast/lowlatency", False),
        ("listen/endpoints", cfg.listen),
        ("listen/exit_on_failure", True),
        ("connect/endpoints", cfg.connect),
        # after a cut, links to the connect endpoints are tried again every 0.25 .. 2 s
        ("connect/retry", {"period_init_ms": 250, "period_max_ms": 2000,
                           "period_increase_factor": 2}),
        ("transport/link/tx/lease", int(cfg.lease * 1000)),
        ("transport/link/tx/keep_alive", 4),
    ]
    if cfg.connect:
        settings += [("connect/timeout_ms", int(cfg.connect_timeout * 1000)),
                     ("connect/exit_on_failure", True)]
    settings += list(cfg.zenoh.items())
    for key, value in settings:
        try:
            c.insert_json5(key, json.dumps(value))
        except Exception as e:  # zenoh.ZError
            raise BridgeConfigError(f"Zenoh setting {key!r} = {value!r} is refused: "
                                    f"{str(e).split(' at ')[0]}") from None
    return c


def read_status(name: str) -> dict[str, Any]:
    """The status a bridge publishes on its board ``name`` (``bridge.<bridge name>``).

    ``running`` says whether the bridge process that wrote it is alive: a killed bridge's
    board keeps its last state until ``shmlink gc`` or a restarted bridge replaces it.
    """
    with Board.open(name) as b:
        raw = b.read()
    if not raw:
        return {}
    state: dict[str, Any] = json.loads(raw.decode("utf-8"))
    state["running"] = _pid_alive(state.get("pid"))
    return state


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Bridge:
    """Runs a :class:`BridgeConfig`: opens the Zenoh session and every route.

    Use as a context manager, or :meth:`start` / :meth:`close`.  The bridge
    publishes its state on the board ``bridge.<name>`` (``shmlink info``).

    Raises
    ------
    EndpointUnreachable
        The Zenoh session could not be opened (a connect endpoint did not
        answer within ``connect_timeout``, a listen endpoint is taken).
    SegmentNotFound
        An exported object does not exist.
    BridgeConfigError
        A setting Zenoh refuses, or a bridge of the same name is running.
    """

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.session: Any = None
        self.routes: list[Route] = []
        self.failed = threading.Event()
        self._stop = threading.Event()
        self._board: Board | None = None
        self._status_thread: threading.Thread | None = None
        self.started = time.time()

    def start(self) -> "Bridge":
        cfg = self.config
        zenoh = _import_zenoh()
        zc = zenoh_config(cfg)
        self._board = self._open_status_board()
        try:
            try:
                self.session = zenoh.open(zc)
            except Exception as e:  # zenoh.ZError
                what = str(e).split(" at /")[0]
                raise EndpointUnreachable(
                    f"bridge {cfg.name!r}: the Zenoh session did not open ({what}); check that "
                    f"listen {cfg.listen} is free here and that a bridge listens on connect "
                    f"{cfg.connect} (connect_timeout {cfg.connect_timeout} s)") from None
            log.info("bridge %s: zenoh session %s, listen %s, connect %s", cfg.name,
                     self.session.zid(), cfg.listen, cfg.connect)
            for spec in cfg.routes:
                self.routes.append(make_route(self, spec))
                log.info("route %s (%s) ready", spec.label, spec.mode)
            for r in self.routes:
                r.start()
            self._write_status()
            self._status_thread = threading.Thread(target=self._status_loop, daemon=True,
                                                   name="bridge status")
            self._status_thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def _open_status_board(self) -> Board:
        name = STATUS_PREFIX + self.config.name
        for _ in range(2):
            try:
                return Board.create(name, STATUS_CAPACITY, lifetime="auto")
            except SegmentExists:
                si = info(name)
                if si.participants:
                    raise BridgeConfigError(
                        f"a bridge named {self.config.name!r} is already running (PID "
                        f"{', '.join(map(str, si.participants))}); give this one another name"
                    ) from None
                try:  # left by a bridge that was killed
                    remove(name)
                except SegmentNotFound:
                    pass
        raise BridgeConfigError(f"the status board {name!r} could not be created")

    def status(self) -> dict[str, Any]:
        """This bridge's state: its endpoints and each route's counters."""
        return {"bridge": self.config.name, "pid": os.getpid(),
                "zid": str(self.session.zid()) if self.session is not None else None,
                "listen": self.config.listen, "connect": self.config.connect,
                "started": self.started, "updated": time.time(),
                "routes": [r.status() for r in self.routes]}

    def _write_status(self) -> None:
        if self._board is None:
            return
        data = json.dumps(self.status(), separators=(",", ":")).encode()
        if len(data) > STATUS_CAPACITY:
            st = self.status()
            st["routes"] = st["routes"][:50]
            st["truncated"] = True
            data = json.dumps(st, separators=(",", ":")).encode()[:STATUS_CAPACITY]
        self._board.write(data, timeout=1.0)

    def _status_loop(self) -> None:
        while not self._stop.wait(STATUS_EVERY_S):
            try:
                self._write_status()
            except Exception as e:  # the status is a convenience: never stop the routes
                log.warning("bridge %s: status board not updated: %s", self.config.name, e)

    def _route_failed(self, route: Route) -> None:
        self.failed.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a route fails (True) or ``timeout`` runs out (False)."""
        return self.failed.wait(timeout)

    def close(self) -> None:
        """Stop every route and close the session and the status board; idempotent."""
        self._stop.set()
        for r in self.routes:
            r.stop()
        if self._status_thread is not None:
            self._status_thread.join(2.0)
        for r in self.routes:
            r.close()
        self.routes = []
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                pass
            self.session = None
        if self._board is not None:
            try:
                self._board.unlink()
            except ShmlinkError:
                pass
            self._board.close()
            self._board = None

    def __enter__(self) -> "Bridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shmlink.bridge.Bridge {self.config.name!r} routes={len(self.config.routes)}>"
