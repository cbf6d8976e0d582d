"""The shared-memory object behind every queue and pipe of :mod:`shmlink.multiprocessing`.

A *channel* is one ``lifetime="auto"`` segment (so the last process to close
or exit removes it, and ``shmlink gc`` after crashes) laid out as::

    data + 0      control block (one page):
                    magic, version, number of rings, ring size
                    + 64  the table lock (robust)
                    + 128 per ring: writer lock, reader lock (robust, own 64-byte lines)
                    + 384 queue words: items (u32 futex word), unfinished tasks (u32 futex word)
                    + 512 the holder table: 2 ends x 48 slots x 32 bytes
                          {pid u32, open u32, pending u32, _ u32, start u64, _ u64}
    data + 4096   ring 0 (struct shmlink_ring), then ring 1 for a duplex pipe

Messages travel as connection frames (``include/shmlink/connection.h``,
built and checked in C): ``MSG`` is a whole message; a message larger than
the ring's largest record goes as a ``REQ`` frame (id 1: an 8-byte total
length, then the first part) followed by ``RESP`` frames (id 1) with the
rest.  Writers hold the ring's writer lock and readers its reader lock for a
whole message, so the parts of two large messages never interleave (the
standard ``multiprocessing.Queue`` holds its ``_wlock``/``_rlock`` the same
way).

**Holders.**  The table counts, per end and per process (PID + start time),
the handles open there (``open``) and the handles pickled there and not yet
unpickled (``pending``).  An end is *alive* while one of its slots has a
count and a live process; a pipe's reader sees ``EOFError`` once the other
end is not alive and its ring is empty.  Pickling adds a pending count in the
pickling process and unpickling moves it to the new holder, so a parent that
closes its copy right after ``Process.start()`` does not end the stream
before the child opened it; a fork moves one count per handle to the child
the same way (``os.register_at_fork``).  A handle pickled and never
unpickled keeps its end alive until the pickling process exits (as the
standard's resource sharer keeps a duplicated descriptor).
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import secrets
import struct
import sys
import threading
import time
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .. import _core
from ..errors import SegmentNotFound
from ..segment import DATA_OFFSET, Segment, _identity, live_lock_holder

_D = DATA_OFFSET
MAGIC = 0x4D504348  # "MPCH"
VERSION = 2  # 2: queue items are chan_put payloads (tagged bytes/str or a pickle)
CONTROL = 4096  # bytes of control block before the first ring

_OFF_MAGIC = _D + 0
_OFF_VERSION = _D + 4
_OFF_NRINGS = _D + 8
_OFF_RING_SIZE = _D + 16
_OFF_TABLE_LOCK = _D + 64
_OFF_RING_LOCKS = _D + 128  # ring r: writer lock at + 128*r, reader lock at + 128*r + 64
_OFF_ITEMS = _D + 384  # u32: items put and not yet taken (a queue's count)
_OFF_UNFINISHED = _D + 448  # u32: JoinableQueue's unfinished tasks
_OFF_TABLE = _D + 512
SLOTS = 48
_SLOT = 32
_END_BYTES = SLOTS * _SLOT
assert _OFF_TABLE + 2 * _END_BYTES <= _D + CONTROL

_EC = _core.LAYOUT["ring"]["data_ec"][0]
_SPACE_EC = _core.LAYOUT["ring"]["space_ec"][0]
_BELLS = _core.LAYOUT["ring"]["data_bells"][0]  # the data event count's doorbell table
_SENT = _core.LAYOUT["ring"]["sent"][0]
_RECEIVED = _core.LAYOUT["ring"]["received"][0]

FRAME_MSG = _core.FRAME_MSG
FRAME_FIRST = _core.FRAME_REQ  # first part of a large message (id 1)
FRAME_PART = _core.FRAME_RESP  # a further part (id 1)
_LEN = struct.Struct("<Q")

#: how often a blocked reader looks whether the other end is still alive (s)
SLICE = 0.05
#: how long a reader waits for the next part of a large message from a live writer (s)
PART_WAIT = 30.0
#: how long a blocked call spins before it sleeps (ns), as Queue(wait="hybrid")
SPIN = 50_000


# -- pickling -------------------------------------------------------------------------------
#
# ``ForkingPickler.dumps`` builds a new dispatch table (a copy of copyreg's plus
# multiprocessing's reducers) for every object: about 3.5 us, twenty times the
# pickling of a small object.  The same table as a live ChainMap, set once on a
# subclass of the C pickler, gives the same bytes.  The usual message (a number, a
# string, a small tuple, list or dict of them) never consults the table: the C
# pickler writes those exact types itself, before any reducer lookup.  For such a
# tree (``_core.plain``) ``pickle.dumps`` gives those bytes too, without a pickler
# kept per thread (a third of the cost for a small tuple).

PROTOCOL = pickle.HIGHEST_PROTOCOL


class _Pickler(pickle.Pickler):
    dispatch_table = collections.ChainMap(ForkingPickler._extra_reducers,  # type: ignore
                                          copyreg.dispatch_table)


class _Scratch(threading.local):
    """Each thread's pickler and its buffer, reused: making a pickler costs more than
    pickling a small tuple with it."""

    def __init__(self) -> None:
        self.fresh()

    def fresh(self) -> None:
        self.buf = io.BytesIO()
        self.pickler: Any = _Pickler(self.buf, PROTOCOL)  # None while in use


_scratch = _Scratch()
#: a pickle larger than this leaves the scratch buffer (handed out without a copy)
_KEEP = 1 << 16


def dumps(obj: Any, _plain: Any = _core.plain, _dumps: Any = pickle.dumps) -> Any:
    """``ForkingPickler.dumps(obj, PROTOCOL)``, without its per-call setup."""
    # A thread that puts into obj between the check and the pickling could slip in an
    # object whose registered reducer is then not used: putting an object while another
    # thread changes it sends an undefined state anyway (the standard queue pickles it
    # later still, in its feeder thread).
    if _plain(obj):
        return _dumps(obj, PROTOCOL)
    s = _scratch
    p = s.pickler
    if p is None:  # a reducer that pickles (re-entry): a pickler of its own
        buf = io.BytesIO()
        _Pickler(buf, PROTOCOL).dump(obj)
        return buf.getbuffer()
    s.pickler = None
    buf = s.buf
    buf.seek(0)
    buf.truncate()
    try:
        p.dump(obj)
    except BaseException:
        s.fresh()
        raise
    p.clear_memo()  # the memo holds what was pickled: let it go now, not at the next dumps
    if buf.tell() <= _KEEP:
        s.pickler = p
        return buf.getvalue()
    s.fresh()  # a large pickle: hand this buffer out whole
    return buf.getbuffer()


loads = pickle.loads


def new_name(kind: str) -> str:
    """A fresh name for an anonymous object: ``mp.<kind>.<pid>.<random>``."""
    return f"mp.{kind}.{os.getpid()}.{secrets.token_hex(6)}"


def _alive(pid: int, start: int) -> bool:
    return pid == os.getpid() or _core.process_alive(pid, start)


class Channel:
    """One process's handle of a channel segment: its rings, locks and holder table.

    Shared by every Python object of this process that uses the channel
    (two ends of one pipe, a queue's reader and writer), and reference
    counted by them (:meth:`retain` / :meth:`release`).
    """

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.name = seg.name
        self.refs = 0
        self._attach()

    def _attach(self) -> None:
        seg = self.seg
        mem = self.mem = seg._memory
        if mem.load32(_OFF_MAGIC) != MAGIC or mem.load32(_OFF_VERSION) != VERSION:
            from ..errors import IncompatibleSegment
            raise IncompatibleSegment(f"segment {self.name!r} is not a shmlink.multiprocessing "
                                      "object (or one of another version)")
        n = mem.load32(_OFF_NRINGS)
        size = mem.load64(_OFF_RING_SIZE)
        self.rings = [_core.Ring(seg._mm, _D + CONTROL + i * size, size) for i in range(n)]
        for r in self.rings:
            r.label = self.name
            r.spin = SPIN  # how Queue.put's fast path waits for room (chan_put)
        self.ring_size = size

    # -- making and opening --

    @classmethod
    def create(cls, kind: str, nrings: int, capacity: int, max_message: int = 0) -> "Channel":
        ring_size = _core.RING_HEADER + ((capacity + 63) & ~63)
        size = CONTROL + nrings * ring_size

        def init(mm: Any) -> None:
            struct.pack_into("<IIIIQ", mm, _D, MAGIC, VERSION, nrings, 0, ring_size)
            for i in range(nrings):
                _core.ring_init(mm, _D + CONTROL + i * ring_size, ring_size, max_message)

        seg = Segment._create_kind(new_name(kind), size, kind=1, lifetime="auto", init=init)
        return _register(cls(seg))

    @classmethod
    def open(cls, name: str) -> "Channel":
        with _lock:
            ch = _channels.get(name)
            if ch is not None and not ch.seg.closed:
                return ch
        seg = Segment.open(name)
        return _register(cls(seg))

    def retain(self) -> None:
        with _lock:
            self.refs += 1

    def release(self) -> None:
        if sys.is_finalizing():
            # __del__ at interpreter teardown: a daemon thread (a feeder, a doorbell) may
            # be frozen holding the segment registry's lock; shmlink's atexit hook has
            # already released this process's segments
            return
        with _lock:
            self.refs -= 1
            if self.refs > 0 or self.name in _keep:
                return
            _channels.pop(self.name, None)
        for r in self.rings:
            r.close()
        self.seg.close()

    # -- locks --

    def lock(self, off: int, deadline: float | None) -> bool:
        return self.mem.lock_acquire(off, deadline, SPIN) is not None

    def unlock(self, off: int) -> None:
        self.mem.lock_release(off)

    @staticmethod
    def writer_lock(ring: int) -> int:
        return _OFF_RING_LOCKS + 128 * ring

    @staticmethod
    def reader_lock(ring: int) -> int:
        return _OFF_RING_LOCKS + 128 * ring + 64

    def wake_readers(self, ring: int) -> None:
        """Wake whoever waits for data on ``ring`` (a holder went away)."""
        off = _D + CONTROL + ring * self.ring_size
        self.mem.ec_notify(off + _EC, True, off + _BELLS)  # descriptor waiters too (EOF)

    def wake_writers(self, ring: int) -> None:
        self.mem.ec_notify(_D + CONTROL + ring * self.ring_size + _SPACE_EC, True)

    # -- holders --

    def _slot(self, end: int, pid: int, start: int, claim: bool) -> int | None:
        mem = self.mem
        base = _OFF_TABLE + end * _END_BYTES
        free = None
        for i in range(SLOTS):
            off = base + i * _SLOT
            p = mem.load32(off)
            if p == pid and mem.load64(off + 16) == start:
                return off
            if claim and free is None:
                if p == 0 or not _alive(p, mem.load64(off + 16)):
                    free = off
        if free is not None:
            mem.store32(free + 4, 0)
            mem.store32(free + 8, 0)
            mem.store64(free + 16, start)
            mem.store32(free, pid)
        return free

    def adjust(self, end: int, field: int, delta: int, who: tuple[int, int] | None = None) -> None:
        """Add ``delta`` to ``who``'s (default: this process's) open (0) or pending (1) count."""
        pid, start = who or _identity()
        mem = self.mem
        if not self.lock(_OFF_TABLE_LOCK, time.monotonic() + 5.0):
            raise TimeoutError(f"{self.name!r}: holder table lock not free within 5 s")
        try:
            off = self._slot(end, pid, start, claim=delta > 0)
            if off is None:
                return
            word = off + 4 + 4 * field
            v = mem.load32(word) + delta
            mem.store32(word, max(0, v))
            if mem.load32(off + 4) == 0 and mem.load32(off + 8) == 0:
                mem.store32(off, 0)
        finally:
            self.unlock(_OFF_TABLE_LOCK)

    def end_alive(self, end: int) -> bool:
        mem = self.mem
        base = _OFF_TABLE + end * _END_BYTES
        for i in range(SLOTS):
            off = base + i * _SLOT
            p = mem.load32(off)
            if p and (mem.load32(off + 4) or mem.load32(off + 8)) and _alive(p, mem.load64(off + 16)):
                return True
        return False

    def reserve(self, end: int) -> tuple[int, int]:
        """A pending count for a pickled handle of ``end``; kept mapped until adopted."""
        self.adjust(end, 1, +1)
        with _lock:
            _keep[self.name] = self
        return _identity()

    def adopt(self, end: int, who: tuple[int, int]) -> None:
        """Take a handle of ``end`` over from a pickle made by ``who``."""
        self.adjust(end, 0, +1)
        self.adjust(end, 1, -1, who)

    def forget_pending(self) -> None:
        """Drop this process's pending counts: what it pickled will never be unpickled.

        For a pickler that knows every process it pickled handles for is gone
        (the executor, once its workers are joined): a worker killed before it
        unpickled its queues would otherwise keep them until this process exits.
        """
        for end in (0, 1):
            self.adjust(end, 1, -0x7FFFFFFF)

    def _mine_pending(self) -> bool:
        pid, start = _identity()
        mem = self.mem
        for end in (0, 1):
            off = self._slot(end, pid, start, claim=False)
            if off is not None and mem.load32(off + 8):
                return True
        return False

    # -- sending and receiving whole messages --

    def send(self, ring: int, data: Any, deadline: float | None,
             stop: threading.Event | None = None) -> bool:
        """Send one message (any size) on ``ring``; False if the deadline passed first,
        or ``stop`` was set while it waited for room (a large message may then be left
        half sent: readers get CorruptSegment)."""
        r = self.rings[ring]
        wl = self.writer_lock(ring)
        if not self.lock(wl, deadline):
            return False
        try:
            if len(data) + 8 <= r.max_message:
                if r.try_send_frame(FRAME_MSG, 0, data):
                    return True
                return self._send_frame(r, FRAME_MSG, 0, data, deadline, SPIN, stop)
            return self._send_parts(r, data, deadline, stop)
        finally:
            self.unlock(wl)

    @staticmethod
    def _send_frame(r: Any, kind: int, ident: int, data: Any, deadline: float | None,
                    spin: int, stop: threading.Event | None) -> bool:
        if stop is None:
            return bool(r.send_frame(kind, ident, data, deadline, spin))
        while True:  # in slices, looking at ``stop`` between them
            end = time.monotonic() + SLICE
            if deadline is not None and deadline < end:
                end = deadline
            if r.send_frame(kind, ident, data, end, spin):
                return True
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False

    def try_send(self, ring: int, data: Any) -> bool:
        """Send one message that fits a record if the ring has room and no writer is busy."""
        wl = self.writer_lock(ring)
        if self.mem.lock_try(wl) is None:
            return False
        try:
            return bool(self.rings[ring].try_send_frame(FRAME_MSG, 0, data))
        finally:
            self.unlock(wl)

    def _send_parts(self, r: Any, data: Any, deadline: float | None,
                    stop: threading.Event | None) -> bool:
        mv = memoryview(data).cast("B")
        step = min(r.max_message - 8, r.capacity // 4)
        first = _LEN.pack(len(mv)) + bytes(mv[:step - 8])
        if not self._send_frame(r, FRAME_FIRST, 1, first, deadline, 0, stop):
            return False
        pos = step - 8
        while pos < len(mv):
            # once the first part is in, the rest goes in whatever the deadline
            if not self._send_frame(r, FRAME_PART, 1, mv[pos:pos + step], None, 0, stop):
                return False
            pos += step
        return True

    def recv(self, ring: int, deadline: float | None, alive: Any = None) -> bytes | None:
        """Take one whole message from ``ring``; None at the deadline.

        ``alive``: a callable telling whether a writer may still send; when it
        says no and the ring is empty, raises EOFError.
        """
        r = self.rings[ring]
        rl = self.reader_lock(ring)
        if not self.lock(rl, deadline):
            return None
        try:
            f = r.try_recv_frame()
            while f is None:
                if alive is not None:
                    end = time.monotonic() + SLICE
                    if deadline is not None and deadline < end:
                        end = deadline
                else:
                    end = deadline
                f = r.recv_frame(end, SPIN)
                if f is None:
                    if alive is not None and not alive():
                        f = r.try_recv_frame()
                        if f is None:
                            raise EOFError("the other end of the pipe was closed")
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
            if f[0] == FRAME_MSG:
                return f[2]  # type: ignore[no-any-return]
            return self._recv_parts(ring, r, f)
        finally:
            self.unlock(rl)

    def _recv_parts(self, ring: int, r: Any, f: tuple[int, int, bytes]) -> bytes:
        """The rest of a large message whose first part is ``f``.

        Its writer holds the ring's writer lock until the last part is in: once the
        lock is free or its holder dead and no part came, the message ended half-way
        (checked every SLICE); a live writer that sends nothing for PART_WAIT seconds
        is given up on too.
        """
        total = _LEN.unpack_from(f[2])[0]
        out = bytearray(total)
        mv = memoryview(out)
        got = len(f[2]) - 8
        mv[:got] = f[2][8:]
        wl = self.writer_lock(ring)
        give_up = time.monotonic() + PART_WAIT
        while got < total:
            g = r.recv_frame(time.monotonic() + SLICE, 0)
            if g is None:
                if live_lock_holder(self.mem, wl) and time.monotonic() < give_up:
                    continue
                g = r.try_recv_frame()  # the last part may have come just before the unlock
            if g is None or g[0] != FRAME_PART:
                from ..errors import CorruptSegment
                raise CorruptSegment(f"{self.name!r}: a large message ended half-way "
                                     "(its writer died or gave up while sending it)")
            n = len(g[2])
            mv[got:got + n] = g[2]
            got += n
            give_up = time.monotonic() + PART_WAIT
        return bytes(out)

    def has_data(self, ring: int) -> bool:
        off = _D + CONTROL + ring * self.ring_size
        mem = self.mem
        return bool(mem.load64(off + _SENT) != mem.load64(off + _RECEIVED))

    def peek_wait(self, ring: int, deadline: float | None) -> bool:
        """Wait until ``ring`` holds a message, without taking it."""
        r = self.rings[ring]
        if self.has_data(ring):
            return True
        got = r.view_begin(deadline, 0)
        if got is None:
            return False
        r.view_end(False)
        return True

    # -- the queue counters --

    def items(self) -> int:
        return int(self.mem.load32(_OFF_ITEMS))


_lock = threading.RLock()  # re-entrant: a __del__ may run inside it (gc)
_channels: "weakref.WeakValueDictionary[str, Channel]" = weakref.WeakValueDictionary()
_keep: dict[str, Channel] = {}  # channels with handles pickled here and not yet unpickled


def _register(ch: Channel) -> Channel:
    with _lock:
        old = _channels.get(ch.name)
        if old is not None and not old.seg.closed:
            ch.seg.close()
            return old
        _channels[ch.name] = ch
    return ch


def sweep() -> None:
    """Drop this process's hold on channels whose pickled handles were all unpickled."""
    with _lock:
        kept = list(_keep.values())
    for ch in kept:
        try:
            done = not ch._mine_pending()
        except Exception:
            done = True
        if done:
            with _lock:
                _keep.pop(ch.name, None)
                if ch.refs > 0:
                    continue
            ch.refs += 1
            ch.release()


def open_channel(name: str) -> Channel:
    try:
        return Channel.open(name)
    except SegmentNotFound:
        raise FileNotFoundError(
            f"shmlink.multiprocessing object {name!r} is gone: every process that held it "
            "closed it before this one opened it") from None


# -- fork: the child's handles are its own ---------------------------------------------

#: objects with handles to move on fork: each has _fork_reserve() and _fork_adopt(parent)
_forkables: "weakref.WeakSet[Any]" = weakref.WeakSet()
_fork_parent: list[tuple[int, int]] = []


def _before_fork() -> None:
    _fork_parent[:] = [_identity()]
    for obj in list(_forkables):
        try:
            obj._fork_reserve()
        except Exception:
            pass


def _after_fork_child() -> None:
    global _lock
    # another thread of the parent may have held the lock at fork(): it is not here to
    # release it, so the child starts with a fresh one (only this thread runs now)
    _lock = threading.RLock()
    parent = _fork_parent[0] if _fork_parent else None
    with _lock:
        chans = list(_channels.values())
    for ch in chans:
        try:
            if not ch.seg.closed:
                ch._attach()  # fresh C handles: the parent's threads are not here
        except Exception:
            pass
    _keep.clear()
    if parent is None:
        return
    for obj in list(_forkables):
        try:
            obj._fork_adopt(parent)
        except Exception:
            pass


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)


# -- exit of a multiprocessing child --------------------------------------------------------
#
# A child started by multiprocessing with fork or forkserver leaves through
# os._exit(): atexit never runs there, so shmlink's exit hook would not free
# the child's participant slots, and an "auto" channel whose last user was such
# a child would stay in /dev/shm until `shmlink gc`.  multiprocessing runs its
# own finalizers before that os._exit(); the hook runs as the last of them.

class _AfterFork:
    pass


_after_fork_token = _AfterFork()


#: callables to run at exit before the segments are released (connection: unaccepted clients)
before_exit: list[Any] = []


def _child_exit() -> None:
    from .. import segment

    for f in before_exit:
        try:
            f()
        except Exception:
            pass
    segment._release_at_exit()


def _register_exit_hook(_token: object) -> None:
    from multiprocessing import util

    util.Finalize(None, _child_exit, exitpriority=-100)


def _install() -> None:
    from multiprocessing import util

    util.register_after_fork(_after_fork_token, _register_exit_hook)


_install()
