"""The listener (a named accept ring), :func:`listen` and :func:`connect`.

:func:`connect` creates the connection segment, posts its name's suffix on
the listener's accept ring and waits for the accept state to change;
:meth:`Listener.accept` takes a suffix, opens that segment and wins the
accept compare-and-swap (or finds the client gone).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import threading
import time
from typing import Any, Iterator

from .. import _core
from ..errors import (
    CorruptSegment,
    IncompatibleSegment,
    InvalidName,
    InvalidSize,
    PeerDisconnected,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    ShmlinkError,
    Timeout,
)
from ..queue import WAIT_STRATEGIES, _spin_of
from ..segment import PREFIX, _identity, _Named, shm_dir, validate_name
from ..sync import deadline_of
from ._connection import Connection, _max_buffered_of
from ._reader import MAX_BUFFERED
from ._layout import (
    _BELLS_OFFSET,
    _EC_OFFSET,
    _ACCEPT_NAME,
    _ACCEPT_RECORD,
    _C_CLIENT_PID,
    _C_CLIENT_START,
    _C_MAGIC_VALUE,
    _C_SERVER_PID,
    _C_SERVER_START,
    _C_STATE,
    _D,
    _FRAME_SIZE,
    _L_ACCEPTED,
    _L_BACKLOG,
    _L_CAPACITY,
    _L_CLOSED,
    _L_MAGIC,
    _L_MAGIC_VALUE,
    _L_MAX_MESSAGE,
    _L_MODE,
    _L_PID,
    _L_RING,
    _L_START,
    _L_VERSION,
    _L_VERSION_OFF,
    _RING_HEADER,
    _ST_ABANDONED,
    _ST_ACCEPTED,
    _ST_NAMES,
    _ST_PENDING,
    _ST_REFUSED,
    _SUFFIX_RE,
    LISTENER_NAME_MAX,
    SLICE,
    WaitStrategy,
    _monotonic,
    _remaining,
    _slice_end,
)

__all__ = ["Listener", "listen", "connect"]

_process_alive = _core.process_alive

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
    _wait: WaitStrategy = "hybrid"
    _max_buffered = MAX_BUFFERED

    @classmethod
    def create(cls, name: str, *, capacity: int = 1 << 20, backlog: int = 64,
               max_message_size: int | None = None, wait: WaitStrategy = "hybrid",
               mode: int = 0o600, max_buffered: int = MAX_BUFFERED) -> "Listener":
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
        max_buffered : int
            :attr:`Connection.max_buffered` of accepted connections.

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
        _max_buffered_of(max_buffered)
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
        lst._max_buffered = max_buffered
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

    def _after_fork(self) -> None:
        # A forked child may accept (a pre-forked server), but the listener
        # stays its creator's: only the creator's close() removes it.
        self._owner = False
        self._attach()

    def _detach_kind(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {}

    # -- properties --

    @property
    def wait(self) -> WaitStrategy:
        """The wait strategy of :meth:`accept` and of accepted connections."""
        return self._wait

    @wait.setter
    def wait(self, value: WaitStrategy) -> None:
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

    def try_accept(self) -> Connection | None:
        """The next client's :class:`Connection` if one is waiting now, else None.

        Raises
        ------
        SegmentClosed
            If the listener was closed.
        """
        al = self._alock
        if not al.acquire(False):
            return None  # another thread accepts
        try:
            while True:
                if self._closing or self._ring is None:
                    raise SegmentClosed(f"listener {self._name!r} is closed")
                raw = self._ring.try_recv()
                if raw is None:
                    if self._readies:
                        self._readies["accept"].rearm()  # a stale ring reads idle again
                    return None
                conn = self._admit(raw)
                if conn is not None:
                    return conn
        finally:
            al.release()
            if self._closing:
                self._finish_close(False)

    def fileno(self) -> int:
        """A descriptor that reads ready when a client may be waiting to be accepted.

        For :mod:`select`, ``epoll``, event loops and :func:`shmlink.wait`;
        after it, call :meth:`try_accept`.  The descriptor is this handle's:
        :meth:`close` closes it.

        Returns
        -------
        int
        """
        return int(self._ready_accept().fileno())

    def _wait_ready(self) -> Any:  # what shmlink.wait waits for
        return self._ready_accept()

    def _ready_accept(self) -> Any:
        ring = self._ring
        if ring is None or self._closing:
            raise SegmentClosed(f"listener {self._name!r} is closed")
        mem = self._memory
        return self._readiness("accept", _D + _L_RING + _EC_OFFSET, _D + _L_RING + _BELLS_OFFSET,
                               lambda: ring.may_recv() or bool(mem.load32(_L_CLOSED)))

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
            conn._bind("server", self._wait, self._max_buffered)
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

    def stats(self) -> dict[str, Any]:
        """Kind-specific state for ``shmlink info``: the server and the connected clients.

        Returns
        -------
        dict
            ``server_pid``, ``server_alive``, ``closed`` (the server closed
            the listener), ``capacity`` (bytes per direction of each
            connection), ``backlog``, ``accepted`` (connections, since
            creation), ``pending`` (connects waiting for ``accept``) and
            ``clients``: one dict per connection, as :meth:`clients` gives.
        """
        mem = self._memory
        pid = mem.load32(_L_PID)
        stats = self._ring.stats() if self._ring is not None else {"sent": 0, "received": 0}
        return {
            "server_pid": pid or None,
            "server_alive": bool(pid) and _process_alive(pid, mem.load64(_L_START)),
            "closed": bool(mem.load32(_L_CLOSED)),
            "capacity": mem.load64(_L_CAPACITY),
            "backlog": mem.load32(_L_BACKLOG),
            "accepted": mem.load64(_L_ACCEPTED),
            "pending": max(0, stats["sent"] - stats["received"]),
            "clients": self.clients(),
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
                # fd-waiters (fileno(), shmlink.asyncio) of other handles see the flag
                self._memory.ec_notify(_D + _L_RING + _EC_OFFSET, True,
                                       _D + _L_RING + _BELLS_OFFSET)
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

    def __enter__(self) -> Listener:
        return self

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
        return _read_fd(fd, n)
    finally:
        os.close(fd)


def _read_fd(fd: int, n: int) -> tuple[int, bytes] | None:
    try:
        head = os.pread(fd, 16, 0)
        data = os.pread(fd, n, _D)
    except OSError:
        return None
    if len(head) < 16 or len(data) < n:
        return None
    magic, _version, kind = struct.unpack_from("<QII", head)
    if magic != 0x4B4E494C4D485301:
        return None
    return kind, data


def _stale_listener(name: str) -> str | None:
    """Remove the listener ``name`` if its server died; else say who holds the name.

    What is examined is one open file, and only that file is removed: its
    name is unlinked holding an exclusive ``flock`` on it and only while
    the path still names it.  Every remover of a listener (this function,
    ``gc``, the last user of an ``auto`` segment) holds that lock, so of
    two servers taking over the same stale name at once, one removes it
    and the other finds the name gone or naming the winner's new listener,
    which it never removes (it is served by a live process, and the
    winner holds its shared lock).
    """
    path = os.path.join(shm_dir(), PREFIX + name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return "it is not a readable shmlink segment"
    try:
        got = _read_fd(fd, 24)
        if got is None:
            return "it is not a readable shmlink segment"
        kind, data = got
        if kind != Listener._kind_id():
            return "it is another kind of object"
        magic, _v, pid, closed, start = struct.unpack_from("<IIIIQ", data)
        if magic == _L_MAGIC_VALUE and not closed and _process_alive(pid, start):
            return f"served by PID {pid}"
        # Its server is gone.  Clients still attached notice within a slice
        # and let go of the file: wait for them, a little.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return f"its server (PID {pid}) is gone but other processes still have it open"
                time.sleep(0.01)
        st = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return None
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)  # its server died: take the name over
        return None
    finally:
        os.close(fd)


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
           max_message_size: int | None = None, wait: WaitStrategy = "hybrid",
           mode: int = 0o600, max_buffered: int = MAX_BUFFERED) -> Listener:
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
        How accepted connections wait: spin ~1 µs, then poll yielding the
        CPU for up to 50 µs, then sleep (default); sleep at once; or spin
        until the deadline.
    mode : int
        Permission bits of the listener and its connections (default ``0o600``).
    max_buffered : int
        Bytes of unread messages and requests each accepted connection keeps
        in-process (default 16 MiB; see :attr:`Connection.max_buffered`).

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
                           max_message_size=max_message_size, wait=wait, mode=mode,
                           max_buffered=max_buffered)


def connect(name: str, *, timeout: float | None = None, wait: WaitStrategy = "hybrid",
            max_buffered: int = MAX_BUFFERED) -> Connection:
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
    max_buffered : int
        Bytes of unread messages and requests this end keeps in-process
        (default 16 MiB; see :attr:`Connection.max_buffered`).

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
    _max_buffered_of(max_buffered)
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
        conn._bind("client", wait, max_buffered)
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
