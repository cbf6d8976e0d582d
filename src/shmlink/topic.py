"""One-to-many broadcast: :class:`Topic` and :class:`Subscriber`.

A topic is a segment holding one byte ring (``struct shmlink_topic`` in
``include/shmlink.h``) and a table of subscriber slots.  Publishers append
records; every subscriber reads every record at its own pace through its own
cursor, kept in its slot, and takes nothing away from the others.

Two delivery modes (``delivery=``), fixed at creation:

``"lossless"``
    A publisher waits (up to its ``timeout``) until the slowest live
    subscriber has read far enough to make room.  A subscriber whose process
    died is evicted within a liveness slice (~20 ms), so a publisher never
    waits for the dead.  With no subscriber at all, the oldest messages are
    overwritten (they are kept for late joiners with ``start="oldest"``).
``"latest"``
    A publisher never waits.  A subscriber that falls more than a ring
    behind skips to the oldest message still held; :attr:`Subscriber.missed`
    counts exactly how many messages it never got.  ``recv`` does not raise
    for those: it returns the next message that is still intact.

How it holds together:

* Records carry a 64-bit sequence number.  A subscriber copies a record,
  then checks (seqlock-style, an acquire fence then the ring's ``head``)
  that no publisher started overwriting it meanwhile; a copy that may be
  torn is thrown away, never delivered.
* Publishers serialise on a robust lock: one killed mid-publish leaves no
  trace of the message and the lock is taken over by the next publisher.
* Subscribers sleep on an event count that publishers bump (no lost
  wake-ups); lossless publishers sleep on another one that subscribers bump
  as they advance.  Waits release the GIL and let Ctrl-C through.
* Everything read from shared memory is checked before it is used; a ring
  or table overwritten with garbage raises :class:`CorruptSegment`.

Example::

    with Topic.create("prices", 1 << 20, delivery="latest") as topic:
        sub = topic.subscribe()
        topic.publish(b"EURUSD 1.0842")
        print(sub.recv(timeout=1.0), sub.missed)
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Literal

from . import _core, _ready
from .errors import (
    InvalidArgument,
    InvalidSize,
    InvalidState,
    SegmentClosed,
    Timeout,
)
from .queue import DEFAULT_CAPACITY, WAIT_STRATEGIES, WaitMode, _ring_capacity, _spin_of
from .segment import DATA_OFFSET, Lifetime, _Named

__all__ = ["Topic", "Subscriber", "TopicMessageView", "MessageHandler", "MessageOverwritten",
           "DELIVERIES", "Delivery", "Start"]

#: A topic's delivery mode: publishers wait for the slowest live subscriber,
#: or never wait (slow subscribers skip ahead and count what they missed).
Delivery = Literal["lossless", "latest"]
#: Where a new subscriber starts: the next message published, or the oldest held.
Start = Literal["newest", "oldest"]

#: The delivery modes a topic is created with.
DELIVERIES: tuple[Delivery, ...] = ("lossless", "latest")

from .errors import MessageOverwritten  # noqa: E402  (re-exported)

_log = logging.getLogger("shmlink.topic")

# the event count publishers notify and its doorbell table (Subscriber.fileno)
_DATA_EC = DATA_OFFSET + _core.LAYOUT["topic"]["data_ec"][0]
_DATA_BELLS = DATA_OFFSET + _core.LAYOUT["topic"]["data_bells"][0]

def _close_core(core: Any, what: str) -> None:
    """Close a C handle without waiting: a call of another thread inside it is
    woken and raises SegmentClosed; the memory is released when it has left."""
    core.close()


_CLOSED_TOPIC = _core.Topic.__new__(_core.Topic)  # answers every call with SegmentClosed


def _check_delivery(delivery: object) -> None:
    if delivery not in DELIVERIES:
        raise InvalidArgument(f"delivery must be 'lossless' or 'latest', not {delivery!r}")


class Topic(_Named):
    """A named one-to-many broadcast channel of variable-length messages.

    Any number of publishers and up to ``max_subscribers`` subscribers, in
    any processes.  Create it with :meth:`create`, open it with :meth:`open`
    (or :meth:`create_or_open`); :meth:`subscribe` returns a
    :class:`Subscriber`.  Blocking calls take ``timeout=`` (seconds; None =
    forever; 0 = don't wait) and raise :class:`Timeout`; ``try_`` twins
    return False instead.  How a blocked call waits is the handle's ``wait``
    strategy: ``"hybrid"`` (default) spins ~50 µs then sleeps, ``"block"``
    sleeps at once, ``"spin"`` never sleeps.

    Closing a topic handle closes the subscribers made from it.
    """

    KIND = "topic"
    _c: Any = _CLOSED_TOPIC
    _subs: Any = ()
    _wait: WaitMode = "hybrid"
    _spin = WAIT_STRATEGIES["hybrid"]

    # -- constructors --

    @classmethod
    def create(cls, name: str, capacity: int = DEFAULT_CAPACITY, *,
               delivery: Delivery = "lossless", max_message_size: int | None = None,
               max_subscribers: int = 64, wait: WaitMode = "hybrid", mode: int = 0o600,
               lifetime: Lifetime = "persist") -> "Topic":
        """Create a new, empty topic; fail if the name exists.

        Parameters
        ----------
        name : str
            Topic name (letters, digits, ``_ . -``).
        capacity : int
            Bytes of message storage (rounded up to a multiple of 16, at
            least 64; default 1 MiB).  Each message takes 16 bytes of header
            plus its length rounded up to 16: a 64-byte message takes 80.
        delivery : {"lossless", "latest"}
            ``"lossless"``: publishers wait for the slowest live subscriber.
            ``"latest"``: publishers never wait; slow subscribers skip ahead
            and count what they missed.
        max_message_size : int, optional
            Largest message accepted; default and maximum ``capacity - 16``.
        max_subscribers : int
            Subscriber slots (1 to 1024); each takes 64 bytes.
        wait : {"hybrid", "block", "spin"}
            How this handle waits.
        mode : int
            Permission bits of the topic's file (default ``0o600``).
        lifetime : {"persist", "auto"}
            See :class:`Segment`.

        Returns
        -------
        Topic

        Raises
        ------
        SegmentExists, InvalidName, InvalidSize, ValueError
        """
        _spin_of(wait)
        _check_delivery(delivery)
        capacity = _ring_capacity("topic", name, capacity, 16)
        if isinstance(max_subscribers, bool) or not isinstance(max_subscribers, int) or \
                not 1 <= max_subscribers <= _core.TOPIC_MAX_SUBSCRIBERS:
            raise InvalidArgument(f"topic {name!r}: max_subscribers must be an int from 1 to "
                             f"{_core.TOPIC_MAX_SUBSCRIBERS}, not {max_subscribers!r}")
        limit = min(capacity - 16, 0xFFFFFFF0)
        if max_message_size is not None:
            if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) \
                    or not 1 <= max_message_size <= limit:
                raise InvalidSize(
                    f"topic {name!r}: max_message_size must be between 1 and capacity - 16 "
                    f"({limit}), not {max_message_size!r}"
                )
        size = _core.topic_footprint(capacity, max_subscribers)
        mm_max = max_message_size or 0

        def init(mm: Any) -> None:
            _core.topic_init(mm, DATA_OFFSET, size, delivery, mm_max, max_subscribers)

        t = cls._create_kind(name, size, kind=cls._kind_id(), mode=mode,
                             lifetime=lifetime, init=init)
        t.wait = wait
        return t

    @classmethod
    def open(cls, name: str, *, wait: WaitMode = "hybrid",
             timeout: float | None = 5.0) -> "Topic":
        """Open an existing topic by name.

        Parameters
        ----------
        name : str
            The topic's name.
        wait : {"hybrid", "block", "spin"}
            How this handle waits.
        timeout : float or None
            How long to wait for a topic whose creator is still setting it up.

        Returns
        -------
        Topic

        Raises
        ------
        SegmentNotFound, WrongKind, IncompatibleSegment, CorruptSegment, Timeout
        """
        _spin_of(wait)
        t = cls._open_kind(name, timeout=timeout)
        t.wait = wait
        return t

    @classmethod
    def create_or_open(cls, name: str, capacity: int | None = None, *,
                       delivery: Delivery | None = None, max_message_size: int | None = None,
                       max_subscribers: int | None = None, wait: WaitMode = "hybrid",
                       mode: int = 0o600, lifetime: Lifetime = "persist",
                       timeout: float | None = 5.0) -> "Topic":
        """Create the topic, or open it if it exists (``.created`` tells which).

        Parameters as in :meth:`create` (a topic it creates gets that
        method's defaults for the settings not passed) and :meth:`open`.

        Returns
        -------
        Topic

        Raises
        ------
        SettingsMismatch
            If the topic exists with another ``delivery``, ``capacity``,
            ``max_message_size`` or ``max_subscribers`` than the one passed
            (settings not passed are not compared).
        """
        if delivery is not None:
            _check_delivery(delivery)
        want = None if capacity is None else _ring_capacity("topic", name, capacity, 16)
        return cls._create_or_open(
            lambda: cls.create(name, DEFAULT_CAPACITY if capacity is None else capacity,
                               delivery=delivery or "lossless",
                               max_message_size=max_message_size,
                               max_subscribers=64 if max_subscribers is None else max_subscribers,
                               wait=wait, mode=mode, lifetime=lifetime),
            lambda: cls.open(name, wait=wait, timeout=timeout),
            {"delivery": delivery, "capacity": want, "max_message_size": max_message_size,
             "max_subscribers": max_subscribers})

    def _attach(self) -> None:
        m = self._mapping()
        c = self._c = _core.Topic(m.mm, DATA_OFFSET, m.header.data_size, self._name)
        c.spin_ns = self._spin
        self._subs = weakref.WeakSet()

    def _after_fork(self) -> None:
        subs = list(self._subs)
        self._attach()  # a fresh publisher handle: the parent's calls are not here
        for sub in subs:  # each is the parent's reader: refused here
            sub._inherit()
            self._subs.add(sub)

    def _detach_kind(self) -> None:
        if not self._c.closed:
            _close_core(self._c, f"topic {self._name!r}")

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"wait": self._wait}

    def close(self) -> None:
        """Close this handle and the subscribers made from it (idempotent).

        Raises
        ------
        SegmentBusy
            If views of the data are still alive (see :meth:`Segment.close`).
        """
        errors = []
        for sub in list(self._subs):
            try:
                sub.close()
            except Exception as e:  # the others must still be closed
                errors.append(e)
        super().close()
        if errors:
            raise errors[0]

    # -- configuration and introspection --

    @property
    def wait(self) -> WaitMode:
        """This handle's wait strategy: "hybrid", "block" or "spin"."""
        return self._wait

    @wait.setter
    def wait(self, value: WaitMode) -> None:
        self._spin = _spin_of(value)
        self._wait = value
        if not self._c.closed:
            self._c.spin_ns = self._spin

    @property
    def delivery(self) -> Delivery:
        """Delivery mode: "lossless" or "latest"."""
        self._mapping()
        mode: Delivery = self._c.mode
        return mode

    @property
    def capacity(self) -> int:
        """Bytes of message storage."""
        self._mapping()
        return int(self._c.capacity)

    @property
    def max_message_size(self) -> int:
        """Largest message :meth:`publish` accepts."""
        self._mapping()
        return int(self._c.max_message)

    @property
    def max_subscribers(self) -> int:
        """Subscriber slots."""
        self._mapping()
        return int(self._c.max_subscribers)

    @property
    def published(self) -> int:
        """Messages published, by all publishers, since creation."""
        return int(self._c.published)

    @property
    def subscriber_count(self) -> int:
        """Subscribers holding a slot now, in all processes (dead ones included
        until they are evicted or their slot is reused)."""
        return len(self._c.state()["subscribers"])

    def stats(self) -> dict[str, Any]:
        """A snapshot of the topic's settings, counters and subscribers.

        Returns
        -------
        dict
            ``delivery``, ``capacity``, ``max_message_size``,
            ``max_subscribers``, ``used_bytes`` (storage holding messages
            now), ``published`` (messages, since creation), ``evicted``
            (subscribers evicted because their process died), ``writer_pid``
            (the publisher holding the publisher lock now, or None) and
            ``subscribers``: one dict per active subscriber with its ``slot``,
            ``pid``, ``alive``, ``lag`` (messages published it has not read),
            ``missed`` and ``received``.
        """
        raw = self._c.state()
        return {"delivery": raw["mode"], "capacity": raw["capacity"],
                "max_message_size": raw["max_message_size"],
                "max_subscribers": raw["max_subscribers"], "used_bytes": raw["held_bytes"],
                "published": raw["published"], "evicted": raw["evicted"],
                "writer_pid": raw["publisher_pid"] or None, "subscribers": raw["subscribers"]}

    # -- publishing --

    def publish(self, data: Any, *, timeout: float | None = None) -> None:
        """Publish one message (any bytes-like object) to every subscriber.

        Parameters
        ----------
        data : bytes-like
            The message, 0 to ``max_message_size`` bytes.
        timeout : float or None
            Lossless mode: how long to wait for the slowest live subscriber to
            make room (None = forever).  Latest mode never waits.

        Raises
        ------
        Timeout
            If there was no room within ``timeout`` (nothing was published).
        MessageTooLarge
            If ``len(data) > max_message_size``.
        """
        self._c.publish(data, timeout=timeout)

    def try_publish(self, data: Any) -> bool:
        """Publish one message if that needs no waiting.

        Returns
        -------
        bool
            True if it was published; False if that would have meant waiting:
            a lossless topic without room now, or (rarely, in either mode)
            another publisher holding the publisher lock for over ~0.2 ms.
        """
        return self._c.try_publish(data)

    def publish_many(self, messages: Iterable[Any], *, timeout: float | None = None) -> int:
        """Publish messages in order, in as few lock round trips as room allows.

        Parameters
        ----------
        messages : iterable of bytes-like
            The messages.
        timeout : float or None
            Overall time to wait for room (lossless mode).

        Returns
        -------
        int
            How many were published (all of them).

        Raises
        ------
        Timeout
            If room ran out for ``timeout`` seconds; ``err.sent`` says how many
            were published (the first ``err.sent``, in order).
        """
        if not isinstance(messages, (list, tuple)):
            messages = list(messages)
        n = self._c.publish_many(messages, timeout)
        if n < len(messages):
            err = Timeout(f"topic {self._name!r}: the slowest subscriber left no room for "
                          f"{timeout} s; published {n} of {len(messages)} messages")
            err.sent = n  # type: ignore[attr-defined]
            raise err
        return n

    # -- subscribing --

    def subscribe(self, start: Start = "newest", *,
                  timeout: float | None = None) -> "Subscriber":
        """Claim a subscriber slot and return a :class:`Subscriber`.

        Parameters
        ----------
        start : {"newest", "oldest"}
            ``"newest"``: receive the messages published from now on.
            ``"oldest"``: begin with the oldest message the ring still holds.
        timeout : float or None
            How long to wait for the publisher lock (held only for a copy).

        Returns
        -------
        Subscriber

        Raises
        ------
        TooManyParticipants
            If all ``max_subscribers`` subscriber slots are held by live
            subscribers (the only limit on how many processes use a topic).
        Timeout
            If the publisher lock could not be taken in time.
        """
        if start not in ("newest", "oldest"):
            raise InvalidArgument(f"start must be 'newest' or 'oldest', not {start!r}")
        core = self._c.subscribe(start == "oldest", timeout)
        if core is None:
            raise Timeout(f"topic {self._name!r}: the publisher lock stayed busy for {timeout} s")
        sub = Subscriber._make(self, core)
        self._subs.add(sub)
        return sub

    def __repr__(self) -> str:
        if self._closed:
            return f"<shmlink.Topic {self._name!r} closed>"
        return (f"<shmlink.Topic {self._name!r} delivery={self.delivery} capacity={self.capacity} "
                f"published={self.published}>")


class TopicMessageView:
    """A zero-copy received message: a read-only memoryview into the ring.

    Anything made from the view (a numpy array, a slice) must be gone when
    it is released: otherwise release raises ``BufferError`` and the
    message stays where it is (copy what you need inside the block).

    Use it as ``with sub.recv_view() as mv: ...``.  In lossless mode the
    message stays in place while the view is open (publishers wait for it,
    so keep it short).  In latest mode a publisher may overwrite it: leaving
    the ``with`` block checks, and raises :class:`MessageOverwritten` if it
    was.  Leaving by an exception leaves the message for the next receive.
    """

    __slots__ = ("_sub", "_view", "_done", "__weakref__")

    def __init__(self, sub: "Subscriber", view: memoryview) -> None:
        self._sub = sub
        self._view = view
        self._done = False

    @property
    def data(self) -> memoryview:
        """The payload, as a read-only memoryview."""
        if self._done:
            raise SegmentClosed("the message view was released; receive again")
        return self._view

    def release(self, *, consume: bool = True) -> None:
        """Release the view; move past the message unless ``consume=False``.

        Raises
        ------
        MessageOverwritten
            If ``consume`` and a publisher overwrote the message meanwhile
            (latest mode): it counts as missed.
        BufferError
            If objects made from the view (numpy arrays, further
            memoryviews) are still alive: drop them first.
        """
        if self._done:
            return
        try:
            self._view.release()
        finally:  # a KeyboardInterrupt after the release still ends the receive
            intact = self._sub._c.view_end(consume)  # BufferError while copies of the view live
        self._done = True
        if consume and not intact:
            raise MessageOverwritten(
                f"topic {self._sub.name!r}: a publisher overwrote the message while it was "
                "viewed (latest mode); it counts as missed — copy it with recv() instead, "
                "or make the ring larger"
            )

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


class MessageHandler:
    """A background thread delivering a subscriber's messages to a callback.

    Made by :meth:`Subscriber.on_message`.  If the callback raises, delivery
    stops, the exception is logged (logger ``shmlink.topic``) and
    :meth:`stop` (or :meth:`Subscriber.close`) raises it.
    """

    def __init__(self, sub: "Subscriber", callback: Callable[[bytes], Any], batch: int) -> None:
        self._sub = sub
        self._core = sub._c
        self._callback = callback
        self._batch = batch
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"shmlink-topic-{sub.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        core, callback, batch = self._core, self._callback, self._batch
        try:
            while not self._stopping:
                # Returns [] at once when interrupted by stop().  Messages
                # taken are all delivered before the stop flag is looked at.
                for message in core.recv_many(batch, None):
                    callback(message)
        except BaseException as e:  # reported, never swallowed
            self._error = e
            _log.error("on_message callback of topic %r raised; delivery stopped",
                       self._sub.name, exc_info=e)
        finally:
            # Ended by stop(), by the callback calling stop(), or by an error:
            # leave the subscriber usable by plain receives.
            self._stopping = True
            if not core.closed:
                core.interrupt(False)

    @property
    def running(self) -> bool:
        """True while the delivery thread runs."""
        return self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped delivery, if any (until :meth:`stop` raises it)."""
        return self._error

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop delivery and join the thread (idempotent).

        Parameters
        ----------
        timeout : float or None
            How long to wait for a callback in progress to return.

        Raises
        ------
        Timeout
            If the callback did not return within ``timeout``; delivery still
            stops after it returns.
        BaseException
            Whatever the callback raised, if it did (raised once).
        """
        self._stopping = True
        if not self._core.closed:
            self._core.interrupt(True)
        if threading.current_thread() is self._thread:
            return  # stop() from inside the callback: the thread ends after it
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise Timeout(f"topic {self._sub.name!r}: the on_message callback did not return "
                          f"within {timeout} s; delivery stops once it does")
        if not self._core.closed:
            self._core.interrupt(False)
        if self._sub._handler is self:
            self._sub._handler = None
        err, self._error = self._error, None
        if err is not None:
            raise err

    def __enter__(self) -> "MessageHandler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _InheritedCore:
    """Stands in, in a forked child, for a subscriber's C handle: every use raises.

    The subscriber's slot and cursor are its parent's (a second process
    reading through them would break lossless delivery and its liveness), so
    the child only may close it, which touches nothing shared.
    """

    def __init__(self, message: str) -> None:
        self.closed = False
        self._message = message

    def close(self) -> bool:
        self.closed = True
        return True

    def __getattr__(self, name: str) -> Any:
        raise InvalidState(self._message)


class Subscriber:
    """One reader of a :class:`Topic`, with its own cursor in the topic's memory.

    Made by :meth:`Topic.subscribe`.  It receives every message published
    after it subscribed (or from the oldest held), in order.  In latest mode
    it may miss messages it was too slow for: :attr:`missed` counts them.
    Use it from one thread at a time; it is a context manager and an
    iterator.  A subscriber is its process's: in a child made by ``fork()``
    every call raises :class:`InvalidState` (subscribe again there), and
    close() or exit there leave the parent's subscriber as it is.
    """

    # the open zero-copy receive, weakly (see Queue.recv_view)
    _viewref: "Callable[[], TopicMessageView | None]" = staticmethod(lambda: None)

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("use Topic.subscribe() to make a Subscriber")

    @classmethod
    def _make(cls, topic: Topic, core: Any) -> "Subscriber":
        obj = object.__new__(cls)
        obj._c = core
        obj._topic = topic
        obj._name = topic.name
        obj._handler = None
        obj._wait = topic.wait
        return obj

    _readies: "dict[str, _ready.Readiness] | None" = None

    def _inherit(self) -> None:
        """In a forked child: the parent's slot and cursor stay the parent's."""
        self._handler = None  # its thread is the parent's
        _ready.close_all(self._readies, release=False)  # the parent's doorbell stays its own
        if not self._c.closed:
            self._c = _InheritedCore(
                f"this subscriber of topic {self._name!r} was inherited through fork() from "
                f"PID {os.getppid()}, whose reader it stays; subscribe again in this process")

    # -- receiving --

    def recv(self, *, timeout: float | None = None) -> bytes:
        """The next message, waiting until one arrives.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait (None = forever, 0 = don't wait).

        Returns
        -------
        bytes

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        # A method (not the C function bound to the instance) so that the
        # call keeps the subscriber alive: ``topic.subscribe().recv()`` must
        # not close it half-way.
        return self._c.recv(timeout=timeout)

    def try_recv(self) -> bytes | None:
        """The next message if there is one now, else None."""
        msg = self._c.try_recv()
        if msg is None and self._readies:
            self._readies["recv"].rearm()  # a stale ring: the descriptor reads idle again
        return msg  # type: ignore[no-any-return]

    def fileno(self) -> int:
        """A descriptor that reads ready when a message may be waiting for this subscriber.

        For :mod:`select`, ``epoll``, event loops and :func:`shmlink.wait`
        (:mod:`shmlink.asyncio` uses it).  After it reads ready, take
        messages with :meth:`try_recv` until None.  The descriptor is this
        subscriber's: :meth:`close` closes it.

        Returns
        -------
        int
        """
        return int(self._ready_recv().fileno())

    def _wait_ready(self) -> "_ready.Readiness":  # what shmlink.wait waits for
        return self._ready_recv()

    def _ready_recv(self) -> "_ready.Readiness":
        readies = self._readies
        if readies is None:
            readies = self._readies = {}
        r = readies.get("recv")
        if r is None:
            core = self._c
            if core.closed:
                raise SegmentClosed(f"subscriber of topic {self._name!r} is closed")
            core.lag  # an inherited subscriber raises InvalidState here
            r = readies["recv"] = _ready.Readiness(
                self._topic._memory, _DATA_EC, _DATA_BELLS, lambda: core.lag > 0,
                f"subscriber of topic {self._name!r}")
        return r

    def recv_many(self, max_count: int, *, timeout: float | None = None) -> list[bytes]:
        """Wait for at least one message, then take up to ``max_count`` at once.

        Parameters
        ----------
        max_count : int
            Most messages to return.
        timeout : float or None
            Seconds to wait for the first one.

        Returns
        -------
        list of bytes

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        out = self._c.recv_many(max_count, timeout)
        if not out:
            raise Timeout(f"topic {self._name!r}: no message within {timeout} s")
        return out

    def recv_view(self, *, timeout: float | None = None) -> TopicMessageView:
        """Zero-copy receive: a :class:`TopicMessageView` of the next message.

        Use it as ``with sub.recv_view() as mv: ...``; ``mv`` is a read-only
        memoryview into the ring, valid inside the block (see
        :class:`TopicMessageView` for latest mode).

        Raises
        ------
        Timeout
            If none arrived within ``timeout`` seconds.
        """
        c = self._c
        open_ = self._viewref()
        if open_ is not None and not open_._done:
            raise InvalidState(
                f"topic {self._name!r}: a zero-copy receive is already open on this "
                "subscriber; release it (leave its with-block) before taking the next")
        view = mv = None
        try:
            # A KeyboardInterrupt at any instruction after view_begin ends the
            # receive it opened (the C core records it; view_end knows).
            got = c.view_begin(timeout)
            if got is None:
                raise Timeout(f"topic {self._name!r}: no message within {timeout} s")
            view = c.view(*got)
            mv = TopicMessageView(self, view)
            self._viewref = weakref.ref(mv)
            return mv
        except BaseException:
            if mv is not None:
                mv._done = True
            if view is not None:
                view.release()
            c.view_end(False)  # no-op when no receive is open
            raise

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages as they arrive, forever (break out, or Ctrl-C)."""
        recv = self._c.recv
        while True:
            data = recv()
            if data is not None:  # None: interrupted
                yield data

    # -- callbacks --

    def on_message(self, callback: Callable[[bytes], Any], *, batch: int = 64) -> MessageHandler:
        """Deliver each message to ``callback(message)`` on a background thread.

        Parameters
        ----------
        callback : callable
            Called with each message (bytes), in order, on the handler's
            thread.  If it raises, delivery stops and :meth:`stop` /
            :meth:`close` raise the exception (it is also logged).
        batch : int
            Most messages taken from the ring at once.

        Returns
        -------
        MessageHandler
            Its ``stop()`` ends delivery; so do :meth:`stop` and :meth:`close`.

        Raises
        ------
        InvalidState
            If a handler already runs on this subscriber.
        """
        if self._handler is not None and self._handler.running:
            raise InvalidState(f"topic {self._name!r}: this subscriber already has an "
                               "on_message handler; stop() it first")
        if self._c.closed:
            self._c.try_recv()  # raises SegmentClosed
        self._handler = MessageHandler(self, callback, batch)
        return self._handler

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the :meth:`on_message` handler, if any, joining its thread.

        Raises
        ------
        Timeout
            If the callback did not return within ``timeout``.
        BaseException
            Whatever the callback raised, if it did.
        """
        handler = self._handler
        if handler is not None:
            handler.stop(timeout)
            self._handler = None

    # -- introspection --

    @property
    def wait(self) -> WaitMode:
        """How this subscriber waits: "hybrid", "block" or "spin" (the topic's at first)."""
        return self._wait

    @wait.setter
    def wait(self, value: WaitMode) -> None:
        spin = _spin_of(value)
        self._wait = value
        if not self._c.closed:
            self._c.spin_ns = spin

    @property
    def name(self) -> str:
        """The topic's name."""
        return self._name

    @property
    def topic(self) -> Topic:
        """The :class:`Topic` handle this subscriber was made from."""
        return self._topic

    @property
    def missed(self) -> int:
        """Messages this subscriber never got because they were overwritten first.

        Always 0 in lossless mode (unless a publisher died mid-publish with
        an empty ring).  In latest mode, ``received + missed`` equals the
        number of messages published since it subscribed, once it caught up.
        """
        return self._c.missed

    @property
    def received(self) -> int:
        """Messages this subscriber received."""
        return self._c.received

    @property
    def lag(self) -> int:
        """Messages published that this subscriber has not read yet."""
        return self._c.lag

    @property
    def next_seq(self) -> int:
        """Sequence number of the next message it expects (messages count from 0)."""
        return self._c.next_seq

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._c.closed

    # -- lifetime --

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the handler (if any), free the slot, release the memory (idempotent).

        Parameters
        ----------
        timeout : float or None
            How long to wait for an on_message callback in progress.

        Raises
        ------
        BaseException
            Whatever an on_message callback raised, if :meth:`stop` did not
            raise it already (the subscriber is closed anyway).
        """
        err: BaseException | None = None
        handler, self._handler = self._handler, None
        if handler is not None:
            try:
                handler.stop(timeout)
            except BaseException as e:
                err = e
        _ready.close_all(self._readies)
        if not self._c.closed:
            _close_core(self._c, f"subscriber of topic {self._name!r}")
        try:
            self._topic._subs.discard(self)
        except TypeError:
            pass
        if err is not None:
            raise err

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never blocks or raises: frees the slot if no other call is running.
        try:
            self._c.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._c.closed:
            return f"<shmlink.Subscriber of {self._name!r} closed>"
        if isinstance(self._c, _InheritedCore):
            return f"<shmlink.Subscriber of {self._name!r} inherited through fork()>"
        return (f"<shmlink.Subscriber of {self._name!r} slot={self._c.slot} "
                f"received={self.received} missed={self.missed} lag={self.lag}>")
