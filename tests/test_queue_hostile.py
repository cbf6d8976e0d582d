"""Queue against hostile memory: a peer overwrites the ring with garbage.

Every receive and send must then raise ``CorruptSegment`` (or time out, or
report "nothing now") or succeed with a message of valid length: never crash,
hang or touch memory outside the mapping.  The garbage is written through a
separate ``mmap`` of the segment's file, as another process would.  These
tests also run under AddressSanitizer in CI.

Ring control block offsets (``struct shmlink_ring`` in ``include/shmlink.h``),
from the start of the data area (file offset 4096)::

    magic 0  version 4  capacity 8  max_message 16  data_offset 24
    prod_lock 64 (owner 64, waiters 68, owner_start 72)  tail 80  sent 88
    cons_lock 128 (owner 128, waiters 132, owner_start 136)  head 144  received 152
    data_ec 192 (seq, waiters)  space_ec 256 (seq, waiters)  data 320
"""

from __future__ import annotations

import mmap
import os
import struct
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shmlink
from shmlink import _core
from shmlink.segment import PREFIX, shm_dir
from support import run_python

RING = _core.DATA_OFFSET  # the ring control block starts the data area
DATA = 320  # ring data, from RING
CHECK = 0x5A17C0DE
WRAP = 0xFFFFFFFF
U64 = 2**64

F64 = {"capacity": 8, "max_message": 16, "data_offset": 24, "prod_owner_start": 72,
       "tail": 80, "sent": 88, "cons_owner_start": 136, "head": 144, "received": 152}
F32 = {"magic": 0, "version": 4, "prod_owner": 64, "prod_waiters": 68, "cons_owner": 128,
       "cons_waiters": 132, "data_seq": 192, "data_waiters": 196, "space_seq": 256,
       "space_waiters": 260}

CAP = 512
MAX = 200
T = 0.2  # timeout of every blocking call here


class Raw:
    """The queue's file mapped a second time, written like a hostile peer would."""

    def __init__(self, name: str) -> None:
        fd = os.open(os.path.join(shm_dir(), PREFIX + name), os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)

    def get(self, field: str) -> int:
        if field in F64:
            return struct.unpack_from("<Q", self.mm, RING + F64[field])[0]
        return struct.unpack_from("<I", self.mm, RING + F32[field])[0]

    def put(self, field: str, value: int) -> None:
        if field in F64:
            struct.pack_into("<Q", self.mm, RING + F64[field], value % U64)
        else:
            struct.pack_into("<I", self.mm, RING + F32[field], value % 2**32)

    def header(self, pos: int, length: int, check: int | None = None) -> None:
        """Write a record header (length, check) at ring position pos."""
        off = RING + DATA + pos % CAP
        struct.pack_into("<II", self.mm, off, length % 2**32,
                         (length ^ CHECK) % 2**32 if check is None else check % 2**32)

    def data(self, off: int, raw: bytes) -> None:
        off %= CAP
        raw = raw[:CAP - off]
        self.mm[RING + DATA + off:RING + DATA + off + len(raw)] = raw

    def snapshot(self) -> bytes:
        return self.mm[RING:RING + DATA + CAP]

    def restore(self, snap: bytes) -> None:
        self.mm[RING:RING + DATA + CAP] = snap

    def close(self) -> None:
        self.mm.close()


def _populate(q: shmlink.Queue) -> list[bytes]:
    """Leave the ring wrapped: head at 264, a wrap marker at 440, tail at 696."""
    q.send_many([bytes([i]) * 80 for i in range(5)], timeout=1)  # records of 88: tail 440
    for _ in range(3):
        q.recv(timeout=1)  # head 264
    rest = [b"\x03" * 80, b"\x04" * 80, b"W" * 120, b"", b"z" * 33]
    q.send_many(rest[2:], timeout=1)  # 120 needs 128 > 72 left: wrap marker, then 512
    return rest


@pytest.fixture
def ring(name):
    with shmlink.Queue.create(name, CAP, max_message_size=MAX) as q:
        expected = _populate(q)
        raw = Raw(name)
        try:
            assert (raw.get("head"), raw.get("tail")) == (264, 696)
            yield q, raw, raw.snapshot(), expected
        finally:
            raw.close()
            q.unlink()


def _lock_owners(raw: Raw) -> tuple[int, int]:
    return raw.get("prod_owner"), raw.get("cons_owner")


def _check_view_raw(q: shmlink.Queue, size: int) -> None:
    """The C core's zero-copy answer must lie inside the ring's data area."""
    r = q._ring
    got = r.view_begin(time.monotonic() + T, 0)
    if got is None:
        return
    try:
        offset, length = got
        assert 0 <= length <= q.max_message_size
        assert RING + DATA + 8 <= offset and offset + length <= RING + DATA + q.capacity <= size
    finally:
        r.view_end(False)


def run_op(q: shmlink.Queue, op: str, size: int) -> None:
    """Run one operation; assert any result it returns is well-formed."""
    mx = q.max_message_size
    if op == "recv":
        m = q.recv(timeout=T)
        assert isinstance(m, bytes) and len(m) <= mx
    elif op == "try_recv":
        m = q.try_recv()
        assert m is None or (isinstance(m, bytes) and len(m) <= mx)
    elif op == "recv_many":
        ms = q.recv_many(5, timeout=T)
        assert 1 <= len(ms) <= 5 and all(len(m) <= mx for m in ms)
    elif op == "recv_into":
        buf = bytearray(mx)
        n = q.recv_into(buf, timeout=T)
        assert 0 <= n <= mx
    elif op == "recv_into_small":
        try:
            n = q.recv_into(bytearray(16), timeout=T)
            assert 0 <= n <= 16
        except shmlink.MessageTooLarge:
            pass
    elif op == "recv_view":
        with q.recv_view(timeout=T) as mv:
            assert len(mv) <= mx
            bytes(mv)
    elif op == "view_raw":
        _check_view_raw(q, size)
    elif op == "send":
        q.send(b"s" * 40, timeout=T)
    elif op == "send_max":
        q.send(b"M" * mx, timeout=T)
    elif op == "try_send":
        q.try_send(b"t" * 7)
    elif op == "send_many":
        q.send_many([b"a" * 100, b"", b"b" * 30], timeout=T)
    elif op == "stats":
        s = q.stats()
        assert 0 <= s["used_bytes"] <= s["capacity"] == q.capacity
        assert 0 <= q.free_bytes <= q.capacity
    elif op == "reopen":
        try:
            other = shmlink.Queue.open(q.name, timeout=1)
        except (shmlink.CorruptSegment, shmlink.IncompatibleSegment):
            return
        try:
            assert 64 <= other.capacity <= CAP and other.max_message_size <= other.capacity - 8
            for sub in ("try_recv", "try_send"):
                try:
                    run_op(other, sub, size)
                except shmlink.CorruptSegment:
                    pass
                except shmlink.MessageTooLarge:
                    # a peer may legitimately have made max_message_size tiny
                    assert sub == "try_send" and other.max_message_size < 7
        finally:
            other.close()
    else:
        raise AssertionError(op)


OPS = ["recv", "try_recv", "recv_many", "recv_into", "recv_into_small", "recv_view",
       "view_raw", "send", "send_max", "try_send", "send_many", "stats", "reopen"]


def run_hostile(q, raw, snap, corruptions, ops) -> None:
    raw.restore(snap)
    for c in corruptions:
        kind = c[0]
        if kind == "field":
            raw.put(c[1], c[2])
        elif kind == "header":
            raw.header(c[1], c[2], c[3])
        else:
            raw.data(c[1], c[2])
    owners_touched = any(c[0] == "field" and c[1] in ("prod_owner", "cons_owner")
                         for c in corruptions)
    for op in ops:
        try:
            run_op(q, op, len(raw.mm))
            event(f"{op}: ok")
        except (shmlink.CorruptSegment, shmlink.Timeout) as e:
            event(f"{op}: {type(e).__name__}")
        if not owners_touched:
            # an operation that failed must not leave a lock held
            assert _lock_owners(raw) == (0, 0), f"{op} left a ring lock held"
    raw.restore(snap)


# ---------------------------------------------------------------------------
# Hypothesis: garbage in the control block, in record headers, in the data
# ---------------------------------------------------------------------------

_interesting64 = st.sampled_from([0, 1, 4, 7, 8, 63, 64, 200, 201, 256, 264, 320, 440, 504, 512,
                                  520, 696, 1024, 2**31, 2**32 - 1, 2**32, 2**63, U64 - 8,
                                  U64 - 1])
_relative = st.builds(lambda base, d: (base + d) % U64, st.sampled_from([264, 696]),
                      st.sampled_from([-1024, -520, -512, -432, -8, -4, -1, 1, 4, 8, 16, 88,
                                       176, 248, 432, 512, 520, 1024]))
_v64 = st.one_of(_interesting64, _relative, st.integers(0, U64 - 1))
_v32 = st.one_of(st.sampled_from([0, 1, os.getpid(), 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
                                  0xFFFFFFFF]),
                 st.integers(0, 2**32 - 1))

_field = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(sorted(F64)), _v64),
    st.tuples(st.just("field"), st.sampled_from(sorted(F32)), _v32),
)
_len = st.one_of(st.sampled_from([0, 1, 8, 80, 120, 192, 199, 200, 201, 248, 432, 504, 505, 512,
                                  WRAP - 1, WRAP]), st.integers(0, 2**32 - 1))
_header = st.builds(
    lambda pos, length, valid, check: ("header", pos, length, None if valid else check),
    st.one_of(st.sampled_from([264, 352, 440, 512, 640, 648]),
              st.integers(0, CAP // 8 - 1).map(lambda i: 8 * i)),
    _len, st.booleans(), st.integers(0, 2**32 - 1))
_data = st.tuples(st.just("data"), st.integers(0, CAP - 1), st.binary(min_size=1, max_size=64))

_hostile = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@_hostile
@given(corruptions=st.lists(st.one_of(_field, _header), min_size=1, max_size=3),
       ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=2))
def test_garbage_in_control_block_and_record_headers(ring, corruptions, ops):
    q, raw, snap, _ = ring
    run_hostile(q, raw, snap, corruptions, ops)


@_hostile
@given(corruptions=st.lists(st.one_of(_data, _header, _field), min_size=1, max_size=4),
       ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=3))
def test_garbage_in_data_and_headers_with_op_sequences(ring, corruptions, ops):
    q, raw, snap, _ = ring
    run_hostile(q, raw, snap, corruptions, ops)


# ---------------------------------------------------------------------------
# Hand-picked corruptions, with the exact outcome
# ---------------------------------------------------------------------------


def _corrupt_now(q, ops=("recv", "try_recv", "recv_many", "recv_into", "recv_view")):
    for op in ops:
        with pytest.raises(shmlink.CorruptSegment) as ei:
            run_op(q, op, 0)
        assert isinstance(ei.value, shmlink.ShmlinkError)


@pytest.mark.parametrize("what", [
    "tail_past_capacity", "tail_before_head", "head_misaligned", "tail_misaligned",
    "bad_check", "len_over_max", "len_past_tail", "two_wrap_markers", "wrap_past_tail",
    "len_huge_valid_check",
])
def test_specific_corruptions_are_reported(ring, what):
    q, raw, snap, expected = ring
    head, tail = 264, 696
    if what == "tail_past_capacity":
        raw.put("tail", head + CAP + 8)
    elif what == "tail_before_head":
        raw.put("tail", head - 8)
    elif what == "head_misaligned":
        raw.put("head", head + 4)
    elif what == "tail_misaligned":
        raw.put("tail", tail - 4)
    elif what == "bad_check":
        raw.header(head, 80, check=80)
    elif what == "len_over_max":
        raw.header(head, MAX + 1)
    elif what == "len_past_tail":
        raw.put("tail", head + 16)  # one 16-byte record's worth...
        raw.header(head, 80)  # ...but the header says 88
    elif what == "two_wrap_markers":
        raw.header(440, WRAP)
        raw.header(512, WRAP)
        raw.put("head", 440)
    elif what == "wrap_past_tail":
        raw.header(head, WRAP)  # would skip to 512, but tail is at 300
        raw.put("tail", 304)
    elif what == "len_huge_valid_check":
        raw.header(head, 0xFFFFFFF0)
    _corrupt_now(q)
    assert _lock_owners(raw) == (0, 0)
    if what in ("tail_past_capacity", "tail_before_head", "head_misaligned", "tail_misaligned"):
        # the producer side sees the same inconsistency
        for op in ("send", "try_send", "send_many"):
            with pytest.raises(shmlink.CorruptSegment):
                run_op(q, op, 0)
        assert _lock_owners(raw) == (0, 0)
    # repaired, the queue works again and nothing was lost
    raw.restore(snap)
    assert q.recv_many(10, timeout=1) == expected


def test_a_wrap_marker_with_a_bad_check_is_corrupt(ring):
    q, raw, snap, expected = ring
    assert q.recv(timeout=1) == expected[0]
    assert q.recv(timeout=1) == expected[1]
    raw.header(440, WRAP, check=0)
    _corrupt_now(q)
    raw.restore(snap)


@pytest.mark.parametrize("field,value,error", [
    ("magic", 0x12345678, shmlink.IncompatibleSegment),
    ("version", 1, shmlink.IncompatibleSegment),  # the layout before armed event counts
    ("version", 0x7777, shmlink.IncompatibleSegment),  # no version that exists
    ("capacity", 0, shmlink.CorruptSegment),
    ("capacity", 7, shmlink.CorruptSegment),
    ("capacity", 500, shmlink.CorruptSegment),  # not a multiple of 8
    ("capacity", CAP + 8, shmlink.CorruptSegment),  # larger than the segment
    ("capacity", U64 - 8, shmlink.CorruptSegment),
    ("max_message", 0, shmlink.CorruptSegment),
    ("max_message", CAP - 7, shmlink.CorruptSegment),
    ("max_message", U64 - 1, shmlink.CorruptSegment),
    ("data_offset", 0, shmlink.CorruptSegment),
    ("data_offset", 4096, shmlink.CorruptSegment),
    ("data_offset", U64 - 320, shmlink.CorruptSegment),
])
def test_open_with_garbage_constants(ring, field, value, error):
    q, raw, snap, expected = ring
    raw.put(field, value)
    with pytest.raises(error) as ei:
        shmlink.Queue.open(q.name)
    assert isinstance(ei.value, shmlink.ShmlinkError)
    # a fresh process attaching for the first time is told the same
    r = run_python(
        "import sys, shmlink\n"
        "try:\n"
        "    shmlink.Queue.open(sys.argv[1])\n"
        "except shmlink.ShmlinkError as e:\n"
        "    print(type(e).__name__)\n",
        q.name, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == error.__name__
    # the handle opened before the garbage keeps the constants it checked
    assert q.capacity == CAP and q.max_message_size == MAX
    assert q.recv_many(10, timeout=1) == expected
    q.send(b"still fine", timeout=1)
    assert q.recv(timeout=1) == b"still fine"
    raw.restore(snap)


def test_lock_owned_by_a_live_stranger_times_out_without_hanging(ring):
    q, raw, snap, expected = ring
    raw.put("cons_owner", os.getppid())  # alive, and not going to let go
    raw.put("prod_owner", os.getppid())
    for op in ("recv", "recv_many", "recv_into", "recv_view", "send", "send_many"):
        with pytest.raises(shmlink.Timeout):
            run_op(q, op, 0)
    assert q.try_recv() is None
    assert q.try_send(b"x") is False
    raw.restore(snap)
    assert q.recv_many(10, timeout=1) == expected


def test_recv_many_keeps_good_messages_before_a_corrupt_record(ring):
    """A batch receive that meets a corrupt record after good ones must not lose
    the good ones (BUG: they are consumed, then CorruptSegment is raised and
    they are gone)."""
    q, raw, snap, expected = ring
    raw.header(512, 120, check=0)  # the third message's header
    try:
        got = q.recv_many(10, timeout=1)
    except shmlink.CorruptSegment:
        got = []
    assert got == expected[:2], "messages before the corrupt record were consumed and dropped"
    with pytest.raises(shmlink.CorruptSegment):
        q.recv(timeout=1)
    raw.restore(snap)


@pytest.mark.parametrize("sent,received", [(U64 - 1, 0), (0, 1), (2**63 + 5, 3)])
def test_len_and_repr_with_garbage_counters(ring, sent, received):
    """len() and repr() must not blow up on counters a peer overwrote (BUG:
    len() raises OverflowError, and so does repr(), once sent - received
    exceeds sys.maxsize)."""
    q, raw, snap, _ = ring
    raw.put("sent", sent)
    raw.put("received", received)
    try:
        n = len(q)
    except shmlink.CorruptSegment:
        n = None
    assert n is None or 0 <= n
    assert q.name in repr(q)
    s = q.stats()
    assert s["sent"] == sent and s["received"] == received
    raw.restore(snap)
