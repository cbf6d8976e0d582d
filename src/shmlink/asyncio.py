"""shmlink for asyncio: the same classes, with awaitable waits.

``shmlink.asyncio.Queue``, ``Topic``/``Subscriber``, ``Board``, ``Event``,
``Mutex``, ``Connection``/``Listener`` (and ``connect``/``listen``) wrap the
blocking objects of :mod:`shmlink`.  Their waiting calls are coroutines
(``await q.recv()``), they support ``async for`` and ``async with``, and
``on_message(callback)`` runs a callback on the loop for each message.
Everything else (properties, ``try_`` calls, ``stats()``...) is the wrapped
object's, reachable directly or as :attr:`sync`.

How it waits: every waitable shmlink object has a file descriptor that
becomes readable when its wait may succeed (a doorbell: see
:meth:`shmlink.Queue.fileno` and ``include/shmlink/doorbell.h``).  A
coroutine tries the non-blocking ``try_`` call; when that would block it
arms the doorbell, re-checks, and awaits the descriptor through the loop's
``add_reader`` -- no thread, no polling.  A message is taken only inside a
synchronous ``try_`` call, so cancelling an awaiting ``recv()`` (or a
timeout) can never lose or duplicate one: it stays for the next receiver.

Closing a wrapper (``close()``, ``async with``) wakes its awaiting
coroutines with :class:`~shmlink.SegmentClosed`.  Close through the wrapper,
not through :attr:`sync`, while coroutines await it.  A wrapper belongs to
the loop it was first awaited on.  Works with the default loop and uvloop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, TypeVar

import shmlink as _s

from .connection._layout import _MSG, _REQ, _RESP
from .connection._reader import ResponseFuture
from .errors import InvalidState, PeerDisconnected, SegmentClosed, Timeout
from .sync import deadline_of

__all__ = ["Queue", "Topic", "Subscriber", "Board", "Event", "Mutex", "Connection", "Listener",
           "connect", "listen", "wait"]

_T = TypeVar("_T")
_S = TypeVar("_S")
_AGAIN: Any = object()  # an attempt that would block
_TIMED_OUT: Any = object()  # a waiter's timer fired


class _Waiters:
    """Coroutines of one loop awaiting one descriptor: one add_reader for all of them."""

    __slots__ = ("loop", "ready", "futs", "fd")

    def __init__(self, loop: asyncio.AbstractEventLoop, ready: Any) -> None:
        self.loop = loop
        self.ready = ready
        self.futs: set[asyncio.Future[Any]] = set()
        self.fd = -1

    def add(self) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if self.fd < 0:
            self.fd = self.ready.fd
            self.loop.add_reader(self.fd, self._fire)
        self.futs.add(fut)
        return fut

    def discard(self, fut: asyncio.Future[Any]) -> None:
        self.futs.discard(fut)
        if not self.futs:
            self._unwatch()

    def _unwatch(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.fd = -1

    def _fire(self) -> None:
        # everyone looks again (each re-arms if it finds nothing): a wake-up
        # is never handed to one coroutine that then gets cancelled
        futs, self.futs = self.futs, set()
        self._unwatch()
        for f in futs:
            if not f.done():
                f.set_result(None)

    def fail(self, exc: BaseException) -> None:
        futs, self.futs = self.futs, set()
        self._unwatch()
        for f in futs:
            if not f.done():
                f.set_exception(exc)


class _Async(Generic[_S]):
    """Base of the wrappers: the wrapped object, the loop, the waiting coroutines."""

    _sync_cls: Any = None

    def __init__(self, obj: _S) -> None:
        """Wrap a blocking shmlink object (or use the ``create``/``open`` class methods)."""
        if self._sync_cls is not None and not isinstance(obj, self._sync_cls):
            raise TypeError(f"{type(self).__name__} wraps a shmlink.{self._sync_cls.__name__}, "
                            f"not {type(obj).__name__}")
        self._obj = obj
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, _Waiters] = {}
        self._closing = False

    @property
    def sync(self) -> _S:
        """The wrapped blocking object."""
        return self._obj

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._obj, name)

    def __repr__(self) -> str:
        return f"<shmlink.asyncio {self._obj!r}>"

    def fileno(self) -> int:
        """The wrapped object's descriptor (see :meth:`shmlink.Queue.fileno`)."""
        return self._obj.fileno()  # type: ignore[attr-defined,no-any-return]

    def _wait_ready(self) -> Any:  # shmlink.wait accepts wrappers too
        return self._obj._wait_ready()  # type: ignore[attr-defined]

    # -- lifetime --

    def close(self) -> None:
        """Close the object; coroutines awaiting it raise :class:`~shmlink.SegmentClosed`."""
        self._closing = True
        self._fail_waiters()
        self._obj.close()  # type: ignore[attr-defined]

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for w in waiters.values():
            w.fail(SegmentClosed(f"{self._what()} was closed while a coroutine awaited it"))

    def _what(self) -> str:
        kind = getattr(self._obj, "KIND", type(self._obj).__name__.lower())
        return f"{kind} {getattr(self._obj, 'name', '?')!r}"

    @property
    def closed(self) -> bool:
        """True once closed."""
        return bool(self._obj.closed)  # type: ignore[attr-defined]

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- the one waiting loop --

    def _watch(self, key: str, ready: Any) -> _Waiters:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise InvalidState(f"{self._what()}: this asyncio wrapper belongs to another event "
                               "loop; wrap the object again for this one")
        w = self._waiters.get(key)
        if w is None or w.ready is not ready:
            w = self._waiters[key] = _Waiters(loop, ready)
        return w

    async def _until(self, key: str, ready: Any, attempt: Callable[[], Any],
                     timeout: float | None, what: str,
                     hint: Callable[[], bool] | None = None, poll_s: float | None = None) -> Any:
        """Run ``attempt()`` until it returns something other than _AGAIN.

        Between attempts: arm ``ready`` (a _ready.Readiness), re-check with
        ``hint`` (or its own), then await its descriptor (at most
        ``poll_s`` seconds when the other side may not notify, e.g. a lock
        it released).  ``timeout``: seconds, raising Timeout(``what``).
        """
        deadline = deadline_of(timeout)
        spins = 0
        spin_ns = _HYBRID_SPIN_NS if getattr(self._obj, "_wait", None) == "hybrid" else 0
        while True:
            if self._closing:
                raise SegmentClosed(f"{self._what()} is closed")
            res = attempt()
            if res is not _AGAIN:
                return res
            if spin_ns:
                # wait="hybrid", as the blocking calls: look at the lock-free hint for a
                # few tens of microseconds before parking on the descriptor (a peer
                # that answers at once costs no wake-up through the kernel); once per
                # call, so the loop is held up at most that long
                look = hint or ready.hint
                end = _perf_ns() + spin_ns
                spin_ns = 0
                while _perf_ns() < end:
                    if look():
                        break
                continue
            if ready.prepare(hint=hint):
                # the condition holds but the attempt lost (a lock held by
                # another thread or process, a competitor): let the loop run
                spins += 1
                await asyncio.sleep(0 if spins < 4 else min(0.001 * spins, 0.02))
                if deadline is not None and _monotonic() >= deadline:
                    res = attempt()
                    if res is not _AGAIN:
                        return res
                    raise Timeout(what)
                continue
            spins = 0
            loop = asyncio.get_running_loop()
            waiters = self._watch(key, ready)
            fut = waiters.add()
            timer = None
            delay = None if deadline is None else deadline - _monotonic()
            if poll_s is not None and (delay is None or poll_s < delay):
                delay = poll_s
            if delay is not None:
                timer = loop.call_later(max(0.0, delay), _expire, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                waiters.discard(fut)
            if deadline is not None and _monotonic() >= deadline:
                res = attempt()  # one last look: what arrived with the deadline is taken
                if res is not _AGAIN:
                    return res
                raise Timeout(what)

    # -- callbacks --

    def on_message(self, callback: Callable[[Any], Any]) -> asyncio.Task[None]:
        """Call ``callback(message)`` on the loop for every message, in order.

        ``callback`` may be a plain function or a coroutine function (awaited
        before the next message is taken).  Returns the task that delivers:
        cancel it to stop (no message is lost: one not yet delivered stays
        in the object).  The task ends when the object is closed or, for a
        connection, when the peer disconnects.
        """
        async def deliver() -> None:
            async for msg in self:  # type: ignore[attr-defined]
                r = callback(msg)
                if inspect.isawaitable(r):
                    await r

        return asyncio.get_running_loop().create_task(deliver())


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


_monotonic = time.monotonic
_perf_ns = time.perf_counter_ns
#: how long a wait of an object with wait="hybrid" looks before parking on its descriptor
_HYBRID_SPIN_NS = 50_000


async def _iterate(recv: Callable[[], Awaitable[_T]], *ends: type[BaseException]
                   ) -> AsyncIterator[_T]:
    while True:
        try:
            item = await recv()
        except ends:
            return
        yield item


# ---------------------------------------------------------------------------------------
# Queue


class Queue(_Async["_s.Queue"]):
    """:class:`shmlink.Queue` with awaitable :meth:`send` / :meth:`recv` and ``async for``.

    Make one with ``await``-free class methods (opening does not wait for
    messages): ``shmlink.asyncio.Queue.create(name, capacity)``,
    ``.open(name)``, ``.create_or_open(...)``, or wrap an open queue:
    ``shmlink.asyncio.Queue(q)``.
    """

    _sync_cls = _s.Queue

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Queue":
        """As :meth:`shmlink.Queue.create`, wrapped."""
        return cls(_s.Queue.create(*args, **kw))

    @classmethod
    def open(cls, *args: Any, **kw: Any) -> "Queue":
        """As :meth:`shmlink.Queue.open`, wrapped."""
        return cls(_s.Queue.open(*args, **kw))

    @classmethod
    def create_or_open(cls, *args: Any, **kw: Any) -> "Queue":
        """As :meth:`shmlink.Queue.create_or_open`, wrapped."""
        return cls(_s.Queue.create_or_open(*args, **kw))

    async def recv(self, *, timeout: float | None = None) -> bytes:
        """The oldest message, awaiting one if the queue is empty.

        Cancelling the call (or its timeout) leaves every message queued.

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        SegmentClosed
            If the queue is closed (also while awaiting).
        """
        q = self._obj
        ring = q._r()

        def attempt() -> Any:
            m = ring.try_recv()
            return _AGAIN if m is None else m

        return await self._until("recv", q._ready_recv(), attempt, timeout,  # type: ignore[no-any-return]
                                 f"queue {q.name!r}: no message within {timeout} s")

    async def recv_object(self, *, timeout: float | None = None) -> Any:
        """:meth:`recv`, unpickled (trusted senders only, as :meth:`shmlink.Queue.recv_object`)."""
        import pickle
        return pickle.loads(await self.recv(timeout=timeout))

    async def send(self, data: Any, *, timeout: float | None = None) -> None:
        """Append one message, awaiting room if the queue is full.

        Raises
        ------
        Timeout
            If there was no room within ``timeout`` seconds (nothing was sent).
        MessageTooLarge
            If the message can never fit.
        """
        q = self._obj
        ring = q._r()
        n = len(memoryview(data).cast("B"))
        if n > ring.max_message:
            q.send(data, timeout=0)  # raises MessageTooLarge with the usual message

        def attempt() -> Any:
            return None if ring.try_send(data) else _AGAIN

        await self._until("send", q._ready_send(), attempt, timeout,
                          f"queue {q.name!r}: no room within {timeout} s; nothing was sent",
                          hint=lambda: ring.may_send(n))

    async def send_object(self, obj: Any, *, timeout: float | None = None) -> None:
        """:meth:`send` a pickled object."""
        import pickle
        await self.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Messages as they arrive, until the queue is closed."""
        return _iterate(self.recv, SegmentClosed)


# ---------------------------------------------------------------------------------------
# Topic and Subscriber


class Topic(_Async["_s.Topic"]):
    """:class:`shmlink.Topic` with an awaitable :meth:`publish`; :meth:`subscribe` wraps too."""

    _sync_cls = _s.Topic

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Topic":
        """As :meth:`shmlink.Topic.create`, wrapped."""
        return cls(_s.Topic.create(*args, **kw))

    @classmethod
    def open(cls, *args: Any, **kw: Any) -> "Topic":
        """As :meth:`shmlink.Topic.open`, wrapped."""
        return cls(_s.Topic.open(*args, **kw))

    @classmethod
    def create_or_open(cls, *args: Any, **kw: Any) -> "Topic":
        """As :meth:`shmlink.Topic.create_or_open`, wrapped."""
        return cls(_s.Topic.create_or_open(*args, **kw))

    def subscribe(self, *args: Any, **kw: Any) -> "Subscriber":
        """As :meth:`shmlink.Topic.subscribe` (it does not wait), wrapped."""
        return Subscriber(self._obj.subscribe(*args, **kw))

    async def publish(self, data: Any, *, timeout: float | None = None) -> None:
        """Publish one message; in lossless mode, await room behind the slowest subscriber.

        The room is re-checked at least every 50 ms besides the wake-ups
        subscribers send (a publisher that held the lock does not notify).
        """
        t = self._obj

        def attempt() -> Any:
            return None if t.try_publish(data) else _AGAIN

        if attempt() is not _AGAIN:
            return
        ready = t._readiness("publish", _TOPIC_SPACE_EC, _TOPIC_SPACE_BELLS, lambda: False)
        await self._until("publish", ready, attempt, timeout,
                          f"topic {t.name!r}: no room within {timeout} s; nothing was published",
                          poll_s=0.05)


_TOPIC_SPACE_EC = _s.segment.DATA_OFFSET + _s._core.LAYOUT["topic"]["space_ec"][0]
_TOPIC_SPACE_BELLS = _s.segment.DATA_OFFSET + _s._core.LAYOUT["topic"]["space_bells"][0]


class Subscriber(_Async["_s.Subscriber"]):
    """:class:`shmlink.Subscriber` with an awaitable :meth:`recv` and ``async for``."""

    _sync_cls = _s.Subscriber

    async def recv(self, *, timeout: float | None = None) -> bytes:
        """The next message, awaiting one.  Cancelling leaves it for the next call."""
        sub = self._obj
        core = sub._c

        def attempt() -> Any:
            m = core.try_recv()
            return _AGAIN if m is None else m

        return await self._until("recv", sub._ready_recv(), attempt, timeout,  # type: ignore[no-any-return]
                                 f"topic {sub.name!r}: no message within {timeout} s")

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Messages as they arrive, until the subscriber is closed."""
        return _iterate(self.recv, SegmentClosed)

    def _what(self) -> str:
        return f"subscriber of topic {self._obj.name!r}"


# ---------------------------------------------------------------------------------------
# Board, Event, Mutex


class Board(_Async["_s.Board"]):
    """:class:`shmlink.Board` with awaitable :meth:`wait_for_change` and ``async for`` changes."""

    _sync_cls = _s.Board

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Board":
        """As :meth:`shmlink.Board.create`, wrapped."""
        return cls(_s.Board.create(*args, **kw))

    @classmethod
    def open(cls, *args: Any, **kw: Any) -> "Board":
        """As :meth:`shmlink.Board.open`, wrapped."""
        return cls(_s.Board.open(*args, **kw))

    @classmethod
    def create_or_open(cls, *args: Any, **kw: Any) -> "Board":
        """As :meth:`shmlink.Board.create_or_open`, wrapped."""
        return cls(_s.Board.create_or_open(*args, **kw))

    async def wait_for_change(self, since_version: int, *, timeout: float | None = None) -> int:
        """Await a version other than ``since_version``; return it."""
        b = self._obj
        since = since_version & ((1 << 64) - 1)

        def changed() -> bool:
            return b.version != since

        def attempt() -> Any:
            v = b.version
            return _AGAIN if v == since else v

        return await self._until("change", b._ready_change(), attempt, timeout,  # type: ignore[no-any-return]
                                 f"board {b.name!r}: no write within {timeout} s "
                                 f"(still version {since_version})", hint=changed)

    async def watch(self, *, initial: bool = False) -> AsyncIterator[bytes]:
        """Each new value as it is written (newest only when writes come faster), forever."""
        v, data = self._obj.read_versioned()
        if initial:
            yield data
        while True:
            await self.wait_for_change(v)
            v, data = self._obj.read_versioned()
            yield data

    def __aiter__(self) -> AsyncIterator[bytes]:
        """:meth:`watch` from now on, ending when the board is closed."""
        async def changes() -> AsyncIterator[bytes]:
            try:
                async for value in self.watch():
                    yield value
            except SegmentClosed:
                return

        return changes()


class Event(_Async["_s.Event"]):
    """:class:`shmlink.Event` with an awaitable :meth:`wait`."""

    _sync_cls = _s.Event

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Event":
        """As :meth:`shmlink.Event.create`, wrapped."""
        return cls(_s.Event.create(*args, **kw))

    @classmethod
    def open(cls, *args: Any, **kw: Any) -> "Event":
        """As :meth:`shmlink.Event.open`, wrapped."""
        return cls(_s.Event.open(*args, **kw))

    @classmethod
    def create_or_open(cls, *args: Any, **kw: Any) -> "Event":
        """As :meth:`shmlink.Event.create_or_open`, wrapped."""
        return cls(_s.Event.create_or_open(*args, **kw))

    async def wait(self, *, timeout: float | None = None) -> bool:
        """Await the event being set; True.  For auto-reset, returning consumes the set."""
        e = self._obj

        def attempt() -> Any:
            return True if e._memory.event_wait(_s.sync._E_BLOCK, 0.0, 0) else _AGAIN

        return await self._until("wait", e._ready_wait(), attempt, timeout,  # type: ignore[no-any-return]
                                 f"event {e.name!r} was not set within {timeout} s")


class Mutex(_Async["_s.Mutex"]):
    """:class:`shmlink.Mutex` with an awaitable :meth:`acquire` and ``async with``.

    A mutex has no doorbell (holders release without notifying anyone but
    futex sleepers), so an awaiting acquire retries with a growing pause
    (0.5 ms up to 20 ms) instead of sleeping on a descriptor; hold mutexes
    briefly.
    """

    _sync_cls = _s.Mutex

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Mutex":
        """As :meth:`shmlink.Mutex.create`, wrapped."""
        return cls(_s.Mutex.create(*args, **kw))

    @classmethod
    def open(cls, *args: Any, **kw: Any) -> "Mutex":
        """As :meth:`shmlink.Mutex.open`, wrapped."""
        return cls(_s.Mutex.open(*args, **kw))

    @classmethod
    def create_or_open(cls, *args: Any, **kw: Any) -> "Mutex":
        """As :meth:`shmlink.Mutex.create_or_open`, wrapped."""
        return cls(_s.Mutex.create_or_open(*args, **kw))

    async def acquire(self, *, timeout: float | None = None) -> bool:
        """Take the mutex, awaiting its release; True (see :meth:`shmlink.Mutex.acquire`)."""
        m = self._obj
        deadline = deadline_of(timeout)
        pause = 0.0005
        while True:
            if self._closing:
                raise SegmentClosed(f"mutex {m.name!r} is closed")
            if m.try_acquire():
                return True
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"mutex {m.name!r} was not released within {timeout} s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    def release(self) -> None:
        """Release the mutex."""
        self._obj.release()

    async def __aenter__(self) -> "Mutex":
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._obj.release()


# ---------------------------------------------------------------------------------------
# Connection and Listener


class Connection(_Async["_s.Connection"]):
    """:class:`shmlink.Connection` with awaitable send/recv/request and ``async for``.

    A peer that closes or dies makes awaiting calls raise
    :class:`~shmlink.PeerDisconnected` at once (its pidfd is part of the
    descriptor), after the messages it sent before are received.
    """

    _sync_cls = _s.Connection

    async def send(self, data: Any, *, timeout: float | None = None) -> None:
        """Send one message, awaiting room while the peer's inbound ring is full."""
        await self._send_frame(_MSG, 0, data, timeout)

    async def _send_frame(self, kind: int, rid: int, data: Any, timeout: float | None) -> None:
        c = self._obj
        if c._try_send_frame(kind, rid, data):
            return
        ready = c._ready_send()
        n = len(memoryview(data).cast("B")) + 8
        out = c._out

        def attempt() -> Any:
            if c._try_send_frame(kind, rid, data):
                return None
            return None if c._try_send_frame(kind, rid, data, ready.extra_ready()) else _AGAIN

        await self._until("send", ready, attempt, timeout,
                          f"connection {c.name!r}: the peer did not make room within {timeout} s; "
                          "nothing was sent",
                          hint=lambda: out.may_send(n) or c._peer_gone_hint())

    async def send_object(self, obj: Any, *, timeout: float | None = None) -> None:
        """:meth:`send` a pickled object."""
        import pickle
        await self.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)

    async def _take(self, check: Callable[[], Any], timeout: float | None, what: str) -> Any:
        c = self._obj
        ready = c._ready_recv()
        ring = c._in

        def attempt() -> Any:
            item = c._try_take(check)
            if item is None and ready.extra_ready():  # the peer's pidfd: look at it now
                item = c._try_take(check, True)
            return _AGAIN if item is None else item

        return await self._until("recv", ready, attempt, timeout, what,
                                 hint=lambda: bool(check_peek(check, c)) or ring.may_recv()
                                 or c._peer_gone_hint())

    async def recv(self, *, timeout: float | None = None) -> bytes:
        """The next message, awaiting one.  Cancelling leaves it for the next call.

        Raises
        ------
        PeerDisconnected
            If the peer closed or died and everything it sent was received.
        """
        c = self._obj
        return await self._take(c._pop_msg, timeout,  # type: ignore[no-any-return]
                                f"connection {c.name!r}: no message within {timeout} s")

    async def recv_object(self, *, timeout: float | None = None) -> Any:
        """:meth:`recv`, unpickled (trusted peers only)."""
        import pickle
        return pickle.loads(await self.recv(timeout=timeout))

    async def request(self, data: Any, *, timeout: float | None = None) -> bytes:
        """Send a request and await its response (see :meth:`shmlink.Connection.request`).

        Cancelled (or timed out) after sending, the late response is dropped.
        """
        c = self._obj
        rid = next(c._ids)
        fut = ResponseFuture()
        c._pending[rid] = fut  # before the request goes out: the response finds it
        try:
            await self._send_frame(_REQ, rid, data, timeout)
            f = await self._take(fut.result, timeout,
                                 f"connection {c.name!r}: no response within {timeout} s")
            return c._response(f, timeout)
        finally:
            c._pending.pop(rid, None)

    async def request_object(self, obj: Any, *, timeout: float | None = None) -> Any:
        """:meth:`request` with pickled objects both ways."""
        import pickle
        return pickle.loads(await self.request(
            pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout))

    async def recv_request(self, *, timeout: float | None = None) -> _s.Request:
        """The next request (server side); answer it with :meth:`reply`."""
        c = self._obj
        f = await self._take(c._pop_request, timeout,
                             f"connection {c.name!r}: no request within {timeout} s")
        return _s.Request(f[1], f[2])

    async def reply(self, request: _s.Request | int, data: Any, *,
                    timeout: float | None = None) -> None:
        """Send the response to a request from :meth:`recv_request`."""
        rid = request.id if isinstance(request, _s.Request) else int(request)
        await self._send_frame(_RESP, rid, data, timeout)

    async def serve(self, handler: Callable[[bytes], Any]) -> int:
        """Answer requests with ``handler`` (a function or coroutine function) until the peer goes.

        Returns how many were answered.  A handler that raises makes the
        requester's request raise RemoteError; serving goes on.
        """
        import traceback
        served = 0
        while True:
            try:
                req = await self.recv_request()
            except (PeerDisconnected, SegmentClosed):
                return served
            try:
                out = handler(req.data)
                if inspect.isawaitable(out):
                    out = await out
            except Exception:
                await self._send_frame(_s.connection._layout._ERR, req.id,
                                       traceback.format_exc().encode(), None)
            else:
                await self.reply(req, b"" if out is None else out)
            served += 1

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Messages as they arrive, until the peer disconnects or this end closes."""
        return _iterate(self.recv, PeerDisconnected, SegmentClosed)


def check_peek(check: Callable[[], Any], c: Any) -> bool:
    """Whether what ``check`` takes is already routed to us (without taking it)."""
    if check == c._pop_msg:
        return bool(c._inbox)
    if check == c._pop_request:
        return bool(c._requests)
    return getattr(check.__self__, "frame", None) is not None  # type: ignore[attr-defined]


class Listener(_Async["_s.Listener"]):
    """:class:`shmlink.Listener` with an awaitable :meth:`accept` and ``async for``."""

    _sync_cls = _s.Listener

    @classmethod
    def create(cls, *args: Any, **kw: Any) -> "Listener":
        """As :meth:`shmlink.Listener.create`, wrapped."""
        return cls(_s.Listener.create(*args, **kw))

    async def accept(self, *, timeout: float | None = None) -> Connection:
        """Await the next client; its server-side :class:`Connection`."""
        lst = self._obj

        def attempt() -> Any:
            c = lst.try_accept()
            return _AGAIN if c is None else Connection(c)

        return await self._until("accept", lst._ready_accept(), attempt, timeout,  # type: ignore[no-any-return]
                                 f"listener {lst.name!r}: no client connected within {timeout} s")

    def __aiter__(self) -> AsyncIterator[Connection]:
        """Accepted connections, until the listener is closed."""
        return _iterate(self.accept, SegmentClosed)


def listen(name: str, **kw: Any) -> Listener:
    """As :func:`shmlink.listen` (it does not wait), wrapped."""
    return Listener(_s.listen(name, **kw))


async def connect(name: str, *, timeout: float | None = None, **kw: Any) -> Connection:
    """As :func:`shmlink.connect`, awaited: the connect runs in the loop's default executor.

    (Connecting waits for the server's accept on a futex word, not a
    doorbell.)  Cancelled, the connection it still makes is closed.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, lambda: _s.connect(name, timeout=timeout, **kw))
    try:
        return Connection(await asyncio.shield(fut))
    except asyncio.CancelledError:
        fut.add_done_callback(_close_made)
        raise


def _close_made(f: asyncio.Future[Any]) -> None:
    """A connect whose caller was cancelled: close the connection it made anyway."""
    if not f.cancelled() and f.exception() is None:
        f.result().close()


async def wait(objects: Any, timeout: float | None = None) -> list[Any]:
    """:func:`shmlink.wait` for coroutines: await until one of ``objects`` is ready."""
    objs = list(objects)
    ready = _s.wait(objs, 0)
    if ready or timeout == 0:
        return ready
    loop = asyncio.get_running_loop()
    fds = []
    for o in objs:
        r = _s._multiwait._readiness_of(o)
        fds.append(r.fd if r is not None else (o if isinstance(o, int) else o.fileno()))
    deadline = None if timeout is None else _monotonic() + timeout
    while True:
        fut = loop.create_future()
        for fd in set(fds):
            loop.add_reader(fd, _expire, fut)
        timer = None if deadline is None else loop.call_later(
            max(0.0, deadline - _monotonic()), _expire, fut)
        try:
            await fut
        finally:
            for fd in set(fds):
                loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()
        ready = _s.wait(objs, 0)
        if ready or (deadline is not None and _monotonic() >= deadline):
            return ready
