"""Child-process bodies for the Queue tests, and the kill harness they share
with ``scripts/soak_queue.py``.

Spawned children import their targets from this module by name.  Every child
takes *names* (never a mapped object), opens what it needs itself, reports
through shared memory it opens by name (or a spawn-context queue of plain
values), and exits by itself when the parent that started it goes away.

Test messages carry their identity and a checksum::

    <u32 producer id> <u32 seq> <u16 body length> <body> <u32 crc32 of all before>

The body is derived from (producer id, seq), so a consumer checks every byte,
not only the checksum.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from typing import Any, Callable

import shmlink
from shmlink import _core
from support import python_env

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

_HEAD = struct.Struct("<IIH")
_CRC = struct.Struct("<I")
OVERHEAD = _HEAD.size + _CRC.size  # 14 bytes around the body
_BLOCK = bytes((i * 167 + 13) & 0xFF for i in range(8192))


def body_len(pid: int, seq: int, max_body: int) -> int:
    return (pid * 31 + seq * 17) % (max_body + 1)


def make_message(pid: int, seq: int, max_body: int = 40) -> bytes:
    """The message ``seq`` of producer ``pid``: header, derived body, crc32."""
    n = body_len(pid, seq, max_body)
    start = (pid * 7 + seq * 13) & 4095
    head = _HEAD.pack(pid, seq, n) + _BLOCK[start:start + n]
    return head + _CRC.pack(zlib.crc32(head))


def parse_message(msg: Any) -> tuple[int, int]:
    """(producer id, seq) of a test message; ValueError if any byte is wrong."""
    msg = bytes(msg)
    if len(msg) < OVERHEAD:
        raise ValueError(f"message of {len(msg)} bytes is shorter than the header")
    pid, seq, n = _HEAD.unpack_from(msg)
    if len(msg) != OVERHEAD + n:
        raise ValueError(f"message length {len(msg)} != {OVERHEAD + n} announced")
    (crc,) = _CRC.unpack_from(msg, len(msg) - 4)
    if zlib.crc32(msg[:-4]) != crc:
        raise ValueError(f"bad checksum in message ({pid}, {seq})")
    start = (pid * 7 + seq * 13) & 4095
    if msg[_HEAD.size:_HEAD.size + n] != _BLOCK[start:start + n]:
        raise ValueError(f"body of message ({pid}, {seq}) differs from what was sent")
    return pid, seq


def random_payload(rng: random.Random, max_size: int) -> bytes:
    """Random bytes of a random length in 0..max_size (skewed to small sizes)."""
    r = rng.random()
    if r < 0.05:
        n = max_size
    elif r < 0.10:
        n = 0
    elif r < 0.55:
        n = rng.randint(0, min(max_size, 24))
    else:
        n = rng.randint(0, max_size)
    return rng.randbytes(n)


# ---------------------------------------------------------------------------
# Shared control words: a Segment of u64 slots, accessed atomically
# ---------------------------------------------------------------------------


class Slots:
    """A Segment used as an array of atomic u64 words (plus raw byte regions)."""

    def __init__(self, seg: shmlink.Segment) -> None:
        self.seg = seg
        self._view = seg.view()
        self.mem = _core.Memory(self._view)

    @classmethod
    def create(cls, name: str, nbytes: int) -> "Slots":
        return cls(shmlink.Segment.create(name, max(8, nbytes)))

    @classmethod
    def open(cls, name: str) -> "Slots":
        return cls(shmlink.Segment.open(name))

    def get(self, i: int) -> int:
        return self.mem.load64(8 * i)

    def set(self, i: int, value: int) -> None:
        self.mem.store64(8 * i, value)

    def add(self, i: int, delta: int = 1) -> int:
        return self.mem.add64(8 * i, delta)

    def region(self, offset: int, length: int) -> memoryview:
        return self._view[offset:offset + length]

    def close(self) -> None:
        self.mem.release()
        self._view.release()
        self.seg.close()


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


# ---------------------------------------------------------------------------
# Children: generic
# ---------------------------------------------------------------------------


def echo_lengths(qname: str, replyname: str, count: int, wait: str = "hybrid") -> None:
    """Receive ``count`` messages; answer each with (length, crc32) on another queue."""
    with shmlink.Queue.open(qname, wait=wait) as q, shmlink.Queue.open(replyname, wait=wait) as r:
        for _ in range(count):
            m = q.recv(timeout=30)
            r.send(struct.pack("<QI", len(m), zlib.crc32(m)), timeout=30)


def ping_pong_server(qname: str, replyname: str, count: int, wait: str) -> None:
    """Answer ``count`` messages with the same bytes reversed."""
    with shmlink.Queue.open(qname, wait=wait) as q, shmlink.Queue.open(replyname, wait=wait) as r:
        for _ in range(count):
            r.send(q.recv(timeout=30)[::-1], timeout=30)


def random_producer(qname: str, seed: int, count: int, max_size: int,
                    wait: str = "hybrid") -> None:
    """Send ``count`` random-length messages drawn from ``seed``."""
    rng = random.Random(seed)
    with shmlink.Queue.open(qname, wait=wait) as q:
        for _ in range(count):
            q.send(random_payload(rng, max_size), timeout=30)


def counting_producer(qname: str, ctlname: str, count: int, size: int) -> None:
    """Send ``count`` messages of ``size`` bytes, storing how many were sent in slot 0."""
    ctl = Slots.open(ctlname)
    try:
        with shmlink.Queue.open(qname) as q:
            for i in range(count):
                q.send(i.to_bytes(8, "little").ljust(size, b"."), timeout=30)
                ctl.set(0, i + 1)
    finally:
        ctl.close()


def flood_producer(qname: str, pid: int) -> None:
    """Send test messages as fast as room allows until killed (or orphaned)."""
    parent = os.getppid()
    with shmlink.Queue.open(qname) as q:
        seq = 0
        end = time.monotonic() + 60
        while time.monotonic() < end and not _orphaned(parent):
            if q.try_send(make_message(pid, seq)):
                seq += 1
            else:
                time.sleep(0.001)


def view_holder(qname: str, ctlname: str, hold_s: float, consume: bool = True) -> None:
    """Open a zero-copy view; publish its bytes and set slot 0; hold it ``hold_s`` seconds.

    Region at byte 64 of the control segment receives ``<u32 length><bytes>``.
    Slot 1 is set just *before* the view is released (so whoever was blocked
    by it sees slot 1 set once it gets through).
    """
    ctl = Slots.open(ctlname)
    try:
        with shmlink.Queue.open(qname) as q:
            mv_holder = q.recv_view(timeout=30)
            with mv_holder as mv:
                data = bytes(mv)
                ctl.region(64, 4 + len(data))[:] = struct.pack("<I", len(data)) + data
                ctl.set(0, 1)
                deadline = time.monotonic() + hold_s
                while time.monotonic() < deadline:
                    time.sleep(0.005)
                ctl.set(1, 1)
                if not consume:
                    raise _LeaveIt()
    except _LeaveIt:
        pass
    finally:
        ctl.close()


class _LeaveIt(Exception):
    pass


def lock_holder(qname: str, ctlname: str, which: str) -> None:
    """Take the queue's producer or consumer lock for real, say so, and sleep until killed."""
    q = shmlink.Queue.open(qname)
    ctl = Slots.open(ctlname)
    off = _core.DATA_OFFSET + (64 if which == "prod" else 128)
    rc = q._memory.lock_acquire(off, time.monotonic() + 10)
    ctl.set(0, 1 if rc == 0 else 2)
    parent = os.getppid()
    end = time.monotonic() + 60
    while time.monotonic() < end and not _orphaned(parent):
        time.sleep(0.05)


RING_CHECK = 0x5A17C0DE  # SHMLINK_RECORD_CHECK


def die_at_commit_point(qname: str, ctlname: str, step: str) -> None:
    """Do one side of the ring protocol by hand, up to ``step``, then wait to be killed.

    Speaks ``include/shmlink.h`` directly (as a C peer would), holding the
    real robust lock:

    * ``"prod_written"``: producer lock taken, a record "PHANTOM!" written at
      tail, tail not yet published;
    * ``"prod_published"``: the same, tail published (and consumers woken),
      ``sent`` not yet counted (a producer killed between the two stores of
      ``shmlink_ring_commit``, which publishes first and counts second);
    * ``"prod_counted"``: the same, and ``sent`` counted, lock still held;
    * ``"cons_read"``: consumer lock taken, the head record read, head not yet
      moved (its payload goes to byte 64 of the control segment);
    * ``"cons_counted"``: the same, and ``received`` counted, head not moved;
    * ``"cons_published"``: the same, head moved past it, lock still held.
    """
    q = shmlink.Queue.open(qname)
    ctl = Slots.open(ctlname)
    mem, mm, cap = q._memory, q._mm, q.capacity
    ring = _core.DATA_OFFSET
    data = ring + _core.RING_HEADER
    if step.startswith("prod"):
        assert mem.lock_acquire(ring + 64, time.monotonic() + 10) == 0
        tail = mem.load64(ring + 80)
        payload = b"PHANTOM!"
        off = data + tail % cap
        mm[off:off + 8] = struct.pack("<II", len(payload), len(payload) ^ RING_CHECK)
        mm[off + 8:off + 16] = payload
        if step in ("prod_counted", "prod_published"):
            mem.store64(ring + 80, tail + 16)  # tail: published
            mem.add32(ring + 192, 1)  # data_ec.seq: wake consumers
            mem.wake32(ring + 192)
        if step == "prod_counted":
            mem.store64(ring + 88, mem.load64(ring + 88) + 1)  # sent
    else:
        assert mem.lock_acquire(ring + 128, time.monotonic() + 10) == 0
        head = mem.load64(ring + 144)
        n, check = struct.unpack_from("<II", mm, data + head % cap)
        assert check == n ^ RING_CHECK and n < 64
        body = bytes(mm[data + head % cap + 8:data + head % cap + 8 + n])
        ctl.region(64, 1 + n)[:] = bytes([n]) + body
        if step in ("cons_counted", "cons_published"):
            mem.store64(ring + 152, mem.load64(ring + 152) + 1)  # received
        if step == "cons_published":
            mem.store64(ring + 144, head + 8 + ((n + 7) & ~7))  # head: consumed
            mem.add32(ring + 256, 1)  # space_ec.seq: wake producers
            mem.wake32(ring + 256)
    ctl.set(0, 1)
    parent = os.getppid()
    end = time.monotonic() + 60
    while time.monotonic() < end and not _orphaned(parent):
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# Children: the many-producer many-consumer exactly-once test
# ---------------------------------------------------------------------------

# control segment of the fifo test: slot 0 = "producers are done"
_RESULT = struct.Struct("<QQQQ")  # received, bad, fifo violations, local duplicates


def fifo_producer(qname: str, pid: int, count: int, batch: int, max_body: int) -> None:
    """Send messages (pid, 0..count-1), singly (batch 1) or with send_many."""
    with shmlink.Queue.open(qname) as q:
        if batch <= 1:
            for seq in range(count):
                q.send(make_message(pid, seq, max_body), timeout=60)
        else:
            for first in range(0, count, batch):
                q.send_many([make_message(pid, s, max_body)
                             for s in range(first, min(count, first + batch))], timeout=60)


def fifo_consumer(qname: str, ctlname: str, idx: int, nprod: int, count: int, mode: str,
                  batch: int = 64) -> None:
    """Receive until the producers are done and the queue is empty; record what came.

    Writes, at region ``idx`` of the control segment (after its first page),
    ``_RESULT`` followed by a bitmap of ``nprod * count`` bytes (1 = received).
    """
    ctl = Slots.open(ctlname)
    seen = bytearray(nprod * count)
    last = [-1] * nprod
    received = bad = fifo = dups = 0
    buf = bytearray(1 << 16)
    try:
        with shmlink.Queue.open(qname) as q:
            while True:
                done = ctl.get(0)
                try:
                    if mode == "many":
                        msgs = q.recv_many(batch, timeout=0.05)
                    elif mode == "recv":
                        msgs = [q.recv(timeout=0.05)]
                    elif mode == "into":
                        n = q.recv_into(buf, timeout=0.05)
                        msgs = [bytes(buf[:n])]
                    elif mode == "view":
                        with q.recv_view(timeout=0.05) as mv:
                            msgs = [bytes(mv)]
                    elif mode == "try":
                        m = q.try_recv()
                        if m is None:
                            if done:
                                break
                            time.sleep(0.0005)
                            continue
                        msgs = [m]
                    else:
                        raise ValueError(mode)
                except shmlink.Timeout:
                    if done:
                        break
                    continue
                for m in msgs:
                    try:
                        pid, seq = parse_message(m)
                    except ValueError:
                        bad += 1
                        continue
                    if not (0 <= pid < nprod and 0 <= seq < count):
                        bad += 1
                        continue
                    received += 1
                    if seq <= last[pid]:
                        fifo += 1
                    last[pid] = seq
                    i = pid * count + seq
                    if seen[i]:
                        dups += 1
                    seen[i] = 1
        base = 4096 + idx * (_RESULT.size + len(seen))
        ctl.region(base, _RESULT.size)[:] = _RESULT.pack(received, bad, fifo, dups)
        ctl.region(base + _RESULT.size, len(seen))[:] = seen
    finally:
        ctl.close()


def fifo_control_size(nprod: int, ncons: int, count: int) -> int:
    return 4096 + ncons * (_RESULT.size + nprod * count)


def fifo_results(ctl: Slots, ncons: int, nprod: int,
                 count: int) -> list[tuple[int, int, int, int, bytes]]:
    out = []
    for idx in range(ncons):
        base = 4096 + idx * (_RESULT.size + nprod * count)
        r = _RESULT.unpack(bytes(ctl.region(base, _RESULT.size)))
        out.append((*r, bytes(ctl.region(base + _RESULT.size, nprod * count))))
    return out


# ---------------------------------------------------------------------------
# Children: the kill test
# ---------------------------------------------------------------------------
#
# Control segment ("ctl") slots:
#   0            done: survivors finish, the survivor consumer drains and reports
#   1            survivor consumer: messages received so far (progress)
#   2            survivor consumer: messages that failed their checksum
#   3            victim consumers: viewed messages that failed their checksum
#   4            drain: the producers are gone, the survivor consumer empties the queue
#   16 + p       producer p: number of messages whose send (or send_many) returned
#   R + v        victim v (in start order): 1 once it has opened everything
#   R + V + v    victim v: set by the parent when it is that victim's turn to run
# Victim consumers' logs live in a second segment ("log"): per victim, a u64
# count then LOG_SLOTS message slots of LOG_SLOT bytes.  A victim fills slot
# `count`, then bumps count: slot `count` itself is the one message it may
# have taken (or only looked at) when it died.

LOG_SLOT = 64
LOG_SLOTS = 2048
LOG_REGION = 8 + LOG_SLOT * LOG_SLOTS
_PROD_LOCK = _core.DATA_OFFSET + 64  # struct shmlink_ring.prod_lock, in the file
_CONS_LOCK = _core.DATA_OFFSET + 128
PRODUCER_MODES = ("send", "try_send", "send_many")
CONSUMER_MODES = ("into", "view", "into", "recv")
MANY_BATCH = 16


def _await_go(ctl: Slots, ready_slot: int, go_slot: int, parent: int) -> bool:
    """Say "ready", then wait for the parent's "go"; False if told to stop instead."""
    if ready_slot < 0:
        return True
    ctl.set(ready_slot, 1)
    while not ctl.get(go_slot):
        if ctl.get(0) or _orphaned(parent):
            return False
        time.sleep(0.0005)
    return True


def acked_producer(qname: str, ctlname: str, pid: int, slot: int, mode: str,
                   max_body: int, throttle: int = 0, ready_slot: int = -1,
                   go_slot: int = -1) -> None:
    """Send (pid, 0, 1, ...) until told to stop; after each send returns, record it.

    With ``ready_slot``/``go_slot``: open everything, say ready, wait for go
    (so a victim is started ahead but only runs when its turn comes).
    ``throttle``: sleep a millisecond every ``throttle`` messages.  Exit code 3
    if the queue stayed full for 30 s (wedged).
    """
    parent = os.getppid()
    ctl = Slots.open(ctlname)
    q = shmlink.Queue.open(qname, wait="block")  # no spinning: several may wait at once
    seq = 0
    try:
        if not _await_go(ctl, ready_slot, go_slot, parent):
            return
        while not ctl.get(0):
            if mode == "send_many":
                q.send_many([make_message(pid, s, max_body) for s in range(seq, seq + MANY_BATCH)],
                            timeout=30)
                seq += MANY_BATCH
            elif mode == "try_send":
                if not q.try_send(make_message(pid, seq, max_body)):
                    time.sleep(0)
                    continue
                seq += 1
            else:
                q.send(make_message(pid, seq, max_body), timeout=30)
                seq += 1
            ctl.set(slot, seq)
            if throttle and seq % throttle == 0:
                time.sleep(0.001)
                if _orphaned(parent):
                    break
            elif seq % 512 == 0 and _orphaned(parent):
                break
    except shmlink.Timeout:
        os._exit(3)
    finally:
        q.close()
        ctl.close()


def logging_consumer(qname: str, ctlname: str, logname: str, victim: int, ready_slot: int,
                     go_slot: int, mode: str) -> None:
    """A consumer that is going to be killed: log every message durably, in order."""
    parent = os.getppid()
    ctl = Slots.open(ctlname)
    log = Slots.open(logname)
    q = shmlink.Queue.open(qname)
    base = victim * LOG_REGION
    count = 0
    try:
        if not _await_go(ctl, ready_slot, go_slot, parent):
            return
        while count < LOG_SLOTS and not ctl.get(0):
            slot = log.region(base + 8 + count * LOG_SLOT, LOG_SLOT)
            try:
                if mode == "into":
                    q.recv_into(slot, timeout=0.05)
                elif mode == "view":
                    with q.recv_view(timeout=0.05) as mv:
                        # process it in place, taking a while (the consumer lock
                        # is held meanwhile: a kill often lands here)
                        try:
                            parse_message(mv)
                        except ValueError:
                            ctl.add(3)
                        slot[:len(mv)] = mv
                        time.sleep(0.0003)
                else:
                    m = q.recv(timeout=0.05)
                    slot[:len(m)] = m
            except shmlink.Timeout:
                if _orphaned(parent):
                    break
                continue
            finally:
                slot.release()
            count += 1
            log.set(base // 8, count)
        # log full: idle until killed or told to stop
        while not ctl.get(0) and not _orphaned(parent):
            time.sleep(0.01)
    finally:
        q.close()
        log.close()
        ctl.close()


def summary_consumer(qname: str, ctlname: str, results: Any, batch: int) -> None:
    """The surviving consumer: receive until told to drain (slot 4) and the queue is
    empty; report per-producer seqs."""
    ctl = Slots.open(ctlname)
    got: dict[int, list[int]] = {}
    bad = 0
    n = 0
    try:
        with shmlink.Queue.open(qname) as q:
            while True:
                done = ctl.get(4)
                try:
                    msgs = q.recv_many(batch, timeout=0.05) if batch > 1 else [q.recv(timeout=0.05)]
                except shmlink.Timeout:
                    if done:
                        break
                    continue
                for m in msgs:
                    try:
                        pid, seq = parse_message(m)
                    except ValueError:
                        bad += 1
                        ctl.set(2, bad)
                        continue
                    got.setdefault(pid, []).append(seq)
                n += len(msgs)
                ctl.set(1, n)
        results.put(pickle.dumps((got, bad)))
    finally:
        ctl.close()


class Child:
    """A worker run as ``python -c`` with the Process surface that ``join_all``
    and ``kill`` use (pid, is_alive, join, exitcode, kill).

    The kill test starts hundreds of short-lived victims: under the ``pytest``
    console script every spawn child re-imports pytest (~0.4 s of CPU), a
    plain interpreter does not.  Arguments travel as JSON.
    """

    _CODE = "from workers.queue import _child_main; _child_main()"

    def __init__(self, target: Callable[..., Any], args: tuple = ()) -> None:
        self._argv = [sys.executable, "-c", self._CODE, target.__name__, json.dumps(list(args))]
        self._popen: subprocess.Popen | None = None

    def start(self) -> None:
        self._popen = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, env=python_env())

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()


def _child_main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    if name not in _CHILD_TARGETS:
        raise SystemExit(f"workers.queue: no child target {name!r}")
    globals()[name](*args)


_CHILD_TARGETS = {"acked_producer", "logging_consumer", "flood_producer"}


@dataclasses.dataclass
class Harness:
    """How the kill test starts, waits for and kills processes (the suite passes
    its conftest helpers; the soak script uses these defaults)."""

    ctx: Any
    wait_for: Callable[..., Any]
    kill: Callable[[Any], None]
    join_all: Callable[..., None]
    log: Callable[[str], None] = lambda s: None


def _default_wait_for(predicate, timeout=10.0, interval=0.005, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _default_kill(proc, sig=signal.SIGKILL):
    os.kill(proc.pid, sig)
    proc.join(10)


def _default_join_all(procs, timeout=60.0):
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    assert not hung, f"{len(hung)} child process(es) hung past {timeout} s"
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    assert not bad, f"child process(es) failed with exit codes {bad}"


def default_harness(ctx: Any, log: Callable[[str], None] = print) -> Harness:
    return Harness(ctx, _default_wait_for, _default_kill, _default_join_all, log)


@dataclasses.dataclass
class KillReport:
    producer_kills: int = 0
    consumer_kills: int = 0
    messages: int = 0
    maybe_lost_unlogged: int = 0
    lock_held_kills: int = 0
    aimed: int = 0
    aimed_caught: int = 0
    max_takeover_s: float = 0.0
    drain_s: float = 0.0
    seconds: float = 0.0


def run_kill_test(h: Harness, qname: str, ctlname: str, logname: str, *,
                  producer_kills: int, consumer_kills: int, seed: int,
                  capacity: int = 2048, max_body: int = 40, in_flight: int = 3,
                  max_delay: float = 0.015, progress_every: int = 10,
                  progress_timeout: float = 5.0, drain_bound: float = 5.0,
                  takeover_bound: float = 2.0, lock_aim: float = 0.5) -> KillReport:
    """SIGKILL producers and consumers of one queue at random moments; check the guarantees.

    One producer and one consumer survive throughout (the producer throttled
    to a few thousand messages a second).  Victims are started ahead
    (``in_flight`` alive at once) so their start-up overlaps, but each runs
    only when its turn comes, and is killed a random 0..``max_delay`` seconds
    after it became active or, with probability ``lock_aim``, at a moment it is
    caught holding the queue's producer (consumer) lock.  Raises
    AssertionError on any violation:

    * survivors stop making progress for ``progress_timeout`` s after kills;
    * a received message fails its checksum (torn or corrupted);
    * a message whose send returned is never received;
    * a message is received twice, or a producer's messages out of order;
    * a message that was never sent arrives;
    * the final drain takes more than ``drain_bound`` s;
    * a lock held by a killed victim is not taken over within ``takeover_bound`` s.
    """
    t_start = time.monotonic()
    rng = random.Random(seed)
    nprod = 1 + producer_kills
    ncons_victims = consumer_kills
    nvictims = producer_kills + consumer_kills
    ready0 = 16 + nprod
    go0 = ready0 + nvictims
    q = shmlink.Queue.create(qname, capacity, max_message_size=OVERHEAD + max_body)
    ctl = Slots.create(ctlname, 8 * (go0 + nvictims + 1))
    log = Slots.create(logname, LOG_REGION * max(1, ncons_victims))
    results = h.ctx.Queue()
    report = KillReport()
    survivors = []
    victims: list[tuple[Any, str, int, int]] = []  # (process, kind, index, v), oldest first
    try:
        survivors = [
            h.ctx.Process(target=acked_producer,
                          args=(qname, ctlname, 0, 16, "send", max_body, 8), daemon=True),
            h.ctx.Process(target=summary_consumer, args=(qname, ctlname, results, 32),
                          daemon=True),
        ]
        for p in survivors:
            p.start()
        h.wait_for(lambda: ctl.get(16) > 0 and ctl.get(1) > 0, timeout=30,
                   what="the surviving producer and consumer to start")

        plan = ["P"] * producer_kills + ["C"] * consumer_kills
        rng.shuffle(plan)
        next_p = 1
        next_c = 0
        kinds: dict[int, str] = {}
        started = 0
        kills = 0
        progress = (ctl.get(16), ctl.get(1))

        def start_next() -> None:
            nonlocal started, next_p, next_c
            v = started
            kind = plan[v]
            started += 1
            if kind == "P":
                mode = PRODUCER_MODES[next_p % len(PRODUCER_MODES)]
                p = Child(acked_producer, (qname, ctlname, next_p, 16 + next_p, mode, max_body,
                                           0, ready0 + v, go0 + v))
                victims.append((p, "P", next_p, v))
                next_p += 1
            else:
                mode = CONSUMER_MODES[next_c % len(CONSUMER_MODES)]
                kinds[next_c] = mode
                p = Child(logging_consumer, (qname, ctlname, logname, next_c, ready0 + v,
                                             go0 + v, mode))
                victims.append((p, "C", next_c, v))
                next_c += 1
            p.start()

        while kills < len(plan):
            while started < len(plan) and len(victims) < in_flight:
                start_next()
            proc, kind, idx, v = victims[0]
            h.wait_for(lambda: ctl.get(ready0 + v) or not proc.is_alive(), timeout=30,
                       what=f"victim {kind}{idx} to start")
            ctl.set(go0 + v, 1)
            if kind == "P":
                h.wait_for(lambda: ctl.get(16 + idx) > 0 or not proc.is_alive(), timeout=30,
                           interval=0.0005, what=f"victim producer {idx} to send")
            assert proc.is_alive(), f"victim {kind}{idx} exited early with code {proc.exitcode}"
            if rng.random() < lock_aim:
                # Aim: catch it inside a critical section.  When it is seen
                # holding the queue's lock, freeze it (SIGSTOP); if it still
                # holds the lock once frozen, kill it there, else let it go on
                # and look again.  Without a catch it dies wherever it is.
                report.aimed += 1
                report.aimed_caught += _kill_holding(proc.pid, q._memory,
                                                     _PROD_LOCK if kind == "P" else _CONS_LOCK,
                                                     2 * max_delay, rng)
            else:
                time.sleep(rng.uniform(0.0, max_delay))
            h.kill(proc)
            victims.pop(0)
            assert not proc.is_alive()
            t_kill = time.monotonic()
            for off in (_PROD_LOCK, _CONS_LOCK):
                if q._memory.load32(off) == proc.pid:
                    # It died holding a lock: a survivor must take it over, soon.
                    report.lock_held_kills += 1
                    h.wait_for(lambda: q._memory.load32(off) != proc.pid,
                               timeout=takeover_bound, interval=0.001,
                               what=f"a survivor to take over the lock {kind}{idx} died holding")
                    took = time.monotonic() - t_kill
                    report.max_takeover_s = max(report.max_takeover_s, took)
                    h.log(f"victim {kind}{idx} died holding the "
                          f"{'producer' if off == _PROD_LOCK else 'consumer'} lock: "
                          f"taken over after {took * 1e3:.1f} ms")
            kills += 1
            if kind == "P":
                report.producer_kills += 1
            else:
                report.consumer_kills += 1
            if kills % progress_every == 0 or kills == len(plan):
                before = progress
                # Survivors must go on: both the survivor producer's acknowledged
                # count and the survivor consumer's received count must move.
                h.wait_for(lambda: ctl.get(16) > before[0] and ctl.get(1) > before[1],
                           timeout=progress_timeout,
                           what=f"the survivors to make progress after {kills} kills")
                progress = (ctl.get(16), ctl.get(1))
                h.log(f"{kills} kills, survivor producer at {progress[0]}, "
                      f"survivor consumer at {progress[1]}")
            for p in survivors:
                assert p.is_alive(), f"a survivor died (exit code {p.exitcode})"

        # Stop the survivor producer; once it has exited (its last send
        # returned), let the survivor consumer drain the queue and report.
        ctl.set(0, 1)
        h.join_all(survivors[:1], timeout=30)
        t_done = time.monotonic()
        ctl.set(4, 1)
        payload = results.get(timeout=drain_bound + 30)
        report.drain_s = time.monotonic() - t_done
        h.join_all(survivors[1:], timeout=30)
        assert report.drain_s < drain_bound, (
            f"final drain took {report.drain_s:.2f} s (bound {drain_bound} s)")
        got, bad = pickle.loads(payload)
        assert bad == 0, f"the surviving consumer got {bad} torn or corrupted messages"
        assert ctl.get(3) == 0, f"victim consumers viewed {ctl.get(3)} corrupted messages"
        assert q.try_recv() is None, "messages left in the queue after the final drain"

        # --- account for every message ---
        acked = {p: ctl.get(16 + p) for p in range(nprod)}
        # committed receipts: (pid, seq) -> how many times
        receipts: dict[tuple[int, int], int] = {}
        order_errors = []
        for pid, seqs in got.items():
            if any(b <= a for a, b in zip(seqs, seqs[1:])):
                order_errors.append(("survivor", pid))
            for s in seqs:
                receipts[(pid, s)] = receipts.get((pid, s), 0) + 1
        uncommitted: list[tuple[int, int]] = []
        unlogged_allowance = 0
        for c in range(ncons_victims):
            base = c * LOG_REGION
            count = log.get(base // 8)
            last: dict[int, int] = {}
            for k in range(count):
                raw = bytes(log.region(base + 8 + k * LOG_SLOT, LOG_SLOT))
                try:
                    pid, seq = parse_message(_trim(raw))
                except ValueError as e:
                    raise AssertionError(
                        f"victim consumer {c} ({kinds[c]}) logged a corrupt message: {e}") from None
                if seq <= last.get(pid, -1):
                    order_errors.append((f"victim {c}", pid))
                last[pid] = seq
                receipts[(pid, seq)] = receipts.get((pid, seq), 0) + 1
            if kinds[c] == "recv":
                # killed after recv returned but before copying to the log: unknowable
                unlogged_allowance += 1
            if count < LOG_SLOTS:
                raw = bytes(log.region(base + 8 + count * LOG_SLOT, LOG_SLOT))
                try:
                    uncommitted.append(parse_message(_trim(raw)))
                except ValueError:
                    pass  # an empty or half-copied slot: the message was not taken
        assert not order_errors, f"per-producer FIFO order violated: {order_errors[:5]}"
        dups = [k for k, v in receipts.items() if v > 1]
        assert not dups, f"{len(dups)} messages received twice, e.g. {dups[:5]}"
        for u in uncommitted:
            # a message a victim took, or only copied before it died: may also
            # have been received by someone else -- but only once
            receipts.setdefault(u, 1)
        per_pid: dict[int, set[int]] = {}
        for (pid, seq) in receipts:
            per_pid.setdefault(pid, set()).add(seq)
        unknown = [pid for pid in per_pid if pid >= nprod]
        assert not unknown, f"messages from producers that never existed: {unknown}"
        lost = []
        for pid in range(nprod):
            seqs = per_pid.get(pid, set())
            a = acked[pid]
            missing = [s for s in range(a) if s not in seqs]
            lost.extend((pid, s) for s in missing)
            slack = 0 if pid == 0 else (MANY_BATCH if PRODUCER_MODES[pid % 3] == "send_many" else 1)
            extra = sorted(s for s in seqs if s >= a)
            assert all(s < a + slack for s in extra), (
                f"producer {pid} acknowledged {a} messages but seqs {extra[:8]} arrived: "
                "a message that was never sent, or a duplicate")
            # what arrived beyond the acknowledged ones is a prefix of the batch in flight
            assert extra == list(range(a, a + len(extra))), (
                f"producer {pid}: unacknowledged arrivals {extra} are not a prefix of "
                f"what it was sending at {a}")
            report.messages += len(seqs)
        assert len(lost) <= unlogged_allowance, (
            f"{len(lost)} acknowledged messages never arrived (allowance {unlogged_allowance} "
            f"for consumers killed between recv and logging), e.g. {lost[:8]}")
        report.maybe_lost_unlogged = len(lost)
        report.seconds = time.monotonic() - t_start
        return report
    finally:
        ctl.set(0, 1)
        ctl.set(4, 1)
        for p, *_ in victims:
            if p.is_alive():
                p.kill()
                p.join(10)
        for p in survivors:
            if p.is_alive():
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        results.close()
        results.join_thread()
        q.close()
        log.close()
        ctl.close()


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True  # gone
    return stat[stat.rindex(b")") + 2:][:1] in (b"T", b"t", b"Z", b"X")


def _kill_holding(pid: int, mem: Any, lock: int, within: float, rng: random.Random) -> bool:
    """SIGKILL ``pid``, if possible while it holds the lock at ``lock``; True if so.

    Freezes it (SIGSTOP) at random moments; if, frozen, it holds the lock, it
    dies there; if not, it runs on (SIGCONT) for a moment and is tried again.
    """
    until = time.monotonic() + within
    caught = False
    while time.monotonic() < until:
        os.kill(pid, signal.SIGSTOP)
        stop_by = time.monotonic() + 2.0
        while not _stopped(pid) and time.monotonic() < stop_by:
            os.sched_yield()
        if mem.load32(lock) == pid:
            caught = True
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(rng.uniform(0, 0.0004))
    os.kill(pid, signal.SIGKILL)
    return caught


def _trim(raw: bytes) -> bytes:
    """A logged message from its fixed-size slot (the header says how long it is)."""
    if len(raw) < _HEAD.size:
        return raw
    n = _HEAD.unpack_from(raw)[2]
    return raw[:OVERHEAD + n]
