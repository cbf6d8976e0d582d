"""Named, process-shared synchronisation: :class:`Mutex` and :class:`Event`.

Both live in a small segment of their own.  Waiting goes through the C core:
futex waits with the GIL released, interruptible by Ctrl-C, bounded by an
absolute deadline computed once.  The sequences are the headers': Mutex's
(take, take over from a dead holder, release, mark consistent) are
include/shmlink/mutex.h's, Event's (set, clear, wait, auto-reset
consumption) include/shmlink/event.h's, called through the binding; this
module parses arguments and maps results to exceptions.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from . import _core
from .errors import (
    IncompatibleSegment,
    InvalidArgument,
    InvalidState,
    NotOwner,
    OwnerDied,
    Timeout,
)
from .segment import DATA_OFFSET, Lifetime, _Named

__all__ = ["Mutex", "Event", "deadline_of"]

# Mutex control block: struct shmlink_mutex (include/shmlink/mutex.h) starts
# the data area; its sequences are the header's, through Memory.mutex_*.
_M_BLOCK = DATA_OFFSET
_M_SIZE = _core.LAYOUT_SIZE["mutex"]

# Event control block: include/shmlink/event.h, offsets exported by _core.
_EVENT = _core.EVENT_LAYOUT
_E_VERSION: int = _EVENT["version"]  # the segment header's kind_version
_E_SIZE: int = _EVENT["size"]
_E_BLOCK = DATA_OFFSET  # the block starts the data area
_E_AUTO = DATA_OFFSET + _EVENT["auto_reset"]
_E_EC = DATA_OFFSET + _EVENT["ec"]  # the event count set() notifies
_E_BELLS = DATA_OFFSET + _EVENT["bells"]  # its doorbell table (include/shmlink/doorbell.h)

_SPIN_NS = 20_000


def deadline_of(timeout: float | None) -> float | None:
    """The absolute ``time.monotonic()`` deadline of a timeout (None = forever)."""
    if timeout is None:
        return None
    if timeout != timeout or timeout < 0:  # NaN or negative
        raise InvalidArgument(f"timeout must be None or >= 0 seconds, not {timeout!r}")
    return time.monotonic() + timeout


def _check_size(obj: _Named, need: int) -> None:
    size = obj._mapping().header.data_size
    if size < need:
        from .errors import CorruptSegment
        raise CorruptSegment(
            f"{obj.KIND} {obj.name!r} has a {size}-byte control block, {need} needed; "
            "the segment is corrupt or foreign: remove it and create it again"
        )


class Mutex(_Named):
    """A named mutex shared by processes, robust against holders that die.

    When the holder dies while holding it, the next :meth:`acquire` takes
    the lock **and** raises :class:`OwnerDied`: the data it protects may be
    half-written.  Until someone calls :meth:`mark_consistent` (holding the
    lock, after repairing the data), every acquirer is told the same way.
    Not recursive; released only by the thread that acquired it.
    """

    KIND = "mutex"

    @classmethod
    def create(cls, name: str, *, mode: int = 0o600,
               lifetime: Lifetime = "persist") -> "Mutex":
        """Create a new, unlocked mutex; fail if the name exists.

        Parameters
        ----------
        name : str
            Mutex name (letters, digits, ``_ . -``).
        mode : int
            Permission bits of its file (default ``0o600``).
        lifetime : {"persist", "auto"}
            See :class:`Segment`.
        """
        return cls._create_kind(name, _M_SIZE, kind=cls._kind_id(), mode=mode, lifetime=lifetime)

    @classmethod
    def open(cls, name: str, *, timeout: float | None = 5.0) -> "Mutex":
        """Open an existing mutex by name."""
        return cls._open_kind(name, timeout=timeout)

    @classmethod
    def create_or_open(cls, name: str, *, mode: int = 0o600, lifetime: Lifetime = "persist",
                       timeout: float | None = 5.0) -> "Mutex":
        """Create the mutex, or open it if it exists (``.created`` tells which)."""
        return cls._create_or_open(
            lambda: cls.create(name, mode=mode, lifetime=lifetime),
            lambda: cls.open(name, timeout=timeout))

    def _attach(self) -> None:
        _check_size(self, _M_SIZE)

    # The thread holding the lock in this process, shared by all handles of
    # the same name (they share one mapping).
    def _holder_thread(self) -> int | None:
        return getattr(self._mapping(), "mutex_thread", None)

    def acquire(self, *, timeout: float | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (None = forever).

        Returns
        -------
        bool
            True.

        Raises
        ------
        Timeout
            If the lock was not free in time.
        OwnerDied
            The lock *is* now held by the caller, but a previous holder died
            while holding it: repair the data, call :meth:`mark_consistent`,
            then :meth:`release`.
        KeyboardInterrupt
            (or any exception a signal handler raises) while it waits or
            just after it took the lock: the caller does not hold the lock.
        InvalidState
            If this thread already holds it (not recursive).
        SegmentClosed
            If another thread closes this handle meanwhile.
        """
        deadline = deadline_of(timeout)
        mem = self._memory
        if self._held_here():
            raise InvalidState(f"mutex {self._name!r} is already held by this thread (it is not recursive)")
        got: list[tuple[int, int] | None] = []
        try:
            # list.extend(map(...)) calls mutex_acquire and stores its result
            # without returning to the interpreter in between, so a
            # KeyboardInterrupt cannot land between "the C core took the
            # lock" and "we know we took it" (it would after a plain call).
            got.extend(map(mem.mutex_acquire, (_M_BLOCK,), (deadline,), (_SPIN_NS,)))
            r = got[0]
            if r is None:
                raise Timeout(
                    f"mutex {self._name!r} still held by PID {self._stats()['owner']} after "
                    f"{timeout} s; wait longer or find out why that process holds it"
                )
            return self._taken(r)
        except OwnerDied:
            raise  # held by the caller, as documented
        except BaseException:
            if got and got[0] is not None:
                self._abandon()
            raise

    def try_acquire(self) -> bool:
        """Take the lock if it is free now (or its holder died); never waits.

        Raises :class:`OwnerDied` like :meth:`acquire`.
        """
        mem = self._memory
        if self._held_here():
            return False
        got: list[tuple[int, int] | None] = []
        try:
            got.extend(map(mem.mutex_try, (_M_BLOCK,)))  # see acquire()
            r = got[0]
            if r is None:
                return False
            return self._taken(r)
        except OwnerDied:
            raise
        except BaseException:
            if got and got[0] is not None:
                self._abandon()
            raise

    def _stats(self) -> dict[str, int]:
        return self._memory.mutex_stats(_M_BLOCK)

    def _held_here(self) -> bool:
        """Whether this thread holds the lock now."""
        return (self._holder_thread() == threading.get_ident()
                and self._stats()["owner"] == os.getpid())

    def _taken(self, r: tuple[int, int]) -> bool:
        # The C core did the bookkeeping (holder, count, and after a holder
        # died: the inconsistent mark and that holder's PID) before returning.
        self._mapping().mutex_thread = threading.get_ident()  # type: ignore[attr-defined]
        owner_died, dead = r
        if owner_died:
            raise OwnerDied(
                f"mutex {self._name!r}: a holder (PID {dead}) died while holding it; you now "
                "hold the lock and the data it protects may be half-written: repair it, "
                "call mark_consistent(), then release()",
                previous_pid=dead,
            )
        return True

    def _abandon(self) -> None:
        """An acquire that took the lock was interrupted: give the lock back.

        The caller gets the exception and does not hold the lock (it may
        retry).  A lock taken over from a dead holder stays marked
        inconsistent (the C core marked it before returning), so the next
        acquirer is told.
        """
        m = self._mapping()
        if getattr(m, "mutex_thread", None) == threading.get_ident():
            m.mutex_thread = None  # type: ignore[attr-defined]
        self._memory.mutex_release(_M_BLOCK)

    def release(self) -> None:
        """Release the lock.

        Raises
        ------
        NotOwner
            If this thread of this process does not hold it.
        """
        mem = self._memory
        m = self._mapping()
        if getattr(m, "mutex_thread", None) != threading.get_ident():
            owner = self._stats()["owner"]
            raise NotOwner(
                f"mutex {self._name!r} is not held by this thread (holder PID "
                f"{owner or 'none'}); only the thread that acquired it may release it"
            )
        m.mutex_thread = None  # type: ignore[attr-defined]
        mem.mutex_release(_M_BLOCK)  # NotOwner if this process does not hold it

    def mark_consistent(self) -> None:
        """Declare the protected data repaired after :class:`OwnerDied` (hold the lock)."""
        mem = self._memory
        if self._holder_thread() != threading.get_ident():
            raise NotOwner(f"mutex {self._name!r}: acquire it before calling mark_consistent()")
        mem.mutex_mark_consistent(_M_BLOCK)  # NotOwner if this process does not hold it

    @property
    def holder_pid(self) -> int | None:
        """PID of the process holding the lock now, or None."""
        return self._stats()["owner"] or None

    def locked(self) -> bool:
        """Whether some process holds the lock now."""
        return self._stats()["owner"] != 0

    @property
    def consistent(self) -> bool:
        """False after a holder died, until :meth:`mark_consistent`."""
        return not self._stats()["inconsistent"]

    def __enter__(self) -> "Mutex":
        try:
            self.acquire()
        except OwnerDied:
            # A with-block cannot repair: release (the lock stays marked
            # inconsistent, so the next acquirer is told too) and tell ours.
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``holder_pid`` (or None), ``consistent``, ``acquisitions``."""
        st = self._stats()
        return {"holder_pid": st["owner"] or None, "consistent": not st["inconsistent"],
                "acquisitions": st["acquisitions"]}


class Event(_Named):
    """A named event: processes wait until another process sets it.

    No wake-up is ever lost: a waiter arms the event's event count, checks
    again, and only then sleeps, so a :meth:`set` racing it either is seen
    by the check or wakes the sleep.  With ``auto_reset=True`` each
    :meth:`wait` that returns consumes the set atomically (one
    compare-and-swap), so a reader never has to clear it after reading --
    the race in which a write lands between "read" and "reset" and is lost
    (the classic manual-reset flaw) cannot happen, and each set releases
    exactly one waiter.  A manual-reset event stays set until :meth:`clear`.

    Sleepers are not counted: :meth:`set` makes a system call only when a
    waiter armed the event since the last set, so a waiter killed while it
    slept costs the next set one futex wake, then nothing.  The sequences
    are those of ``include/shmlink/event.h``, which C programs use too.
    """

    KIND = "event"

    @classmethod
    def create(cls, name: str, *, auto_reset: bool = False, mode: int = 0o600,
               lifetime: Lifetime = "persist") -> "Event":
        """Create a new, clear event; fail if the name exists.

        Parameters
        ----------
        name : str
            Event name (letters, digits, ``_ . -``).
        auto_reset : bool
            True: each :meth:`wait` that returns consumes the set.
        mode : int
            Permission bits of its file (default ``0o600``).
        lifetime : {"persist", "auto"}
            See :class:`Segment`.
        """
        def init(mm: Any) -> None:
            mm[_E_AUTO:_E_AUTO + 4] = (1 if auto_reset else 0).to_bytes(4, "little")

        return cls._create_kind(name, _E_SIZE, kind=cls._kind_id(), mode=mode,
                                lifetime=lifetime, init=init, kind_version=_E_VERSION)

    @classmethod
    def open(cls, name: str, *, timeout: float | None = 5.0) -> "Event":
        """Open an existing event by name (its reset mode is the creator's).

        Raises
        ------
        IncompatibleSegment
            If the event was made by a shmlink with another event layout.
        """
        return cls._open_kind(name, timeout=timeout)

    @classmethod
    def create_or_open(cls, name: str, *, auto_reset: bool | None = None, mode: int = 0o600,
                       lifetime: Lifetime = "persist", timeout: float | None = 5.0) -> "Event":
        """Create the event, or open it if it exists (``.created`` tells which).

        ``auto_reset`` defaults to False for an event it creates.

        Raises
        ------
        SettingsMismatch
            If the event exists with another ``auto_reset`` than the one passed.
        """
        return cls._create_or_open(
            lambda: cls.create(name, auto_reset=bool(auto_reset), mode=mode, lifetime=lifetime),
            lambda: cls.open(name, timeout=timeout),
            {"auto_reset": auto_reset})

    def _attach(self) -> None:
        version = self._mapping().header.kind_version
        if version != _E_VERSION:
            raise IncompatibleSegment(
                f"event {self._name!r} has event layout {version}, this shmlink speaks "
                f"{_E_VERSION}; use the same shmlink on every side, or remove the event and "
                "create it again"
            )
        _check_size(self, _E_SIZE)
        stats = self._memory.event_stats(_E_BLOCK)  # checks the block (CorruptSegment)
        self._auto_reset = bool(stats["auto_reset"])

    @property
    def auto_reset(self) -> bool:
        """Whether each returning :meth:`wait` consumes the set (the creator's choice)."""
        self._memory  # raises SegmentClosed once closed
        return self._auto_reset

    def set(self) -> None:
        """Set the event and wake its waiters (one of them consumes it, for auto-reset)."""
        self._memory.event_set(_E_BLOCK)

    def clear(self) -> None:
        """Reset the event."""
        self._memory.event_clear(_E_BLOCK)

    def is_set(self) -> bool:
        """Whether the event is set now (consumes nothing)."""
        return bool(self._memory.event_is_set(_E_BLOCK))

    @property
    def set_count(self) -> int:
        """How many times :meth:`set` was called, by anyone."""
        return int(self._memory.event_stats(_E_BLOCK)["sets"])

    def wait(self, *, timeout: float | None = None) -> bool:
        """Wait until the event is set; returns True.

        For an auto-reset event, returning consumes the set (the event is
        clear again, and exactly one waiter returns per set).

        Raises
        ------
        Timeout
            If it was not set within ``timeout`` seconds.
        SegmentClosed
            If another thread closes this handle meanwhile.
        """
        deadline = deadline_of(timeout)
        if self._memory.event_wait(_E_BLOCK, deadline, _SPIN_NS):
            return True
        raise Timeout(f"event {self._name!r} was not set within {timeout} s")

    def try_wait(self) -> bool:
        """Whether the event is set now; for auto-reset, True consumes the set."""
        if self._memory.event_wait(_E_BLOCK, 0.0, 0):
            return True
        if self._readies:
            self._readies["wait"].rearm()
        return False

    def fileno(self) -> int:
        """A descriptor that reads ready when the event may be set.

        For :mod:`select`, :mod:`selectors`, ``epoll``, an event loop's
        ``add_reader`` and :func:`shmlink.wait`.  Readiness may be spurious
        (another waiter consumed an auto-reset set): after it, call
        :meth:`try_wait` (or :meth:`is_set`).  The descriptor belongs to
        this handle and is closed by :meth:`close`; don't close it yourself.

        Returns
        -------
        int
        """
        return int(self._ready_wait().fileno())

    def _wait_ready(self) -> Any:  # what shmlink.wait waits for
        return self._ready_wait()

    def _ready_wait(self) -> Any:
        mem = self._memory
        return self._readiness("wait", _E_EC, _E_BELLS, lambda: bool(mem.event_is_set(_E_BLOCK)))

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``set``, ``auto_reset``, ``set_count``, ``wakes``, ``armed``.

        ``wakes`` counts the sets that made a futex wake system call (at
        most one per sleep); ``armed`` is True while a waiter has announced
        itself and no set has woken it since (a waiter sleeps now, or one
        died asleep).
        """
        st = self._memory.event_stats(_E_BLOCK)
        return {"set": bool(st["set"]), "auto_reset": bool(st["auto_reset"]),
                "set_count": st["sets"], "wakes": st["wakes"], "armed": bool(st["armed"])}
