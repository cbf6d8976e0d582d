"""One end of a duplex connection: :class:`Connection` (sending, receiving, request/response, close).

The inbound side (the reader role and the routing of frames, responses
included) is :mod:`._reader`; the layout and frames are :mod:`._layout`.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import threading
import time
import traceback
from typing import Any, Callable, Iterator

from .. import _core, _ready
from ..errors import (
    CorruptSegment,
    IncompatibleSegment,
    InvalidArgument,
    InvalidState,
    MessageTooLarge,
    PeerDisconnected,
    RemoteError,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    ShmlinkError,
    Timeout,
)
from ..queue import WAIT_STRATEGIES, _spin_of
from ..segment import _identity, _Named
from ..sync import deadline_of
from ._layout import (
    _C_CLIENT_CLOSED,
    _C_CLIENT_PID,
    _C_CLIENT_START,
    _C_MAGIC,
    _C_MAGIC_VALUE,
    _C_RING_SIZE,
    _C_RINGS,
    _C_SERVER_CLOSED,
    _C_SERVER_PID,
    _C_SERVER_START,
    _C_STATE,
    _C_VERSION,
    _C_VERSION_OFF,
    _CLOSE,
    _BELLS_OFFSET,
    _D,
    _EC_OFFSET,
    _ERR,
    _FRAME_SIZE,
    _MSG,
    _REQ,
    _RESP,
    _RING_HEADER,
    _SPACE_BELLS_OFFSET,
    _SPACE_EC_OFFSET,
    _ST_NAMES,
    _WAKE,
    SLICE,
    Frame,
    Request,
    Role,
    WaitStrategy,
    _monotonic,
    _remaining,
    _ring_size,
    _slice_end,
)
from ._reader import _NOWAIT, _TIMEOUT, _WHAT as _WHAT_OF, MAX_BUFFERED, ResponseFuture, _ReaderRole

__all__ = ["Connection"]

_process_alive = _core.process_alive
_get_ident = threading.get_ident

def _max_buffered_of(value: Any) -> int:
    """Check a ``max_buffered=`` option: an int >= 0 (bytes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"max_buffered={value!r}: expected a number of bytes, an int >= 0 "
                              f"(default {MAX_BUFFERED})")
    return value


class _Refused:
    """Stands in, in a forked child, for an inherited end's rings: every use raises."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        raise InvalidState(self._message)


class Connection(_ReaderRole, _Named):
    """One end of a duplex, message-oriented connection.

    Get one from :func:`connect` (client side), :meth:`Listener.accept`
    (server side) or :meth:`pair`.  Both ends can :meth:`send` and
    :meth:`recv` messages (lossless, in order, 0 bytes up to
    :attr:`max_message_size`); the client can :meth:`request` and the server
    answer with :meth:`serve` (or :meth:`recv_request` + :meth:`reply`).

    Every blocking call takes ``timeout=`` (seconds; None = forever) and
    raises :class:`~shmlink.Timeout` when it runs out.  When the peer closes
    its side or dies, blocked and later calls raise
    :class:`~shmlink.PeerDisconnected` within about :data:`SLICE` seconds
    (at once for a clean close), after the messages the peer sent before
    are delivered; iteration ends.  Safe to share between threads.

    An end is its process's: in a child made by ``fork()`` every call raises
    :class:`~shmlink.InvalidState` (two processes reading one end would split
    its stream: connect a new one in the child), and close(), or the child's
    exit, leave the parent's end as it is.

    Attributes
    ----------
    role : {"client", "server"} or None
        Which end this is (None for a handle made by :meth:`open` for
        inspection).
    """

    KIND = "connection"

    # class-level defaults so close() and the properties work on a half-built object
    _role: Role | None = None
    _err: tuple[type, str] | None = (SegmentClosed, "the connection is not connected")
    _closing = False
    _detached = False
    _closer_busy = False
    _rings: tuple[Any, Any] | None = None
    _in: Any = None
    _out: Any = None
    _peer: tuple[int, int] = (0, 0)
    _spin = WAIT_STRATEGIES["hybrid"]  # spin_ns of the ring waits (Ring.recv and Ring.send)
    _wait: WaitStrategy = "hybrid"

    # -- constructors --

    @classmethod
    def pair(cls, name: str, *, timeout: float | None = None, capacity: int = 1 << 20,
             wait: WaitStrategy = "hybrid", mode: int = 0o600,
             max_buffered: int = MAX_BUFFERED) -> Connection:
        """Meet one peer under ``name``: whoever comes first becomes the server.

        The first caller listens on ``name`` and accepts exactly one
        connection, then closes the listener (so the name is free again);
        the second caller connects to it.  ``conn.role`` tells which
        happened.  Further callers pair up among themselves the same way.

        Parameters
        ----------
        name : str
            The meeting point (a listener name).
        timeout : float or None
            Seconds to wait for the peer; None = forever.
        capacity : int
            Bytes of message storage per direction (used if this side
            becomes the server).
        wait : {"hybrid", "block", "spin"}
            How this end waits (see :class:`~shmlink.Queue`).
        mode : int
            Permission bits of the segments (default ``0o600``).
        max_buffered : int
            Bytes of unread messages and requests this end keeps (see
            :attr:`max_buffered`; default 16 MiB).

        Returns
        -------
        Connection
            This side's end.

        Raises
        ------
        Timeout
            If no peer came within ``timeout`` seconds.
        """
        from ._listener import Listener, connect  # (the listener makes connections)

        deadline = deadline_of(timeout)
        _max_buffered_of(max_buffered)
        while True:
            try:
                lst = Listener.create(name, capacity=capacity, backlog=1, wait=wait, mode=mode,
                                      max_buffered=max_buffered)
            except SegmentExists:
                try:
                    return connect(name, timeout=_remaining(deadline), wait=wait,
                                   max_buffered=max_buffered)
                except (SegmentNotFound, PeerDisconnected):
                    # the first party left (or paired) between our two calls
                    if deadline is not None and _monotonic() >= deadline:
                        raise Timeout(f"connection pair {name!r}: no peer within {timeout} s") from None
                    time.sleep(0.001)
                    continue
            try:
                return lst.accept(timeout=_remaining(deadline))
            except Timeout:
                raise Timeout(f"connection pair {name!r}: no peer within {timeout} s") from None
            finally:
                lst.close()

    @classmethod
    def open(cls, name: str, *, timeout: float | None = 5.0) -> Connection:
        """Open a connection segment by name for inspection (``shmlink info``).

        The handle takes no side: it can report :meth:`state` but not send or
        receive.  Use :func:`connect` or :meth:`Listener.accept` to talk.

        Parameters
        ----------
        name : str
            The connection segment's name (``<listener>.c<pid>-<hex>``).
        timeout : float or None
            How long to wait for a segment still being initialised.

        Returns
        -------
        Connection
            An inspection handle.
        """
        conn = cls._open_kind(name, timeout=timeout)
        conn._err = (SegmentClosed, f"connection {name!r} was opened with Connection.open() for "
                                    "inspection; use shmlink.connect() or Listener.accept() to talk")
        return conn

    @classmethod
    def _create_client(cls, name: str, capacity: int, max_message: int, mode: int) -> Connection:
        ring_size = _ring_size(capacity)
        size = _C_RINGS + 2 * ring_size
        pid, start = _identity()

        def init(mm: Any) -> None:
            struct.pack_into("<IIQ", mm, _C_MAGIC, _C_MAGIC_VALUE, _C_VERSION, ring_size)
            struct.pack_into("<IIQ", mm, _C_CLIENT_PID, pid, 0, start)
            _core.ring_init(mm, _D + _C_RINGS, ring_size, max_message)
            _core.ring_init(mm, _D + _C_RINGS + ring_size, ring_size, max_message)

        return cls._create_kind(name, size, kind=cls._kind_id(), mode=mode, lifetime="auto",
                                init=init, kind_version=_C_VERSION)

    def _attach(self) -> None:
        m = self._mapping()
        mem = self._memory
        shown = f"connection {self._name!r}"
        if m.header.kind_version != _C_VERSION or mem.load32(_C_MAGIC) != _C_MAGIC_VALUE \
                or mem.load32(_C_VERSION_OFF) != _C_VERSION:
            raise IncompatibleSegment(
                f"{shown} has an unknown layout (version {m.header.kind_version}); it was made by "
                "another shmlink version: use the same version on both sides"
            )
        ring_size = mem.load64(_C_RING_SIZE)
        if ring_size < _RING_HEADER + 64 or ring_size % 64 or \
                _C_RINGS + 2 * ring_size > m.header.data_size:
            raise CorruptSegment(f"{shown} has a ring size of {ring_size} bytes that does not fit "
                                 "its segment; remove it and connect again")
        c2s = _core.Ring(m.mm, _D + _C_RINGS, ring_size)
        s2c = _core.Ring(m.mm, _D + _C_RINGS + ring_size, ring_size)
        c2s.label = s2c.label = self._name  # named in the rings' error messages
        self._rings = (c2s, s2c)
        self._ring_size = ring_size
        self._mem = mem
        self._init_reader()
        self._wlock = threading.Lock()  # held while sending (close waits for it)
        self._ids = itertools.count(1)

    def _bind(self, role: Role, wait: WaitStrategy, max_buffered: int = MAX_BUFFERED) -> None:
        """Take a side: which ring is ours to read, whose flags are the peer's."""
        client = role == "client"
        c2s, s2c = self._rings  # type: ignore[misc]
        self._out, self._in = (c2s, s2c) if client else (s2c, c2s)
        out_off = _D + _C_RINGS + (0 if client else self._ring_size)
        self._out_ec = out_off + _EC_OFFSET
        self._out_off = out_off
        self._in_off = _D + _C_RINGS + (self._ring_size if client else 0)
        self._my_closed = _C_CLIENT_CLOSED if client else _C_SERVER_CLOSED
        self._peer_closed = _C_SERVER_CLOSED if client else _C_CLIENT_CLOSED
        mem = self._mem
        if client:
            self._peer = (mem.load32(_C_SERVER_PID), mem.load64(_C_SERVER_START))
        else:
            self._peer = (mem.load32(_C_CLIENT_PID), mem.load64(_C_CLIENT_START))
        self._max_frame = self._out.max_message
        self.wait = wait
        self._max_buffered = max_buffered
        self._role = role
        self._err = None
        self._closing = False

    def _detach_kind(self) -> None:
        if self._rings is not None:
            for r in self._rings:
                r.close()
            self._rings = None
        self._in = self._out = None

    def _after_fork(self) -> None:
        role = self._role
        self._attach()  # fresh rings, locks and reader state: the parent's threads are not here
        if role is None:
            return  # an inspection handle: it still inspects
        self._inherited = True
        msg = (f"connection {self._name!r}: this {role} end was inherited through fork() from "
               f"PID {os.getppid()}, whose end it stays (two processes reading one end would "
               "split its stream); connect a new connection in this process")
        self._err = (InvalidState, msg)
        self._in = self._out = _Refused(msg)

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Connection cannot be pickled: give the other process the listener's "
                        "name and let it connect()")

    # -- properties --

    @property
    def wait(self) -> WaitStrategy:
        """This end's wait strategy: "hybrid", "block" or "spin" (see :class:`~shmlink.Queue`).

        Every wait of this end for its rings (receiving, and sending into a
        full ring) is the ring's own: "hybrid" spins briefly, then yields
        the CPU, then sleeps on the ring's futex, in slices of :data:`SLICE`.
        """
        return self._wait

    @wait.setter
    def wait(self, value: WaitStrategy) -> None:
        self._spin = _spin_of(value)
        self._wait = value

    @property
    def max_buffered(self) -> int:
        """Bytes of unread messages and requests from the peer this end keeps in-process.

        What a thread reads past while it waits for something else (messages
        while it waits for a response, requests while it waits for a
        message, ...) is kept for :meth:`recv` and :meth:`recv_request`.
        Once that reaches this bound (plus the one frame that crossed it),
        the reading thread gets :class:`~shmlink.BufferFull` and further
        frames stay in the ring, so the peer's sends wait; reading the kept
        ones makes room.  Nothing is dropped.  Default 16 MiB; settable.
        """
        return self._max_buffered

    @max_buffered.setter
    def max_buffered(self, value: int) -> None:
        self._max_buffered = _max_buffered_of(value)

    @property
    def role(self) -> Role | None:
        """``"client"``, ``"server"``, or None for an inspection handle."""
        return self._role

    @property
    def peer_pid(self) -> int:
        """PID of the process at the other end."""
        return self._peer[0]

    @property
    def closed(self) -> bool:
        """True once this end was closed (the peer's state: :attr:`peer_closed`)."""
        return self._closing or self._closed

    @property
    def peer_closed(self) -> bool:
        """True if the other end is known to have closed or died."""
        if self._err is not None and self._err[0] is PeerDisconnected:
            return True
        if self._closed or self._role is None:
            return False
        try:
            return bool(self._mem.load32(self._peer_closed)) or \
                not _process_alive(*self._peer)
        except (ValueError, AttributeError):
            return False

    @property
    def max_message_size(self) -> int:
        """Largest message :meth:`send` (and a response) can carry, in bytes."""
        self._mapping()
        return self._rings[0].max_message - _FRAME_SIZE  # type: ignore[index]

    def stats(self) -> dict[str, Any]:
        """Kind-specific state for ``shmlink info``: both ends and the traffic.

        Returns
        -------
        dict
            ``client_pid`` and ``server_pid`` (None before that end came),
            ``client_alive``/``server_alive`` (the process lives and has not
            closed its end), ``client_closed``/``server_closed``, ``accept``
            (``"pending"``, ``"accepted"``, ...), and per direction
            (``client_to_server``, ``server_to_client``) a dict of messages
            ``sent``, ``received`` and ``depth`` (sent, not yet received);
            ``dropped``: responses this end read that no request of its own
            waited for (late, duplicate or unsolicited), dropped as read;
            ``buffered_bytes``: payload bytes of messages and requests this
            end read from the ring and keeps for :meth:`recv` and
            :meth:`recv_request` (at most ``max_buffered`` plus one frame);
            ``max_buffered``: that bound.
        """
        mem = self._memory
        c2s, s2c = self._rings  # type: ignore[misc]
        state = _conn_state(
            (mem.load32(_C_CLIENT_PID), mem.load32(_C_CLIENT_CLOSED), mem.load64(_C_CLIENT_START)),
            (mem.load32(_C_SERVER_PID), mem.load32(_C_SERVER_CLOSED), mem.load64(_C_SERVER_START)),
            mem.load32(_C_STATE), c2s.stats(), s2c.stats())
        state["dropped"] = self._dropped
        state["buffered_bytes"] = self._held() if self._role is not None else 0
        state["max_buffered"] = self._max_buffered
        return state

    # -- sending --

    def _send_frame(self, kind: int, rid: int, data: Any, deadline: float | None) -> None:
        """Send one frame (``kind``, request id ``rid``, payload ``data``)."""
        wl = self._wlock
        if self._err is None and wl.acquire(False):
            try:
                if self._out.try_send_frame(kind, rid, data):
                    return
            finally:
                wl.release()
        self._send_slow(kind, rid, data, deadline)

    def _send_slow(self, kind: int, rid: int, data: Any, deadline: float | None) -> None:
        wl = self._wlock
        while not wl.acquire(True, SLICE if deadline is None else min(SLICE, _remaining(deadline))):
            if self._err is not None:
                raise self._error()
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"connection {self._name!r}: could not send within the timeout "
                              "(other threads kept sending); nothing was sent")
        try:
            end = 0.0  # the first attempt does not wait: other threads held the lock
            while True:
                if self._err is not None:
                    raise self._error()
                why = self._peer_down(cheap=True)
                if why is not None:
                    self._set_gone(why)
                    raise self._error()
                if self._out.send_frame(kind, rid, data, end, self._spin):
                    return
                end = _slice_end(deadline)
                if deadline is not None and _monotonic() >= deadline:
                    raise Timeout(f"connection {self._name!r}: the {self._peer_role()} did not make "
                                  "room within the timeout (it is not receiving); nothing was sent")
        finally:
            wl.release()
            if self._closing:
                self._finish_close(False)

    def try_send(self, data: Any) -> bool:
        """Send one message if there is room now; True if it was sent.

        False also while another thread is sending.  Raises what
        :meth:`send` raises (PeerDisconnected, MessageTooLarge, SegmentClosed).
        """
        if self._try_send_frame(_MSG, 0, data):
            return True
        if self._readies and "send" in self._readies:
            self._readies["send"].rearm()
        return False

    def _try_send_frame(self, kind: int, rid: int, data: Any, dead: bool = False) -> bool:
        """One frame if there is room now (no waiting); raises if the peer is gone.

        ``dead``: the caller saw the peer's pidfd readable: check its process now.
        """
        if self._err is not None:
            raise self._error()
        wl = self._wlock
        if not wl.acquire(False):
            return False
        try:
            if self._out.try_send_frame(kind, rid, data):
                return True
            why = self._peer_down(cheap=not dead)
            if why is not None:
                self._set_gone(why)
                raise self._error()
            return False
        finally:
            wl.release()
            if self._closing:
                self._finish_close(False)

    def send(self, data: Any, *, timeout: float | None = None) -> None:
        """Send one message (any bytes-like object) to the other end.

        Parameters
        ----------
        data : bytes-like
            The message, 0 bytes up to :attr:`max_message_size`.
        timeout : float or None
            Seconds to wait while the other end's inbound ring is full.

        Raises
        ------
        PeerDisconnected
            If the other end is known to have closed or died (like a
            socket, a message sent just as the other end goes is lost).
        Timeout
            If there was no room within ``timeout`` (nothing was sent).
        MessageTooLarge
            If ``data`` is larger than :attr:`max_message_size`.
        SegmentClosed
            If this end was closed.
        """
        deadline = None if timeout is None else deadline_of(timeout)
        wl = self._wlock
        if self._err is None and wl.acquire(False):  # the hot path: one try_send_frame
            try:
                if self._out.try_send_frame(_MSG, 0, data):
                    return
            finally:
                wl.release()
        self._send_slow(_MSG, 0, data, deadline)

    def send_object(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send any picklable object (received with :meth:`recv_object`).

        Parameters
        ----------
        obj : object
            Anything :mod:`pickle` can serialise.
        timeout : float or None
            As for :meth:`send`.
        """
        self.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)

    # -- receiving (the reader role: see _reader.py) --

    def recv(self, *, timeout: float | None = None) -> bytes:
        """Receive the next message sent with :meth:`send`, waiting until one arrives.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; None = forever; 0 = only if one is there.

        Returns
        -------
        bytes
            The message.

        Raises
        ------
        PeerDisconnected
            If the other end closed or died and every message it sent was
            received.
        Timeout
            If none arrived within ``timeout`` seconds.
        SegmentClosed
            If this end was closed (also by another thread while waiting).
        BufferFull
            If no message is kept and the requests kept for
            :meth:`recv_request` fill :attr:`max_buffered`.
        """
        deadline = None if timeout is None else deadline_of(timeout)
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
        rl = self._rlock
        got: list[bool] = []
        try:
            got.extend(map(rl.acquire, _NOWAIT))  # see _reader._NOWAIT
        except BaseException:
            if got and got[0]:
                rl.release()
            raise
        msg: bytes | None
        if got[0]:
            try:
                if inbox:
                    msg = inbox.popleft()
                elif self._err is not None:
                    raise self._error()
                else:
                    if self._buffered > self._max_buffered:
                        self._check_room("a message")
                    # the hot path: one Ring.recv_frame, the frame is a message
                    f = self._wait_frame(deadline)
                    if f is not None and f[0] == _MSG:
                        msg = f[2]
                    else:
                        msg = self._read(self._pop_msg, deadline, f)
            finally:
                rl.release()
                if self._nwaiting or self._closing:
                    self._left()
        else:
            got_msg = self._take(self._pop_msg, deadline)
            msg = None if got_msg is _TIMEOUT else got_msg
        if msg is None:
            raise Timeout(f"connection {self._name!r}: no message within {timeout} s")
        return msg

    def try_recv(self) -> bytes | None:
        """Receive the next message if one is there now, else return None.

        Returns
        -------
        bytes or None
            The message, or None when there is none now (or another thread
            is receiving).

        Raises
        ------
        PeerDisconnected
            If the other end closed or died and every message it sent was
            received.
        """
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
        rl = self._rlock
        got: list[bool] = []
        try:
            got.extend(map(rl.acquire, _NOWAIT))  # see _reader._NOWAIT
        except BaseException:
            if got and got[0]:
                rl.release()
            raise
        if not got[0]:
            return None
        try:
            if inbox:
                return inbox.popleft()
            if self._err is not None:
                raise self._error()
            while True:
                if self._buffered > self._max_buffered:
                    self._check_room("a message")
                f = self._in.try_recv_frame()
                if f is None:
                    why = self._peer_down(cheap=True)
                    if why is None and self._readies and "recv" in self._readies \
                            and self._readies["recv"].extra_ready():
                        why = self._peer_down()  # fileno() said its pidfd is readable
                    if why is None:
                        if self._readies and "recv" in self._readies:
                            self._readies["recv"].rearm()  # a stale ring reads idle again
                        return None
                    f = self._in.try_recv_frame()
                    if f is None:
                        self._set_gone(why)
                        raise self._error()
                if f[0] == _MSG:
                    return f[2]
                self._route(f)
        finally:
            self._leave()

    # -- readiness by file descriptor --

    def fileno(self) -> int:
        """A descriptor that reads ready when :meth:`recv` / :meth:`recv_request` may not wait.

        Ready when a message, a request or the end of the stream may be
        there, and when the peer's process dies (its pidfd is part of the
        descriptor), so that the next receive raises
        :class:`~shmlink.PeerDisconnected` instead of waiting.  For
        :mod:`select`, ``epoll``, event loops, :func:`shmlink.wait` and
        :func:`multiprocessing.connection.wait`; :mod:`shmlink.asyncio`
        uses it.  Readiness may be spurious: after it, receive with
        :meth:`try_recv` (a None makes a stale readiness idle again).  The
        descriptor is this end's: :meth:`close` closes it.

        Returns
        -------
        int
        """
        return int(self._ready_recv().fileno())

    def send_fileno(self) -> int:
        """A descriptor that reads ready when a send may find room (or the peer is gone).

        Returns
        -------
        int
        """
        return int(self._ready_send().fileno())

    def _peer_gone_hint(self) -> bool:
        return self._err is not None or bool(self._mem.load32(self._peer_closed))

    def _wait_ready(self) -> Any:  # what shmlink.wait waits for
        return self._ready_recv()

    def _ready_recv(self) -> Any:
        if self._role is None or self._inherited:
            raise self._error() if self._err else InvalidState(
                f"connection {self._name!r}: an inspection handle has no messages to wait for")
        ring = self._in
        return self._readiness(
            "recv", self._in_off + _EC_OFFSET, self._in_off + _BELLS_OFFSET,
            lambda: bool(self._inbox or self._requests) or ring.may_recv()
            or self._peer_gone_hint(),
            lambda: _ready.pidfd_of(*self._peer))

    def _ready_send(self) -> Any:
        if self._role is None or self._inherited:
            raise self._error() if self._err else InvalidState(
                f"connection {self._name!r}: an inspection handle cannot send")
        ring = self._out
        return self._readiness(
            "send", self._out_off + _SPACE_EC_OFFSET, self._out_off + _SPACE_BELLS_OFFSET,
            lambda: ring.may_send(0) or self._peer_gone_hint(),
            lambda: _ready.pidfd_of(*self._peer))

    def _try_take(self, check: Callable[[], Any], dead: bool = False) -> Any:
        """Without waiting: route what the ring holds until ``check()`` yields; else None.

        Raises what a receive raises (PeerDisconnected after everything the
        peer sent, SegmentClosed).  None also when another thread holds the
        reader role (it routes for us).  ``dead``: the caller saw the peer's
        pidfd readable: check its process now (else once a slice).  Used by
        :mod:`shmlink.asyncio`.
        """
        item = check()
        if item is not None:
            return item
        rl = self._rlock
        got: list[bool] = []
        try:
            got.extend(map(rl.acquire, _NOWAIT))  # see _reader._NOWAIT
            if not got[0]:
                return None
            while True:
                item = check()
                if item is not None:
                    return item
                if self._err is not None:
                    raise self._error()
                if self._buffered > self._max_buffered:
                    self._check_room(_WHAT_OF.get(getattr(check, "__name__", ""), "a response"))
                f = self._in.try_recv_frame()
                if f is None:
                    why = self._peer_down(cheap=not dead)
                    if why is None:
                        return None
                    f = self._in.try_recv_frame()  # what it sent before going is delivered
                    if f is None:
                        self._set_gone(why)
                        raise self._error()
                self._route(f)
        finally:
            if got and got[0]:
                self._leave()

    def recv_object(self, *, timeout: float | None = None) -> Any:
        """Receive an object sent with :meth:`send_object`.

        It unpickles, and unpickling runs whatever code the sender put in the pickle:
        use it only with peers you trust (``open`` refuses objects of other users
        unless you :func:`~shmlink.trust` them; any process of a trusted user, or of
        anyone for a ``0o666`` object, can send).

        Parameters
        ----------
        timeout : float or None
            As for :meth:`recv`.

        Returns
        -------
        object
            The unpickled object.
        """
        return pickle.loads(self.recv(timeout=timeout))

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages as they arrive; stop when the other end closes or dies."""
        while True:
            try:
                yield self.recv()
            except PeerDisconnected:
                return
            except SegmentClosed:
                if self._closing:
                    return
                raise

    # -- request / response --

    def request(self, data: Any, *, timeout: float | None = None) -> bytes:
        """Send a request and wait for its response.

        Requests are numbered; the response to this one is returned even
        when other threads have requests in flight on the same connection.

        Parameters
        ----------
        data : bytes-like
            The request, 0 bytes up to :attr:`max_message_size`.
        timeout : float or None
            Seconds for the whole round trip; None = forever.

        Returns
        -------
        bytes
            The response the other end's handler (or :meth:`reply`) gave.

        Raises
        ------
        PeerDisconnected
            If the other end closed or died before answering.
        Timeout
            If no response came within ``timeout`` seconds (a late response
            is dropped).
        RemoteError
            If the other end's handler raised.
        MessageTooLarge
            If ``data`` is larger than :attr:`max_message_size`.
        BufferFull
            If messages (or requests) read past while waiting, kept for
            :meth:`recv`, fill :attr:`max_buffered`; read them, then retry.
        """
        deadline = None if timeout is None else deadline_of(timeout)
        rid = next(self._ids)
        fut = ResponseFuture()
        pending = self._pending
        got: list[bool] = []
        try:
            pending[rid] = fut  # before the request goes out: the response finds it
            rl = self._rlock
            if self._err is None:
                got.extend(map(rl.acquire, _NOWAIT))  # see _reader._NOWAIT
            if got and got[0]:
                # The hot path: one try_send_frame and one Ring.recv_frame, with
                # the reader role held (close() waits for it, so the send needs
                # no lock).
                if self._buffered > self._max_buffered:
                    self._check_room("a response")  # before the request goes out
                sent = self._out.try_send_frame(_REQ, rid, data)
                if sent:
                    end = self._slice
                    if deadline is not None and deadline < end:
                        end = deadline
                    f = self._in.recv_frame(end, self._spin)
                    if f is not None:
                        self._route(f)
                        f = fut.result()
                    if f is None:
                        f = self._read(fut.result, deadline)
                got[0] = False  # before the release: an interrupt after it finds it done
                rl.release()
                if self._nwaiting or self._closing:
                    self._left()
                if sent:
                    return self._response(f, timeout)
            self._send_frame(_REQ, rid, data, deadline)
            f = self._take(fut.result, deadline)
            return self._response(None if f is _TIMEOUT else f, timeout)
        finally:
            # The role first: nothing here may run a call before it is given
            # back (a KeyboardInterrupt can land after any call).
            if got and got[0]:
                got[0] = False
                rl.release()
                if self._nwaiting or self._closing:
                    self._left()
            pending.pop(rid, None)  # answered, or given up: a late response is dropped

    def _response(self, f: Frame | None, timeout: float | None) -> bytes:
        if f is None:
            raise Timeout(f"connection {self._name!r}: no response within {timeout} s")
        if f[0] == _RESP:
            return f[2]
        raise RemoteError(f"connection {self._name!r}: the {self._peer_role()}'s handler failed:\n"
                          + f[2].decode("utf-8", "replace"))

    def request_object(self, obj: Any, *, timeout: float | None = None) -> Any:
        """:meth:`request` with a pickled object; the response is unpickled too.

        It unpickles, and unpickling runs whatever code the sender put in the pickle:
        use it only with peers you trust (``open`` refuses objects of other users
        unless you :func:`~shmlink.trust` them; any process of a trusted user, or of
        anyone for a ``0o666`` object, can send).

        Parameters
        ----------
        obj : object
            The request, pickled.
        timeout : float or None
            As for :meth:`request`.

        Returns
        -------
        object
            The unpickled response.
        """
        return pickle.loads(self.request(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                         timeout=timeout))

    def recv_request(self, *, timeout: float | None = None) -> Request:
        """Receive the next request sent with :meth:`request` (server side).

        Answer it with :meth:`reply`.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; None = forever.

        Returns
        -------
        Request
            ``(id, data)``.

        Raises
        ------
        PeerDisconnected
            If the other end closed or died.
        Timeout
            If none arrived within ``timeout`` seconds.
        BufferFull
            If no request is kept and the messages kept for :meth:`recv`
            fill :attr:`max_buffered`.
        """
        deadline = None if timeout is None else deadline_of(timeout)
        f = self._take(self._pop_request, deadline)
        if f is _TIMEOUT:
            raise Timeout(f"connection {self._name!r}: no request within {timeout} s")
        return Request(f[1], f[2])

    def reply(self, request: Request | int, data: Any, *, timeout: float | None = None) -> None:
        """Send the response to a request taken with :meth:`recv_request`.

        Parameters
        ----------
        request : Request or int
            The request (or its ``id``).
        data : bytes-like
            The response.
        timeout : float or None
            As for :meth:`send`.
        """
        rid = request.id if isinstance(request, Request) else int(request)
        self._send_frame(_RESP, rid, data, None if timeout is None else deadline_of(timeout))

    def serve(self, handler: Callable[[bytes], Any]) -> int:
        """Answer requests with ``handler`` until the peer disconnects, :meth:`stop` or :meth:`close`.

        For each request, ``handler(request_bytes)`` returns the response
        (bytes-like; None means empty).  If it raises, the requester's
        :meth:`request` raises :class:`RemoteError` with the traceback, and
        serving goes on.  Plain messages that arrive meanwhile are kept for
        :meth:`recv`; when they fill :attr:`max_buffered`, serve raises
        :class:`~shmlink.BufferFull` (nothing is dropped).

        Parameters
        ----------
        handler : callable
            ``handler(bytes) -> bytes``.

        Returns
        -------
        int
            How many requests were answered.
        """
        self._stop = False
        served = 0
        rl = self._rlock
        while True:
            if self._stop:
                return served
            got: list[bool] = []
            try:
                got.extend(map(rl.acquire, _NOWAIT))  # see _reader._NOWAIT
                if got[0]:
                    self._rowner = _get_ident()
            except BaseException:
                if got and got[0]:
                    self._leave()
                raise
            if not got[0]:
                # another thread reads: it hands requests over
                try:
                    f = self._take(self._pop_request, _monotonic() + SLICE)
                except PeerDisconnected:
                    return served
                except SegmentClosed:
                    if self._closing:
                        return served
                    raise
                if f is _TIMEOUT:
                    continue
                served += self._answer(handler, f)
                continue
            try:
                reqs = self._requests
                ring = self._in
                out = self._out
                spin = self._spin
                while not self._stop:
                    if reqs:
                        f = reqs.popleft()
                    else:
                        if self._buffered > self._max_buffered:
                            self._check_room("a request")
                        f = ring.recv_frame(self._slice, spin)
                        if f is None:
                            f = self._idle(None)
                            if f is None:
                                continue
                            if f is _TIMEOUT:
                                return served
                    if f[0] != _REQ:
                        self._route(f)
                        continue
                    # the hot path: handler, then one send
                    rid = f[1]
                    try:
                        r = handler(f[2])
                    except Exception as e:  # the handler's failure goes to the requester
                        kind, r = _ERR, self._error_text(e)
                    else:
                        kind = _RESP
                        if r is None:
                            r = b""
                    if self._err is not None:
                        return served  # closed from the handler
                    try:  # the reader role keeps close() waiting: no send lock needed
                        sent = out.try_send_frame(kind, rid, r)
                    except (MessageTooLarge, TypeError) as e:  # a response it cannot send
                        kind, r, sent = _ERR, self._error_text(e, response=True), False
                    if not sent:
                        self._send_slow(kind, rid, r, None)
                    served += 1
                return served
            except PeerDisconnected:
                return served
            except SegmentClosed:
                if self._closing:
                    return served
                raise
            finally:
                self._leave()

    def _answer(self, handler: Callable[[bytes], Any], f: Frame) -> int:
        rid = f[1]
        try:
            r = handler(f[2])
        except Exception as e:
            kind, r = _ERR, self._error_text(e)
        else:
            kind = _RESP
            if r is None:
                r = b""
        if self._err is not None:
            return 0
        try:
            try:
                self._send_frame(kind, rid, r, None)
            except (MessageTooLarge, TypeError) as e:  # a response it cannot send
                self._send_frame(_ERR, rid, self._error_text(e, response=True), None)
        except PeerDisconnected:
            return 0
        return 1

    def _error_text(self, e: BaseException, response: bool = False) -> bytes:
        """The payload of an error frame: the traceback of ``e``, cut to fit a frame.

        ``response``: ``e`` came from sending what the handler returned.
        """
        if response and isinstance(e, TypeError):
            text = (f"TypeError: the handler must return bytes-like (or None), and here it "
                    f"failed with: {e}")
        else:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        data = text.encode("utf-8", "replace")
        room = self._max_frame - _FRAME_SIZE
        if len(data) > room:
            data = data[-room:]
        return data

    def stop(self) -> None:
        """Make :meth:`serve` return after the request it is handling (from any thread)."""
        self._stop = True
        if self._rlock.locked() and self._rowner != _get_ident() and self._wlock.acquire(False):
            try:  # the send lock keeps close() from unmapping the ring meanwhile
                if not self._detached:
                    self._in.try_send_frame(_WAKE, 0, b"")
            except (ValueError, ShmlinkError):
                pass
            finally:
                self._wlock.release()

    # -- lifetime --

    def close(self) -> None:
        """Close this end (idempotent); the other end gets :class:`PeerDisconnected`.

        Messages already sent are still delivered to the other end first.
        Threads of this process blocked on this connection raise
        :class:`~shmlink.SegmentClosed` (:meth:`serve` returns, iteration
        ends).  The connection's segment is removed once both ends closed.
        """
        if self._role is None or self._inherited:
            super().close()  # the peer is told nothing: the end is not ours to close
            return
        with self._lock:
            if self._closing:
                busy = True
            else:
                busy = False
                self._closing = True
                self._closer_busy = True
                self._err = (SegmentClosed, f"connection {self._name!r} is closed")
                self._cv.notify_all()
        if busy:
            self._finish_close(True)
            return
        try:
            mem = self._mem
            mem.store32(self._my_closed, 1)
            try:
                self._out.try_send_frame(_CLOSE, 0, b"")  # wakes the peer's reader at once
            except ShmlinkError:
                pass
            # and the ring's event count, for peers waiting on it some other
            # way: advanced and woken as connection.h's close does (never a
            # hand-made add, which would flip its armed bit)
            mem.ec_notify(self._out_ec, True, self._out_ec - _EC_OFFSET + _BELLS_OFFSET)
            if self._rlock.locked() and self._rowner != _get_ident():
                self._in.try_send_frame(_WAKE, 0, b"")  # our own blocked reader
        except (ValueError, ShmlinkError):
            pass
        finally:
            with self._lock:
                self._closer_busy = False
        self._finish_close(True)

    def _finish_close(self, wait: bool) -> None:
        """Unmap once no thread of ours is inside a ring call; the last one out does it."""
        if self._detached or self._rowner == _get_ident():
            return  # called from a handler inside serve(): serve finishes it
        rl, wl = self._rlock, self._wlock
        if not (rl.acquire(True, 2 * SLICE + 1.0) if wait else rl.acquire(False)):
            return
        try:
            if not (wl.acquire(True, 2 * SLICE + 1.0) if wait else wl.acquire(False)):
                return
            try:
                with self._lock:
                    if self._detached or self._closer_busy:
                        return
                    self._detached = True
                # Our closed flag was stored (seq-cst) before this load: of two
                # ends closing at once, at least one sees the other's flag.  A
                # peer that closed or died needs the name no more, and a dead
                # one may hold its file lock a little longer than it takes us
                # to notice (its other threads still exiting), which would
                # make the "auto" removal below miss.
                try:
                    if self._mem.load32(self._peer_closed) or not _process_alive(*self._peer):
                        self.unlink()
                except (OSError, ShmlinkError, ValueError):
                    pass
                super().close()
            finally:
                wl.release()
        finally:
            rl.release()

    def __enter__(self) -> Connection:
        return self

    def __repr__(self) -> str:
        if self._role is None:
            return f"<shmlink.Connection {self._name!r}{' closed' if self._closed else ''}>"
        state = "closed" if self.closed else ("peer gone" if self._err else "open")
        return (f"<shmlink.Connection {self._name!r} {self._role} peer_pid={self._peer[0]} "
                f"{state}>")


def _conn_state(client: tuple[int, int, int], server: tuple[int, int, int], st: int,
                c2s: dict[str, int] | None, s2c: dict[str, int] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for end, (pid, closed, start) in (("client", client), ("server", server)):
        out[f"{end}_pid"] = pid or None
        out[f"{end}_alive"] = bool(pid) and not closed and _process_alive(pid, start)
        out[f"{end}_closed"] = bool(closed)
    out["accept"] = _ST_NAMES.get(st, f"invalid ({st})")
    for label, s in (("client_to_server", c2s), ("server_to_client", s2c)):
        out[label] = None if s is None else {
            "sent": s["sent"], "received": s["received"],
            "depth": max(0, s["sent"] - s["received"])}
    return out

