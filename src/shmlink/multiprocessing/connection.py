"""``multiprocessing.connection`` on shared memory: :func:`Pipe`, :class:`Listener`,
:func:`Client` and :func:`wait`, with :class:`Connection` objects of the standard API.

Addresses are names: ``Listener("jobs")`` and ``Client("jobs")`` meet through a
shared-memory accept ring called ``mp.listen.jobs``; ``Listener()`` makes up a
unique name (``listener.address``).  ``authkey`` runs the standard HMAC
challenge (``multiprocessing.connection.deliver_challenge`` /
``answer_challenge``) over the new connection.

Readiness: :meth:`Connection.fileno` hands out a descriptor that is readable
while the connection has a message (see :func:`_readiness_fd`), so standard
``multiprocessing.connection.wait``, ``selectors`` and the
``concurrent.futures`` manager thread work on these connections.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import time
from multiprocessing import AuthenticationError, BufferTooShort  # noqa: F401 (re-exported)
from multiprocessing import connection as _std
from typing import Any, Iterable

from ..errors import SegmentExists, SegmentNotFound
from . import _channel
from .._ready import Readiness
from ._channel import Channel, _forkables, open_channel, sweep

__all__ = ["Connection", "Pipe", "Listener", "Client", "wait", "families", "default_family",
           "AuthenticationError", "BufferTooShort"]

#: the one address family: names of shared-memory objects
families = ["AF_SHMLINK"]
default_family = "AF_SHMLINK"

from ._channel import dumps as _dumps, loads as _loads
_CAPACITY = 1 << 20  # bytes per direction
_NOT_BLOCKING = 0.0


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


class Connection:
    """One end of a :func:`Pipe` (or of a :class:`Listener`/:func:`Client` pair).

    The API of ``multiprocessing.connection.Connection``: ``send``/``recv``
    (pickled with ``ForkingPickler``), ``send_bytes``/``recv_bytes``/
    ``recv_bytes_into``, ``poll(timeout)``, ``fileno()``, ``close()``,
    ``closed``, ``readable``, ``writable``; ``recv`` raises ``EOFError`` once
    every handle of the other end was closed (or its processes died) and all
    it sent was received.  A handle can be pickled to another process (spawn,
    forkserver, through a queue) and is inherited by ``fork``: both then hold
    the end, as with a duplicated descriptor.
    """

    _ch: Channel | None = None
    _bell: Any = None

    def __init__(self, channel: Channel, end: int, readable: bool = True,
                 writable: bool = True) -> None:
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        channel.retain()
        self._ch = channel
        self._end = end
        self._readable = readable
        self._writable = writable
        n = len(channel.rings)
        # end 0 reads ring 0 and writes ring 1 (duplex); a one-way pipe has one ring
        self._rx = end if n == 2 else 0
        self._tx = (1 - end) if n == 2 else 0
        self._peer = 1 - end
        self._alive = lambda: channel.end_alive(self._peer)
        _forkables.add(self)

    # -- state --

    def _check_closed(self) -> Channel:
        ch = self._ch
        if ch is None:
            raise OSError("handle is closed")
        return ch

    def _check_readable(self) -> None:
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self) -> None:
        if not self._writable:
            raise OSError("connection is read-only")

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._ch is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    @property
    def name(self) -> str:
        """The name of the shared-memory object behind the connection."""
        return self._check_closed().name

    def fileno(self) -> int:
        """A descriptor that is readable while a message waits (for ``wait``/``selectors``)."""
        ch = self._check_closed()
        return _readiness_fd(self, ch, self._rx)

    def close(self) -> None:
        """Close this handle; the other end sees EOF when every handle of this end is closed."""
        ch = self._ch
        if ch is None:
            return
        self._ch = None
        _forkables.discard(self)
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.close()  # unregisters the doorbell and closes its descriptor
        try:
            ch.adjust(self._end, 0, -1)
            if self._writable:
                ch.wake_readers(self._tx)
            if self._readable:
                ch.wake_writers(self._rx)
        except Exception:
            pass
        ch.release()
        sweep()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._ch is None:
            return "<shmlink.multiprocessing.Connection closed>"
        return f"<shmlink.multiprocessing.Connection {self._ch.name!r} end {self._end}>"

    # -- pickling and fork --

    def __reduce__(self) -> tuple[Any, ...]:
        ch = self._check_closed()
        who = ch.reserve(self._end)
        return (_rebuild, (ch.name, self._end, self._readable, self._writable, who))

    def _fork_reserve(self) -> None:
        if self._ch is not None:
            self._ch.adjust(self._end, 1, +1)

    def _fork_adopt(self, parent: tuple[int, int]) -> None:
        bell, self._bell = self._bell, None  # the parent's doorbell: the child makes its own
        if bell is not None:
            bell.close(release=False)
        if self._ch is not None:
            self._ch.adopt(self._end, parent)

    # -- sending --

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes of a bytes-like object (or a slice of it) as one message."""
        ch = self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        data = m[offset:offset + size] if (offset or size != n) else m
        self._send(ch, data)

    def _send(self, ch: Channel, data: Any) -> None:
        if not ch.send(self._tx, data, None):  # pragma: no cover (no deadline)
            raise TimeoutError("send did not complete")

    def send(self, obj: Any) -> None:
        """Send a picklable object (pickled with ``ForkingPickler``)."""
        ch = self._check_closed()
        self._check_writable()
        self._send(ch, _dumps(obj))

    # -- receiving --

    def _recv(self, deadline: float | None = None) -> bytes | None:
        ch = self._check_closed()
        self._check_readable()
        msg = ch.recv(self._rx, deadline, self._alive)
        bell = self._bell
        if bell is not None and not ch.has_data(self._rx):
            bell.rearm()  # the ring is empty: the descriptor reads idle again
        return msg

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes; EOFError when the other end is gone."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        msg = self._recv()
        assert msg is not None
        if maxlength is not None and len(msg) > maxlength:
            self.close()
            raise OSError("bad message length")
        return msg

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive one message into a writable buffer at ``offset``; return its length.

        Raises ``BufferTooShort`` (with the message as ``args[0]``) if it does not fit.
        """
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            if offset > bytesize:
                raise ValueError("offset too large")
            msg = self._recv()
            assert msg is not None
            size = len(msg)
            if bytesize - offset < size:
                raise BufferTooShort(msg)
            m.cast("B")[offset:offset + size] = msg
            return size

    def recv(self) -> Any:
        """Receive a pickled object."""
        msg = self._recv()
        return _loads(msg)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is waiting; wait up to ``timeout`` seconds (None: forever).

        True also when the other end is gone (``recv`` then raises EOFError at once),
        as for a pipe.
        """
        ch = self._check_closed()
        self._check_readable()
        if ch.has_data(self._rx):
            return True
        deadline = _deadline(timeout)
        while True:
            end = time.monotonic() + 0.05
            if deadline is not None and deadline < end:
                end = deadline
            if ch.peek_wait(self._rx, end):
                return True
            if not self._alive():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False


def _rebuild(name: str, end: int, readable: bool, writable: bool,
             who: tuple[int, int]) -> Connection:
    ch = open_channel(name)
    ch.adopt(end, who)
    conn = Connection.__new__(Connection)
    Connection.__init__(conn, ch, end, readable, writable)
    return conn


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pair of connected :class:`Connection` objects, as ``multiprocessing.Pipe``.

    ``duplex=False``: the first can only receive, the second only send.
    """
    ch = Channel.create("pipe", 2 if duplex else 1, _CAPACITY)
    try:
        ch.adjust(0, 0, +1)
        ch.adjust(1, 0, +1)
        if duplex:
            return Connection(ch, 0), Connection(ch, 1)
        return Connection(ch, 0, True, False), Connection(ch, 1, False, True)
    finally:
        ch.refs += 1
        ch.release()  # the connections hold it now


# -- readiness ---------------------------------------------------------------------------

def _readiness_fd(owner: Any, ch: Channel, ring: int) -> int:
    """A descriptor readable while ``ring`` of ``ch`` has a message: the fd hook.

    The ring's doorbell (``shmlink._ready.Readiness``, include/shmlink/doorbell.h):
    senders that find the ring's data event count armed ring it, so nothing
    polls and a process that never asks for a descriptor pays nothing.  It
    also reads ready, when asked, if no live process holds the other end any
    more (recv then raises EOFError).  Readiness may be spurious, never
    missed; receiving through ``owner`` re-arms it when the ring is empty.
    """
    r = owner._bell
    if r is None:
        off = _channel._D + _channel.CONTROL + ring * ch.ring_size
        r = owner._bell = Readiness(
            ch.mem, off + _channel._EC, off + _channel._BELLS,
            lambda: ch.has_data(ring) or not owner._alive(),
            f"multiprocessing connection {ch.name!r}")
    return r.fileno()  # type: ignore[no-any-return]


# -- wait ---------------------------------------------------------------------------------

def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Wait until one of ``object_list`` is ready; return those that are, as the standard.

    The objects are this module's connections, queue readers, and whatever
    ``multiprocessing.connection.wait`` accepts (connections, sockets,
    process sentinels).
    """
    objs = list(object_list)
    ready = [o for o in objs if isinstance(o, Connection) and not o.closed and o._readable
             and o._ch is not None and o._ch.has_data(o._rx)]
    if ready:
        return ready
    return _std.wait(objs, timeout)


# -- Listener and Client -----------------------------------------------------------------

_VALID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,150}\Z")
_counter = itertools.count()


def _listener_name(address: Any) -> str:
    if not isinstance(address, str):
        raise ValueError(f"shmlink addresses are names (str), not {address!r}")
    if _VALID.match(address) and ".." not in address:
        return "mp.listen." + address
    return "mp.listen.x" + address.encode("utf-8", "surrogatepass").hex()[:140]


def _check_family(family: Any) -> None:
    if family not in (None, "AF_SHMLINK"):
        raise ValueError(f"unrecognized family {family!r}: shmlink addresses are names "
                         "(family 'AF_SHMLINK')")


class Listener:
    """A named place clients connect to, as ``multiprocessing.connection.Listener``.

    Parameters
    ----------
    address : str, optional
        The name clients pass to :func:`Client`; made up when omitted.
    family : {"AF_SHMLINK"}, optional
    backlog : int
        Ignored (the accept ring holds many pending clients).
    authkey : bytes, optional
        Run the standard challenge over each accepted connection.
    """

    _q: Any = None

    def __init__(self, address: str | None = None, family: str | None = None,
                 backlog: int = 1, authkey: bytes | None = None) -> None:
        from ..queue import Queue

        _check_family(family)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        if address is None:
            address = f"l{os.getpid()}-{next(_counter)}-{os.urandom(4).hex()}"
        self._address = address
        self._authkey = authkey
        try:
            self._q = Queue.create(_listener_name(address), 1 << 16, lifetime="auto")
        except SegmentExists:
            raise OSError(98, f"address {address!r} is already in use by another Listener") \
                from None

    @property
    def address(self) -> str:
        """The address (a name) clients connect to."""
        return self._address

    @property
    def last_accepted(self) -> int | None:
        """PID of the last accepted client."""
        return getattr(self, "_last", None)

    def accept(self) -> Connection:
        """Wait for a client; return the server end of its connection."""
        q = self._q
        if q is None:
            raise OSError("listener is closed")
        while True:
            name, pid, start = _loads(q.recv())
            try:
                ch = open_channel(name)
            except FileNotFoundError:
                continue  # the client gave up
            try:
                ch.adopt(1, (pid, start))
                conn = Connection(ch, 1)
            finally:
                ch.refs += 1
                ch.release()
            self._last = pid
            if self._authkey is not None:
                _std.deliver_challenge(conn, self._authkey)
                _std.answer_challenge(conn, self._authkey)
            return conn

    def close(self) -> None:
        """Close the listener; its address is free again."""
        q, self._q = self._q, None
        if q is not None:
            q.unlink()
            q.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def Client(address: str, family: str | None = None, authkey: bytes | None = None) -> Connection:
    """Connect to the :class:`Listener` at ``address`` (a name)."""
    from ..queue import Queue

    _check_family(family)
    try:
        q = Queue.open(_listener_name(address))
    except SegmentNotFound:
        raise FileNotFoundError(2, f"no Listener at address {address!r}") from None
    try:
        ch = Channel.create("conn", 2, _CAPACITY)
        try:
            ch.adjust(0, 0, +1)
            conn = Connection(ch, 0)
            who = ch.reserve(1)  # the server's end, until the listener adopts it
        finally:
            ch.refs += 1
            ch.release()
        q.send(_dumps((ch.name, who[0], who[1])))
        _unaccepted[:] = [(c, n) for c, n in _unaccepted if not c.seg.closed and c._mine_pending()]
        _unaccepted.append((ch, _listener_name(address)))
    finally:
        q.close()
    if authkey is not None:
        _std.answer_challenge(conn, authkey)
        _std.deliver_challenge(conn, authkey)
    return conn


# -- a client that exits before its connection was accepted -------------------------------

#: seconds a process waits at exit for a Listener to accept its Client connections
ACCEPT_GRACE = 5.0
_unaccepted: list[tuple[Channel, str]] = []


def _wait_for_accept() -> None:
    """At exit, give listeners up to ACCEPT_GRACE s to accept this process's connections.

    A socket connection waits in the listener's backlog after its client
    exits; a channel goes with its last process.  So a process that made a
    :func:`Client` connection the listener has not accepted yet waits here
    (while the listener still exists) before its segments are released.
    """
    from ..segment import PREFIX, shm_dir

    deadline = time.monotonic() + ACCEPT_GRACE
    for ch, listener in _unaccepted:
        path = os.path.join(shm_dir(), PREFIX + listener)
        while time.monotonic() < deadline:
            try:
                if ch.seg.closed or not ch._mine_pending() or not os.path.exists(path):
                    break
            except Exception:
                break
            time.sleep(0.01)
    _unaccepted.clear()


atexit.register(_wait_for_accept)  # after segment.py's hook, so it runs before it
_channel.before_exit.append(_wait_for_accept)  # children that leave through os._exit
