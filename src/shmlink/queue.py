"""The lossless many-to-many message queue: :class:`Queue`.

A queue is a segment holding a byte ring (``struct shmlink_ring`` in
``include/shmlink.h``).  Messages are variable-length, from 0 bytes up to
``max_message_size``.  Producers serialise on one robust lock, consumers on
another; each lock is held only for a memcpy.  The C core does the copying,
checks every offset and length it reads from shared memory, and waits with
the GIL released.

Guarantees:

* per-producer FIFO order; every message whose ``send`` returned is received
  exactly once (unless the queue is unlinked and forgotten);
* a producer killed mid-send leaves no trace of the message; a consumer
  killed mid-receive leaves the message for the others; a lock held by a
  process that died is taken over within ~20 ms by the next process that
  needs it;
* a ring overwritten with garbage raises :class:`CorruptSegment`, never
  reads or writes outside the mapping.
"""

from __future__ import annotations

import pickle
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Literal

from . import _core
from .errors import (
    InvalidState,
    InvalidArgument,
    InvalidSize,
    SegmentClosed,
    ShmlinkError,
    TextDecodeError,
    Timeout,
)
from .segment import DATA_OFFSET, Lifetime, _Named, clear_forged_lock, forged_lock_holder
from .sync import deadline_of

__all__ = ["Queue", "MessageView", "WAIT_STRATEGIES", "WaitMode"]

#: How a handle waits: spin ~50 µs then sleep, sleep at once, or never sleep.
WaitMode = Literal["hybrid", "block", "spin"]

#: How long each strategy spins (ns) before sleeping on a futex; -1 = until the deadline.
WAIT_STRATEGIES: dict[str, int] = {"block": 0, "hybrid": 50_000, "spin": -1}

#: Capacity of a queue or topic created without one (1 MiB).
DEFAULT_CAPACITY = 1 << 20


#: offsets of the ring's producer and consumer locks (struct shmlink_ring, from _core)
_PROD_LOCK: int = _core.LAYOUT["ring"]["prod_lock"][0]
_CONS_LOCK: int = _core.LAYOUT["ring"]["cons_lock"][0]
# the event counts and doorbell tables (include/shmlink/doorbell.h) of fileno()
_DATA_EC = DATA_OFFSET + _core.LAYOUT["ring"]["data_ec"][0]
_DATA_BELLS = DATA_OFFSET + _core.LAYOUT["ring"]["data_bells"][0]
_SPACE_EC = DATA_OFFSET + _core.LAYOUT["ring"]["space_ec"][0]
_SPACE_BELLS = DATA_OFFSET + _core.LAYOUT["ring"]["space_bells"][0]
#: blocking send()/recv() look at their lock's holder this often
_GUARD_S = 0.25
_monotonic = time.monotonic


def _spin_of(wait: str) -> int:
    try:
        return WAIT_STRATEGIES[wait]
    except KeyError:
        raise InvalidArgument(
            f"wait must be one of {', '.join(map(repr, WAIT_STRATEGIES))}, not {wait!r}"
        ) from None


class MessageView:
    """A zero-copy received message: a read-only memoryview into the ring.

    While it is open this handle holds the queue's consumer lock (other
    consumers wait), so keep it short.  Leaving the ``with`` block normally
    consumes the message; leaving it by an exception leaves the message in
    the queue for the next receive.  :meth:`release` does the same
    explicitly.  Anything made from the view (a numpy array, a slice) must
    be gone by then: otherwise release raises ``BufferError`` and the
    message stays, locked, until they are deleted and release() is called
    again (copy what you need inside the block).
    """

    __slots__ = ("_queue", "_view", "_done", "__weakref__")

    def __init__(self, queue: "Queue", view: memoryview) -> None:
        self._queue = queue
        self._view = view
        self._done = False

    @property
    def data(self) -> memoryview:
        if self._done:
            raise SegmentClosed("the message view was released; receive again")
        return self._view

    def release(self, *, consume: bool = True) -> None:
        """Release the view; consume the message unless ``consume=False``.

        Raises ``BufferError`` if objects made from the view (numpy arrays,
        further memoryviews) are still alive: drop them first.
        """
        if self._done:
            return
        try:
            self._view.release()
        finally:  # a KeyboardInterrupt after the release still ends the receive
            self._queue._ring.view_end(consume)  # BufferError while copies of the view live
        self._done = True

    def __enter__(self) -> memoryview:
        return self.data

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.release(consume=exc_type is None)

    def __len__(self) -> int:
        return len(self._view)

    def __bytes__(self) -> bytes:
        return bytes(self.data)

    def __del__(self) -> None:
        try:
            if not self._done:
                self.release(consume=False)
        except Exception:
            pass


def _ring_capacity(kind: str, name: str, capacity: object, align: int) -> int:
    """A ring's capacity as it will be created: checked, rounded up to ``align``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 64:
        raise InvalidSize(f"{kind} {name!r}: capacity must be an int >= 64 bytes, "
                          f"not {capacity!r}")
    return (capacity + align - 1) & ~(align - 1)


class Queue(_Named):
    """A named, lossless, bounded queue of variable-length messages.

    Many producers and many consumers, in any processes.  Blocking calls
    take ``timeout=`` (seconds; None = forever; 0 = don't wait) and raise
    :class:`Timeout` when it runs out; ``try_`` twins return False/None
    instead.  How a blocked call waits is the handle's ``wait`` strategy:
    ``"hybrid"`` (default) spins ~50 µs then sleeps, ``"block"`` sleeps at
    once, ``"spin"`` never sleeps (lowest latency, burns a core).
    """

    KIND = "queue"
    _ring: Any = None
    # the open zero-copy receive, weakly: one its caller dropped (a Ctrl-C
    # between recv_view returning and the with-block) is released by __del__
    _viewref: "Callable[[], MessageView | None]" = staticmethod(lambda: None)
    _spin = WAIT_STRATEGIES["hybrid"]
    _wait: WaitMode = "hybrid"

    @classmethod
    def create(cls, name: str, capacity: int = DEFAULT_CAPACITY, *,
               max_message_size: int | None = None, wait: WaitMode = "hybrid",
               mode: int = 0o600, lifetime: Lifetime = "persist") -> "Queue":
        """Create a new, empty queue; fail if the name exists.

        Parameters
        ----------
        name : str
            Queue name (letters, digits, ``_ . -``).
        capacity : int
            Bytes of message storage (rounded up to a multiple of 8, at least
            64; default 1 MiB).  Each message takes 8 bytes of header plus its
            length rounded up to 8.
        max_message_size : int, optional
            Largest message accepted by ``send``; default and maximum:
            ``capacity - 8``.
        wait : {"hybrid", "block", "spin"}
            How this handle waits.
        mode : int
            Permission bits of the queue's file (default ``0o600``).
        lifetime : {"persist", "auto"}
            See :class:`Segment`.

        Raises
        ------
        SegmentExists, InvalidName, InvalidSize, AccessDenied
        """
        _spin_of(wait)
        capacity = _ring_capacity("queue", name, capacity, 8)
        if max_message_size is not None:
            if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) \
                    or not 1 <= max_message_size <= capacity - 8:
                raise InvalidSize(
                    f"queue {name!r}: max_message_size must be between 1 and capacity - 8 "
                    f"({capacity - 8}), not {max_message_size!r}"
                )
        size = _core.RING_HEADER + capacity
        mm_max = 0 if max_message_size is None else max_message_size

        def init(mm: Any) -> None:
            _core.ring_init(mm, DATA_OFFSET, size, mm_max)

        q = cls._create_kind(name, size, kind=cls._kind_id(), mode=mode, lifetime=lifetime,
                             init=init)
        q.wait = wait
        return q

    @classmethod
    def open(cls, name: str, *, wait: WaitMode = "hybrid",
             timeout: float | None = 5.0) -> "Queue":
        """Open an existing queue by name; its settings are the creator's.

        Raises
        ------
        SegmentNotFound, WrongKind, IncompatibleSegment, CorruptSegment, Timeout
        """
        _spin_of(wait)
        q = cls._open_kind(name, timeout=timeout)
        q.wait = wait
        return q

    @classmethod
    def create_or_open(cls, name: str, capacity: int | None = None, *,
                       max_message_size: int | None = None, wait: WaitMode = "hybrid",
                       mode: int = 0o600, lifetime: Lifetime = "persist",
                       timeout: float | None = 5.0) -> "Queue":
        """Create the queue, or open it if it exists (``.created`` tells which).

        Parameters as for :meth:`create` (``capacity`` defaults to 1 MiB when
        the queue is created) and :meth:`open`.

        Raises
        ------
        SettingsMismatch
            If the queue exists with another ``capacity`` or
            ``max_message_size`` than the one passed (settings not passed are
            not compared).
        """
        want = None if capacity is None else _ring_capacity("queue", name, capacity, 8)
        return cls._create_or_open(
            lambda: cls.create(name, DEFAULT_CAPACITY if capacity is None else capacity,
                               max_message_size=max_message_size, wait=wait, mode=mode,
                               lifetime=lifetime),
            lambda: cls.open(name, wait=wait, timeout=timeout),
            {"capacity": want, "max_message_size": max_message_size})

    def _attach(self) -> None:
        m = self._mapping()
        ring = self._ring = _core.Ring(m.mm, DATA_OFFSET, m.header.data_size)
        ring.label = self._name  # used by the C core's error messages
        ring.spin = self._spin
        ring.slice = _GUARD_S  # qsend/qrecv hand back after a slice: see _guarded

    def _after_fork(self) -> None:
        # A zero-copy receive open at fork() is the parent's, and so is the
        # consumer lock it holds: here its view stays readable, and releasing
        # it does nothing (the parent consumes it or not).
        view = self._viewref()
        self.__dict__.pop("_viewref", None)  # back to the class default: none open here
        if view is not None:
            view._done = True
        self._attach()

    def _detach_kind(self) -> None:
        view = self._viewref()
        if view is not None and not view._done:
            from .errors import SegmentBusy
            raise SegmentBusy(
                f"queue {self._name!r} has an open zero-copy receive; release it "
                "(leave its with-block) before close()"
            )
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _r(self) -> Any:
        if self._ring is None:
            raise SegmentClosed(f"queue {self._name!r} is closed; open it again to use it")
        return self._ring

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"wait": self._wait}

    # -- configuration and introspection --

    @property
    def wait(self) -> WaitMode:
        """This handle's wait strategy: "hybrid", "block" or "spin"."""
        return self._wait

    @wait.setter
    def wait(self, value: WaitMode) -> None:
        self._spin = _spin_of(value)
        self._wait = value
        if self._ring is not None:
            self._ring.spin = self._spin

    @property
    def capacity(self) -> int:
        """Bytes of message storage."""
        return int(self._r().capacity)

    @property
    def max_message_size(self) -> int:
        """Largest message ``send`` accepts."""
        return int(self._r().max_message)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the queue's settings and counters (all processes).

        Returns
        -------
        dict
            ``capacity``, ``max_message_size``, ``used_bytes`` (storage in
            use now), ``depth`` (messages in the queue now), ``sent`` and
            ``received`` (messages, since creation) and ``writer_pid`` (the
            producer holding the producer lock now, or None).  The keys are
            the same as those of :meth:`Topic.stats` where they mean the same.
        """
        raw = self._r().stats()
        cap = raw["capacity"]
        return {"capacity": cap, "max_message_size": raw["max_message"],
                "used_bytes": raw["used"],
                "depth": min(max(0, raw["sent"] - raw["received"]), cap // 8),
                "sent": raw["sent"], "received": raw["received"],
                "writer_pid": raw["producer_pid"] or None}

    @property
    def free_bytes(self) -> int:
        """Bytes of storage free now."""
        raw = self._r().stats()
        return int(raw["capacity"] - raw["used"])

    @property
    def sent(self) -> int:
        """Messages sent into the queue, by all producers, since creation."""
        return int(self._r().stats()["sent"])

    @property
    def received(self) -> int:
        """Messages taken out, by all consumers, since creation."""
        return int(self._r().stats()["received"])

    def __len__(self) -> int:
        """Messages in the queue now (approximate while others send and receive;
        after a process was killed mid-send it may read low)."""
        s = self._r().stats()
        depth = int(s["sent"] - s["received"])
        if depth > s["capacity"] // 8:  # every message takes at least 8 bytes
            from .errors import CorruptSegment
            raise CorruptSegment(
                f"queue {self._name!r}: its counters say {depth} messages, more than its "
                f"{s['capacity']} bytes can hold; the control block was overwritten: "
                "remove the queue and recreate it"
            )
        return max(0, depth)

    # -- sending --

    def send(self, data: Any, *, timeout: float | None = None) -> None:
        """Append one message (any bytes-like object), waiting while the queue is full.

        Raises
        ------
        Timeout
            If there was no room within ``timeout`` seconds (nothing was sent).
        MessageTooLarge
            If ``len(data) > max_message_size``.
        """
        # One C call parses timeout=, waits, and raises Timeout or
        # SegmentClosed itself.  A method (not the C function bound to the
        # instance) so that the call keeps the queue alive:
        # ``Queue.open(name).send(b"x")`` must not close it half-way.
        # The ring's C handle waits at most one guard slice (ring.slice), so
        # the hot path is this one call; only a longer wait (False: the slice
        # ended, nothing sent, time left) runs the guarded slices.
        ring = self._ring or self._r()
        if not ring.qsend(data, timeout=timeout):
            self._guarded(ring.qsend, (data,), timeout, _PROD_LOCK,
                          "queue {name!r} stayed full for {timeout!r} s; nothing was sent")

    def _guarded(self, call: Any, args: tuple[Any, ...], timeout: float | None, lock: int,
                 what: str) -> Any:
        """A blocking ring call in slices, freeing a lock whose holder was forged.

        The ring's locks wait for a live holder however long it holds
        them.  A process with write access to the segment can record any
        live process as the holder (PID 1); between slices the lock's
        holder is checked (:func:`~shmlink.segment.forged_lock_holder`), and
        one that is not attached to the segment for a whole slice is cleared.
        """
        # called when a first slice has passed without success
        deadline = None if timeout is None else _monotonic() + timeout - _GUARD_S
        suspect = None
        while True:
            left = _GUARD_S if deadline is None else min(_GUARD_S, deadline - time.monotonic())
            try:
                return call(*args, timeout=max(0.0, left))
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(what.format(name=self._name, timeout=timeout)) from None
            mem = self._memory
            off = DATA_OFFSET + lock
            holder = forged_lock_holder(mem, off, self._mapping().identity)
            if holder is not None and holder == suspect:
                clear_forged_lock(mem, off, holder)
                holder = None
            suspect = holder

    def try_send(self, data: Any) -> bool:
        """Append one message if there is room now; True if it was sent."""
        if self._r().try_send(data):
            return True
        if self._readies and "send" in self._readies:
            self._readies["send"].rearm()
        return False

    def send_many(self, messages: Iterable[Any], *, timeout: float | None = None) -> int:
        """Append messages in order, taking the producer lock as few times as room allows.

        ``messages`` is an iterable of bytes-like objects, or a 2-D
        C-contiguous buffer (for example a numpy array of fixed-size records)
        whose rows are the messages: then no Python object is made per
        message.

        Returns
        -------
        int
            How many were sent (all of them).

        Raises
        ------
        Timeout
            If room ran out for ``timeout`` seconds; ``err.sent`` says how many
            went in (the first ``err.sent``, in order).
        """
        total = None
        if not isinstance(messages, (list, tuple)):
            try:
                with memoryview(messages) as mv:  # type: ignore[arg-type]
                    if mv.ndim == 2:
                        total = mv.shape[0]
            except TypeError:
                pass
            if total is None:
                messages = list(messages)
        if total is None:
            total = len(messages)  # type: ignore[arg-type]
        n = self._r().send_many(messages, deadline_of(timeout), self._spin)
        if n < total:
            err = Timeout(f"queue {self._name!r} stayed full for {timeout} s; sent {n} of "
                          f"{total} messages")
            err.sent = n  # type: ignore[attr-defined]
            raise err
        return n

    def send_text(self, text: str, *, encoding: str = "utf-8", timeout: float | None = None) -> None:
        """Send ``text`` encoded."""
        self.send(text.encode(encoding), timeout=timeout)

    def send_object(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send any picklable object."""
        self.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)

    # -- receiving --

    def recv(self, *, timeout: float | None = None) -> bytes:
        """Take the oldest message, waiting until one arrives.

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        # One C call that waits at most one guard slice (see send).
        ring = self._ring or self._r()
        msg = ring.qrecv(timeout=timeout)
        if msg is not None:
            return msg  # type: ignore[no-any-return]
        return self._guarded(ring.qrecv, (), timeout, _CONS_LOCK,
                             "queue {name!r}: no message within {timeout!r} s")  # type: ignore[no-any-return]

    def try_recv(self) -> bytes | None:
        """Take the oldest message if there is one now, else None."""
        msg = self._r().try_recv()
        if msg is None and self._readies and "recv" in self._readies:
            self._readies["recv"].rearm()  # a stale ring: the descriptor reads idle again
        return msg  # type: ignore[no-any-return]

    # -- readiness by file descriptor --

    def fileno(self) -> int:
        """A descriptor that reads ready when a message may be waiting (receive side).

        For :mod:`select`, :mod:`selectors`, ``epoll``, an event loop's
        ``add_reader`` and :func:`shmlink.wait`; :mod:`shmlink.asyncio`
        uses it.  Readiness may be spurious (another consumer took the
        message): after it, take messages with :meth:`try_recv` until it
        returns None (which also clears a stale readiness).  The descriptor
        is this handle's: :meth:`close` closes it; don't close it yourself.
        A forked child gets its own.

        Returns
        -------
        int

        Raises
        ------
        TooManyParticipants
            If all 7 descriptor slots of the queue are held by live handles.
        """
        return int(self._ready_recv().fileno())

    def send_fileno(self) -> int:
        """A descriptor that reads ready when there may be room to send (send side).

        As :meth:`fileno`, for the producer: ready when a message of up to
        one record header would fit; after it, send with :meth:`try_send`
        (a False clears a stale readiness).

        Returns
        -------
        int
        """
        return int(self._ready_send().fileno())

    def _wait_ready(self) -> Any:  # what shmlink.wait waits for
        return self._ready_recv()

    def _ready_recv(self) -> Any:
        return self._readiness("recv", _DATA_EC, _DATA_BELLS, self._r().may_recv)

    def _ready_send(self) -> Any:
        ring = self._r()
        return self._readiness("send", _SPACE_EC, _SPACE_BELLS, lambda: ring.may_send(0))

    def recv_many(self, max_count: int, *, timeout: float | None = None) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` at once.

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        out = self._r().recv_many(max_count, deadline_of(timeout), self._spin)
        if not out:
            raise Timeout(f"queue {self._name!r}: no message within {timeout} s")
        return out

    def recv_into(self, buffer: Any, *, timeout: float | None = None) -> int:
        """Copy the oldest message into a writable buffer; return its length.

        Raises
        ------
        MessageTooLarge
            If the message does not fit; it stays in the queue.
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        n = self._r().recv_into(buffer, deadline_of(timeout), self._spin)
        if n is None:
            raise Timeout(f"queue {self._name!r}: no message within {timeout} s")
        return n

    def recv_view(self, *, timeout: float | None = None) -> MessageView:
        """Zero-copy receive: a :class:`MessageView` of the oldest message.

        Use it as ``with q.recv_view() as mv: ...``: ``mv`` is a read-only
        memoryview into the ring, valid inside the block.

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        ring = self._r()
        open_ = self._viewref()
        if open_ is not None and not open_._done:
            raise InvalidState(
                f"queue {self._name!r}: a zero-copy receive is already open on this handle; "
                "release it (leave its with-block) before taking the next")
        view = mv = None
        try:
            # Everything after view_begin takes the consumer lock is inside
            # this try: a KeyboardInterrupt at any instruction gives it back
            # (the C core records the open receive itself, so view_end
            # knows whether there is one to end).
            got = ring.view_begin(deadline_of(timeout), self._spin)
            if got is None:
                raise Timeout(f"queue {self._name!r}: no message within {timeout} s")
            view = ring.view(*got)
            mv = MessageView(self, view)
            self._viewref = weakref.ref(mv)
            return mv
        except BaseException:
            if mv is not None:
                mv._done = True
            if view is not None:
                view.release()
            ring.view_end(False)  # no-op when no receive is open
            raise

    def recv_text(self, *, encoding: str = "utf-8", timeout: float | None = None) -> str:
        """Receive a message and decode it.

        Raises
        ------
        TextDecodeError
            If the message is not valid ``encoding`` (it is consumed anyway).
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        data = self.recv(timeout=timeout)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            raise TextDecodeError(
                f"queue {self._name!r}: bytes at offset {e.start} of a message are not valid "
                f"{encoding} ({e.reason}); pass the encoding the sender used, or use recv()"
            ) from None

    def recv_object(self, *, timeout: float | None = None) -> Any:
        """Receive a message sent with :meth:`send_object`.

        It unpickles, and unpickling runs whatever code the sender put in the pickle:
        use it only with peers you trust (``open`` refuses objects of other users
        unless you :func:`~shmlink.trust` them; any process of a trusted user, or of
        anyone for a ``0o666`` object, can send).
        """
        return pickle.loads(self.recv(timeout=timeout))

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages as they arrive, forever (break out, or Ctrl-C)."""
        while True:
            yield self.recv()

    def __repr__(self) -> str:
        if self._closed:
            return f"<shmlink.Queue {self._name!r} closed>"
        try:
            return f"<shmlink.Queue {self._name!r} capacity={self.capacity} depth={len(self)}>"
        except ShmlinkError:
            return f"<shmlink.Queue {self._name!r} corrupt>"
