"""Topic: the API, and its guarantees across real processes.

Children are spawned (``CTX``) and take names; their bodies live in
``workers.topic``.  Every wait has a timeout; timing assertions are upper
bounds only where the spec promises one ("a dead subscriber releases a
blocked publisher within 2 s").
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmlink
from shmlink import _core
from shmlink.topic import MessageHandler, MessageOverwritten, TopicMessageView
from workers import topic as w
from support import CTX, join_all, wait_for

# --------------------------------------------------------------------------
# Constructors, properties, errors
# --------------------------------------------------------------------------


def test_create_open_create_or_open(name):
    with shmlink.Topic.create(name, 4096, delivery="latest", max_subscribers=8) as t:
        assert t.created and t.name == name
        assert (t.delivery, t.capacity, t.max_message_size, t.max_subscribers) == ("latest", 4096, 4080, 8)
        assert t.mode == 0o600  # permission bits, as for every kind
        assert t.published == 0 and t.subscriber_count == 0
        with pytest.raises(shmlink.SegmentExists):
            shmlink.Topic.create(name, 4096)
        with pytest.raises(shmlink.SettingsMismatch, match="delivery 'latest', not 'lossless'"):
            shmlink.Topic.create_or_open(name, 4096, delivery="lossless")
        with shmlink.Topic.create_or_open(name) as again:  # nothing passed: nothing compared
            assert not again.created
            assert again.delivery == "latest" and again.capacity == 4096
        with shmlink.Topic.open(name, wait="block") as other:
            assert other.wait == "block" and other.delivery == "latest"
        t.unlink()
    with pytest.raises(shmlink.SegmentNotFound):
        shmlink.Topic.open(name)
    with shmlink.Topic.create_or_open(name, 100, max_message_size=20) as t:
        assert t.created and t.capacity == 112 and t.max_message_size == 20
        t.unlink()


def test_bad_arguments(name):
    with pytest.raises(ValueError, match="delivery"):
        shmlink.Topic.create(name, 4096, delivery="fast")  # type: ignore[arg-type]
    with pytest.raises(shmlink.InvalidSize):
        shmlink.Topic.create(name, 32)
    with pytest.raises(shmlink.InvalidSize):
        shmlink.Topic.create(name, 4096, max_message_size=4096)
    with pytest.raises(ValueError, match="max_subscribers"):
        shmlink.Topic.create(name, 4096, max_subscribers=0)
    with pytest.raises(ValueError, match="wait"):
        shmlink.Topic.create(name, 4096, wait="sometimes")
    assert not os.path.exists(f"/dev/shm/shmlink.{name}")
    with shmlink.Topic.create(name, 4096, max_message_size=100) as t:
        with pytest.raises(shmlink.MessageTooLarge):
            t.publish(b"x" * 101)
        with pytest.raises(shmlink.MessageTooLarge):
            t.publish_many([b"ok", b"x" * 101])
        assert t.published == 0  # a batch with a message too large publishes nothing
        with pytest.raises(TypeError):
            t.publish("text is not bytes")
        with pytest.raises(ValueError, match="start"):
            t.subscribe("middle")
        with pytest.raises(ValueError, match="timeout"):
            t.publish(b"x", timeout=-1)
        with pytest.raises(TypeError, match="subscribe"):
            shmlink.Subscriber()
        with pytest.raises(TypeError):
            shmlink.Topic(name)
        t.unlink()


def test_wrong_kind(name):
    with shmlink.Queue.create(name, 4096) as q:
        with pytest.raises(shmlink.WrongKind):
            shmlink.Topic.open(name)
        q.unlink()


def test_publish_and_receive_in_one_process(name):
    with shmlink.Topic.create(name, 4096) as t:
        a, b = t.subscribe(), t.subscribe()
        assert t.subscriber_count == 2
        t.publish(b"one")
        t.publish(memoryview(b"two"))
        t.publish(bytearray(b""))  # empty messages are messages
        assert t.try_publish(b"three")
        assert t.publish_many(iter([b"four", b"five"])) == 2
        assert t.published == 6
        for sub in (a, b):
            assert sub.lag == 6
            assert sub.recv(timeout=1) == b"one"
            assert sub.try_recv() == b"two"
            assert sub.recv(timeout=0) == b""
            assert sub.recv_many(10, timeout=1) == [b"three", b"four", b"five"]
            assert sub.try_recv() is None
            with pytest.raises(shmlink.Timeout):
                sub.recv(timeout=0.05)
            with pytest.raises(TimeoutError):
                sub.recv_many(5, timeout=0)
            assert (sub.received, sub.missed, sub.lag, sub.next_seq) == (6, 0, 0, 6)
        state = t.stats()
        assert state["delivery"] == "lossless" and state["published"] == 6
        assert [s["received"] for s in state["subscribers"]] == [6, 6]
        assert all(s["pid"] == os.getpid() and s["alive"] and s["lag"] == 0
                   for s in state["subscribers"])
        assert "published=6" in repr(t) and "received=6" in repr(a)
        a.close()
        a.close()  # idempotent
        assert a.closed and "closed" in repr(a)
        with pytest.raises(shmlink.SegmentClosed):
            a.recv(timeout=0)
        assert t.subscriber_count == 1
        t.unlink()
    assert b.closed  # closing the topic closes its subscribers
    with pytest.raises(shmlink.SegmentClosed):
        t.publish(b"x")
    with pytest.raises(shmlink.SegmentClosed):
        t.subscribe()


def test_iteration_and_context_managers(name):
    with shmlink.Topic.create(name, 4096) as t:
        with t.subscribe() as sub:
            t.publish_many([b"%d" % i for i in range(5)])
            got = []
            for m in sub:
                got.append(m)
                if len(got) == 5:
                    break
            assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert sub.closed
        t.unlink()


def test_subscriber_slots_run_out_and_come_back(name):
    with shmlink.Topic.create(name, 4096, max_subscribers=2) as t:
        a = t.subscribe()
        b = t.subscribe()
        with pytest.raises(shmlink.TooManyParticipants):
            t.subscribe()
        b.close()
        c = t.subscribe()  # the freed slot is reused
        assert c.topic is t and c.name == name
        a.close()
        c.close()
        t.unlink()


def test_dead_subscriber_slot_is_reused(name):
    with shmlink.Topic.create(name, 4096, max_subscribers=1, delivery="latest") as t:
        ready = CTX.Event()
        p = CTX.Process(target=w.idle_subscriber, args=(name, ready))
        p.start()
        try:
            assert ready.wait(30)
            with pytest.raises(shmlink.TooManyParticipants):
                t.subscribe()
        finally:
            p.kill()
            p.join(10)
        sub = t.subscribe()  # taken over from the dead process
        assert t.stats()["subscribers"][0]["pid"] == os.getpid()
        sub.close()
        t.unlink()


def test_wait_strategies(name):
    with shmlink.Topic.create(name, 4096, wait="spin") as t:
        sub = t.subscribe()
        for strategy in ("spin", "block", "hybrid"):
            t.wait = sub.wait = strategy
            assert t.wait == sub.wait == strategy
            threading.Timer(0.05, t.publish, args=(strategy.encode(),)).start()
            assert sub.recv(timeout=5) == strategy.encode()
        with pytest.raises(shmlink.Timeout):
            sub.recv(timeout=0.05)
        t.unlink()


def test_pickled_topic_reopens_by_name(name):
    import pickle
    with shmlink.Topic.create(name, 4096) as t:
        t2 = pickle.loads(pickle.dumps(t))
        sub = t2.subscribe()
        t.publish(b"via the other handle")
        assert sub.recv(timeout=1) == b"via the other handle"
        t2.close()
        t.unlink()


# --------------------------------------------------------------------------
# Late joiners; latest mode; lossless back-pressure
# --------------------------------------------------------------------------


def test_late_join_newest_and_oldest(name):
    with shmlink.Topic.create(name, 4096) as t:
        t.publish_many([w.make(i) for i in range(5)])
        newest = t.subscribe()
        oldest = t.subscribe("oldest")
        t.publish(w.make(5))
        assert [w.check(m) for m in newest.recv_many(10, timeout=1)] == [5]
        assert [w.check(m) for m in oldest.recv_many(10, timeout=1)] == [0, 1, 2, 3, 4, 5]
        assert oldest.missed == 0
        t.unlink()


def test_late_join_oldest_after_the_ring_wrapped(name):
    # 64-byte messages take 80 bytes: a 1600-byte ring holds the last 20.
    with shmlink.Topic.create(name, 1600, delivery="latest") as t:
        t.publish_many([w.make(i) for i in range(57)])
        oldest = t.subscribe("oldest")
        seqs = [w.check(m) for m in oldest.recv_many(100, timeout=1)]
        assert seqs == list(range(37, 57))
        assert oldest.next_seq == 57 and oldest.missed == 0
        t.unlink()


def test_latest_mode_counts_exactly_what_was_missed(name):
    with shmlink.Topic.create(name, 1600, delivery="latest") as t:
        sub = t.subscribe()
        assert t.publish_many([w.make(i) for i in range(100)]) == 100  # never waits
        assert t.try_publish(w.make(100))
        first = w.check(sub.recv(timeout=1))
        assert first == 81  # the oldest still held
        assert sub.missed == 81
        rest = [w.check(m) for m in sub.recv_many(100, timeout=1)]
        assert rest == list(range(82, 101))
        assert sub.received + sub.missed == t.published == 101
        assert t.stats()["subscribers"][0]["missed"] == 81
        # variable sizes, wrapping many times: still exact
        rng = random.Random(1)
        sizes = [rng.choice([12, 40, 64, 200, 700]) for _ in range(3000)]
        for i, size in enumerate(sizes):
            t.publish(w.make(101 + i, size))
            if rng.random() < 0.3:  # read a few now and then: laps come and go
                for m in sub.recv_many(rng.randint(1, 5), timeout=1):
                    w.check(m)
        while sub.lag:
            w.check(sub.recv(timeout=1))
        assert sub.received + sub.missed == t.published
        t.unlink()


def test_lossless_publisher_waits_for_the_slowest_subscriber(name):
    with shmlink.Topic.create(name, 1600) as t:
        fast, slow = t.subscribe(), t.subscribe()
        n = 0
        while t.try_publish(w.make(n)):
            n += 1
            assert w.check(fast.recv(timeout=1)) == n - 1
        assert n == 20  # the ring holds 20 of these
        with pytest.raises(shmlink.Timeout) as err:
            t.publish(w.make(n), timeout=0.05)
        assert "nothing was published" in str(err.value)
        with pytest.raises(shmlink.Timeout) as err:
            t.publish_many([w.make(n), w.make(n + 1)], timeout=0.05)
        assert err.value.sent == 0
        assert w.check(slow.recv(timeout=1)) == 0  # room for one
        t.publish(w.make(n), timeout=1)
        # a thread blocked in publish is released as soon as the slow one reads
        done = threading.Event()
        threading.Thread(target=lambda: (t.publish(w.make(n + 1), timeout=10), done.set())).start()
        assert not done.wait(0.1)
        assert w.check(slow.recv(timeout=1)) == 1
        assert done.wait(5)
        assert [w.check(m) for m in slow.recv_many(100, timeout=1)] == list(range(2, n + 2))
        assert [w.check(m) for m in fast.recv_many(100, timeout=1)] == [n, n + 1]
        assert fast.missed == slow.missed == 0
        slow.close()  # a closed subscriber holds nobody back
        for i in range(50):
            t.publish(w.make(n + 2 + i), timeout=1)
            w.check(fast.recv(timeout=1))
        t.unlink()


def test_lossless_without_subscribers_keeps_the_latest_for_late_joiners(name):
    with shmlink.Topic.create(name, 1600) as t:
        for i in range(50):
            t.publish(w.make(i), timeout=0)
        sub = t.subscribe("oldest")
        assert [w.check(m) for m in sub.recv_many(100, timeout=1)] == list(range(30, 50))
        t.unlink()


def test_messages_near_the_capacity_wrap(name):
    with shmlink.Topic.create(name, 1024) as t:
        sub = t.subscribe()
        rng = random.Random(7)
        for i in range(300):
            size = rng.choice([12, 500, 1000, 1008])  # 1008 + 16 fills the ring
            t.publish(w.make(i, size), timeout=1)
            assert w.check(sub.recv(timeout=1)) == i
        t.unlink()


# --------------------------------------------------------------------------
# Zero-copy receive
# --------------------------------------------------------------------------


def test_recv_view(name):
    with shmlink.Topic.create(name, 4096) as t:
        sub = t.subscribe()
        t.publish_many([b"first", b"second"])
        with sub.recv_view(timeout=1) as mv:
            assert isinstance(mv, memoryview) and mv.readonly and bytes(mv) == b"first"
            with pytest.raises(RuntimeError, match="zero-copy"):
                sub.recv(timeout=0)
        with pytest.raises(KeyError):
            with sub.recv_view(timeout=1) as mv:
                assert bytes(mv) == b"second"
                raise KeyError("left for the next receive")
        view = sub.recv_view(timeout=1)
        assert isinstance(view, TopicMessageView) and len(view) == 6 and bytes(view) == b"second"
        view.release()
        with pytest.raises(ValueError):
            view.data
        with pytest.raises(shmlink.Timeout):
            sub.recv_view(timeout=0.01)
        assert sub.received == 2
        t.unlink()


def test_recv_view_pins_the_message_in_lossless_mode(name):
    with shmlink.Topic.create(name, 1600) as t:
        sub = t.subscribe()
        t.publish(w.make(0))
        with sub.recv_view(timeout=1) as mv:
            for i in range(1, 20):
                t.publish(w.make(i), timeout=1)
            assert not t.try_publish(w.make(20))  # the viewed record holds publishers back
            assert w.check(mv) == 0
        assert t.try_publish(w.make(20))
        t.unlink()


def test_recv_view_overwritten_in_latest_mode(name):
    with shmlink.Topic.create(name, 1600, delivery="latest") as t:
        sub = t.subscribe()
        t.publish(w.make(0))
        with pytest.raises(MessageOverwritten):
            with sub.recv_view(timeout=1) as mv:
                assert w.check(mv) == 0
                t.publish_many([w.make(i) for i in range(1, 40)])  # laps the viewer
        assert w.check(sub.recv(timeout=1)) == 20  # the oldest still held
        assert sub.missed == 20 and sub.received == 1
        t.unlink()


# --------------------------------------------------------------------------
# on_message
# --------------------------------------------------------------------------


def test_on_message_delivers_in_order_and_stops(name):
    with shmlink.Topic.create(name, 4096) as t:
        sub = t.subscribe()
        got = []
        handler = sub.on_message(got.append)
        assert isinstance(handler, MessageHandler) and handler.running
        with pytest.raises(RuntimeError, match="handler"):
            sub.on_message(print)
        with pytest.raises(RuntimeError, match="another thread"):
            wait_for(lambda: sub._c.busy, what="the handler to wait")
            sub.recv(timeout=0)
        for i in range(1000):
            t.publish(w.make(i), timeout=5)
        wait_for(lambda: len(got) == 1000, what="1000 callbacks")
        assert [w.check(m) for m in got] == list(range(1000))
        t0 = time.monotonic()
        handler.stop()
        assert time.monotonic() - t0 < 2 and not handler.running
        handler.stop()  # idempotent
        t.publish(b"after stop")
        assert sub.recv(timeout=1) == b"after stop"  # usable again
        handler = sub.on_message(got.append)  # and a new handler can start
        t.publish(b"again")
        wait_for(lambda: got[-1] == b"again", what="delivery")
        sub.close()  # stops the handler
        assert not handler.running
        t.unlink()


def test_on_message_reports_callback_errors(name, caplog):
    with shmlink.Topic.create(name, 4096) as t:
        sub = t.subscribe()

        def callback(m):
            if m == b"bad":
                raise ZeroDivisionError("callback failed")

        handler = sub.on_message(callback)
        with caplog.at_level(logging.ERROR, logger="shmlink.topic"):
            t.publish_many([b"good", b"bad", b"never delivered"])
            wait_for(lambda: not handler.running, what="the handler to stop")
        assert isinstance(handler.error, ZeroDivisionError)
        assert "callback" in caplog.text and "ZeroDivisionError" in caplog.text
        with pytest.raises(ZeroDivisionError):
            handler.stop()
        handler.stop()  # raised once
        # close() raises it too when stop() was never called
        handler = sub.on_message(callback)
        t.publish(b"bad")
        wait_for(lambda: not handler.running, what="the handler to stop")
        with pytest.raises(ZeroDivisionError):
            sub.close()
        assert sub.closed
        t.unlink()


def test_on_message_stop_from_inside_the_callback(name):
    with shmlink.Topic.create(name, 4096) as t:
        sub = t.subscribe()
        got = []

        def callback(m):
            got.append(m)
            if m == b"stop":
                sub.stop()

        handler = sub.on_message(callback)
        t.publish_many([b"a", b"stop"])
        wait_for(lambda: not handler.running, what="the handler to stop itself")
        assert got == [b"a", b"stop"]
        sub.close()
        t.unlink()


def test_on_message_across_processes(name):
    with shmlink.Topic.create(name, 1 << 16) as t:
        got = []
        sub = t.subscribe()
        sub.on_message(got.append)
        go = CTX.Event()
        p = CTX.Process(target=w.publisher, args=(name, 2000, 100, go))
        p.start()
        go.set()
        join_all([p], timeout=60)
        wait_for(lambda: len(got) == 2000, timeout=30, what="2000 messages")
        assert [w.check(m) for m in got] == list(range(2000))
        sub.stop()
        t.unlink()


def test_close_from_another_thread_ends_a_blocked_recv(name):
    with shmlink.Topic.create(name, 4096) as t:
        sub = t.subscribe()
        errors = []

        def reader():
            try:
                sub.recv(timeout=30)
            except Exception as e:
                errors.append(e)

        th = threading.Thread(target=reader)
        th.start()
        wait_for(lambda: sub._c.busy, what="the reader to wait")
        t0 = time.monotonic()
        sub.close()
        th.join(5)
        assert not th.is_alive() and time.monotonic() - t0 < 2
        assert isinstance(errors[0], shmlink.SegmentClosed)
        t.unlink()


# --------------------------------------------------------------------------
# Across processes
# --------------------------------------------------------------------------


def _fan_out(name, mode, count, size, subs, capacity, slow=(), publishers=1):
    results = CTX.Queue()
    readies = [CTX.Event() for _ in range(subs)]
    go = CTX.Event()
    with shmlink.Topic.create(name, capacity, delivery=mode) as t:
        procs = [CTX.Process(target=w.subscriber,
                             args=(name, count, results, r, *((20, 0.002) if i in slow else (0, 0.0)),
                                   0, publishers))
                 for i, r in enumerate(readies)]
        procs += [CTX.Process(target=w.publisher, args=(name, count, size, go, k))
                  for k in range(publishers)]
        for p in procs:
            p.start()
        try:
            for r in readies:
                assert r.wait(60), "a subscriber never subscribed"
            go.set()
            got = [results.get(timeout=120) for _ in readies]
            join_all(procs, timeout=60)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
        assert t.published == count * publishers
        t.unlink()
    return got


def test_lossless_fan_out_4_subscribers_100k_messages(name):
    got = _fan_out(name, "lossless", 100_000, 64, 4, 1 << 16)
    for r in got:
        assert r["errors"] == []
        assert r["received"] == r["counted"] == 100_000 and r["missed"] == 0


def test_lossless_many_publishers(name):
    got = _fan_out(name, "lossless", 20_000, 48, 2, 4096, publishers=3)
    for r in got:
        assert r["errors"] == []
        assert r["received"] == 60_000 and r["missed"] == 0


def test_latest_fan_out_with_a_slow_subscriber(name):
    got = _fan_out(name, "latest", 100_000, 64, 4, 8192, slow={0})
    for r in got:
        assert r["errors"] == []
        assert r["received"] + r["missed"] == 100_000
        assert r["missed"] == r["gaps"] and r["received"] == r["counted"]
    assert any(r["missed"] > 0 for r in got)  # the slow one, at least, was lapped


def test_dead_subscriber_releases_a_blocked_lossless_publisher(name):
    with shmlink.Topic.create(name, 1600) as t:
        ready = CTX.Event()
        p = CTX.Process(target=w.idle_subscriber, args=(name, ready))
        p.start()
        try:
            assert ready.wait(30)
            n = 0
            while t.try_publish(w.make(n)):
                n += 1
            assert n == 20
            done = []
            th = threading.Thread(target=lambda: (t.publish(w.make(n), timeout=20),
                                                  done.append(time.monotonic())))
            th.start()
            time.sleep(0.3)
            assert not done  # blocked on the idle subscriber
            killed = time.monotonic()
            os.kill(p.pid, signal.SIGKILL)
            th.join(20)
            assert done, "the publisher stayed blocked after its subscriber died"
            assert done[0] - killed < 2.0
            assert t.stats()["evicted"] == 1 and t.subscriber_count == 0
        finally:
            p.kill()
            p.join(10)
        t.unlink()


def test_killed_publisher_never_shows_a_torn_message(name):
    size = 30_000
    with shmlink.Topic.create(name, 1 << 17, delivery="latest") as t:
        sub = t.subscribe()
        stop = threading.Event()
        seen, errors = [], []

        def reader():
            while not stop.is_set():
                try:
                    m = sub.recv(timeout=0.05)
                except shmlink.Timeout:
                    continue
                except Exception as e:
                    errors.append(e)
                    return
                try:
                    seen.append(w.check(m))
                except ValueError as e:
                    errors.append(e)

        th = threading.Thread(target=reader)
        th.start()
        rng = random.Random(os.getpid())
        first = 0
        try:
            for _ in range(4):
                ready = CTX.Event()
                p = CTX.Process(target=w.flood_publisher, args=(name, size, first, ready))
                p.start()
                assert ready.wait(30)
                time.sleep(rng.uniform(0.02, 0.2))
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
                first = t.published + 1_000_000  # the next publisher's messages are told apart
                # the lock a killed publisher may hold is taken over at once
                t0 = time.monotonic()
                t.publish(w.make(first - 1, size), timeout=5)
                assert time.monotonic() - t0 < 2
            wait_for(lambda: sub.lag == 0 or errors, timeout=20, what="the reader to catch up")
        finally:
            stop.set()
            th.join(10)
        assert errors == []
        assert len(seen) > 10 and seen == sorted(seen)
        assert sub.received + sub.missed == t.published
        t.unlink()


def test_ctrl_c_interrupts_blocked_calls(name):
    with shmlink.Topic.create(name, 1600) as t:
        code = (
            "import sys, shmlink\n"
            "t = shmlink.Topic.open(sys.argv[1], wait='block')\n"
            "sub = t.subscribe()\n"
            "if sys.argv[2] == 'pub':\n"
            "    while t.try_publish(b'x' * 64): pass\n"
            "print('ready', flush=True)\n"
            "try:\n"
            "    t.publish(b'x') if sys.argv[2] == 'pub' else sub.recv()\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
        )
        for what in ("sub", "pub"):
            p = subprocess.Popen([sys.executable, "-c", code, name, what], stdout=subprocess.PIPE,
                                 text=True)
            try:
                assert p.stdout.readline().strip() == "ready"
                time.sleep(0.1)
                p.send_signal(signal.SIGINT)
                out, _ = p.communicate(timeout=10)
            finally:
                p.kill()
            assert out.strip() == "interrupted", what
        t.unlink()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "shmlink", *args], capture_output=True,
                          text=True, input=input, timeout=60)


def test_cli_pub_sub_info(name):
    r = _cli("pub", name, "hello", "--create", "64k", "--delivery", "latest")
    assert r.returncode == 0, r.stderr
    r = _cli("pub", name, input="line one\nline two\n")
    assert r.returncode == 0, r.stderr
    r = _cli("sub", name, "--oldest", "--count", "3", "--timeout", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hello", "line one", "line two"]
    r = _cli("sub", name, "--count", "1", "--timeout", "0.2")
    assert r.returncode == 1 and "no message" in r.stderr
    with shmlink.Topic.open(name) as t:
        sub = t.subscribe()
        r = _cli("info", name, "--json")
        assert r.returncode == 0, r.stderr
        import json
        state = json.loads(r.stdout)["state"]
        assert state["delivery"] == "latest" and state["published"] == 3
        assert state["subscribers"][0]["pid"] == os.getpid()
        r = _cli("info", name)
        assert "delivery:" in r.stdout and "subscribers:" in r.stdout
        sub.close()
        t.unlink()
    r = _cli("pub", name, "x")
    assert r.returncode == 1 and "does not exist" in r.stderr


# --------------------------------------------------------------------------
# Hostile memory
# --------------------------------------------------------------------------

_CONTROL = _core.TOPIC_HEADER
_SLOTS = 4 * _core.TOPIC_SLOT_SIZE
_RING = 1024
_CLEAN = (shmlink.CorruptSegment, shmlink.IncompatibleSegment, shmlink.Timeout,
          shmlink.SegmentClosed, shmlink.TooManyParticipants)

_word = st.sampled_from([0, 1, 15, 16, 17, 1008, 1024, 1040, 2**31, 2**32 - 1, 2**63, 2**64 - 1,
                         2**64 - 16, os.getpid()])
_offset = st.one_of(st.integers(0, _CONTROL - 1), st.integers(_CONTROL, _CONTROL + _SLOTS - 1),
                    st.integers(_CONTROL + _SLOTS, _CONTROL + _SLOTS + _RING - 1))
_corruption = st.one_of(
    st.tuples(st.just("bytes"), _offset, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("word"), _offset.map(lambda o: o & ~7), _word),
    st.tuples(st.just("u32"), _offset.map(lambda o: o & ~3), _word.map(lambda v: v & 0xFFFFFFFF)),
)
_hostile_n = [0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruptions=st.lists(_corruption, min_size=1, max_size=3), mode=st.sampled_from(["lossless", "latest"]),
       published=st.integers(0, 40))
def test_hostile_memory_is_reported_never_a_crash(name, corruptions, mode, published):
    _hostile_n[0] += 1
    tname = f"{name}-h{_hostile_n[0]}"
    t = shmlink.Topic.create(tname, _RING, delivery=mode, max_subscribers=4, wait="block")
    try:
        sub = t.subscribe("oldest")
        for i in range(published):
            t.try_publish(w.make(i, 12 + i * 7 % 90))
        base = shmlink.segment.DATA_OFFSET
        mm = t._mm
        for kind, off, value in corruptions:
            if kind == "bytes":
                value = value[:_CONTROL + _SLOTS + _RING - off]
                mm[base + off:base + off + len(value)] = value
            elif kind == "word":
                mm[base + off:base + off + 8] = value.to_bytes(8, "little")
            else:
                mm[base + off:base + off + 4] = value.to_bytes(4, "little")
        ops = [
            lambda: sub.recv_many(100, timeout=0),
            lambda: sub.try_recv(),
            lambda: t.publish(b"p" * 40, timeout=0.02),
            lambda: t.publish_many([b"q" * 300, b"r"], timeout=0.02),
            lambda: t.subscribe("oldest", timeout=0.02).recv_many(100, timeout=0),
            lambda: t.subscribe(timeout=0.02).close(),
            lambda: t.stats(),
            lambda: sub.recv_view(timeout=0).release(),
            lambda: shmlink.Topic.open(tname).close(),
        ]
        for op in ops:
            try:
                got = op()
            except _CLEAN:
                continue
            if isinstance(got, list):
                assert all(isinstance(m, bytes) and len(m) <= t.max_message_size for m in got)
    finally:
        t.unlink()
        t.close()


# --------------------------------------------------------------------------
# The protocol header, from C
# --------------------------------------------------------------------------

_C_PROGRAM = r"""
#include "shmlink.h"
#include <stdlib.h>

/* topic_c sub NAME COUNT: receive COUNT messages <u64 seq><seq % 251 bytes>
 * topic_c pub NAME COUNT: publish them */
int main(int argc, char **argv) {
    struct shmlink_segment seg;
    struct shmlink_topic_handle h;
    struct timespec dl;
    static unsigned char buf[1 << 16];
    int rc;
    if (argc != 4)
        return 2;
    memset(&seg, 0, sizeof seg);
    if ((rc = shmlink_segment_open(&seg, argv[2])) != 0) {
        fprintf(stderr, "cannot open %s: %s\n", argv[2], strerror(-rc));
        return 1;
    }
    if (seg.kind != SHMLINK_KIND_TOPIC || shmlink_topic_attach(&h, seg.data, seg.size) != 0) {
        fprintf(stderr, "%s is not a topic\n", argv[2]);
        return 1;
    }
    uint32_t pid = (uint32_t)getpid();
    uint64_t start = shmlink_process_start_time(pid);
    long count = atol(argv[3]);
    if (strcmp(argv[1], "sub") == 0) {
        struct shmlink_topic_reader r;
        shmlink_deadline_after(&dl, 10);
        if ((rc = shmlink_topic_subscribe(&h, &r, pid, start, 0, &dl)) != 0) {
            fprintf(stderr, "subscribe: %s\n", strerror(-rc));
            return 1;
        }
        printf("ready\n");
        fflush(stdout);
        unsigned long long bytes = 0;
        for (long i = 0; i < count; i++) {
            shmlink_deadline_after(&dl, 10);
            int64_t n = shmlink_topic_recv(&h, &r, buf, sizeof buf, &dl);
            uint64_t seq;
            memcpy(&seq, buf, 8);
            if (n != (int64_t)(8 + i % 251) || seq != (uint64_t)i) {
                fprintf(stderr, "message %ld: length %lld, seq %llu\n", i, (long long)n,
                        (unsigned long long)seq);
                return 1;
            }
            bytes += (unsigned long long)n;
        }
        printf("received %ld messages, %llu bytes, missed %llu\n", count, bytes,
               (unsigned long long)r.missed);
        shmlink_topic_unsubscribe(&h, &r);
    } else {
        for (long i = 0; i < count; i++) {
            uint64_t seq = (uint64_t)i;
            memcpy(buf, &seq, 8);
            memset(buf + 8, 'c', (size_t)(i % 251));
            shmlink_deadline_after(&dl, 10);
            if ((rc = shmlink_topic_publish(&h, buf, 8 + i % 251, pid, start, &dl)) != 0) {
                fprintf(stderr, "publish %ld: %s\n", i, strerror(-rc));
                return 1;
            }
        }
        printf("published %ld messages\n", count);
    }
    shmlink_segment_close(&seg);
    return 0;
}
"""


@pytest.fixture(scope="module")
def topic_c(tmp_path_factory):
    import shutil
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    if shmlink.segment.shm_dir() != "/dev/shm":
        pytest.skip("the C program opens segments in /dev/shm")
    d = tmp_path_factory.mktemp("topic_c")
    (d / "topic_c.c").write_text(_C_PROGRAM)
    include = os.path.join(os.path.dirname(shmlink.__file__), "include")
    subprocess.run(["cc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I", include,
                    str(d / "topic_c.c"), "-o", str(d / "topic_c")], check=True, timeout=120)
    return str(d / "topic_c")


def _c_message(i):
    return i.to_bytes(8, "little") + b"c" * (i % 251)


def test_c_program_subscribes_and_publishes(topic_c, name):
    count = 3000
    with shmlink.Topic.create(name, 4096) as t:  # wraps the ring about 100 times
        child = subprocess.Popen([topic_c, "sub", name, str(count)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            for i in range(count):
                t.publish(_c_message(i), timeout=10)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        assert child.returncode == 0, err
        assert out.strip() == (f"received {count} messages, "
                               f"{sum(len(_c_message(i)) for i in range(count))} bytes, missed 0")
        assert t.subscriber_count == 0  # it unsubscribed
        got = []
        handler = t.subscribe().on_message(got.append)  # reads while the C program publishes
        r = subprocess.run([topic_c, "pub", name, str(count)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(got) == count, what=f"{count} messages from C")
        handler.stop()
        assert got == [_c_message(i) for i in range(count)]
        t.unlink()
