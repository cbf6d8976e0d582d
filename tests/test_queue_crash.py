"""Queue crash safety: producers and consumers SIGKILLed at random moments.

210 kills in all.  Each must leave the survivors running, deliver every
message whose ``send`` returned exactly once, never deliver a torn message,
and never deliver what was never sent.  ``scripts/soak_queue.py`` runs the
same test for longer.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time

import pytest

import shmlink
from workers import queue as w
from support import CTX, join_all, kill, run_python, wait_for

# The robust lock hands a dead holder's lock over after a ~20 ms liveness
# slice; a survivor may be held up by a dead lock holder at most this long.
TAKEOVER_BOUND_S = 2.0


def _harness():
    return w.Harness(ctx=CTX, wait_for=wait_for, kill=kill, join_all=join_all)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed,producers,consumers", [
    (1, 90, 0),    # producers killed in send / try_send / send_many
    (2, 0, 90),    # consumers killed in recv / recv_into / recv_view
    (3, 15, 15),   # both at once
])
def test_random_sigkill(names, seed, producers, consumers):
    report = w.run_kill_test(_harness(), names("q"), names("ctl"), names("log"),
                             producer_kills=producers, consumer_kills=consumers, seed=seed)
    assert report.producer_kills == producers and report.consumer_kills == consumers
    assert report.messages > 0


def _spawn_dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = CTX.Process(target=time.sleep, args=(0,))
    p.start()
    join_all([p], timeout=30)
    return p.pid


@pytest.mark.parametrize("which", ["prod", "cons"])
def test_lock_of_a_killed_holder_is_taken_over_quickly(name, names, which):
    """A process dies holding the producer (consumer) lock; a sender (receiver)
    blocked behind it goes on within the bound."""
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 4096) as q:
        ctl = w.Slots.create(ctl_name, 64)
        try:
            if which == "cons":
                q.send(b"behind the lock", timeout=5)
            holder = CTX.Process(target=w.lock_holder, args=(name, ctl_name, which))
            holder.start()
            wait_for(lambda: ctl.get(0), timeout=30, what="the child to take the lock")
            assert ctl.get(0) == 1
            done = {}

            def blocked_call():
                try:
                    if which == "prod":
                        q.send(b"after the takeover", timeout=30)
                    else:
                        done["msg"] = q.recv(timeout=30)
                except BaseException as e:  # reported below
                    done["error"] = e
                done["t"] = time.monotonic()

            t = threading.Thread(target=blocked_call)
            t.start()
            time.sleep(0.3)
            assert "t" not in done, "the call went through a lock held by a live process"
            t_kill = time.monotonic()
            kill(holder)
            t.join(30)
            assert not t.is_alive()
            assert "error" not in done, done.get("error")
            held_up = done["t"] - t_kill
            assert held_up < TAKEOVER_BOUND_S, f"survivor held up {held_up:.3f} s after the kill"
            if which == "prod":
                assert q.recv(timeout=1) == b"after the takeover"
            else:
                assert done["msg"] == b"behind the lock"
            # the queue works normally afterwards, both ways
            q.send(b"again", timeout=1)
            assert q.recv(timeout=1) == b"again"
        finally:
            ctl.close()
        q.unlink()


@pytest.mark.parametrize("which", ["prod", "cons"])
def test_lock_word_naming_a_dead_pid_is_taken_over(name, which):
    """The lock word left by a holder that died and was reaped long ago."""
    dead = _spawn_dead_pid()
    with shmlink.Queue.create(name, 4096) as q:
        q.send_many([b"m", b"m2"], timeout=1)
        mem = q._memory
        off = shmlink._core.DATA_OFFSET + (64 if which == "prod" else 128)
        assert mem.cas32(off, 0, dead)
        t0 = time.monotonic()
        if which == "prod":
            q.send(b"n", timeout=10)
        else:
            assert q.recv(timeout=10) == b"m"
        assert time.monotonic() - t0 < TAKEOVER_BOUND_S
        assert mem.load32(off) == 0, "the lock is free again after the call"
        # a non-blocking call takes a dead holder's lock too
        assert mem.cas32(off, 0, dead)
        if which == "prod":
            assert q.try_send(b"o")
        else:
            assert q.try_recv() is not None
        q.unlink()


@pytest.mark.parametrize("step", ["prod_written", "prod_published", "prod_counted",
                                  "cons_read", "cons_published"])
def test_killed_at_each_commit_point(name, names, step):
    """A peer speaking the ring protocol by hand dies at each of its commit
    points, holding the real lock; the others go on, and each message is
    delivered exactly once -- or, if its producer died before publishing it,
    never."""
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 1024) as q:
        ctl = w.Slots.create(ctl_name, 4096)
        try:
            q.send_many([b"first", b"second"], timeout=5)
            if step.startswith("prod"):
                assert q.recv(timeout=1) == b"first"
            child = CTX.Process(target=w.die_at_commit_point, args=(name, ctl_name, step))
            child.start()
            wait_for(lambda: ctl.get(0), timeout=30, what="the child to reach its step")
            if step.startswith("prod"):
                # consumers are not held up by a producer's lock
                assert q.recv(timeout=5) == b"second"
                published = step in ("prod_published", "prod_counted")
                if published:
                    assert q.recv(timeout=5) == b"PHANTOM!"
                else:
                    with pytest.raises(shmlink.Timeout):
                        q.recv(timeout=0.3)  # written but never published: invisible
                t_kill = time.monotonic()
                kill(child)
                q.send(b"third", timeout=10)  # takes the dead producer's lock over
                assert time.monotonic() - t_kill < TAKEOVER_BOUND_S
                assert q.recv_many(10, timeout=1) == [b"third"]
                # the count follows the publish: a kill in between leaves it lagging
                assert q.sent == (4 if step == "prod_counted" else 3)
            else:
                n = bytes(ctl.region(64, 1))[0]
                assert bytes(ctl.region(65, n)) == b"first"
                # producers are not held up by a consumer's lock
                q.send(b"third", timeout=5)
                assert q.try_recv() is None  # the consumer lock is held
                t_kill = time.monotonic()
                kill(child)
                got = q.recv_many(10, timeout=10)
                assert time.monotonic() - t_kill < TAKEOVER_BOUND_S
                if step == "cons_read":
                    assert got == [b"first", b"second", b"third"], (
                        "a message read but not consumed was lost")
                else:
                    assert got == [b"second", b"third"], "a consumed message came back"
            assert q.try_recv() is None
            q.send(b"again", timeout=1)
            assert q.recv(timeout=1) == b"again"
        finally:
            ctl.close()
        q.unlink()


@pytest.mark.parametrize("step", ["prod_published", "cons_counted"])
def test_counters_only_under_report_when_killed_between_count_and_commit(name, names, step):
    """A producer publishes, then counts ``sent``; a consumer counts ``received``,
    then consumes.  Killed between the two, the counters are off by one in the
    safe direction: ``len(q)`` may read low, never high, so ``while len(q):
    q.recv()`` cannot block on an empty queue."""
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 1024) as q:
        ctl = w.Slots.create(ctl_name, 4096)
        try:
            q.send_many([b"first", b"second"], timeout=5)
            if step == "prod_published":
                assert q.recv(timeout=1) == b"first"
            child = CTX.Process(target=w.die_at_commit_point, args=(name, ctl_name, step))
            child.start()
            wait_for(lambda: ctl.get(0), timeout=30, what="the child to reach its step")
            kill(child)
            q.send(b"third", timeout=10)
            got = q.recv_many(10, timeout=10)
            assert got == ([b"second", b"PHANTOM!", b"third"] if step == "prod_published"
                           else [b"first", b"second", b"third"])
            assert q.try_recv() is None
            assert q.received - q.sent == 1, "the counters are off in the unsafe direction"
            assert len(q) == 0
            while len(q):  # must not block
                q.recv(timeout=1)
        finally:
            ctl.close()
        q.unlink()


@pytest.mark.parametrize("rep", range(3))
def test_consumer_killed_holding_a_view_leaves_the_message(name, names, rep):
    """A consumer SIGKILLed inside ``with q.recv_view()``: the message it was
    looking at is received by another consumer, which was blocked meanwhile and
    is held up less than the bound after the kill."""
    ctl_name = names("ctl")
    with shmlink.Queue.create(name, 1024) as q:
        ctl = w.Slots.create(ctl_name, 4096)
        try:
            msgs = [w.make_message(rep, i) for i in range(3)]
            q.send_many(msgs, timeout=5)
            victim = CTX.Process(target=w.view_holder, args=(name, ctl_name, 60.0, True))
            victim.start()
            wait_for(lambda: ctl.get(0) == 1, timeout=30, what="the victim to take a view")
            (n,) = struct.unpack("<I", bytes(ctl.region(64, 4)))
            assert bytes(ctl.region(68, n)) == msgs[0]
            got = {}

            def survivor():
                try:
                    got["msgs"] = [q.recv(timeout=30)]
                    got["t"] = time.monotonic()
                except BaseException as e:
                    got["error"] = e

            t = threading.Thread(target=survivor)
            t.start()
            time.sleep(0.2 + 0.1 * rep)
            assert "msgs" not in got, "received while another process held a view"
            t_kill = time.monotonic()
            kill(victim)
            t.join(30)
            assert not t.is_alive()
            assert "error" not in got, got.get("error")
            assert got["msgs"] == [msgs[0]], "the viewed message must go to the next consumer"
            assert got["t"] - t_kill < TAKEOVER_BOUND_S
            assert q.recv_many(10, timeout=1) == msgs[1:]
            assert ctl.get(1) == 0, "the victim never released its view"
        finally:
            ctl.close()
        q.unlink()


def test_killed_processes_do_not_break_later_opens(name):
    """After the kill tests' kind of abuse, the queue can still be opened and
    used by fresh processes (no stale per-process state in the segment)."""
    with shmlink.Queue.create(name, 1024) as q:
        procs = [CTX.Process(target=w.flood_producer, args=(name, i)) for i in range(3)]
        for p in procs:
            p.start()
        wait_for(lambda: len(q) > 0, timeout=30, what="producers to send")
        for p in procs:
            kill(p)
        drained = 0
        while q.try_recv() is not None:
            drained += 1
        assert drained > 0
        code = ("import sys, shmlink\n"
                "q = shmlink.Queue.open(sys.argv[1])\n"
                "q.send(b'fresh', timeout=5)\n")
        r = run_python(code, name, timeout=60)
        assert r.returncode == 0, r.stderr
        assert q.recv(timeout=5) == b"fresh"
        assert os.getpid() in q.participants()
        q.unlink()


def test_a_waiter_killed_asleep_costs_one_wake_then_nothing(name):
    """Waiting uses an armed event count: a consumer killed while asleep leaves
    the count armed, the next send disarms it with one futex wake, and sends
    after that make no wake-up at all (with a waiter *count*, every later send
    would have paid for a wake-up forever)."""
    from shmlink import _core

    seq_off = _core.DATA_OFFSET + 192  # struct shmlink_ring.data_ec.seq
    with shmlink.Queue.create(name, 4096, wait="block") as q:
        child = subprocess.Popen([sys.executable, "-c",
                                  "import shmlink, sys; shmlink.Queue.open(sys.argv[1], "
                                  "wait='block').recv()", name])
        try:
            wait_for(lambda: q._memory.load32(seq_off) & 1, timeout=30,
                     what="the consumer to arm the event count and sleep")
        finally:
            kill(child)
        armed = q._memory.load32(seq_off)
        q.send(b"one")  # finds the dead waiter's arming: one wake, disarmed
        disarmed = q._memory.load32(seq_off)
        assert disarmed == armed + 1 and disarmed & 1 == 0
        for _ in range(100):
            q.send(b"more")
            q.recv(timeout=1)
        assert q._memory.load32(seq_off) == disarmed, "sends still wake a dead waiter"
        q.unlink()

