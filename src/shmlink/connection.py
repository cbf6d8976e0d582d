"""Duplex connections with request/response: :class:`Connection` and :class:`Listener`.

A server calls :func:`listen` to make a named :class:`Listener`; each client
calls :func:`connect` with that name and gets its own :class:`Connection`,
which the server gets from :meth:`Listener.accept`.  Any number of clients
may be connected at once; a client that leaves and a new one that connects
both work.

How the pieces fit (layouts in the module's constants below):

* **The listener** is a segment (kind ``listener``) holding the server's
  identity (PID and start time), a closed flag, the settings every
  connection gets (ring capacity, permission bits) and an *accept ring*: a
  :class:`~shmlink.Queue`-style ring of pending connection requests.
* **A connection** is a segment of its own named
  ``<listener>.c<client pid>-<random>`` (kind ``connection``,
  ``lifetime="auto"``), created by the client: a small header (client PID and
  start time, server PID and start time, one closed flag per side, the
  accept state) and two rings, client->server and server->client.  The
  client posts the name's suffix on the accept ring and waits (bounded by
  its ``timeout``) until the server marks the connection accepted.  Accept,
  refusal and a client that gave up are one compare-and-swap on the accept
  state, so exactly one of them wins.
* **Frames.**  Each ring message starts with an 8-byte little-endian frame
  header ``id << 8 | kind``: a plain message (``send``/``recv``, id 0), a
  request, its response or its error (same id), an in-band end of stream
  sent by ``close``, and a wake-up a process posts to its *own* inbound ring
  to interrupt its blocked reader.  One thread at a time reads the inbound
  ring; it hands frames meant for other threads (responses to their
  requests, plain messages, requests) to them, so concurrent
  :meth:`Connection.request` calls from several threads each get their own
  response.
* **Disconnects are seen within a fraction of a second.**  ``close`` sets the
  side's closed flag and sends the end-of-stream frame (the blocked peer
  wakes at once; messages sent before it are still delivered).  Blocked
  receives and sends wait in slices of ``SLICE`` seconds and, between
  slices, check the peer's closed flag and whether the peer process is
  still alive (PID plus start time).  A peer that closed or died raises
  :class:`~shmlink.PeerDisconnected` (iteration ends).
* **Lifetime.**  Connection segments are ``lifetime="auto"``: the last side
  to close (or the survivor of a crash) removes the name; when both sides
  died, ``shmlink gc`` does.  The listener's owner removes its name on
  ``close``; a listener whose server died is taken over by the next
  :func:`listen` of that name (and removed by ``shmlink gc``).

The hot path of a round trip is one ``Ring.try_send`` and one ``Ring.recv``
per direction, with the frame header packed by a precompiled
:class:`struct.Struct`; while the peer answers within the first spin of
the ``"hybrid"`` wait (:data:`PURE_SPIN`), no system call is made.  After
it, the wait spins yielding the CPU, then sleeps on the ring's futex.

Threads: one thread at a time holds the *reader role* (a lock) and reads
the inbound ring; a thread holding it may also send (``close`` waits for
it); other senders hold a send lock for the duration of their ``try_send``.
``close`` from another thread wakes a blocked reader of this process by a
frame it posts to its own inbound ring, then unmaps once both locks are
free (the last thread out does it when ``close`` is called from a
handler).

Not fork-safe: a connection belongs to the process that made it (a forked
child must connect on its own).
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import re
import secrets
import struct
import threading
import time
import traceback
from typing import Any, Callable, Iterator, NamedTuple

from . import _core
from .errors import (
    CorruptSegment,
    IncompatibleSegment,
    InvalidName,
    InvalidSize,
    MessageTooLarge,
    PeerDisconnected,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    ShmlinkError,
    Timeout,
)
from .queue import WAIT_STRATEGIES, _spin_of
from .segment import (
    DATA_OFFSET,
    NAME_MAX,
    PREFIX,
    _identity,
    _Named,
    shm_dir,
    validate_name,
)
from .sync import deadline_of

__all__ = ["Connection", "Listener", "Request", "RemoteError", "connect", "listen", "SLICE"]

#: Longest a blocked call waits before it re-checks the peer (closed flag,
#: process alive), its own handle and its deadline, in seconds.
SLICE = 0.1

#: The ``"hybrid"`` wait for a frame: spin on the ring (no system call) for
#: up to ``PURE_SPIN`` seconds, then spin yielding the CPU (``sched_yield``)
#: until ``YIELD_SPIN`` seconds, then sleep on the ring's futex.  The yielding
#: phase matters on a busy machine: when both ends share one CPU, a pure spin
#: only delays the peer it waits for.  So the pure spin adapts: a wait it
#: does not end cuts the next ones to ``PURE_SPIN_MIN``, and every
#: ``PURE_SPIN_PROBE``-th such wait tries the full spin again (kept if it works).
PURE_SPIN = 5e-6
PURE_SPIN_MIN = 0.5e-6
PURE_SPIN_PROBE = 16
YIELD_SPIN = 50e-6

_sched_yield = os.sched_yield

_monotonic = time.monotonic
_get_ident = threading.get_ident
_process_alive = _core.process_alive
_RING_HEADER = _core.RING_HEADER
_D = DATA_OFFSET


from .errors import RemoteError  # noqa: E402  (re-exported)


# --- frames -----------------------------------------------------------------

_FRAME = struct.Struct("<Q")  # id << 8 | kind
_pack = _FRAME.pack
_unpack = _FRAME.unpack_from
_FRAME_SIZE = _FRAME.size

_MSG = 0  # plain message (id 0)
_REQ = 1  # request
_RESP = 2  # its response: header of the request + 1
_ERR = 3  # its error: header of the request + 2 (payload: the traceback, UTF-8)
_CLOSE = 4  # end of stream: the sender closed its side
_WAKE = 5  # posted to one's own inbound ring to wake the local reader

_MSG_HDR = _pack(_MSG)
_CLOSE_FRAME = _pack(_CLOSE)
_WAKE_FRAME = _pack(_WAKE)

# --- connection segment layout (offsets from the start of the mapping) -------

_C_MAGIC_VALUE = 0x4E4E4F43  # "CONN"
_C_VERSION = 1
_C_MAGIC = _D + 0  # u32
_C_VERSION_OFF = _D + 4  # u32
_C_RING_SIZE = _D + 8  # u64: bytes of each ring region (control block included)
# line 1: written by the client
_C_CLIENT_PID = _D + 64  # u32
_C_CLIENT_CLOSED = _D + 68  # u32: 1 once the client closed its side
_C_CLIENT_START = _D + 72  # u64
# line 2: written by the server
_C_SERVER_PID = _D + 128  # u32, written before the accept CAS
_C_SERVER_CLOSED = _D + 132  # u32
_C_SERVER_START = _D + 136  # u64
# line 3: the accept state (futex word)
_C_STATE = _D + 192  # u32, one of the _ST_* values
_C_RINGS = 256  # data-area offset of the client->server ring; server->client follows

_ST_PENDING = 0
_ST_ACCEPTED = 1
_ST_REFUSED = 2  # the listener closed before accepting
_ST_ABANDONED = 3  # the client gave up (timeout, Ctrl-C) or died before the accept
_ST_NAMES = {_ST_PENDING: "pending", _ST_ACCEPTED: "accepted", _ST_REFUSED: "refused",
             _ST_ABANDONED: "abandoned"}

_EC_OFFSET = 192  # data_ec within struct shmlink_ring (include/shmlink.h)

# --- listener segment layout -------------------------------------------------

_L_MAGIC_VALUE = 0x524E534C  # "LSNR"
_L_VERSION = 1
_L_MAGIC = _D + 0  # u32
_L_VERSION_OFF = _D + 4  # u32
_L_PID = _D + 8  # u32: the server (the listener's creator)
_L_CLOSED = _D + 12  # u32: 1 once the server closed the listener
_L_START = _D + 16  # u64
_L_CAPACITY = _D + 24  # u64: each connection's ring capacity, bytes
_L_MAX_MESSAGE = _D + 32  # u64: largest frame (0 = capacity - 8)
_L_BACKLOG = _D + 40  # u32
_L_MODE = _D + 44  # u32: permission bits of connection segments
_L_ACCEPTED = _D + 48  # u64: connections accepted so far
_L_RING = 128  # data-area offset of the accept ring

_SUFFIX_RE = re.compile(r"c[0-9]{1,10}-[0-9a-f]{8}\Z")
_SUFFIX_MAX = 2 + 10 + 1 + 8  # "c" + pid + "-" + 8 hex digits (+ the dot)
#: Longest listener name: its connections are named ``<name>.c<pid>-<8 hex>``.
LISTENER_NAME_MAX = NAME_MAX - _SUFFIX_MAX
_ACCEPT_NAME = 24  # a pending connect posts its suffix NUL-padded to this many bytes ...
_ACCEPT_RECORD = 8 + _ACCEPT_NAME  # ... so that each takes exactly this much of the accept ring

_RETRY = object()  # the reader role looks free: try to take it
_TIMEOUT = object()  # the deadline passed


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - _monotonic())


def _slice_end(deadline: float | None) -> float:
    end = _monotonic() + SLICE
    return end if deadline is None or deadline > end else deadline


def _ring_size(capacity: int) -> int:
    return (_RING_HEADER + capacity + 63) & ~63


class Request(NamedTuple):
    """A request taken with :meth:`Connection.recv_request`; answer it with :meth:`Connection.reply`."""

    id: int
    data: bytes


# --- Connection ------------------------------------------------------------------


class Connection(_Named):
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

    Attributes
    ----------
    role : {"client", "server"} or None
        Which end this is (None for a handle made by :meth:`open` for
        inspection).
    """

    KIND = "connection"

    # class-level defaults so close() and the properties work on a half-built object
    _role: str | None = None
    _err: tuple[type, str] | None = (SegmentClosed, "the connection is not connected")
    _closing = False
    _detached = False
    _closer_busy = False
    _rings: tuple[Any, Any] | None = None
    _in: Any = None
    _out: Any = None
    _peer: tuple[int, int] = (0, 0)
    _spin = WAIT_STRATEGIES["hybrid"]  # spin_ns of Ring.send when the ring is full
    _wait = "hybrid"
    _first_spin = -1  # spin_ns of the first Ring.recv of a wait ...
    _pure = PURE_SPIN  # ... and its length (0: until the slice ends)
    _sleep_spin = 0  # spin_ns of the Ring.recv that ends a wait
    _misses = 0  # waits the first spin did not end
    _nwaiting = 0
    _alive_checked = 0.0
    _rowner = 0
    _stop = False

    # -- constructors --

    @classmethod
    def pair(cls, name: str, *, timeout: float | None = None, capacity: int = 1 << 20,
             wait: str = "hybrid", mode: int = 0o600) -> "Connection":
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

        Returns
        -------
        Connection
            This side's end.

        Raises
        ------
        Timeout
            If no peer came within ``timeout`` seconds.
        """
        deadline = deadline_of(timeout)
        while True:
            try:
                lst = Listener.create(name, capacity=capacity, backlog=1, wait=wait, mode=mode)
            except SegmentExists:
                try:
                    return connect(name, timeout=_remaining(deadline), wait=wait)
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
    def open(cls, name: str, *, timeout: float | None = 5.0) -> "Connection":
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
    def _create_client(cls, name: str, capacity: int, max_message: int, mode: int) -> "Connection":
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
        self._rings = (c2s, s2c)
        self._ring_size = ring_size
        self._mem = mem
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._rlock = threading.Lock()  # held by the one thread reading the inbound ring
        self._wlock = threading.Lock()  # held while sending (close waits for it)
        self._inbox: collections.deque[bytes] = collections.deque()  # whole frames
        self._requests: collections.deque[bytes] = collections.deque()
        self._responses: dict[int, bytes] = {}
        self._abandoned: set[int] = set()
        self._ids = itertools.count(1)
        self._slice = 0.0  # end of the current wait slice (monotonic)

    def _bind(self, role: str, wait: str) -> None:
        """Take a side: which ring is ours to read, whose flags are the peer's."""
        client = role == "client"
        c2s, s2c = self._rings  # type: ignore[misc]
        self._out, self._in = (c2s, s2c) if client else (s2c, c2s)
        out_off = _D + _C_RINGS + (0 if client else self._ring_size)
        self._out_ec = out_off + _EC_OFFSET
        self._my_closed = _C_CLIENT_CLOSED if client else _C_SERVER_CLOSED
        self._peer_closed = _C_SERVER_CLOSED if client else _C_CLIENT_CLOSED
        mem = self._mem
        if client:
            self._peer = (mem.load32(_C_SERVER_PID), mem.load64(_C_SERVER_START))
        else:
            self._peer = (mem.load32(_C_CLIENT_PID), mem.load64(_C_CLIENT_START))
        self._max_frame = self._out.max_message
        self.wait = wait
        self._role = role
        self._err = None
        self._closing = False

    def _detach_kind(self) -> None:
        if self._rings is not None:
            for r in self._rings:
                r.close()
            self._rings = None
        self._in = self._out = None

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Connection cannot be pickled: give the other process the listener's "
                        "name and let it connect()")

    # -- properties --

    @property
    def wait(self) -> str:
        """This end's wait strategy: "hybrid", "block" or "spin"."""
        return self._wait

    @wait.setter
    def wait(self, value: str) -> None:
        self._spin = _spin_of(value)
        self._first_spin, self._pure, self._sleep_spin = {
            # hybrid: the C ring spins ~1 us, then spins yielding the CPU up
            # to 50 us, then sleeps (see ring_wait in _core.c)
            "hybrid": (50_000, 0.0, 50_000), "block": (0, 0.0, 0), "spin": (-1, 0.0, -1),
        }[value]
        self._wait = value

    @property
    def role(self) -> str | None:
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

    def state(self) -> dict[str, Any]:
        """Kind-specific state for ``shmlink info``: both ends and the traffic.

        Returns
        -------
        dict
            Client and server PIDs (with liveness), the accept state, closed
            flags and, per direction, messages sent, received and queued.
        """
        mem = self._memory
        c2s, s2c = self._rings  # type: ignore[misc]
        return _conn_state(
            (mem.load32(_C_CLIENT_PID), mem.load32(_C_CLIENT_CLOSED), mem.load64(_C_CLIENT_START)),
            (mem.load32(_C_SERVER_PID), mem.load32(_C_SERVER_CLOSED), mem.load64(_C_SERVER_START)),
            mem.load32(_C_STATE), c2s.stats(), s2c.stats())

    # -- errors --

    def _error(self) -> Exception:
        cls, msg = self._err  # type: ignore[misc]
        return cls(msg)

    def _set_gone(self, why: str) -> None:
        with self._cv:
            if self._err is None:
                self._err = (PeerDisconnected,
                             f"connection {self._name!r}: the {self._peer_role()} (PID "
                             f"{self._peer[0]}) {why}; connect again to continue")
            self._cv.notify_all()

    def _peer_role(self) -> str:
        return "server" if self._role == "client" else "client"

    def _too_large(self, frame: bytes) -> MessageTooLarge:
        return MessageTooLarge(
            f"connection {self._name!r}: a message of {len(frame) - _FRAME_SIZE} bytes is larger "
            f"than its max_message_size of {self._max_frame - _FRAME_SIZE}; split it, or listen "
            "with a larger capacity"
        )

    def _peer_down(self, cheap: bool = False) -> str | None:
        """Why the peer is gone (closed its side, or died), or None if it is still there.

        ``cheap``: look at its process (a read of ``/proc``) at most once a
        slice; its closed flag is always read.
        """
        if self._mem.load32(self._peer_closed):
            return "closed the connection"
        if cheap:
            now = _monotonic()
            if now < self._alive_checked + SLICE:
                return None
            self._alive_checked = now
        if not _process_alive(*self._peer):
            return "died"
        return None

    # -- sending --

    def _send_frame(self, frame: bytes, deadline: float | None) -> None:
        wl = self._wlock
        if self._err is None and wl.acquire(False):
            try:
                if self._out.try_send(frame):
                    return
            except MessageTooLarge:
                raise self._too_large(frame) from None
            finally:
                wl.release()
        self._send_slow(frame, deadline)

    def _send_slow(self, frame: bytes, deadline: float | None) -> None:
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
                try:
                    if self._out.send(frame, end, self._spin):
                        return
                except MessageTooLarge:
                    raise self._too_large(frame) from None
                end = _slice_end(deadline)
                if deadline is not None and _monotonic() >= deadline:
                    raise Timeout(f"connection {self._name!r}: the {self._peer_role()} did not make "
                                  "room within the timeout (it is not receiving); nothing was sent")
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
        frame = _MSG_HDR + data
        wl = self._wlock
        if self._err is None and wl.acquire(False):  # the hot path: one try_send
            try:
                if self._out.try_send(frame):
                    return
            except MessageTooLarge:
                raise self._too_large(frame) from None
            finally:
                wl.release()
        self._send_slow(frame, deadline)

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

    # -- receiving: one reader at a time --

    def _read(self, want: int, deadline: float | None, f: bytes | None = None) -> bytes | None:
        """With the reader role held: read frames until one whose header is ``want``.

        ``want`` is an exact header (``0`` plain messages, ``id << 8 | _RESP``
        a response, whose error frame ``want + 1`` also matches) or ``-1``
        for any request.  Frames meant for others are dispatched.  Returns
        the whole frame, or None when the deadline passed.  ``f``: a frame
        the caller already took from the ring, handled first.
        """
        while True:
            if f is None:
                f = self._wait_frame(deadline)
            if f is None:
                f = self._idle(deadline)
                if f is None:
                    continue
                if f is _TIMEOUT:
                    return None
            try:
                h = _unpack(f)[0]
            except struct.error:
                raise self._corrupt(f) from None
            if h == want:
                return f
            k = h & 255
            if (want < 0 and k == _REQ) or (want & 255 == _RESP and h == want + 1):
                return f
            self._dispatch(h, k, f)
            f = None

    def _wait_frame(self, deadline: float | None) -> bytes | None:
        """The first spin brought nothing: spin yielding the CPU (hybrid), then sleep one slice.

        Returns a frame, or None when the slice (or the deadline) ended.
        """
        ring = self._in
        if self._pure:
            misses = self._misses = self._misses + 1
            self._pure = PURE_SPIN if misses % PURE_SPIN_PROBE == 0 else PURE_SPIN_MIN
            until = _monotonic() + YIELD_SPIN
            if deadline is not None and deadline < until:
                until = deadline
            while True:
                _sched_yield()
                f = ring.try_recv()
                if f is not None:
                    return f
                if _monotonic() >= until:
                    break
        end = self._slice
        if deadline is not None and deadline < end:
            end = deadline
        return ring.recv(end, self._sleep_spin)

    def _idle(self, deadline: float | None) -> Any:
        """A wait slice ended: re-check everything.  A frame, None (wait on) or _TIMEOUT."""
        now = _monotonic()
        self._slice = now + SLICE
        if self._err is not None:
            raise self._error()
        if self._stop and self._rowner == _get_ident():
            return _TIMEOUT
        why = self._peer_down()
        if why is not None:
            # what it sent before closing (or dying) is still delivered
            f = self._in.try_recv()
            if f is not None:
                return f
            self._set_gone(why)
            raise self._error()
        if deadline is not None and now >= deadline:
            return _TIMEOUT
        return None

    def _corrupt(self, f: bytes) -> CorruptSegment:
        return CorruptSegment(f"connection {self._name!r}: the {self._peer_role()} sent a malformed "
                              f"frame ({len(f)} bytes, {f[:8]!r}); close the connection")

    def _dispatch(self, h: int, k: int, f: bytes) -> None:
        """Hand a frame the reader does not want to whoever does."""
        if k == _MSG:
            self._inbox.append(f)
        elif k == _REQ:
            self._requests.append(f)
        elif k == _RESP or k == _ERR:
            rid = h >> 8
            with self._cv:
                if rid in self._abandoned:
                    self._abandoned.discard(rid)  # its requester timed out: drop it
                    return
                self._responses[rid] = f
        elif k == _CLOSE:
            self._set_gone("closed the connection")
            raise self._error()
        elif k == _WAKE:
            if self._err is not None:
                raise self._error()
            return
        else:
            raise self._corrupt(f)
        if self._nwaiting:
            with self._cv:
                self._cv.notify_all()

    def _leave(self) -> None:
        """Give up the reader role (with it held) and let a waiting thread take it."""
        self._rowner = 0
        self._rlock.release()
        if self._nwaiting or self._closing:
            self._left()

    def _left(self) -> None:
        """After giving up the reader role: wake waiting threads; finish a close."""
        if self._nwaiting:
            with self._cv:
                self._cv.notify_all()
        if self._closing:
            self._finish_close(False)

    def _wait_turn(self, check: Callable[[], Any], deadline: float | None) -> Any:
        """Another thread reads: wait until ``check()`` yields, the role frees, or time runs out."""
        with self._cv:
            self._nwaiting += 1
            try:
                while True:
                    item = check()
                    if item is not None:
                        return item
                    if not self._rlock.locked():
                        return _RETRY
                    if self._err is not None:
                        raise self._error()
                    if deadline is None:
                        self._cv.wait(SLICE)
                    else:
                        left = deadline - _monotonic()
                        if left <= 0:
                            return _TIMEOUT
                        self._cv.wait(min(SLICE, left))
            finally:
                self._nwaiting -= 1

    def _take(self, want: int, check: Callable[[], Any], deadline: float | None) -> Any:
        """Get the next frame ``check()`` finds locally or the ring has for ``want``."""
        rl = self._rlock
        while True:
            if rl.acquire(False):
                try:
                    item = check()
                    if item is not None:
                        return item
                    if self._err is not None:
                        raise self._error()
                    f = self._read(want, deadline)
                    return _TIMEOUT if f is None else f
                finally:
                    self._leave()
            item = self._wait_turn(check, deadline)
            if item is not _RETRY:
                return item

    def _pop_msg(self) -> bytes | None:
        inbox = self._inbox
        return inbox.popleft() if inbox else None

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
        """
        deadline = None if timeout is None else deadline_of(timeout)
        inbox = self._inbox
        if inbox:
            return inbox.popleft()[_FRAME_SIZE:]
        rl = self._rlock
        if rl.acquire(False):
            try:
                if inbox:
                    f = inbox.popleft()
                elif self._err is not None:
                    raise self._error()
                else:
                    # the hot path: one Ring.recv, the frame is the message
                    pure = self._pure
                    end = _monotonic() + pure if pure else self._slice
                    if deadline is not None and deadline < end:
                        end = deadline
                    f = self._in.recv(end, self._first_spin)
                    if f is None or not f.startswith(_MSG_HDR):
                        f = self._read(0, deadline, f)
                    elif pure and pure != PURE_SPIN:
                        self._pure = PURE_SPIN
            finally:
                rl.release()
                if self._nwaiting or self._closing:
                    self._left()
        else:
            f = self._take(0, self._pop_msg, deadline)
            if f is _TIMEOUT:
                f = None
        if f is None:
            raise Timeout(f"connection {self._name!r}: no message within {timeout} s")
        return f[_FRAME_SIZE:]

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
            return inbox.popleft()[_FRAME_SIZE:]
        rl = self._rlock
        if not rl.acquire(False):
            return None
        try:
            if inbox:
                return inbox.popleft()[_FRAME_SIZE:]
            if self._err is not None:
                raise self._error()
            while True:
                f = self._in.try_recv()
                if f is None:
                    why = self._peer_down(cheap=True)
                    if why is None:
                        return None
                    f = self._in.try_recv()
                    if f is None:
                        self._set_gone(why)
                        raise self._error()
                try:
                    h = _unpack(f)[0]
                except struct.error:
                    raise self._corrupt(f) from None
                if h == _MSG:
                    return f[_FRAME_SIZE:]
                self._dispatch(h, h & 255, f)
        finally:
            self._leave()

    def recv_object(self, *, timeout: float | None = None) -> Any:
        """Receive an object sent with :meth:`send_object`.

        Only unpickle messages from processes you trust.

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
        """
        deadline = None if timeout is None else deadline_of(timeout)
        rid = next(self._ids)
        want = rid << 8 | _RESP
        frame = _pack(want - 1) + data
        rl = self._rlock
        if self._err is None and rl.acquire(False):
            # The hot path: one try_send and one Ring.recv, with the reader
            # role held (close() waits for it, so the send needs no lock).
            try:
                try:
                    sent = self._out.try_send(frame)
                except MessageTooLarge:
                    raise self._too_large(frame) from None
                if sent:
                    pure = self._pure
                    end = _monotonic() + pure if pure else self._slice
                    if deadline is not None and deadline < end:
                        end = deadline
                    try:
                        f = self._in.recv(end, self._first_spin)
                        if f is not None and f.startswith(_pack(want)):
                            if pure and pure != PURE_SPIN:
                                self._pure = PURE_SPIN
                            return f[_FRAME_SIZE:]
                        f = self._read(want, deadline, f)
                    except BaseException:
                        self._abandon(rid)
                        raise
            finally:
                rl.release()
                if self._nwaiting or self._closing:
                    self._left()
            if sent:
                return self._response(f, rid, timeout)
        return self._request_slow(frame, rid, want, deadline, timeout)

    def _request_slow(self, frame: bytes, rid: int, want: int, deadline: float | None,
                      timeout: float | None) -> bytes:
        """request() when another thread reads, or the ring is full."""
        self._send_frame(frame, deadline)
        try:
            f = self._take(want, lambda: self._responses.pop(rid, None), deadline)
        except BaseException:
            self._abandon(rid)
            raise
        return self._response(None if f is _TIMEOUT else f, rid, timeout)

    def _response(self, f: bytes | None, rid: int, timeout: float | None) -> bytes:
        if f is None:
            self._abandon(rid)
            raise Timeout(f"connection {self._name!r}: no response within {timeout} s")
        if f[0] == _RESP:
            return f[_FRAME_SIZE:]
        raise RemoteError(f"connection {self._name!r}: the {self._peer_role()}'s handler failed:\n"
                          + f[_FRAME_SIZE:].decode("utf-8", "replace"))

    def _abandon(self, rid: int) -> None:
        with self._cv:
            if self._responses.pop(rid, None) is None:
                self._abandoned.add(rid)

    def request_object(self, obj: Any, *, timeout: float | None = None) -> Any:
        """:meth:`request` with a pickled object; the response is unpickled too.

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

    def _pop_request(self) -> bytes | None:
        reqs = self._requests
        return reqs.popleft() if reqs else None

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
        """
        deadline = None if timeout is None else deadline_of(timeout)
        f = self._take(-1, self._pop_request, deadline)
        if f is _TIMEOUT:
            raise Timeout(f"connection {self._name!r}: no request within {timeout} s")
        return Request(_unpack(f)[0] >> 8, f[_FRAME_SIZE:])

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
        self._send_frame(_pack(rid << 8 | _RESP) + data,
                         None if timeout is None else deadline_of(timeout))

    def serve(self, handler: Callable[[bytes], Any]) -> int:
        """Answer requests with ``handler`` until the peer disconnects, :meth:`stop` or :meth:`close`.

        For each request, ``handler(request_bytes)`` returns the response
        (bytes-like; None means empty).  If it raises, the requester's
        :meth:`request` raises :class:`RemoteError` with the traceback, and
        serving goes on.  Plain messages that arrive meanwhile are kept for
        :meth:`recv`.

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
            if not rl.acquire(False):
                # another thread reads: it hands requests over
                try:
                    f = self._take(-1, self._pop_request, _monotonic() + SLICE)
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
            self._rowner = _get_ident()
            try:
                reqs = self._requests
                ring = self._in
                out = self._out
                first_spin = self._first_spin
                while not self._stop:
                    if reqs:
                        f = reqs.popleft()
                    else:
                        pure = self._pure
                        f = ring.recv(_monotonic() + pure if pure else self._slice, first_spin)
                        if f is None:
                            f = self._wait_frame(None)
                        elif pure and pure != PURE_SPIN:
                            self._pure = PURE_SPIN
                        if f is None:
                            f = self._idle(None)
                            if f is None:
                                continue
                            if f is _TIMEOUT:
                                return served
                    try:
                        h = _unpack(f)[0]
                    except struct.error:
                        raise self._corrupt(f) from None
                    if h & 255 != _REQ:
                        self._dispatch(h, h & 255, f)
                        continue
                    # the hot path: handler, then one send
                    try:
                        r = handler(f[_FRAME_SIZE:])
                        resp = _pack(h + 1) + r if r is not None else _pack(h + 1)
                    except Exception as e:  # the handler's failure goes to the requester
                        resp = self._error_frame(h, e)
                    if self._err is not None:
                        return served  # closed from the handler
                    try:  # the reader role keeps close() waiting: no send lock needed
                        sent = out.try_send(resp)
                    except MessageTooLarge:
                        sent = False
                    if not sent:
                        try:
                            self._send_slow(resp, None)
                        except MessageTooLarge as e:
                            self._send_slow(self._error_frame(h, e), None)
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

    def _answer(self, handler: Callable[[bytes], Any], f: bytes) -> int:
        h = _unpack(f)[0]
        try:
            r = handler(f[_FRAME_SIZE:])
            resp = _pack(h + 1) + r if r is not None else _pack(h + 1)
        except Exception as e:
            resp = self._error_frame(h, e)
        if self._err is not None:
            return 0
        try:
            self._send_frame(resp, None)
        except MessageTooLarge as e:
            self._send_frame(self._error_frame(h, e), None)
        except PeerDisconnected:
            return 0
        return 1

    def _error_frame(self, h: int, e: BaseException) -> bytes:
        if isinstance(e, TypeError) and e.__traceback__ is not None \
                and e.__traceback__.tb_next is None:
            text = (f"TypeError: the handler must return bytes-like (or None), and here it "
                    f"failed with: {e}")
        else:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        data = text.encode("utf-8", "replace")
        room = self._max_frame - _FRAME_SIZE
        if len(data) > room:
            data = data[-room:]
        return _pack(h + 2) + data

    def stop(self) -> None:
        """Make :meth:`serve` return after the request it is handling (from any thread)."""
        self._stop = True
        if self._rlock.locked() and self._rowner != _get_ident() and self._wlock.acquire(False):
            try:  # the send lock keeps close() from unmapping the ring meanwhile
                if not self._detached:
                    self._in.try_send(_WAKE_FRAME)
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
        if self._role is None:
            super().close()
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
                self._out.try_send(_CLOSE_FRAME)  # wakes the peer's reader at once
            except ShmlinkError:
                pass
            # and the ring's event count, for peers waiting on it some other way
            mem.add32(self._out_ec, 1)
            mem.wake32(self._out_ec)
            if self._rlock.locked() and self._rowner != _get_ident():
                self._in.try_send(_WAKE_FRAME)  # our own blocked reader
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

    def __enter__(self) -> "Connection":
        return self

    def __repr__(self) -> str:
        if self._role is None:
            return f"<shmlink.Connection {self._name!r}{' closed' if self._closed else ''}>"
        state = "closed" if self.closed else ("peer gone" if self._err else "open")
        return (f"<shmlink.Connection {self._name!r} {self._role} peer_pid={self._peer[0]} "
                f"{state}>")


def _conn_state(client: tuple[int, int, int], server: tuple[int, int, int], st: int,
                c2s: dict[str, int] | None, s2c: dict[str, int] | None) -> dict[str, Any]:
    def side(pid: int, closed: int, start: int) -> str:
        if not pid:
            return "-"
        if closed:
            return f"PID {pid} (closed)"
        return f"PID {pid}" + ("" if _process_alive(pid, start) else " (dead)")

    out: dict[str, Any] = {"client": side(*client), "server": side(*server),
                           "accept": _ST_NAMES.get(st, f"invalid ({st})")}
    for label, s in (("client_to_server", c2s), ("server_to_client", s2c)):
        if s is not None:
            out[label] = (f"{s['sent']} sent, {s['received']} received, "
                          f"{max(0, s['sent'] - s['received'])} queued")
    return out


# --- Listener --------------------------------------------------------------------


class Listener(_Named):
    """A named place where clients :func:`connect` and the server :meth:`accept`\\ s them.

    Make one with :func:`listen` (or :meth:`create`).  Each accepted client
    gets its own :class:`Connection`; any number may be connected at once.
    Closing the listener removes its name and refuses pending connects;
    connections already accepted are not affected.
    """

    KIND = "listener"
    _ring: Any = None
    _owner = False
    _closing = False
    _detached = False
    _spin = WAIT_STRATEGIES["hybrid"]
    _wait = "hybrid"

    @classmethod
    def create(cls, name: str, *, capacity: int = 1 << 20, backlog: int = 64,
               max_message_size: int | None = None, wait: str = "hybrid",
               mode: int = 0o600) -> "Listener":
        """Listen on ``name`` (see :func:`listen`).

        Parameters
        ----------
        name : str
            The listener's name (at most :data:`LISTENER_NAME_MAX` characters).
        capacity : int
            Bytes of message storage in each direction of each connection.
        backlog : int
            How many connects may wait for :meth:`accept` at once (at least
            2); more wait (within their timeout) for room.
        max_message_size : int, optional
            Largest message; default and maximum ``capacity - 16``.
        wait : {"hybrid", "block", "spin"}
            How accepted connections (and :meth:`accept`) wait.
        mode : int
            Permission bits of the listener and of every connection segment.

        Returns
        -------
        Listener
            The listener; this process owns it.

        Raises
        ------
        SegmentExists
            If a live server already listens on ``name`` (a listener whose
            server died is taken over).
        InvalidName, InvalidSize
        """
        validate_name(name)
        if len(name) > LISTENER_NAME_MAX:
            raise InvalidName(f"listener name {name[:40]!r}... is {len(name)} characters; the "
                              f"limit is {LISTENER_NAME_MAX} (its connections add a suffix)")
        _spin_of(wait)
        for what, v, lo in (("capacity", capacity, 64), ("backlog", backlog, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidSize(f"listener {name!r}: {what} must be an int >= {lo}, not {v!r}")
        capacity = (capacity + 7) & ~7
        if backlog > 1 << 20:
            raise InvalidSize(f"listener {name!r}: backlog {backlog} is too large (max {1 << 20})")
        if max_message_size is None:
            max_frame = 0
        else:
            if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) \
                    or not 0 <= max_message_size <= capacity - 16:
                raise InvalidSize(f"listener {name!r}: max_message_size must be between 0 and "
                                  f"capacity - 16 ({capacity - 16}), not {max_message_size!r}")
            max_frame = max_message_size + _FRAME_SIZE
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits such as 0o600, not {mode!r}")
        ring_bytes = _RING_HEADER + max(64, backlog * _ACCEPT_RECORD)  # exactly `backlog` records
        size = _L_RING + ring_bytes
        pid, start = _identity()

        def init(mm: Any) -> None:
            struct.pack_into("<IIIIQQQII", mm, _L_MAGIC, _L_MAGIC_VALUE, _L_VERSION, pid, 0,
                             start, capacity, max_frame, backlog, mode)
            _core.ring_init(mm, _D + _L_RING, ring_bytes, _ACCEPT_NAME)

        while True:
            try:
                lst = cls._create_kind(name, size, kind=cls._kind_id(), mode=mode,
                                       lifetime="auto", init=init, kind_version=_L_VERSION)
                break
            except SegmentExists:
                holder = _stale_listener(name)
                if holder is not None:
                    raise SegmentExists(
                        f"listener {name!r} already exists ({holder}); pick another name, or stop "
                        "that server first"
                    ) from None
        lst._owner = True
        lst.wait = wait
        return lst

    @classmethod
    def open(cls, name: str, *, timeout: float | None = 5.0) -> "Listener":
        """Open an existing listener by name (for :meth:`state`, or to :meth:`accept` too).

        Several processes may accept from one listener (a pre-forked
        server); only the creator's :meth:`close` removes it.

        Parameters
        ----------
        name : str
            The listener's name.
        timeout : float or None
            How long to wait for a segment still being initialised.

        Returns
        -------
        Listener
            A handle that does not own the listener.
        """
        return cls._open_kind(name, timeout=timeout)

    def _attach(self) -> None:
        m = self._mapping()
        mem = self._memory
        if m.header.kind_version != _L_VERSION or mem.load32(_L_MAGIC) != _L_MAGIC_VALUE \
                or mem.load32(_L_VERSION_OFF) != _L_VERSION:
            raise IncompatibleSegment(
                f"listener {self._name!r} has an unknown layout; it was made by another shmlink "
                "version: use the same version on both sides"
            )
        if m.header.data_size <= _L_RING + _RING_HEADER:
            raise CorruptSegment(f"listener {self._name!r} is too small to hold its accept ring")
        self._ring = _core.Ring(m.mm, _D + _L_RING, m.header.data_size - _L_RING)
        self._alock = threading.Lock()  # held while accepting (close waits for it)
        self._lock = threading.Lock()

    def _detach_kind(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {}

    # -- properties --

    @property
    def wait(self) -> str:
        """The wait strategy of :meth:`accept` and of accepted connections."""
        return self._wait

    @wait.setter
    def wait(self, value: str) -> None:
        self._spin = _spin_of(value)
        self._wait = value

    @property
    def closed(self) -> bool:
        """True once this handle was closed."""
        return self._closing or self._closed

    @property
    def server_pid(self) -> int:
        """PID of the server (the process that listens)."""
        return self._memory.load32(_L_PID)

    @property
    def capacity(self) -> int:
        """Bytes of message storage in each direction of each connection."""
        return self._memory.load64(_L_CAPACITY)

    @property
    def backlog(self) -> int:
        """How many connects may wait for :meth:`accept` at once."""
        return self._memory.load32(_L_BACKLOG)

    def _server_gone(self) -> str | None:
        mem = self._memory
        if mem.load32(_L_CLOSED):
            return "was closed"
        pid = mem.load32(_L_PID)
        if not _process_alive(pid, mem.load64(_L_START)):
            return f"has no server (PID {pid} died)"
        return None

    # -- accepting --

    def accept(self, *, timeout: float | None = None) -> Connection:
        """Wait for the next client and return this side's :class:`Connection`.

        Ctrl-C interrupts the wait (``KeyboardInterrupt``).

        Parameters
        ----------
        timeout : float or None
            Seconds to wait for a client; None = forever.

        Returns
        -------
        Connection
            The server end (``role == "server"``).

        Raises
        ------
        Timeout
            If no client connected within ``timeout`` seconds.
        SegmentClosed
            If the listener was closed (also by another thread while waiting).
        """
        deadline = deadline_of(timeout)
        al = self._alock
        while not al.acquire(True, SLICE if deadline is None else min(SLICE, _remaining(deadline))):
            if self._closing:
                raise SegmentClosed(f"listener {self._name!r} is closed")
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"listener {self._name!r}: no client connected within {timeout} s")
        try:
            while True:
                if self._closing or self._ring is None:
                    raise SegmentClosed(f"listener {self._name!r} is closed")
                raw = self._ring.recv(_slice_end(deadline), self._spin)
                if raw is None:
                    if deadline is not None and _monotonic() >= deadline:
                        raise Timeout(f"listener {self._name!r}: no client connected within "
                                      f"{timeout} s")
                    continue
                conn = self._admit(raw)
                if conn is not None:
                    return conn
        finally:
            al.release()
            if self._closing:
                self._finish_close(False)

    def _admit(self, raw: bytes) -> Connection | None:
        """Accept the connection a client posted; None if it is gone or not one."""
        try:
            suffix = raw.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            return None
        if not _SUFFIX_RE.match(suffix):
            return None  # a wake-up, or garbage
        try:
            conn = Connection._open_kind(f"{self._name}.{suffix}", timeout=1.0)
        except (ShmlinkError, OSError):
            return None  # the client gave up and its segment went away, or it is not one
        try:
            mem = conn._mem
            if not _process_alive(mem.load32(_C_CLIENT_PID), mem.load64(_C_CLIENT_START)):
                mem.cas32(_C_STATE, _ST_PENDING, _ST_ABANDONED)
                conn.unlink()  # nobody will use it
                conn.close()
                return None
            pid, start = _identity()
            mem.store32(_C_SERVER_PID, pid)
            mem.store64(_C_SERVER_START, start)
            # SYNC: the CAS publishes the server identity to the client's acquire load
            if not mem.cas32(_C_STATE, _ST_PENDING, _ST_ACCEPTED):
                conn.unlink()  # the client gave up first: nobody will use it
                conn.close()
                return None
            mem.wake32(_C_STATE)
            conn._bind("server", self._wait)
            self._memory.add64(_L_ACCEPTED, 1)
            return conn
        except BaseException:
            conn.close()
            raise

    def __iter__(self) -> Iterator[Connection]:
        """Accept clients one after another until the listener is closed."""
        while True:
            try:
                yield self.accept()
            except SegmentClosed:
                return

    # -- introspection --

    def clients(self) -> list[dict[str, Any]]:
        """The connections made through this listener that still exist.

        Returns
        -------
        list of dict
            One per connection segment: ``name``, ``client_pid``,
            ``server_pid``, ``accept`` ("pending", "accepted", ...),
            ``client_alive``, ``client_closed``, ``server_closed``.
        """
        return _listener_clients(self._name)

    def state(self) -> dict[str, Any]:
        """Kind-specific state for ``shmlink info``: the server and the connected clients.

        Returns
        -------
        dict
            Server PID and whether it is alive, capacity, backlog, counts,
            and ``clients``: one line per connection with the client's PID.
        """
        mem = self._memory
        pid = mem.load32(_L_PID)
        alive = _process_alive(pid, mem.load64(_L_START))
        stats = self._ring.stats() if self._ring is not None else {"sent": 0, "received": 0}
        lines = []
        for c in self.clients():
            status = c["accept"]
            if c["accept"] == "accepted":
                status = "connected"
                if c["client_closed"] or c["server_closed"]:
                    status = "closing"
            if not c["client_alive"]:
                status += ", client dead"
            lines.append(f"PID {c['client_pid']} {c['name']} ({status})")
        return {
            "server": f"PID {pid}" + ("" if alive else " (dead)")
                      + (" (closed)" if mem.load32(_L_CLOSED) else ""),
            "capacity": mem.load64(_L_CAPACITY),
            "backlog": mem.load32(_L_BACKLOG),
            "accepted": mem.load64(_L_ACCEPTED),
            "pending": max(0, stats["sent"] - stats["received"]),
            "clients": lines,
        }

    # -- lifetime --

    def close(self) -> None:
        """Close the listener (idempotent).

        The owner's close removes the name and refuses connects still
        waiting for :meth:`accept`; a thread blocked in :meth:`accept`
        raises :class:`~shmlink.SegmentClosed`.  Accepted connections stay.
        """
        if self._closed or self._ring is None:
            super().close()
            return
        with self._lock:
            first = not self._closing
            self._closing = True
        if first:
            if self._owner:
                self._memory.store32(_L_CLOSED, 1)
                try:
                    self.unlink()
                except (OSError, ShmlinkError):
                    pass
            ring = self._ring  # the accepting thread may finish the close and clear it
            if ring is not None and self._alock.locked():
                try:
                    ring.try_send(b"")  # wakes the thread blocked in accept()
                except (ValueError, ShmlinkError):
                    pass  # already closed by that thread
        self._finish_close(True)

    def _finish_close(self, wait: bool) -> None:
        al = self._alock
        if not (al.acquire(True, 2 * SLICE + 1.0) if wait else al.acquire(False)):
            return  # a thread still accepts: it finishes on its way out
        try:
            with self._lock:
                if self._detached:
                    return
                self._detached = True
            ring = self._ring
            # refuse connects that were still waiting, so that they fail at once
            while self._owner and ring is not None:
                raw = ring.try_recv()
                if raw is None:
                    break
                _refuse(self._name, raw)
            super().close()
        finally:
            al.release()

    def __repr__(self) -> str:
        if self.closed:
            return f"<shmlink.Listener {self._name!r} closed>"
        return f"<shmlink.Listener {self._name!r} server_pid={self.server_pid}>"


def _refuse(listener: str, raw: bytes) -> None:
    try:
        suffix = raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        return
    if not _SUFFIX_RE.match(suffix):
        return
    try:
        conn = Connection._open_kind(f"{listener}.{suffix}", timeout=0.5)
    except (ShmlinkError, OSError):
        return
    try:
        if conn._mem.cas32(_C_STATE, _ST_PENDING, _ST_REFUSED):
            conn._mem.wake32(_C_STATE)
    finally:
        conn.close()


def _read_data(path: str, n: int) -> tuple[int, bytes] | None:
    """(kind, the first n bytes of the data area) of a segment file, without attaching."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        head = os.pread(fd, 16, 0)
        data = os.pread(fd, n, _D)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) < 16 or len(data) < n:
        return None
    magic, _version, kind = struct.unpack_from("<QII", head)
    if magic != 0x4B4E494C4D485301:
        return None
    return kind, data


def _stale_listener(name: str) -> str | None:
    """Remove the listener ``name`` if its server died; else say who holds the name."""
    path = os.path.join(shm_dir(), PREFIX + name)
    got = _read_data(path, 24)
    if got is None:
        return None if not os.path.lexists(path) else "it is not a readable shmlink segment"
    kind, data = got
    if kind != Listener._kind_id():
        return "it is another kind of object"
    magic, _v, pid, closed, start = struct.unpack_from("<IIIIQ", data)
    if magic == _L_MAGIC_VALUE and not closed and _process_alive(pid, start):
        return f"served by PID {pid}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)  # its server died: take the name over
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    return None


def _listener_clients(name: str) -> list[dict[str, Any]]:
    d = shm_dir()
    prefix = PREFIX + name + ".c"
    try:
        entries = sorted(e for e in os.listdir(d) if e.startswith(prefix))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if not _SUFFIX_RE.match(entry[len(prefix) - 1:]):
            continue
        got = _read_data(os.path.join(d, entry), _C_STATE + 4 - _D)
        if got is None or got[0] != Connection._kind_id():
            continue
        data = got[1]
        if struct.unpack_from("<I", data, 0)[0] != _C_MAGIC_VALUE:
            continue
        cpid, cclosed, cstart = struct.unpack_from("<IIQ", data, _C_CLIENT_PID - _D)
        spid, sclosed, _sstart = struct.unpack_from("<IIQ", data, _C_SERVER_PID - _D)
        st = struct.unpack_from("<I", data, _C_STATE - _D)[0]
        out.append({"name": entry[len(PREFIX):], "client_pid": cpid, "server_pid": spid,
                    "accept": _ST_NAMES.get(st, f"invalid ({st})"),
                    "client_alive": _process_alive(cpid, cstart),
                    "client_closed": bool(cclosed), "server_closed": bool(sclosed)})
    return out


# --- functions -------------------------------------------------------------------


def listen(name: str, *, capacity: int = 1 << 20, backlog: int = 64,
           max_message_size: int | None = None, wait: str = "hybrid",
           mode: int = 0o600) -> Listener:
    """Listen for connections on ``name``; clients reach it with :func:`connect`.

    Parameters
    ----------
    name : str
        The listener's name (letters, digits, ``_ . -``; at most
        :data:`LISTENER_NAME_MAX` characters).
    capacity : int
        Bytes of message storage in each direction of each connection
        (default 1 MiB); a message takes its length rounded up to 8, plus 16.
    backlog : int
        How many connects may wait for :meth:`Listener.accept` at once.
    max_message_size : int, optional
        Largest message; default and maximum ``capacity - 16``.
    wait : {"hybrid", "block", "spin"}
        How accepted connections wait: spin ~50 µs then sleep (default),
        sleep at once, or spin until the deadline.
    mode : int
        Permission bits of the listener and its connections (default ``0o600``).

    Returns
    -------
    Listener
        Call :meth:`Listener.accept` for each client; close it when done.

    Raises
    ------
    SegmentExists
        If a live server already listens on ``name``.
    """
    return Listener.create(name, capacity=capacity, backlog=backlog,
                           max_message_size=max_message_size, wait=wait, mode=mode)


def connect(name: str, *, timeout: float | None = None, wait: str = "hybrid") -> Connection:
    """Connect to the listener ``name`` and wait until its server accepts.

    Parameters
    ----------
    name : str
        The listener's name.
    timeout : float or None
        Seconds to wait for room in the listener's backlog and for the
        server's :meth:`Listener.accept`; None = forever.
    wait : {"hybrid", "block", "spin"}
        How this end waits.

    Returns
    -------
    Connection
        The client end (``role == "client"``).

    Raises
    ------
    SegmentNotFound
        If nothing listens on ``name``.
    PeerDisconnected
        If the listener was closed, or its server died, before accepting.
    Timeout
        If the server did not accept within ``timeout`` seconds.
    """
    deadline = deadline_of(timeout)
    _spin_of(wait)
    try:
        lst = Listener._open_kind(name, timeout=_remaining(deadline) if deadline else 5.0)
    except SegmentNotFound:
        raise SegmentNotFound(f"nothing listens on {name!r}; start the server (shmlink.listen) "
                              "first, or check the name") from None
    try:
        why = lst._server_gone()
        if why is not None:
            raise PeerDisconnected(f"listener {name!r} {why}; start the server again")
        lmem = lst._memory
        capacity = lmem.load64(_L_CAPACITY)
        max_frame = lmem.load64(_L_MAX_MESSAGE)
        mode = lmem.load32(_L_MODE) & 0o777
        if capacity < 64 or capacity > 1 << 40 or max_frame > capacity:
            raise CorruptSegment(f"listener {name!r} asks for a capacity of {capacity} bytes; "
                                 "its header is corrupt: remove it and listen again")
        pid = os.getpid()
        while True:
            suffix = f"c{pid}-{secrets.token_hex(4)}"
            try:
                conn = Connection._create_client(f"{name}.{suffix}", capacity, max_frame, mode)
                break
            except SegmentExists:
                continue
        try:
            _post(lst, suffix.encode("ascii").ljust(_ACCEPT_NAME, b"\0"), deadline, timeout)
            _await_accept(lst, conn, deadline, timeout)
        except BaseException:
            conn.close()
            raise
        conn._bind("client", wait)
        return conn
    finally:
        lst.close()


def _post(lst: Listener, suffix: bytes, deadline: float | None, timeout: float | None) -> None:
    ring = lst._ring
    while not ring.send(suffix, _slice_end(deadline), lst._spin):
        why = lst._server_gone()
        if why is not None:
            raise PeerDisconnected(f"listener {lst.name!r} {why} before accepting; start the "
                                   "server again")
        if deadline is not None and _monotonic() >= deadline:
            raise Timeout(f"listener {lst.name!r}: its backlog stayed full for {timeout} s (the "
                          "server is not accepting)")


def _await_accept(lst: Listener, conn: Connection, deadline: float | None,
                  timeout: float | None) -> None:
    mem = conn._mem
    try:
        while True:
            st = mem.load32(_C_STATE)
            if st == _ST_ACCEPTED:
                return
            if st == _ST_REFUSED:
                raise PeerDisconnected(f"listener {lst.name!r} was closed before accepting this "
                                       "connection")
            if st != _ST_PENDING:
                raise CorruptSegment(f"connection {conn.name!r} has accept state {st}")
            why = lst._server_gone()
            if why is not None:
                if mem.cas32(_C_STATE, _ST_PENDING, _ST_ABANDONED):
                    raise PeerDisconnected(f"listener {lst.name!r} {why} before accepting; start "
                                           "the server again")
                continue
            if deadline is not None and _monotonic() >= deadline:
                if mem.cas32(_C_STATE, _ST_PENDING, _ST_ABANDONED):
                    raise Timeout(f"listener {lst.name!r}: the server did not accept within "
                                  f"{timeout} s")
                continue
            mem.wait32(_C_STATE, _ST_PENDING, _slice_end(deadline))
    except BaseException:
        # Ctrl-C or an error: make sure the server does not accept it later
        mem.cas32(_C_STATE, _ST_PENDING, _ST_ABANDONED)
        raise


# --- the CLI ----------------------------------------------------------------------

from ._commands import command  # noqa: E402  (registration only)


@command("request", "connect to a listener, send one request, print the response")
def _cli_request(a: Any) -> int:
    import sys

    if a.file is not None:
        with (sys.stdin.buffer if a.file == "-" else open(a.file, "rb")) as f:
            data = f.read()
    elif a.text is None or a.text == "-":
        data = sys.stdin.buffer.read()
    else:
        data = a.text.encode("utf-8")
    with connect(a.listener, timeout=a.timeout) as conn:
        resp = conn.request(data, timeout=a.timeout)
    if a.raw:
        sys.stdout.buffer.write(resp)
    else:
        sys.stdout.write(resp.decode("utf-8", "backslashreplace") + "\n")
    sys.stdout.flush()
    return 0


_cli_request.setup = lambda p: (  # type: ignore[attr-defined]
    p.add_argument("listener", help="the listener's name"),
    p.add_argument("text", nargs="?", help="the request; '-' or omitted: read stdin"),
    p.add_argument("--file", help="send this file's contents ('-' = stdin)"),
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds for connecting and for the response (default 10)"),
    p.add_argument("--raw", action="store_true", help="write the response's bytes as they are"),
)


@command("serve", "listen on a name and answer requests (echo, or a shell command's output)")
def _cli_serve(a: Any) -> int:
    import subprocess
    import sys

    if a.exec:
        def handler(req: bytes) -> bytes:
            return subprocess.run(a.exec, shell=True, input=req, capture_output=True,
                                  check=False).stdout
    else:
        def handler(req: bytes) -> bytes:
            return req

    threads: list[threading.Thread] = []
    conns: list[Connection] = []
    with listen(a.listener, capacity=a.capacity) as lst:
        sys.stderr.write(f"listening on {a.listener!r} (PID {os.getpid()}); Ctrl-C stops\n")
        try:
            for n in itertools.count():
                if a.count is not None and n >= a.count:
                    break
                conn = lst.accept()
                conns.append(conn)

                def run(c: Connection = conn) -> None:
                    with c:
                        c.serve(handler)

                t = threading.Thread(target=run, daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        finally:
            for c in conns:
                c.close()
    return 0


def _cli_serve_setup(p: Any) -> None:
    import argparse

    from .cli import UsageError, _parse_size

    def size(text: str) -> int:
        try:
            return _parse_size(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument("listener", help="the name to listen on")
    p.add_argument("--exec", metavar="CMD",
                   help="answer each request with the stdout of this shell command, fed the "
                        "request on stdin (default: echo the request)")
    p.add_argument("--count", type=int, default=None, help="serve this many clients, then exit")
    p.add_argument("--capacity", type=size, default=1 << 20,
                   help="bytes per direction per connection (default 1M)")


_cli_serve.setup = _cli_serve_setup  # type: ignore[attr-defined]
