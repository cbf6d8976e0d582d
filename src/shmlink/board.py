"""A shared latest value: :class:`Board`.

A board holds one value (bytes, text, or a pickled object) that any process
may replace and any process may read or watch.  It is a *latest value*, not a
queue: a reader sees the value that is there when it reads, and a watcher
that is slower than the writers skips the values it had no time to see.
Use :class:`shmlink.Queue` when every message matters.

How it works (``include/shmlink/board.h`` holds every step; this module
calls it through the binding, and C programs call the same functions):

* **Two value slots** (a double buffer).  Version ``v`` of the value lives
  in slot ``v % 2``.  A writer takes the writers' robust lock, writes version
  ``v + 1`` into the *other* slot, and only then publishes ``v + 1``.  So the
  slot that readers are directed to is never the one being written.
* **A sequence word per slot.**  While a slot is written its word is odd
  (``2 * version - 1``); once complete it is ``2 * version``.  A reader loads
  the published version ``v``, checks that its slot's word is ``2 * v``,
  copies length and bytes, fences, and re-reads the word: unchanged means the
  copy is whole.  Changed means a writer came round to this slot again
  (which takes a whole other write first), and the reader retries; after a
  bounded number of tries it reads under the writers' lock instead, so a
  read always finishes.
* **Crash safety.**  A writer killed mid-write has only touched the slot that
  nothing points to; the published value is untouched, readers never wait
  for anyone, and the next writer takes the dead writer's lock over and
  simply writes that slot again.
* **Waiting for change** uses the armed event count of the rings: a waiter
  arms it, re-checks the version, and only then sleeps; a writer publishes,
  then wakes the sleepers only if one armed it.  Sleepers are not counted,
  so a waiter killed asleep costs the next write one futex wake, then
  nothing (``stats()["wakes"]`` counts them).  No wake-up is lost; Ctrl-C
  interrupts the wait.

Every constant of the board (capacity, slot offsets) is loaded once when a
handle opens it and checked against the mapping; every length read later is
checked against that capacity (:class:`CorruptSegment` if it does not fit).

Layout of the data area (offsets from its start, all little-endian; board
layout version 3 -- version 1 counted sleepers, version 2 had no doorbell
table; versions refuse each other with :class:`IncompatibleSegment`)::

    0    u32 magic "BORD"   u32 layout version   u64 capacity
         u64 offset of slot 0   u64 slot stride                 (constants)
    64   struct shmlink_lock writers' lock (16)   u64 takeovers   u32 last writer PID
    128  u64 version   event count "changed" (8)   u64 wakes      (published)
    192  doorbell table of "changed" (7 x u64 ids, include/shmlink/doorbell.h)
    256  slot 0: u64 seq, u64 length, pad to 64, capacity bytes (rounded up to 64)
         slot 1: the same, at 256 + stride
"""

from __future__ import annotations

import pickle
from typing import Any, Iterator

from .errors import (
    CorruptSegment,
    IncompatibleSegment,
    InvalidSize,
    MessageTooLarge,
    SegmentClosed,
    TextDecodeError,
    Timeout,
)
from . import _core
from .segment import DATA_OFFSET, Lifetime, _Named
from .sync import deadline_of

__all__ = ["Board"]

# --- layout: include/shmlink/board.h, offsets exported by _core ---------------------

_L = _core.BOARD_LAYOUT
_BOARD_MAGIC: int = _L["magic"]  # "BORD" little-endian
_BOARD_VERSION: int = _L["version"]

_BLOCK = DATA_OFFSET  # the board's block starts the data area
# line 0: constants, written by the creator before the segment is ready
_C_MAGIC = DATA_OFFSET + 0
_C_LAYOUT = DATA_OFFSET + _L["layout_version"]
_C_CAPACITY = DATA_OFFSET + _L["capacity"]
_C_SLOT0 = _C_CAPACITY + 8  # offset of slot 0 from the start of the data area
_C_STRIDE = _C_CAPACITY + 16
# line 1: written by writers, under the lock
_W_LOCK = DATA_OFFSET + _L["lock"]  # struct shmlink_lock (16 bytes)
_W_TAKEOVERS = DATA_OFFSET + _L["takeovers"]  # u64: locks taken from a dead holder
_W_LAST_PID = DATA_OFFSET + _L["last_writer_pid"]  # u32: PID of the last writer
# line 2: published by writers, polled by readers and waiters
_P_VERSION = DATA_OFFSET + _L["published"]  # u64 SYNC: released by writers (board.h)
_P_CHANGED = DATA_OFFSET + _L["changed"]  # the event count (u32 seq: bit 0 = armed)
_P_WAKES = DATA_OFFSET + _L["wakes"]  # u64: writes that made a futex wake system call
# line 3: the doorbell table rung with "changed" (include/shmlink/doorbell.h): fileno()
_P_BELLS = DATA_OFFSET + _L["bells"]
_SLOT0: int = _L["slot0"]  # first slot, from the start of the data area
_SLOT_HEADER: int = _L["slot_header"]  # seq (u64), length (u64), padding; the bytes follow
_SEQ = 0
_LEN = 8

_MAX_SIZE: int = _L["max_capacity"]

_SPIN_NS = 20_000  # writers spin this long on a held lock before sleeping
_OPTIMISTIC_TRIES: int = _L["read_tries"]  # lock-free read attempts before reading under the lock

_MISSING: Any = object()


def _round64(n: int) -> int:
    return (n + 63) & ~63


def _layout_size(capacity: int) -> int:
    return _SLOT0 + 2 * (_SLOT_HEADER + _round64(capacity))


class Board(_Named):
    """A named shared latest value: written by anyone, read and watched by anyone.

    Readers never see a torn value and never wait for writers (not even for
    one that died mid-write); writers are serialised by a robust lock.  Each
    write bumps :attr:`version`; :meth:`wait_for_change` and :meth:`watch`
    wake on it.  A board is a *latest value*, not a queue: values written
    faster than a watcher reads them are skipped, and the watcher sees the
    newest one.

    Use the named constructors :meth:`create`, :meth:`open` and
    :meth:`create_or_open`.  A handle is a context manager; :meth:`close`
    detaches, :meth:`unlink` removes the name.

    Attributes
    ----------
    name : str
        The board's name.
    capacity : int
        The largest value it holds, in bytes (as given to :meth:`create`).
    version : int
        How many writes (including clears) it has had; 0 when new.
    created : bool
        True if this handle created the board.
    """

    KIND = "board"

    # class-level defaults, so that close() and repr work on a half-built handle
    _mem: Any = None
    _buf: Any = None
    _capacity = 0
    _slots: tuple[int, int] = (0, 0)

    # -- constructors --

    @classmethod
    def create(cls, name: str, capacity: int, *, mode: int = 0o600,
               lifetime: Lifetime = "persist") -> "Board":
        """Create a new, empty board; fail if the name exists.

        Parameters
        ----------
        name : str
            Board name (letters, digits, ``_ . -``).
        capacity : int
            The largest value the board holds, in bytes (>= 1).  The segment
            takes about twice that (two value slots).
        mode : int
            Permission bits (default ``0o600``: this user only).
        lifetime : {"persist", "auto"}
            ``persist``: stays until unlinked.  ``auto``: removed when the
            last participant closes.

        Returns
        -------
        Board
            A handle on the new board (version 0, empty value).

        Raises
        ------
        SegmentExists
            If the name is taken.
        InvalidSize
            If ``capacity`` is not a positive int.
        InvalidName, AccessDenied
            As for :meth:`shmlink.Segment.create`.
        """
        size = capacity
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_SIZE:
            raise InvalidSize(
                f"board {name!r}: capacity must be an int from 1 to {_MAX_SIZE} bytes (the "
                f"largest value it will hold), not {size!r}"
            )
        stride = _SLOT_HEADER + _round64(size)

        def init(mm: Any) -> None:
            base = DATA_OFFSET
            mm[base:base + 32] = (
                _BOARD_MAGIC.to_bytes(4, "little") + _BOARD_VERSION.to_bytes(4, "little")
                + size.to_bytes(8, "little") + _SLOT0.to_bytes(8, "little")
                + stride.to_bytes(8, "little")
            )
            # Everything else starts at zero: version 0 lives in slot 0 with
            # seq 0 == 2 * 0 and length 0, i.e. a complete, empty value.

        return cls._create_kind(name, _layout_size(size), kind=cls._kind_id(), mode=mode,
                                lifetime=lifetime, init=init, kind_version=_BOARD_VERSION)

    @classmethod
    def open(cls, name: str, *, timeout: float | None = 5.0) -> "Board":
        """Open an existing board by name; never creates.

        Parameters
        ----------
        name : str
            The board's name.
        timeout : float or None
            How long to wait for a board whose creator is still initialising
            it (seconds; None = forever).

        Returns
        -------
        Board
            A handle on the board; its :attr:`capacity` is the creator's.

        Raises
        ------
        SegmentNotFound
            If no board of that name exists.
        WrongKind
            If the name holds another kind of object.
        IncompatibleSegment, CorruptSegment
            If the board's control block is foreign or damaged.
        """
        return cls._open_kind(name, timeout=timeout)

    @classmethod
    def create_or_open(cls, name: str, capacity: int, *, mode: int = 0o600,
                       lifetime: Lifetime = "persist", timeout: float | None = 5.0) -> "Board":
        """Create the board, or open it if it exists (``.created`` tells which).

        Parameters
        ----------
        name : str
            Board name.
        capacity : int
            Largest value in bytes; an existing board must have the same.
        mode, lifetime
            As for :meth:`create`.
        timeout : float or None
            As for :meth:`open`.

        Returns
        -------
        Board
            A handle on the board.

        Raises
        ------
        SettingsMismatch
            If the board exists with another ``capacity``.
        """
        return cls._create_or_open(
            lambda: cls.create(name, capacity, mode=mode, lifetime=lifetime),
            lambda: cls.open(name, timeout=timeout),
            {"capacity": capacity})

    # -- attach / detach --

    def _attach(self) -> None:
        m = self._mapping()
        mem = self._memory
        data_size = m.header.data_size
        shown = f"board {self._name!r}"
        if data_size < _layout_size(1):
            raise CorruptSegment(f"{shown} has a {data_size}-byte data area, too small for a board")
        magic, layout = mem.load32(_C_MAGIC), mem.load32(_C_LAYOUT)
        if magic != _BOARD_MAGIC:
            raise CorruptSegment(f"{shown} has a bad control-block magic 0x{magic:08x}; "
                                 "remove it and create it again")
        if layout != _BOARD_VERSION:
            raise IncompatibleSegment(f"{shown} has board layout {layout}, this shmlink speaks "
                                      f"{_BOARD_VERSION}; use the same shmlink on both sides")
        capacity = mem.load64(_C_CAPACITY)
        slot0, stride = mem.load64(_C_SLOT0), mem.load64(_C_STRIDE)
        if not (1 <= capacity <= _MAX_SIZE and slot0 == _SLOT0
                and stride == _SLOT_HEADER + _round64(capacity)
                and _layout_size(capacity) <= data_size):
            raise CorruptSegment(
                f"{shown}: control block says capacity {capacity}, slots at {slot0} every "
                f"{stride} bytes, which does not fit its {data_size}-byte data area; remove it "
                "and create it again"
            )
        # Recorded once: every offset and length used later is checked
        # against these, never re-read from shared memory.
        self._capacity = capacity
        self._slots = (DATA_OFFSET + slot0, DATA_OFFSET + slot0 + stride)
        self._mem = mem
        self._buf = m.mm

    def _detach_kind(self) -> None:
        self._mem = None
        self._buf = None

    def _m(self) -> Any:
        mem = self._mem
        if mem is None:
            raise SegmentClosed(f"board {self._name!r} is closed; open it again to use it")
        return mem

    # -- properties --

    @property
    def capacity(self) -> int:
        """The largest value the board holds, in bytes."""
        self._m()
        return self._capacity

    @property
    def version(self) -> int:
        """How many times the board was written (or cleared), by anyone; 0 when new."""
        return int(self._m().load64(_P_VERSION))

    @property
    def length(self) -> int:
        """Length in bytes of the current value."""
        return int(self._consistent(copy=False)[1])

    # -- reading --

    def _corrupt(self, what: str) -> CorruptSegment:
        return CorruptSegment(
            f"board {self._name!r}: {what}; the control block was overwritten: remove the "
            "board and create it again"
        )

    def _consistent(self, copy: bool = True) -> tuple[int, Any]:
        """(version, bytes) -- or (version, length) with copy=False -- read whole.

        board.h's read: lock-free, or under the writers' lock (taken over
        from a writer that died) when writers keep overtaking the reader.
        """
        version, data = self._m().board_read(_BLOCK, self._capacity, copy, _OPTIMISTIC_TRIES)
        self._seen = version = int(version)  # what fileno() compares with
        return version, data

    #: the version this handle last read (fileno(): "changed since")
    _seen: int | None = None

    def fileno(self) -> int:
        """A descriptor that reads ready when the value changed since this handle last read it.

        "Last read" is the latest :meth:`read` / :meth:`read_versioned` /
        :meth:`read_text` / :meth:`read_object` / :meth:`watch` step of this
        handle (before any, the version when fileno() is first called).  For
        :mod:`select`, ``epoll``, event loops and :func:`shmlink.wait`; read
        the value to make it idle again.  The descriptor is this handle's:
        :meth:`close` closes it.

        Returns
        -------
        int
        """
        return int(self._ready_change().fileno())

    def _wait_ready(self) -> Any:  # what shmlink.wait waits for
        return self._ready_change()

    def _ready_change(self) -> Any:
        mem = self._m()
        if self._seen is None:
            self._seen = int(mem.load64(_P_VERSION))
        return self._readiness("change", _P_CHANGED, _P_BELLS,
                               lambda: mem.load64(_P_VERSION) != self._seen)

    def read(self) -> bytes:
        """The current value, as bytes (``b""`` when empty).

        Never torn, never waits for a writer.

        Returns
        -------
        bytes
            A copy of the value.

        Raises
        ------
        CorruptSegment
            If the board's control block holds impossible values.
        """
        data: bytes = self._consistent()[1]
        return data

    def read_versioned(self) -> tuple[int, bytes]:
        """The current value together with its version, read as one.

        Returns
        -------
        tuple of (int, bytes)
            ``(version, value)``: ``value`` is exactly what write number
            ``version`` wrote.
        """
        return self._consistent()

    def read_text(self, encoding: str = "utf-8", *, errors: str = "strict") -> str:
        """The current value decoded as text.

        Parameters
        ----------
        encoding : str
            The encoding the writer used (default UTF-8).
        errors : str
            As for :meth:`bytes.decode`; ``"replace"`` decodes anything.

        Returns
        -------
        str
            The text (``""`` when the board is empty).

        Raises
        ------
        TextDecodeError
            If the value is not valid text in ``encoding``.
        """
        data = self.read()
        try:
            return data.decode(encoding, errors)
        except UnicodeDecodeError as e:
            raise TextDecodeError(
                f"board {self._name!r}: bytes at offset {e.start} of the value are not valid "
                f"{encoding} ({e.reason}); pass the encoding the writer used, or errors='replace'"
            ) from None

    def read_object(self, *, default: Any = None) -> Any:
        """The current value, unpickled (written by :meth:`write_object`).

        It unpickles, and unpickling runs whatever code the sender put in the pickle:
        use it only with peers you trust (``open`` refuses objects of other users
        unless you :func:`~shmlink.trust` them; any process of a trusted user, or of
        anyone for a ``0o666`` object, can send).

        Parameters
        ----------
        default : object
            Returned when the board is empty (never written, or cleared).

        Returns
        -------
        object
            The unpickled value, or ``default``.
        """
        data = self.read()
        if not data:
            return default
        return pickle.loads(data)

    # -- writing --

    def write(self, data: Any, *, timeout: float | None = None) -> int:
        """Replace the value with ``data`` (any bytes-like object, possibly empty).

        Parameters
        ----------
        data : bytes-like
            The new value; at most :attr:`capacity` bytes.
        timeout : float or None
            How long to wait for another writer to finish (seconds; None =
            forever).  Writers hold the lock only while copying.

        Returns
        -------
        int
            The new version.

        Raises
        ------
        MessageTooLarge
            If ``data`` is longer than :attr:`capacity` (nothing is written).
        Timeout
            If other writers held the lock for ``timeout`` seconds.
        """
        mem = self._m()
        with memoryview(data) as src:
            if src.ndim != 1 or src.format != "B":
                src = src.cast("B")
            n = src.nbytes
            if n > self._capacity:
                raise MessageTooLarge(
                    f"board {self._name!r}: a {n}-byte value does not fit; it holds at most "
                    f"{self._capacity} bytes: create the board with a larger capacity"
                )
            deadline = deadline_of(timeout)
            v = mem.board_write(_BLOCK, self._capacity, src, deadline, _SPIN_NS)
        if v is None:
            raise Timeout(
                f"board {self._name!r}: the writers' lock stayed held by PID "
                f"{mem.load32(_W_LOCK)} for {timeout} s; nothing was written"
            )
        return int(v)

    def write_text(self, text: str, encoding: str = "utf-8", *,
                   timeout: float | None = None) -> int:
        """Replace the value with ``text`` encoded (no terminator: the length is stored).

        Parameters
        ----------
        text : str
            The new value.
        encoding : str
            How to encode it (default UTF-8).
        timeout : float or None
            As for :meth:`write`.

        Returns
        -------
        int
            The new version.

        Raises
        ------
        MessageTooLarge
            If the encoded text is longer than :attr:`capacity`.
        """
        if not isinstance(text, str):
            raise TypeError(f"write_text() takes a str, not {type(text).__name__}")
        return self.write(text.encode(encoding), timeout=timeout)

    def write_object(self, obj: Any, *, timeout: float | None = None) -> int:
        """Replace the value with ``obj`` pickled; read it back with :meth:`read_object`.

        Parameters
        ----------
        obj : object
            Any picklable object.
        timeout : float or None
            As for :meth:`write`.

        Returns
        -------
        int
            The new version.

        Raises
        ------
        MessageTooLarge
            If the pickle is longer than :attr:`capacity`.
        """
        return self.write(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), timeout=timeout)

    def clear(self, *, timeout: float | None = None) -> int:
        """Make the value empty (``b""``); the version goes up like for any write.

        Parameters
        ----------
        timeout : float or None
            As for :meth:`write`.

        Returns
        -------
        int
            The new version.
        """
        return self.write(b"", timeout=timeout)

    # -- waiting --

    def wait_for_change(self, since_version: int, *, timeout: float | None = None) -> int:
        """Wait until the version differs from ``since_version``; return the new version.

        Returns at once if it already differs.  Pass the version of the value
        you last read (:meth:`read_versioned`, :attr:`version`) so that a
        write landing between your read and this call is not missed.

        Parameters
        ----------
        since_version : int
            The version you have seen.
        timeout : float or None
            Seconds to wait (None = forever, 0 = just check).

        Returns
        -------
        int
            The current version (it may be several writes past
            ``since_version``: a board keeps only the latest value).

        Raises
        ------
        Timeout
            If no write happened within ``timeout`` seconds.
        """
        if isinstance(since_version, bool) or not isinstance(since_version, int):
            raise TypeError(f"since_version must be an int, not {type(since_version).__name__}")
        deadline = deadline_of(timeout)
        v = self._m().board_wait(_BLOCK, self._capacity, since_version & ((1 << 64) - 1),
                                 deadline, 0)
        if v is None:
            raise Timeout(f"board {self._name!r}: no write within {timeout} s "
                          f"(still version {since_version})")
        return int(v)

    def watch(self, *, timeout: float | None = None, initial: bool = False) -> Iterator[bytes]:
        """Yield each new value as it is written, forever (break out, or Ctrl-C).

        A board is a latest value, not a queue: when writes come faster than
        the loop body runs, the values in between are skipped and the next
        one yielded is the newest.  Use :class:`shmlink.Queue` to see every
        message.

        Parameters
        ----------
        timeout : float or None
            The longest to wait for each new value (None = forever).
        initial : bool
            Yield the current value first, before waiting for changes.

        Returns
        -------
        iterator of bytes
            Each new value.  The starting point is the value current when
            ``watch`` is called (not when the loop starts), so a write in
            between is not missed.

        Raises
        ------
        Timeout
            From the iterator, if no new value came within ``timeout`` seconds.
        """
        # Read now, not at the first next(): a write that lands between this
        # call and the loop is then yielded, not taken for the starting point.
        deadline_of(timeout)  # a bad timeout fails here, not at the first next()
        return self._watch(self._consistent(), timeout, initial)

    def _watch(self, first: tuple[int, bytes], timeout: float | None,
               initial: bool) -> Iterator[bytes]:
        v, data = first
        if initial:
            yield data
        while True:
            self.wait_for_change(v, timeout=timeout)
            v, data = self._consistent()
            yield data

    # -- introspection --

    def stats(self) -> dict[str, Any]:
        """A snapshot of the board's settings and counters.

        Returns
        -------
        dict
            ``capacity`` (largest value), ``version``, ``length`` (of the
            current value), ``writer_pid`` (a writer holding the lock now, or
            None), ``last_writer_pid``, ``takeovers`` (locks taken from
            writers that died), ``wakes`` (writes that made a futex wake
            system call: at most one per sleep of a watcher) and ``armed``
            (True while a watcher has announced itself and no write has
            woken it since: one sleeps now, or one died asleep).
        """
        mem = self._m()
        version, length = self._consistent(copy=False)
        return {"capacity": self._capacity, "version": version, "length": length,
                "writer_pid": mem.load32(_W_LOCK) or None,
                "last_writer_pid": mem.load32(_W_LAST_PID) or None,
                "takeovers": mem.load64(_W_TAKEOVERS),
                "wakes": mem.load64(_P_WAKES),
                "armed": bool(mem.load32(_P_CHANGED) & 1)}

    def __repr__(self) -> str:
        if self._closed or self._mem is None:
            return f"<shmlink.Board {self._name!r} closed>"
        return f"<shmlink.Board {self._name!r} capacity={self._capacity} version={self.version}>"
