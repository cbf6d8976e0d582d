"""``multiprocessing.queues`` on shared memory: :class:`Queue`, :class:`JoinableQueue`,
:class:`SimpleQueue`.

Objects are pickled with ``multiprocessing.reduction.ForkingPickler`` (so
queues, pipes and shared memory pass through them) and travel through a
shared-memory ring (:mod:`._channel`).  ``maxsize`` counts items, in a
shared futex word (the standard uses a semaphore).

``put`` on an unbounded queue never blocks: when the ring is full, it waits
only while readers are taking items (so a producer runs at their pace instead
of filling memory), and once no item was taken for :data:`PATIENCE` seconds
the item is buffered in the process and a feeder thread moves it in later, as
in the standard queue; at exit the process waits for its feeder to flush the buffer
unless :meth:`Queue.cancel_join_thread` was called (the standard's rule).
Unlike the standard, an object is pickled in ``put`` itself (not later in the
feeder thread): changes made to it after ``put`` returns are not sent.  A
pickling error still goes to ``_on_queue_feeder_error`` rather than out of
``put``, as in the standard.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import weakref
from multiprocessing import util
from queue import Empty, Full
from typing import Any

from ._channel import (
    _OFF_ITEMS, _OFF_UNFINISHED, FRAME_MSG, Channel, _forkables, open_channel, sweep)
from .connection import Pipe

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]

from .. import _core
from ..errors import ShmlinkError
from ._channel import dumps as _dumps, loads as _loads
#: bytes of ring per queue
CAPACITY = 1 << 20
_WLOCK = Channel.writer_lock(0)
_RLOCK = Channel.reader_lock(0)
_MISS = object()  # chan_get: nothing taken (the slow path decides)
#: when the ring is full, put waits while readers take items from it, at most this
#: long (s) without progress, before it buffers the item in the process
PATIENCE = 0.01


class Queue:
    """A process-shared FIFO queue with the API of ``multiprocessing.Queue``."""

    _joinable = False  # JoinableQueue: put also counts an unfinished task
    _used = False  # put was called in this process (empty() after close raises then)

    _ch: Channel | None = None
    _closed = True
    _thread: threading.Thread | None = None

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        self._maxsize = maxsize if maxsize > 0 else 0
        ch = Channel.create("queue", 1, CAPACITY)
        self._setup(ch, own=True)

    def _setup(self, ch: Channel, own: bool) -> None:
        ch.retain()
        if own:
            ch.adjust(0, 0, +1)
        self._ch = ch
        self._ring = ch.rings[0]
        self._mem = ch.mem
        self._fits = self._ring.max_message - 8  # the largest message one frame holds
        self._closed = False
        self._joincancelled = False
        self._reset()
        _forkables.add(self)

    def _reset(self) -> None:
        self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque[Any] = collections.deque()
        self._infeeder = False
        self._thread = None
        self._stop = threading.Event()  # set by _terminate_broken: the feeder gives up
        self._jointhread: Any = None
        self._close_fin: Any = None

    # -- pickling and fork --

    def __getstate__(self) -> tuple[Any, ...]:
        ch = self._check()
        who = ch.reserve(0)
        return (ch.name, self._maxsize, who)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        name, self._maxsize, who = state
        ch = open_channel(name)
        ch.adopt(0, who)
        self._setup(ch, own=False)

    def _fork_reserve(self) -> None:
        if self._ch is not None:
            self._ch.adjust(0, 1, +1)

    def _fork_adopt(self, parent: tuple[int, int]) -> None:
        # the buffer and the feeder thread are the parent's (as in the standard)
        self._reset()
        if self._ch is not None:
            self._ring = self._ch.rings[0]
            self._mem = self._ch.mem
            self._ch.adopt(0, parent)

    # -- state --

    def _check(self) -> Channel:
        if self._closed or self._ch is None:
            raise ValueError(f"Queue {self!r} is closed")
        return self._ch

    def qsize(self) -> int:
        """Items put and not yet taken (including those still buffered in putters)."""
        return self._check().items()

    def empty(self) -> bool:
        """True if no item can be taken now.

        After :meth:`close`: True for a queue this process never put into,
        ``OSError`` otherwise (the standard's behaviour: its reader is closed
        with the feeder that the first ``put`` started).
        """
        if self._closed or self._ch is None:
            if self._used:
                raise OSError("handle is closed")
            return True
        return not self._ch.has_data(0)

    def full(self) -> bool:
        """True if a bounded queue holds ``maxsize`` items."""
        ch = self._check()
        return bool(self._maxsize) and ch.items() >= self._maxsize

    # -- put --

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``; a bounded queue waits for room (``queue.Full`` when it runs out)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        self._used = True
        if self._maxsize:
            self._take_room(self._mem, block, timeout)
            count = None  # counted by _take_room
        else:
            count = _OFF_ITEMS  # counted by chan_put
        if self._joinable:
            self._mem.add32(_OFF_UNFINISHED, 1)
        behind = bool(self._buffer or self._infeeder)
        try:
            if behind:
                # items of this process wait in the buffer: this one goes after them
                data = _core.chan_encode(obj, _dumps)
            else:
                # counted, encoded and sent in one call when the ring has room now
                data = self._ring.chan_put(obj, _dumps, _WLOCK, count, PATIENCE)
                if data is True:
                    return
        except BaseException as e:
            # nothing was put (chan_put takes its own count back): neither the room taken
            # nor the task counted stays, whatever ended the put (Ctrl-C included)
            self._unput()
            if isinstance(e, Exception) and not isinstance(e, ShmlinkError):
                self._on_queue_feeder_error(e, obj)  # obj could not be pickled (the standard's
                return                               # hook, called from its feeder there)
            raise
        if behind and count is not None:
            self._mem.add32(count, 1)
        with self._notempty:
            if not self._buffer and not self._infeeder:
                if len(data) <= self._fits and self._ch.try_send(0, data):  # type: ignore[union-attr]
                    return
            self._buffer.append(data)
            if self._thread is None:
                self._start_thread()
            self._notempty.notify()

    def _unput(self) -> None:
        try:
            if self._maxsize:
                self._uncount()
            self._uncount_task()
        except Exception:
            pass  # the segment was closed under us: nothing to take back

    def _take_room(self, mem: Any, block: bool, timeout: float | None) -> None:
        deadline = None
        if block and timeout is not None:
            deadline = time.monotonic() + max(0.0, timeout)
        maxsize = self._maxsize
        while True:
            n = mem.load32(_OFF_ITEMS)
            if n < maxsize:
                if mem.cas32(_OFF_ITEMS, n, n + 1):
                    return
                continue
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise Full
            end = time.monotonic() + 0.1
            if deadline is not None and deadline < end:
                end = deadline
            mem.wait32(_OFF_ITEMS, n, end)

    def _uncount_task(self) -> None:
        pass

    def _uncount(self) -> None:
        old = self._mem.add32(_OFF_ITEMS, -1)
        if self._maxsize and old >= self._maxsize:
            self._mem.wake32(_OFF_ITEMS)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        self.put(obj, False)

    # -- get --

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; ``queue.Empty`` if none came within ``timeout``."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        ch = self._ch
        assert ch is not None
        item = self._ring.chan_get(_RLOCK, _OFF_ITEMS, self._maxsize, _loads, _MISS)
        if item is not _MISS:
            return item
        if not block:
            deadline: float | None = 0.0  # already passed: no waiting
        elif timeout is None:
            deadline = None
        else:
            deadline = time.monotonic() + max(0.0, timeout)
        msg = ch.recv(0, deadline)
        if msg is None:
            raise Empty
        self._uncount()
        return _core.chan_decode(msg, _loads)

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    # -- the feeder thread --

    def _start_thread(self) -> None:
        assert self._ch is not None
        self._ch.retain()  # the feeder's own reference, released when it ends
        t = self._thread = threading.Thread(
            target=Queue._feed,
            args=(weakref.ref(self), self._buffer, self._notempty, self._ch, self._stop),
            name="QueueFeederThread", daemon=True)
        t.start()
        if not self._joincancelled:
            self._jointhread = util.Finalize(t, Queue._finalize_join, [weakref.ref(t)],
                                             exitpriority=-5)
        self._close_fin = util.Finalize(self, Queue._finalize_close,
                                        [self._buffer, self._notempty], exitpriority=10)

    @staticmethod
    def _finalize_join(twr: Any) -> None:
        t = twr()
        if t is not None:
            t.join()

    @staticmethod
    def _finalize_close(buffer: Any, notempty: Any) -> None:
        with notempty:
            buffer.append(_SENTINEL)
            notempty.notify()

    @staticmethod
    def _feed(qref: Any, buffer: Any, notempty: Any, ch: Channel, stop: threading.Event) -> None:
        try:
            while True:
                with notempty:
                    while not buffer:
                        notempty.wait()
                    data = buffer.popleft()
                    q = qref()
                    if q is not None:
                        q._infeeder = True
                    del q
                if data is _SENTINEL or stop.is_set():
                    return
                try:
                    ch.send(0, data, None, stop)
                except Exception:
                    if qref() is None:
                        return
                    raise
                finally:
                    with notempty:
                        q = qref()
                        if q is not None and not buffer:
                            q._infeeder = False
                        del q
        except Exception:
            import traceback
            traceback.print_exc()
        finally:
            ch.release()

    @staticmethod
    def _on_queue_feeder_error(e: BaseException, obj: Any) -> None:
        """Called with the error when ``obj`` could not be pickled (the standard hook)."""
        import traceback
        traceback.print_exc()

    # -- closing --

    def close(self) -> None:
        """No more puts from this process; the feeder flushes the buffer and exits."""
        if self._closed:
            return
        self._closed = True
        fin = self._close_fin
        if fin is not None:
            self._close_fin = None
            fin()
        ch, self._ch = self._ch, None
        _forkables.discard(self)
        if ch is not None:
            try:
                ch.adjust(0, 0, -1)
            except Exception:
                pass
            ch.release()  # a running feeder holds its own reference
        sweep()

    def join_thread(self) -> None:
        """Wait for the feeder thread (after :meth:`close`)."""
        assert self._closed, f"Queue {self!r} not closed"
        if self._jointhread:
            self._jointhread()

    def _terminate_broken(self) -> None:
        """Close a queue that nobody will read again, as the standard's method of that
        name (CPython gh-94777): what the feeder has not sent is dropped, and a feeder
        waiting for room in the ring gives up, so :meth:`join_thread` returns."""
        self._stop.set()
        self.close()
        self.join_thread()

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder at exit (buffered items may be lost)."""
        self._joincancelled = True
        try:
            self._jointhread.cancel()
        except AttributeError:
            pass

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._closed = True
                ch, self._ch = self._ch, None
                if ch is not None:
                    ch.adjust(0, 0, -1)
                    ch.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        name = self._ch.name if self._ch is not None else "closed"
        return f"<shmlink.multiprocessing.Queue {name}>"

    __class_getitem__ = classmethod(type(list[int]))  # type: ignore[assignment]


_SENTINEL = object()


class JoinableQueue(Queue):
    """A :class:`Queue` with ``task_done()`` and ``join()``."""

    _joinable = True

    def task_done(self) -> None:
        """Mark one taken item done; ``ValueError`` if called more times than items."""
        mem = self._check().mem
        while True:
            n = mem.load32(_OFF_UNFINISHED)
            if n == 0:
                raise ValueError("task_done() called too many times")
            if mem.cas32(_OFF_UNFINISHED, n, n - 1):
                break
        if n == 1:
            mem.wake32(_OFF_UNFINISHED)

    def join(self) -> None:
        """Wait until every item put was marked done."""
        mem = self._check().mem
        while True:
            n = mem.load32(_OFF_UNFINISHED)
            if n == 0:
                return
            mem.wait32(_OFF_UNFINISHED, n, time.monotonic() + 0.1)

    def _uncount_task(self) -> None:
        self._mem.add32(_OFF_UNFINISHED, -1)


class _ChannelLock:
    """A lock shaped like ``ctx.Lock()`` for code that reaches into a queue's ``_rlock``."""

    def __init__(self) -> None:
        self._lock: Any = None

    def _get(self) -> Any:
        if self._lock is None:
            import multiprocessing
            self._lock = multiprocessing.Lock()
        return self._lock

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return bool(self._get().acquire(block, timeout))

    def release(self) -> None:
        self._get().release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class SimpleQueue:
    """The standard ``SimpleQueue`` (``get``, ``put``, ``empty``, ``close``) on a shmlink pipe.

    ``_reader`` and ``_writer`` are :class:`~shmlink.multiprocessing.connection.Connection`
    objects, as ``multiprocessing.Pool`` and ``concurrent.futures`` expect.
    """

    def __init__(self, *, ctx: Any = None) -> None:
        self._reader, self._writer = Pipe(duplex=False)
        self._init_locks()

    def _init_locks(self) -> None:
        self._rlock = _ChannelLock()
        self._wlock = _ChannelLock()
        self._poll = self._reader.poll

    def close(self) -> None:
        """Close both ends in this process."""
        self._reader.close()
        self._writer.close()

    def empty(self) -> bool:
        """True if no item can be taken now."""
        return not self._poll()

    def __getstate__(self) -> tuple[Any, ...]:
        return (self._reader, self._writer)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._reader, self._writer = state
        self._init_locks()

    def get(self) -> Any:
        """Take the oldest item, waiting for one."""
        return _loads(self._reader.recv_bytes())

    def put(self, obj: Any) -> None:
        """Put an item (pickled here)."""
        self._writer.send_bytes(_dumps(obj))

    __class_getitem__ = classmethod(type(list[int]))  # type: ignore[assignment]


if sys.version_info < (3, 9):  # pragma: no cover
    raise ImportError("shmlink.multiprocessing needs Python 3.9+")
