"""Queue: the API, and its guarantees across real processes.

Children are spawned (``CTX``) and take names; their bodies live in
``workers.queue``.  Timing assertions are lower bounds, or generous "within N s".
"""

from __future__ import annotations

import os
import pickle
import random
import struct
import threading
import time
import zlib

import pytest

import shmlink
from shmlink.segment import PREFIX, shm_dir
from workers import queue as w
from support import CTX, join_all, run_python, wait_for

# --------------------------------------------------------------------------
# Constructors and kinds
# --------------------------------------------------------------------------


def test_create_open_create_or_open(name):
    with shmlink.Queue.create(name, 4096) as q:
        assert q.created and q.name == name
        assert q.capacity == 4096 and q.max_message_size == 4096 - 8
        with pytest.raises(shmlink.SegmentExists):
            shmlink.Queue.create(name, 4096)
        with pytest.raises(FileExistsError):
            shmlink.Queue.create(name, 4096)
        with pytest.raises(shmlink.SettingsMismatch, match="capacity 4096, not 64"):
            shmlink.Queue.create_or_open(name, 64)
        with shmlink.Queue.create_or_open(name) as again:  # nothing passed: nothing compared
            assert not again.created and again.capacity == 4096
        q.send(b"from the creator", timeout=5)
        # another process opens it by name and answers
        r = run_python(
            "import sys, shmlink\n"
            "q = shmlink.Queue.open(sys.argv[1])\n"
            "assert not q.created\n"
            "m = q.recv(timeout=10)\n"
            "q.send(m.upper())\n"
            "print(q.capacity, q.max_message_size)\n",
            name, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["4096", "4088"]
        assert q.recv(timeout=5) == b"FROM THE CREATOR"
        q.unlink()
    with pytest.raises(shmlink.SegmentNotFound):
        shmlink.Queue.open(name)
    with shmlink.Queue.create_or_open(name, 128) as q:
        assert q.created and q.capacity == 128
        q.unlink()


def test_capacity_rounds_up_and_max_message_size(name, names):
    with shmlink.Queue.create(name, 100) as q:
        assert q.capacity == 104
        assert q.max_message_size == 96
    with shmlink.Queue.create(names(), 1000, max_message_size=10) as q:
        assert q.max_message_size == 10


@pytest.mark.parametrize("capacity", [0, -1, 63, 1.5, "4096", None, True])
def test_invalid_capacity(name, capacity):
    with pytest.raises(shmlink.InvalidSize) as ei:
        shmlink.Queue.create(name, capacity)
    assert isinstance(ei.value, ValueError)
    assert not os.path.exists(os.path.join(shm_dir(), PREFIX + name)), "a failed create left a file"



@pytest.mark.parametrize("mm", [0, -5, 4096 - 7, 10**9, 2.0, True])
def test_invalid_max_message_size(name, mm):
    with pytest.raises(shmlink.InvalidSize):
        shmlink.Queue.create(name, 4096, max_message_size=mm)


def test_invalid_wait_strategy(name):
    with pytest.raises(ValueError):
        shmlink.Queue.create(name, 4096, wait="sleepy")
    with shmlink.Queue.create(name, 4096) as q:
        with pytest.raises(ValueError):
            shmlink.Queue.open(name, wait="")
        with pytest.raises(ValueError):
            q.wait = "busy"
        assert q.wait == "hybrid"
        for s in ("block", "spin", "hybrid"):
            q.wait = s
            assert q.wait == s
        q.unlink()


def test_mutex_name_opened_as_queue_is_wrong_kind(name):
    with shmlink.Mutex.create(name) as m:
        with pytest.raises(shmlink.WrongKind) as ei:
            shmlink.Queue.open(name)
        assert isinstance(ei.value, shmlink.IncompatibleSegment)
        assert isinstance(ei.value, TypeError)
        with pytest.raises(shmlink.WrongKind):
            shmlink.Queue.create_or_open(name, 4096)
        m.unlink()


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------


def test_every_size_from_zero_to_max(name):
    with shmlink.Queue.create(name, 1024) as q:
        mx = q.max_message_size
        assert mx == 1016
        rng = random.Random(1)
        sent = [rng.randbytes(n) for n in range(mx + 1)]
        got = []
        # A receiving thread (not this one): a record that must wrap waits for a
        # consumer to step over the wrap marker (see the test below for why).
        t = threading.Thread(target=lambda: got.extend(q.recv(timeout=10) for _ in sent))
        t.start()
        for data in sent:
            q.send(data, timeout=10)
        t.join(30)
        assert not t.is_alive()
        assert len(got) == len(sent)
        for n, (a, b) in enumerate(zip(got, sent)):
            assert a == b, f"message of {n} bytes came back different"
        for bad in (mx + 1, mx + 8, 10 * mx):
            with pytest.raises(shmlink.MessageTooLarge) as ei:
                q.send(b"x" * bad)
            assert isinstance(ei.value, ValueError)
            with pytest.raises(shmlink.MessageTooLarge):
                q.try_send(b"x" * bad)
            with pytest.raises(shmlink.MessageTooLarge):
                q.send_many([b"ok", b"x" * bad], timeout=5)
        assert len(q) == 0 and q.try_recv() is None, "a refused message must send nothing"
        q.unlink()


def test_explicit_max_message_size_is_enforced(name):
    with shmlink.Queue.create(name, 4096, max_message_size=100) as q:
        q.send(b"y" * 100, timeout=5)
        with pytest.raises(shmlink.MessageTooLarge):
            q.send(b"y" * 101)
        assert q.recv(timeout=1) == b"y" * 100
        q.unlink()


def test_send_accepts_bytes_like(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send(bytearray(b"ba"), timeout=5)
        q.send(memoryview(b"xmvx")[1:3], timeout=5)
        q.send(struct.pack("<I", 7), timeout=5)
        assert [q.recv(timeout=1) for _ in range(3)] == [b"ba", b"mv", b"\x07\0\0\0"]
        q.unlink()


# --------------------------------------------------------------------------
# try_ twins, timeouts
# --------------------------------------------------------------------------


def test_try_send_on_full_returns_false_and_try_recv_on_empty_none(name):
    with shmlink.Queue.create(name, 256) as q:
        assert q.try_recv() is None
        sent = 0
        while q.try_send(b"z" * 24):
            sent += 1
            assert sent < 100
        assert sent == 256 // 32
        assert q.try_send(b"z" * 24) is False
        assert len(q) == sent
        for _ in range(sent):
            assert q.try_recv() == b"z" * 24
        assert q.try_recv() is None
        q.unlink()


def _fill(q, size=24):
    n = 0
    while q.try_send(b"f" * size):
        n += 1
    return n


@pytest.mark.parametrize("op", ["send", "send_many"])
def test_send_on_full_times_out(name, op):
    with shmlink.Queue.create(name, 256) as q:
        n = _fill(q)
        t0 = time.monotonic()
        with pytest.raises(shmlink.Timeout) as ei:
            if op == "send":
                q.send(b"more", timeout=0.2)
            else:
                q.send_many([b"more"], timeout=0.2)
        elapsed = time.monotonic() - t0
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, shmlink.ShmlinkError)
        assert elapsed >= 0.2
        assert elapsed < 10
        assert len(q) == n
        q.unlink()


@pytest.mark.parametrize("op", ["recv", "recv_many", "recv_into", "recv_view", "recv_text",
                                "recv_object"])
def test_recv_on_empty_times_out(name, op):
    with shmlink.Queue.create(name, 256) as q:
        call = {
            "recv": lambda t: q.recv(timeout=t),
            "recv_many": lambda t: q.recv_many(4, timeout=t),
            "recv_into": lambda t: q.recv_into(bytearray(16), timeout=t),
            "recv_view": lambda t: q.recv_view(timeout=t),
            "recv_text": lambda t: q.recv_text(timeout=t),
            "recv_object": lambda t: q.recv_object(timeout=t),
        }[op]
        t0 = time.monotonic()
        with pytest.raises(shmlink.Timeout):
            call(0.2)
        assert time.monotonic() - t0 >= 0.2
        # timeout=0 never blocks
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            call(0)
        assert time.monotonic() - t0 < 2.0
        # and a message that is there is taken even with timeout=0
        if op == "recv_object":
            q.send_object("there", timeout=5)
        else:
            q.send(b"there", timeout=5)
        got = call(0)
        if op == "recv_view":
            with got as mv:
                assert bytes(mv) == b"there"
        elif op == "recv_many":
            assert got == [b"there"]
        elif op == "recv_into":
            assert got == 5
        else:
            assert got in (b"there", "there")
        q.unlink()


def test_timeout_zero_on_full_send_does_not_block(name):
    with shmlink.Queue.create(name, 256) as q:
        _fill(q)
        t0 = time.monotonic()
        with pytest.raises(shmlink.Timeout):
            q.send(b"x", timeout=0)
        with pytest.raises(shmlink.Timeout):
            q.send_many([b"x"], timeout=0)
        assert time.monotonic() - t0 < 2.0
        q.unlink()


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_negative_or_nan_timeout_is_rejected(name, bad):
    with shmlink.Queue.create(name, 256) as q:
        with pytest.raises(ValueError):
            q.recv(timeout=bad)
        with pytest.raises(ValueError):
            q.send(b"x", timeout=bad)
        q.unlink()


def test_send_many_timeout_reports_how_many_went_in(name):
    with shmlink.Queue.create(name, 256) as q:
        msgs = [bytes([i]) * 24 for i in range(20)]
        with pytest.raises(shmlink.Timeout) as ei:
            q.send_many(msgs, timeout=0.1)
        n = ei.value.sent
        assert n == 256 // 32
        assert q.recv_many(100, timeout=1) == msgs[:n]
        q.unlink()


# --------------------------------------------------------------------------
# Batches, views, buffers, text, objects, iteration
# --------------------------------------------------------------------------


def test_send_many_recv_many_order_and_bounds(name):
    with shmlink.Queue.create(name, 1 << 16) as q:
        msgs = [b"m%d" % i * (i % 7) for i in range(500)]
        assert q.send_many(msgs) == 500
        assert q.send_many(iter([b"gen1", b"gen2"])) == 2  # any iterable
        assert q.send_many([]) == 0
        out = []
        rng = random.Random(3)
        while len(out) < 502:
            k = rng.randint(1, 40)
            got = q.recv_many(k, timeout=1)
            assert 1 <= len(got) <= k
            out.extend(got)
        assert out == msgs + [b"gen1", b"gen2"]
        with pytest.raises(ValueError):
            q.recv_many(0, timeout=0)
        assert q.sent == 502 and q.received == 502
        q.unlink()


def test_recv_many_takes_what_is_there(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"a", b"b", b"c"], timeout=5)
        assert q.recv_many(100, timeout=1) == [b"a", b"b", b"c"]
        q.unlink()


def test_recv_view_is_read_only_and_consumed_on_normal_exit(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"first view", b"second"], timeout=5)
        with q.recv_view(timeout=1) as mv:
            assert isinstance(mv, memoryview)
            assert type(mv.obj).__name__ == "View", "not a view of the shared mapping"
            assert mv.readonly
            assert bytes(mv) == b"first view"
            with pytest.raises(TypeError):
                mv[0] = 0
        assert q.recv(timeout=1) == b"second"
        assert q.try_recv() is None
        q.unlink()


def test_recv_view_left_in_queue_when_block_raises(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"keep me", b"after"], timeout=5)
        with pytest.raises(KeyError):
            with q.recv_view(timeout=1) as mv:
                assert bytes(mv) == b"keep me"
                raise KeyError("boom")
        assert q.recv(timeout=1) == b"keep me"
        # release(consume=False) is the explicit form
        v = q.recv_view(timeout=1)
        assert bytes(v) == b"after" and len(v) == 5
        v.release(consume=False)
        v.release()  # idempotent
        with q.recv_view(timeout=1) as mv:
            assert bytes(mv) == b"after"
        assert len(q) == 0
        q.unlink()


def test_recv_view_of_zero_bytes_and_max(name):
    with shmlink.Queue.create(name, 512) as q:
        big = bytes(range(256)) + b"!" * (q.max_message_size - 256)
        q.send(big, timeout=1)  # at position 0: fits without wrapping
        with q.recv_view(timeout=1) as mv:
            assert mv == big
        q.send(b"", timeout=1)
        with q.recv_view(timeout=1) as mv:
            assert len(mv) == 0
        q.unlink()


def test_a_held_view_blocks_a_consumer_in_another_process(name, names):
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 4096) as q:
        ctl = w.Slots.create(ctl_name, 4096)
        try:
            q.send_many([b"viewed", b"next"], timeout=5)
            holder = CTX.Process(target=w.view_holder, args=(name, ctl_name, 0.6, True))
            holder.start()
            wait_for(lambda: ctl.get(0) == 1, timeout=30, what="the view to be taken")
            # messages are there, but the consumer lock is held by the view
            assert len(q) == 2
            assert q.try_recv() is None
            got = q.recv(timeout=10)  # blocks until the holder releases
            assert ctl.get(1) == 1, "recv returned while the other process still held its view"
            assert got == b"next", "the viewed message must have been consumed by its holder"
            join_all([holder], timeout=30)
            (n,) = struct.unpack("<I", bytes(ctl.region(64, 4)))
            assert bytes(ctl.region(68, n)) == b"viewed"
        finally:
            ctl.close()
        q.unlink()


def test_view_released_by_exception_in_another_process_stays(name, names):
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 4096) as q:
        ctl = w.Slots.create(ctl_name, 4096)
        try:
            q.send(b"stays", timeout=5)
            holder = CTX.Process(target=w.view_holder, args=(name, ctl_name, 0.05, False))
            holder.start()
            join_all([holder], timeout=30)
            assert ctl.get(0) == 1
            assert q.recv(timeout=5) == b"stays"
        finally:
            ctl.close()
        q.unlink()


def test_failed_close_keeps_an_open_view_intact(name):
    """close() refuses while a zero-copy view is alive (SegmentBusy); it must
    then leave the handle as it was (BUG: it ends the view unconsumed and
    releases the consumer lock first, so the live memoryview can be overwritten
    under its reader, and releasing it afterwards does not consume it)."""
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"viewed", b"next"], timeout=5)
        v = q.recv_view(timeout=1)
        try:
            with pytest.raises(shmlink.SegmentBusy):
                q.close()
            assert not q.closed
            lock_free = q.try_recv()
            assert lock_free is None, "the consumer lock was released under a live view"
            assert bytes(v) == b"viewed"
        finally:
            v.release()  # consume
        assert q.recv(timeout=1) == b"next", "the viewed message was not consumed"
        q.unlink()


def test_second_view_on_one_handle_is_refused(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"a", b"b"], timeout=5)
        with q.recv_view(timeout=1):
            with pytest.raises(RuntimeError):
                q.recv_view(timeout=0)
        assert q.recv(timeout=1) == b"b"
        q.unlink()


def test_recv_into(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"0123456789", b"", b"abc"], timeout=5)
        small = bytearray(4)
        with pytest.raises(shmlink.MessageTooLarge) as ei:
            q.recv_into(small, timeout=1)
        assert isinstance(ei.value, ValueError)
        assert small == bytearray(4), "nothing is copied into a buffer that is too small"
        assert len(q) == 3, "the message that did not fit stays in the queue"
        exact = bytearray(10)
        assert q.recv_into(exact, timeout=1) == 10 and exact == b"0123456789"
        assert q.recv_into(small, timeout=1) == 0
        big = bytearray(b"." * 16)
        assert q.recv_into(memoryview(big)[2:], timeout=1) == 3
        assert big == b"..abc" + b"." * 11
        q.send(b"x", timeout=5)
        with pytest.raises(TypeError):
            q.recv_into(b"read-only", timeout=1)
        assert q.recv(timeout=1) == b"x"
        q.unlink()


def test_text_and_objects(name):
    with shmlink.Queue.create(name, 1 << 16) as q:
        q.send_text("héllo ✓", timeout=5)
        q.send_text("utf-16 ✓", encoding="utf-16", timeout=5)
        q.send_text("", timeout=5)
        obj = {"a": [1, 2.5, None], "b": ("t", b"\0\1"), "c": {3, 4}}
        q.send_object(obj, timeout=5)
        assert q.recv_text(timeout=1) == "héllo ✓"
        assert q.recv_text(timeout=1, encoding="utf-16") == "utf-16 ✓"
        assert q.recv_text(timeout=1) == ""
        assert q.recv_object(timeout=1) == obj
        q.send(pickle.dumps(42), timeout=5)
        assert q.recv_object(timeout=1) == 42
        q.unlink()


def test_iteration(name):
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"1", b"2", b"3"], timeout=5)
        got = []
        for m in q:
            got.append(m)
            if len(got) == 3:
                break
        assert got == [b"1", b"2", b"3"]
        q.unlink()


def test_len_free_bytes_counters_and_stats(name):
    with shmlink.Queue.create(name, 4096) as q:
        assert len(q) == 0 and q.free_bytes == 4096 and q.sent == 0 and q.received == 0
        q.send(b"", timeout=5)  # 8 bytes of header
        q.send(b"x" * 9, timeout=5)  # 8 + 16
        assert len(q) == 2
        assert q.free_bytes == 4096 - 8 - 24
        assert q.sent == 2 and q.received == 0
        s = q.stats()
        assert set(s) == {"capacity", "max_message_size", "used_bytes", "depth", "sent",
                          "received", "writer_pid"}
        assert s["capacity"] == 4096 and s["used_bytes"] == 32 and s["max_message_size"] == 4088
        assert s["depth"] == 2 and s["writer_pid"] is None
        q.recv(timeout=1)
        assert len(q) == 1 and q.received == 1 and q.free_bytes == 4096 - 24
        q.try_recv()
        assert len(q) == 0 and q.free_bytes == 4096
        assert "capacity=4096" in repr(q) and name in repr(q)
        # counters are shared by every handle and process
        with shmlink.Queue.open(name) as other:
            other.send(b"x", timeout=5)
            assert q.sent == 3 and len(q) == 1
        q.unlink()
    assert "closed" in repr(q)
    with pytest.raises(shmlink.SegmentClosed):
        q.send(b"x")
    with pytest.raises(shmlink.SegmentClosed):
        len(q)


def test_pickled_queue_reopens_by_name(name):
    with shmlink.Queue.create(name, 4096, wait="block") as q:
        q2 = pickle.loads(pickle.dumps(q))
        try:
            assert q2.name == name and q2.wait == "block"
            q2.send(b"via pickle", timeout=5)
            assert q.recv(timeout=1) == b"via pickle"
        finally:
            q2.close()
        q.unlink()


# --------------------------------------------------------------------------
# Back-pressure, wrap-around, wait strategies (across processes)
# --------------------------------------------------------------------------


def test_back_pressure_producer_resumes_when_consumer_drains(name, names):
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 512) as q:
        ctl = w.Slots.create(ctl_name, 64)
        try:
            total = 200
            prod = CTX.Process(target=w.counting_producer, args=(name, ctl_name, total, 56))
            prod.start()
            # 512 bytes hold 8 records of 64 bytes: the producer must stop there
            wait_for(lambda: ctl.get(0) >= 8, timeout=30, what="the producer to fill the queue")
            time.sleep(0.3)
            assert ctl.get(0) == 8, "the producer went past a full queue"
            assert prod.is_alive()
            assert q.free_bytes == 0
            got = []
            while len(got) < total:
                got.append(q.recv(timeout=10))
            join_all([prod], timeout=30)
            assert [int.from_bytes(m[:8], "little") for m in got] == list(range(total))
            assert ctl.get(0) == total
        finally:
            ctl.close()
        q.unlink()


def test_wrap_around_random_sizes_50k(name):
    seed, count, max_size = 20240601, 50_000, 300
    with shmlink.Queue.create(name, 1024, max_message_size=max_size) as q:
        prod = CTX.Process(target=w.random_producer, args=(name, seed, count, max_size))
        prod.start()
        rng = random.Random(seed)
        try:
            for i in range(count):
                expected = w.random_payload(rng, max_size)
                got = q.recv(timeout=30)
                if got != expected:
                    pytest.fail(f"message {i}: got {len(got)} bytes, expected {len(expected)}"
                                f" (first difference at {_first_diff(got, expected)})")
        finally:
            join_all([prod], timeout=60)
        assert q.try_recv() is None
        assert q.sent == count and q.received == count
        q.unlink()


def _first_diff(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def test_wrap_around_random_sizes_single_process(name):
    """The same check without a second process: random interleaving of sends and
    receives, with batches, through a ring that wraps every few messages."""
    rng = random.Random(7)
    expected = []
    with shmlink.Queue.create(name, 512, max_message_size=200) as q:
        for _ in range(20_000):
            if rng.random() < 0.55:
                m = w.random_payload(rng, 200)
                if q.try_send(m):
                    expected.append(m)
            elif rng.random() < 0.5:
                got = q.try_recv()
                if got is None:
                    assert not expected, "try_recv found nothing in a non-empty queue"
                else:
                    assert got == expected.pop(0)
            else:
                try:
                    got = q.recv_many(rng.randint(1, 5), timeout=0)
                except shmlink.Timeout:
                    continue
                for g in got:
                    assert g == expected.pop(0)
        while expected:
            assert q.recv(timeout=1) == expected.pop(0)
        q.unlink()


def test_max_message_at_every_wrap_position_with_consumer_in_another_process(name, names):
    """Regression for the wrap-marker deadlock: a record that needs the whole
    ring, sent when the ring is empty but its position is not at the start."""
    cap = 256
    reply = names("reply")
    with shmlink.Queue.create(name, cap) as q, shmlink.Queue.create(reply, 4096) as r:
        mx = q.max_message_size
        assert w.OVERHEAD < mx == cap - 8
        positions = list(range(0, cap, 8))
        # per position: up to two fillers, then the max message
        plan = []
        pos = 0
        for target in positions:
            if target != pos % cap:
                if target > pos % cap:
                    plan.append(target - pos % cap - 8)
                else:
                    if pos % cap:
                        plan.append(cap - pos % cap - 8)
                    if target:
                        plan.append(target - 8)
            plan.append(mx)
            pos = 0  # the max message always ends at the ring's end
        child = CTX.Process(target=w.echo_lengths, args=(name, reply, len(plan)))
        child.start()
        try:
            rng = random.Random(5)
            for n in plan:
                data = rng.randbytes(n)
                q.send(data, timeout=10)
                got_len, got_crc = struct.unpack("<QI", r.recv(timeout=10))
                assert (got_len, got_crc) == (n, zlib.crc32(data))
        finally:
            join_all([child], timeout=30)
        q.unlink()
        r.unlink()


@pytest.mark.parametrize("method", ["send", "try_send"])
def test_max_message_into_an_empty_queue_without_a_waiting_consumer(name, method):
    """An empty queue must take any message up to max_message_size, even when
    no consumer is waiting at that moment (BUG: the producer commits a wrap
    marker, then waits for a consumer to step over it)."""
    with shmlink.Queue.create(name, 256) as q:
        q.send(b"12345678", timeout=5)
        assert q.recv(timeout=1) == b"12345678"
        assert len(q) == 0
        big = b"B" * q.max_message_size
        if method == "send":
            q.send(big, timeout=1)
        else:
            assert q.try_send(big), "try_send refused a max-size message into an empty queue"
        assert q.recv(timeout=1) == big
        q.unlink()


@pytest.mark.parametrize("wait", ["hybrid", "block", "spin"])
def test_wait_strategies_across_processes(name, names, wait):
    reply = names("reply")
    rounds = 300
    with shmlink.Queue.create(name, 1024, wait=wait) as q, \
            shmlink.Queue.create(reply, 1024, wait=wait) as r:
        assert q.wait == wait
        srv = CTX.Process(target=w.ping_pong_server, args=(name, reply, rounds + 2000, wait))
        srv.start()
        try:
            for i in range(rounds):  # ping-pong: both sides wait on an empty queue
                m = b"ping %d" % i
                q.send(m, timeout=10)
                assert r.recv(timeout=10) == m[::-1]
            # a burst: the producer also waits on a full queue
            burst = [b"%05d" % i for i in range(2000)]
            t = threading.Thread(target=lambda: [q.send(m, timeout=30) for m in burst])
            t.start()
            got = [r.recv(timeout=30) for _ in burst]
            t.join(30)
            assert not t.is_alive()
            assert got == [m[::-1] for m in burst]
        finally:
            join_all([srv], timeout=30)
        q.unlink()
        r.unlink()


# --------------------------------------------------------------------------
# Guarantees: per-producer FIFO, exactly once, many producers and consumers
# --------------------------------------------------------------------------


def _run_fifo(name, ctl_name, *, nprod, ncons, count, pbatch, modes, capacity, cbatch=64):
    with shmlink.Queue.create(name, capacity) as q:
        ctl = w.Slots.create(ctl_name, w.fifo_control_size(nprod, ncons, count))
        try:
            cons = [CTX.Process(target=w.fifo_consumer,
                                args=(name, ctl_name, i, nprod, count, modes[i % len(modes)],
                                      cbatch))
                    for i in range(ncons)]
            prods = [CTX.Process(target=w.fifo_producer, args=(name, p, count, pbatch, 40))
                     for p in range(nprod)]
            for p in cons + prods:
                p.start()
            join_all(prods, timeout=100)
            ctl.set(0, 1)  # producers are done: consumers stop once the queue is empty
            join_all(cons, timeout=30)
            results = w.fifo_results(ctl, ncons, nprod, count)
        finally:
            ctl.close()
        total = nprod * count
        assert sum(r[1] for r in results) == 0, "torn or corrupted messages were received"
        assert sum(r[2] for r in results) == 0, "a consumer saw a producer's messages out of order"
        assert sum(r[3] for r in results) == 0, "a consumer received a message twice"
        assert sum(r[0] for r in results) == total, "received count differs from sent count"
        union = 0
        for r in results:
            union |= int.from_bytes(r[4], "little")
        assert union == int.from_bytes(b"\x01" * total, "little"), "some messages never arrived"
        # total == count of distinct messages seen, so nobody got one twice either
        assert q.sent == total and q.received == total and len(q) == 0
        q.unlink()
        return results


def test_exactly_once_and_fifo_4x4x200k_batched(name, names):
    results = _run_fifo(name, names("ctl"), nprod=4, ncons=4, count=200_000, pbatch=256,
                        modes=["many"], capacity=1 << 20, cbatch=256)
    assert sum(1 for r in results if r[0]) >= 2, "expected the work to be shared by consumers"


def test_exactly_once_and_fifo_4x4_single_messages(name, names):
    # every receive flavour, single sends, a small ring that wraps constantly
    _run_fifo(name, names("ctl"), nprod=4, ncons=4, count=25_000, pbatch=1,
              modes=["recv", "into", "view", "try"], capacity=4096)


def test_calls_on_a_temporary_handle_keep_it_open(name):
    """``Queue.open(name).send(...)``: the handle must live through the call,
    even though nothing else refers to it (regression: the C method bound to
    the instance let the handle be collected and closed mid-call)."""
    import gc
    import subprocess
    import sys

    with shmlink.Queue.create(name, 4096) as q:
        shmlink.Queue.open(name).send(b"one")
        gc.collect()
        assert shmlink.Queue.open(name).recv(timeout=1) == b"one"
        code = ("import shmlink, sys; print(shmlink.Queue.open(sys.argv[1], wait='block')"
                ".recv(timeout=10).decode())")
        child = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                                 text=True)
        q.send(b"two", timeout=5)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0 and out.strip() == "two"
        q.unlink()
