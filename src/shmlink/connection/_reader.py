"""The reader role of a connection end, and the routing of inbound frames.

One thread at a time holds the *reader role* (``_rlock``) and reads the
inbound ring.  Every frame it reads goes through :meth:`_ReaderRole._route`,
the one place that decides whose it is:

* a plain message goes to the inbox, a request to the request queue (both
  in arrival order), for whichever thread receives them;
* a response or error completes the :class:`ResponseFuture` of its request
  id, registered by :meth:`~shmlink.Connection.request` before the request
  was sent; a response whose requester gave up finds no future and is
  dropped;
* end of stream marks the peer gone; a wake-up only interrupts the reader.

What the inbox and the request queue hold is bounded by the end's
``max_buffered`` (bytes of payload): the reader takes a frame from the ring
only while they hold at most that much, so they exceed it by one frame at
most.  Past it, the reading thread gets :class:`~shmlink.BufferFull` and the
rest stays in the ring (the peer's sends wait) until the application reads
what is kept.  ``_buffered`` counts the bytes routed to them since the last
exact count; it is written only with the reader role held and is never less
than what they hold (threads that pop do not touch it), so the exact count,
a sum over both queues, runs only when the counter passes the bound.

A thread that wants something while another holds the role waits on a
condition until it appears (the router notifies), or until the role frees
and it can read itself.
"""

from __future__ import annotations

import collections
import threading
from operator import itemgetter
from typing import Any, Callable

from .. import _core
from ..errors import BufferFull, PeerDisconnected
from ._layout import (
    _CLOSE,
    _ERR,
    _MSG,
    _REQ,
    _RESP,
    SLICE,
    Frame,
    _monotonic,
)

_process_alive = _core.process_alive
_get_ident = threading.get_ident

_RETRY = object()  # the reader role looks free: try to take it
#: ``got.extend(map(lock.acquire, _NOWAIT))`` takes a lock without blocking
#: and records whether it did in ``got`` with no return to the interpreter
#: in between: after a plain ``lock.acquire(False)`` a KeyboardInterrupt can
#: land before the result is stored, and the lock leaks.  Every place that
#: takes the reader role does it this way, inside the try that gives it back.
_NOWAIT = (False,)
_TIMEOUT = object()  # the deadline passed
_payload = itemgetter(2)

#: Default ``max_buffered``: bytes of unread messages and requests an end keeps.
MAX_BUFFERED = 16 << 20


class ResponseFuture:
    """The pending response to one request: completed by whichever thread reads it.

    :meth:`result` is None until the response (or error) frame arrives;
    :meth:`set` is called once, by the thread holding the reader role.
    (The slot starts unset rather than None: a request makes one of these
    on its hot path, and an ``__init__`` would double the cost.)
    """

    __slots__ = ("frame",)
    frame: Frame

    def set(self, frame: Frame) -> None:
        """Complete the future with its response (or error) frame."""
        self.frame = frame

    def result(self) -> Frame | None:
        """The response frame, or None while it has not arrived."""
        try:
            return self.frame
        except AttributeError:
            return None


class _ReaderRole:
    """Inbound side of a connection end: the reader role, routing, the peer's state.

    Mixed into :class:`~shmlink.Connection`, which provides ``_in`` (the
    inbound ring), ``_mem``, ``_name``, ``_role``, ``_peer``,
    ``_peer_closed`` and ``_finish_close``.
    """

    _err: tuple[type, str] | None
    _in: Any
    _mem: Any
    _name: str
    _role: str | None
    _peer: tuple[int, int]
    _peer_closed: int
    _closing: bool
    _spin: int
    _nwaiting = 0
    _alive_checked = 0.0
    _rowner = 0
    _stop = False
    _dropped = 0  # responses nobody waited for (late, duplicate or unsolicited)
    _buffered = 0  # >= payload bytes in _inbox + _requests (see the module docstring)
    _max_buffered = MAX_BUFFERED

    def _init_reader(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._rlock = threading.Lock()  # the reader role
        self._inbox: collections.deque[bytes] = collections.deque()  # message payloads
        self._requests: collections.deque[Frame] = collections.deque()  # request frames
        self._pending: dict[int, ResponseFuture] = {}  # request id -> its future
        self._slice = 0.0  # end of the current wait slice (monotonic)
        self._nwaiting = 0  # threads waiting in _wait_turn
        self._buffered = 0

    def _finish_close(self, wait: bool) -> None:
        raise NotImplementedError

    # -- the peer's state and errors --

    def _error(self) -> Exception:
        cls, msg = self._err  # type: ignore[misc]
        return cls(msg)  # type: ignore[no-any-return]

    def _peer_role(self) -> str:
        return "server" if self._role == "client" else "client"

    def _set_gone(self, why: str) -> None:
        with self._cv:
            if self._err is None:
                self._err = (PeerDisconnected,
                             f"connection {self._name!r}: the {self._peer_role()} (PID "
                             f"{self._peer[0]}) {why}; connect again to continue")
            self._cv.notify_all()

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

    # -- routing --

    def _route(self, f: Frame) -> None:
        """Hand an inbound frame to whoever it is for (the reader role is held).

        ``f`` comes from Ring.recv_frame, which checked it against the
        protocol (connection.h): a known kind, a request id on requests,
        responses and errors only.
        """
        k = f[0]
        if k == _RESP or k == _ERR:
            fut = self._pending.pop(f[1], None)
            if fut is None:
                # its requester gave up (timed out), or nobody asked (a second
                # answer, an unsolicited one): drop it, count it, keep nothing
                self._dropped += 1
                return
            fut.frame = f
        elif k == _MSG:
            self._inbox.append(f[2])
            self._buffered += len(f[2])
        elif k == _REQ:
            self._requests.append(f)
            self._buffered += len(f[2])
        elif k == _CLOSE:
            self._set_gone("closed the connection")
            raise self._error()
        else:  # WAKE (the only kind left): it only interrupts the reader
            if self._err is not None:
                raise self._error()
            return
        if self._nwaiting:
            with self._cv:
                self._cv.notify_all()

    def _held(self) -> int:
        """Payload bytes in the inbox and the request queue now (exact)."""
        # all in C, so no other thread runs (and pops) in the middle
        return sum(map(len, self._inbox)) + sum(map(len, map(_payload, self._requests)))

    def _check_room(self, what: str) -> None:
        """Before taking a frame from the ring (reader role held): raise BufferFull if full.

        ``what``: what the reading thread waits for ("a response", ...).
        """
        if self._buffered <= self._max_buffered:
            return
        self._buffered = held = self._held()
        if held <= self._max_buffered:
            return
        nmsg, nreq = len(self._inbox), len(self._requests)
        raise BufferFull(
            f"connection {self._name!r}: {_size(held)} of messages/requests from the "
            f"{self._peer_role()} ({nmsg} messages, {nreq} requests) are buffered unread while "
            f"waiting for {what} (max_buffered={self._max_buffered}); read them with "
            "recv()/recv_request() or pass a larger max_buffered; nothing was dropped"
        )

    def _pop_msg(self) -> bytes | None:
        inbox = self._inbox
        return inbox.popleft() if inbox else None

    def _pop_request(self) -> Frame | None:
        reqs = self._requests
        return reqs.popleft() if reqs else None

    # -- the reader role --

    def _read(self, check: Callable[[], Any], deadline: float | None,
              f: Frame | None = None) -> Any:
        """With the reader role held: route frames until ``check()`` yields something.

        Returns what ``check()`` returned, or None when the deadline passed.
        ``f``: a frame the caller already took from the ring, routed first.
        """
        while True:
            if f is None:
                if self._buffered > self._max_buffered:
                    self._check_room(_WHAT.get(getattr(check, "__name__", ""), "a response"))
                f = self._wait_frame(deadline)
                if f is None:
                    f = self._idle(deadline)
                    if f is None:
                        continue
                    if f is _TIMEOUT:
                        return None
            self._route(f)
            f = None
            item = check()
            if item is not None:
                return item

    def _wait_frame(self, deadline: float | None) -> Frame | None:
        """Wait for a frame until the current slice (or the deadline) ends; None then.

        The ring's own wait does the spinning and sleeping (the end's
        :attr:`~shmlink.Connection.wait` strategy).
        """
        end = self._slice
        if deadline is not None and deadline < end:
            end = deadline
        return self._in.recv_frame(end, self._spin)  # type: ignore[no-any-return]

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
            f = self._in.try_recv_frame()
            if f is not None:
                return f
            self._set_gone(why)
            raise self._error()
        if deadline is not None and now >= deadline:
            return _TIMEOUT
        return None

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

    def _take(self, check: Callable[[], Any], deadline: float | None) -> Any:
        """What ``check()`` finds, reading the ring when no other thread does; or _TIMEOUT."""
        rl = self._rlock
        while True:
            got: list[bool] = []
            try:
                got.extend(map(rl.acquire, _NOWAIT))  # see _NOWAIT
                if got[0]:
                    item = check()
                    if item is not None:
                        return item
                    if self._err is not None:
                        raise self._error()
                    item = self._read(check, deadline)
                    return _TIMEOUT if item is None else item
            finally:
                if got and got[0]:
                    self._leave()
            item = self._wait_turn(check, deadline)
            if item is not _RETRY:
                return item


_WHAT = {"_pop_msg": "a message", "_pop_request": "a request"}


def _size(n: int) -> str:
    """``n`` bytes, for a message: "16 MiB", "1.5 KiB", "300 bytes"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"
