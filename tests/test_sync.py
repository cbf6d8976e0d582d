"""Mutex and Event (issue 3), between real processes.

Holders die by SIGKILL; lost wake-ups are hunted with tight producer/consumer
and ping-pong loops in which every wait has a timeout, so a lost wake-up shows
up as a Timeout in a child (a non-zero exit), never as a hang.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from workers import segment as H
import shmlink
from support import CTX, asleep_in_futex, join_all, kill, run_python, wait_for
from shmlink import Event, Mutex, NotOwner, OwnerDied, Segment, ShmlinkError, Timeout
from shmlink import _core
from shmlink.sync import _M_BLOCK

# shmlink_lock.waiters of a mutex (its lock starts the block)
_WAITERS = _M_BLOCK + _core.LAYOUT["mutex"]["lock"][0] + _core.LAYOUT["lock"]["waiters"][0]


def start(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


@pytest.fixture
def ctl(names):
    c = H.Ctl.create(names("ctl"))
    yield c
    c.close()


@pytest.fixture
def mutex(name):
    m = Mutex.create(name)
    yield m
    m.close()


@pytest.fixture
def event_factory(names):
    made = []

    def make(auto_reset=False):
        e = Event.create(names(), auto_reset=auto_reset)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


# --- Mutex ----------------------------------------------------------------------------


def test_mutual_exclusion_across_four_processes(mutex, names):
    counter = Segment.create(names("counter"), 8)
    n, procs = 2000, 4
    ps = [start(H.mutex_increment, mutex.name, counter.name, n) for _ in range(procs)]
    join_all(ps, timeout=90)
    assert struct.unpack("<Q", counter.read(0, 8))[0] == n * procs, "an increment was lost"
    assert mutex.stats()["acquisitions"] == n * procs
    assert not mutex.locked() and mutex.holder_pid is None and mutex.consistent
    counter.close()


def test_create_open_and_create_or_open(name):
    with pytest.raises(shmlink.SegmentNotFound):
        Mutex.open(name)
    a = Mutex.create_or_open(name)
    assert a.created
    with pytest.raises(shmlink.SegmentExists):
        Mutex.create(name)
    b = Mutex.create_or_open(name)
    assert not b.created
    assert not a.locked() and a.consistent and a.holder_pid is None
    b.close()
    a.close()


def test_acquire_times_out_while_another_process_holds_it(mutex, event_factory):
    release = event_factory()
    p = start(H.mutex_hold_until, mutex.name, release.name)
    try:
        wait_for(lambda: mutex.holder_pid == p.pid, timeout=30, what="the child to take the lock")
        assert mutex.locked()
        t0 = time.monotonic()
        with pytest.raises(Timeout) as exc:
            mutex.acquire(timeout=0.2)
        assert time.monotonic() - t0 >= 0.2
        assert isinstance(exc.value, TimeoutError) and str(p.pid) in str(exc.value)
        with pytest.raises(Timeout):
            mutex.acquire(timeout=0)
        assert mutex.try_acquire() is False
        with pytest.raises(NotOwner):
            mutex.release()  # held by the child, not by us
        assert mutex.holder_pid == p.pid, "a refused release must not free the lock"
        release.set()
        t0 = time.monotonic()
        assert mutex.acquire(timeout=10) is True
        assert time.monotonic() - t0 < 5
        assert mutex.holder_pid == os.getpid()
        mutex.release()
    finally:
        release.set()
        join_all([p], timeout=30)
    assert mutex.holder_pid is None


def test_try_acquire(mutex):
    assert mutex.try_acquire() is True
    assert mutex.holder_pid == os.getpid()
    assert mutex.try_acquire() is False  # not recursive
    mutex.release()
    assert mutex.try_acquire() is True
    mutex.release()


def test_release_when_not_held_is_not_owner(mutex):
    with pytest.raises(NotOwner) as exc:
        mutex.release()
    assert isinstance(exc.value, RuntimeError) and mutex.name in str(exc.value)
    mutex.acquire()
    mutex.release()
    with pytest.raises(NotOwner):
        mutex.release()  # twice
    with pytest.raises(NotOwner):
        mutex.mark_consistent()


def test_only_the_acquiring_thread_may_release(mutex):
    mutex.acquire()
    errors = []

    def other():
        try:
            mutex.release()
        except NotOwner as e:
            errors.append(e)
        try:
            mutex.acquire(timeout=0.1)
        except Timeout as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert [type(e) for e in errors] == [NotOwner, Timeout]
    assert mutex.holder_pid == os.getpid()
    mutex.release()


def test_not_recursive(mutex):
    mutex.acquire()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        mutex.acquire(timeout=3)  # must refuse at once, not deadlock until the timeout
    assert time.monotonic() - t0 < 3
    assert mutex.holder_pid == os.getpid()
    mutex.release()
    assert not mutex.locked()


def test_with_statement_locks_across_processes(mutex):
    with mutex:
        assert mutex.holder_pid == os.getpid()
        r = run_python(
            "import sys, shmlink\n"
            "m = shmlink.Mutex.open(sys.argv[1])\n"
            "print(m.holder_pid, m.try_acquire())\n"
            "m.close()\n",
            mutex.name,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(os.getpid()), "False"]
    assert not mutex.locked()


def _kill_holder(mutex: Mutex, how: str) -> "CTX.Process":
    """Have a child take the mutex and die holding it; return the (dead) child."""
    if how == "kills-itself":
        p = start(H.mutex_acquire_and_die, mutex.name)
        wait_for(lambda: mutex.holder_pid == p.pid, timeout=30, what="the child to take the lock")
        # not joined: the child is a zombie until reaped, which must count as dead
    else:
        p = start(H.mutex_acquire_and_sleep, mutex.name)
        wait_for(lambda: mutex.holder_pid == p.pid, timeout=30, what="the child to take the lock")
        kill(p)
    return p


@pytest.mark.parametrize("how", ["kills-itself", "gets-killed"])
def test_holder_that_dies_is_detected_and_reported(mutex, how):
    p = _kill_holder(mutex, how)
    try:
        t0 = time.monotonic()
        with pytest.raises(OwnerDied) as exc:
            mutex.acquire(timeout=5)
        assert time.monotonic() - t0 < 5
        assert exc.value.previous_pid == p.pid
        assert str(p.pid) in str(exc.value)
        # OwnerDied means: the lock IS held by us now
        assert mutex.holder_pid == os.getpid() and mutex.locked()
        assert mutex.consistent is False
        mutex.release()  # not repaired: the next acquirers are told too
        assert not mutex.consistent
        q = start(H.mutex_expect_owner_died, mutex.name, p.pid)
        join_all([q], timeout=30)
        with pytest.raises(OwnerDied) as exc:
            mutex.acquire(timeout=5)
        assert exc.value.previous_pid == p.pid
        mutex.mark_consistent()
        assert mutex.consistent
        mutex.release()
        assert mutex.acquire(timeout=5) is True  # repaired: plain acquisitions again
        mutex.release()
        r = run_python(
            "import sys, shmlink\n"
            "m = shmlink.Mutex.open(sys.argv[1])\n"
            "m.acquire(timeout=5); m.release(); print(m.consistent)\n"
            "m.close()\n",
            mutex.name,
        )
        assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
    finally:
        p.join(10)


def test_try_acquire_takes_over_from_a_dead_holder(mutex):
    p = _kill_holder(mutex, "gets-killed")
    with pytest.raises(OwnerDied) as exc:
        mutex.try_acquire()
    assert exc.value.previous_pid == p.pid
    assert mutex.holder_pid == os.getpid()
    mutex.mark_consistent()
    mutex.release()


@pytest.mark.parametrize("take", ["acquire", "try_acquire"])
def test_owner_died_names_a_holder_that_died_before_its_bookkeeping(mutex, take):
    """A holder that dies right after the lock's CAS, before it recorded itself as the
    holder, is the one OwnerDied names: the take-over records the PID it replaced in the
    lock word (reading the last recorded holder named the process before it)."""
    mutex.acquire(timeout=5)
    mutex.release()  # the last recorded holder is this process
    r = run_python(
        "import os, sys, shmlink\n"
        "from shmlink.sync import _M_BLOCK\n"
        "m = shmlink.Mutex.open(sys.argv[1])\n"
        "assert m._memory.lock_acquire(_M_BLOCK, None, 0) == 0  # the CAS, nothing else\n"
        "print(os.getpid(), flush=True)\n"
        "os._exit(0)\n",
        mutex.name,
    )
    assert r.returncode == 0, r.stderr
    dead = int(r.stdout)
    assert mutex.holder_pid == dead
    with pytest.raises(OwnerDied) as exc:
        if take == "acquire":
            mutex.acquire(timeout=5)
        else:
            mutex.try_acquire()
    assert exc.value.previous_pid == dead != os.getpid()
    assert str(dead) in str(exc.value)
    mutex.mark_consistent()
    mutex.release()
    assert mutex.consistent and not mutex.locked()


def test_with_on_inconsistent_mutex_raises_and_does_not_leave_it_locked(mutex):
    p = _kill_holder(mutex, "kills-itself")
    try:
        for _ in range(2):  # the first takes it from the dead; the second finds it inconsistent
            with pytest.raises(OwnerDied) as exc:
                with mutex:
                    pytest.fail("the body must not run on an inconsistent mutex")
            assert exc.value.previous_pid == p.pid
            assert not mutex.locked(), "with-statement left the mutex locked"
            assert not mutex.consistent
        r = run_python(
            "import sys, shmlink\n"
            "m = shmlink.Mutex.open(sys.argv[1])\n"
            "try:\n"
            "    m.try_acquire()\n"
            "except shmlink.OwnerDied as e:\n"
            "    print('told', e.previous_pid)\n"
            "    m.release()\n",
            mutex.name,
        )
        assert r.stdout.split() == ["told", str(p.pid)], r.stderr
    finally:
        p.join(10)
    with pytest.raises(OwnerDied):
        mutex.acquire(timeout=5)
    mutex.mark_consistent()
    mutex.release()
    with mutex:
        assert mutex.holder_pid == os.getpid()
    assert not mutex.locked()


def test_ctrl_c_interrupts_a_blocked_acquire(mutex):
    mutex.acquire()
    try:
        H.assert_ctrl_c_interrupts(
            "import sys, shmlink\n"
            "m = shmlink.Mutex.open(sys.argv[1])\n"
            "print('acquiring', flush=True)\n"
            "m.acquire()\n",
            mutex.name,
            blocked=lambda: mutex._memory.load32(_WAITERS) > 0,
        )
        assert mutex.holder_pid == os.getpid()
    finally:
        mutex.release()


def test_ctrl_c_is_not_lost_between_two_sleep_slices(mutex):
    """A blocked acquire sleeps in short futex slices (to check the holder's liveness)
    inside C with the GIL released.  A SIGINT that lands while the waiter is between two
    slices (its slice timed out, it has not run yet) gets no EINTR: Python's handler
    only sets a flag, and a loop that never calls PyErr_CheckSignals() then sleeps on,
    past Ctrl-C, until the lock is free.  Made deterministic by starving the waiter
    (SCHED_IDLE, on one CPU with a busy loop) so its slices expire while it cannot run."""
    cpu = min(os.sched_getaffinity(0))
    mutex.acquire()
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, shmlink\n"
         "m = shmlink.Mutex.open(sys.argv[1])\n"
         "print('acquiring', flush=True)\n"
         "m.acquire()\n",
         mutex.name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hog = None
    try:
        assert H._readline(child, 30).strip()
        wait_for(lambda: mutex._memory.load32(_WAITERS) > 0, what="the child to block")
        try:
            os.sched_setaffinity(child.pid, {cpu})
            os.sched_setscheduler(child.pid, os.SCHED_IDLE, os.sched_param(0))
        except (PermissionError, AttributeError) as e:
            pytest.skip(f"cannot starve a process here: {e}")
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(hog.pid, {cpu})
        time.sleep(0.3)  # several 20 ms slices expire while the waiter cannot run
        child.send_signal(signal.SIGINT)
        time.sleep(0.05)
        hog.kill()
        hog.wait(10)
        # give the waiter its normal share of the machine back to react
        os.sched_setscheduler(child.pid, os.SCHED_OTHER, os.sched_param(0))
        os.sched_setaffinity(child.pid, os.sched_getaffinity(0))
        try:
            _, err = child.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C was lost: Mutex.acquire() still blocked 5 s after SIGINT")
        assert "KeyboardInterrupt" in err, err
    finally:
        for proc in (hog, child):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        mutex.release()


# --- Event ------------------------------------------------------------------------------


def test_set_in_one_process_wakes_a_waiter_in_another(event_factory, ctl):
    ev = event_factory()
    assert not ev.auto_reset and not ev.is_set()
    p = start(H.event_wait_flag, ev.name, ctl.seg.name, 0, 30.0)
    try:
        wait_for(lambda: ev.stats()["armed"] and asleep_in_futex(p.pid), timeout=30,
                 what="the child to wait")
        assert ctl.get(0) == 0, "wait returned before set()"
        ev.set()
        ctl.wait(0, timeout=10)
    finally:
        ev.set()
        join_all([p], timeout=30)
    assert ev.is_set(), "a manual-reset event stays set"
    assert ev.set_count >= 1


def test_wait_returns_when_another_process_sets(event_factory):
    ev = event_factory()
    p = start(H.event_set_after, ev.name, 0.2)
    try:
        t0 = time.monotonic()
        assert ev.wait(timeout=20) is True
        assert time.monotonic() - t0 < 10
    finally:
        join_all([p], timeout=30)
    assert ev.set_count == 1


def test_wait_times_out(event_factory):
    ev = event_factory()
    t0 = time.monotonic()
    with pytest.raises(Timeout) as exc:
        ev.wait(timeout=0.2)
    assert time.monotonic() - t0 >= 0.2
    assert isinstance(exc.value, TimeoutError) and ev.name in str(exc.value)
    with pytest.raises(Timeout):
        ev.wait(timeout=0)
    with pytest.raises(ValueError):
        ev.wait(timeout=-1)
    ev.set()
    assert ev.wait(timeout=0) is True
    assert ev.wait(timeout=0) is True  # manual reset: still set
    ev.clear()
    assert not ev.is_set()
    with pytest.raises(Timeout):
        ev.wait(timeout=0.05)


def test_opener_gets_the_creators_reset_mode(event_factory):
    auto, manual = event_factory(auto_reset=True), event_factory()
    code = ("import sys, shmlink\n"
            "print(*[shmlink.Event.open(n).auto_reset for n in sys.argv[1:]])\n")
    r = run_python(code, auto.name, manual.name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]
    with pytest.raises(shmlink.SegmentExists):
        Event.create(auto.name)
    with pytest.raises(shmlink.SettingsMismatch, match="auto_reset True, not False"):
        Event.create_or_open(auto.name, auto_reset=False)
    other = Event.create_or_open(auto.name)  # not passed: not compared
    assert not other.created and other.auto_reset
    other.close()


def test_auto_reset_one_set_releases_exactly_one_waiter(event_factory, ctl):
    ev = event_factory(auto_reset=True)
    ps = [start(H.event_wait_flag, ev.name, ctl.seg.name, i, 30.0) for i in range(3)]
    released = lambda: sum(ctl.get(i) for i in range(3))  # noqa: E731
    try:
        wait_for(lambda: ev.stats()["armed"] and asleep_in_futex(*(p.pid for p in ps)),
                 timeout=30, what="three waiters")
        for k in range(1, 4):
            ev.set()
            wait_for(lambda: released() == k, timeout=10, what=f"{k} waiter(s) released")
            time.sleep(0.2)  # give a wrongly woken second waiter time to show up
            assert released() == k, f"one set() released {released() - k + 1} waiters"
            assert not ev.is_set(), "the released waiter must have consumed the set"
    finally:
        for _ in range(3):
            ev.set()
            time.sleep(0.01)
        join_all(ps, timeout=30)


def test_manual_reset_one_set_releases_every_waiter(event_factory, ctl):
    ev = event_factory()
    ps = [start(H.event_wait_flag, ev.name, ctl.seg.name, i, 30.0) for i in range(3)]
    try:
        wait_for(lambda: ev.stats()["armed"] and asleep_in_futex(*(p.pid for p in ps)),
                 timeout=30, what="three waiters")
        ev.set()
        for i in range(3):
            ctl.wait(i, timeout=10)
    finally:
        ev.set()
        join_all(ps, timeout=30)
    assert ev.is_set()


def test_no_lost_wakeup_between_wake_and_read(event_factory, names):
    """Producer: write i; set() -- 20,000 times.  Consumer: wait; read.  A write that
    lands between the consumer's wake and its read must never be lost: the consumer
    always gets to the final value (each wait has a 10 s timeout: a loss is a failure)."""
    ev = event_factory(auto_reset=True)
    seg = Segment.create(names("value"), 16)
    n = 20_000
    consumer = start(H.event_consumer, ev.name, seg.name, n)
    wait_for(lambda: ev.stats()["armed"] and asleep_in_futex(consumer.pid), timeout=30,
             what="the consumer to wait")
    producer = start(H.event_producer, ev.name, seg.name, n)
    join_all([producer, consumer], timeout=90)
    assert struct.unpack("<Q", seg.read(0, 8))[0] == n
    wakeups = struct.unpack("<Q", seg.read(8, 8))[0]
    assert 1 <= wakeups <= n
    assert ev.set_count == n
    seg.close()


def test_no_lost_wakeup_ping_pong(event_factory):
    """A set() racing a waiter going to sleep: 5,000 strict round trips."""
    ping, pong = event_factory(auto_reset=True), event_factory(auto_reset=True)
    rounds = 5000
    p = start(H.event_pong, ping.name, pong.name, rounds)
    try:
        for i in range(rounds):
            ping.set()
            try:
                pong.wait(timeout=10)
            except Timeout:
                pytest.fail(f"wake-up lost at round {i}")
    finally:
        join_all([p], timeout=30)
    assert ping.set_count == pong.set_count == rounds
    assert not ping.is_set() and not pong.is_set()


def test_ctrl_c_interrupts_a_wait_without_timeout(event_factory):
    ev = event_factory()
    H.assert_ctrl_c_interrupts(
        "import sys, shmlink\n"
        "e = shmlink.Event.open(sys.argv[1])\n"
        "print('waiting', flush=True)\n"
        "e.wait()\n",
        ev.name,
        blocked=lambda: ev.stats()["armed"],
    )
    # the interrupted waiter left at most its armed bit: one futex wake, then none
    wakes = ev.stats()["wakes"]
    for _ in range(10):
        ev.set()
    assert ev.stats()["wakes"] - wakes <= 1 and not ev.stats()["armed"]


def test_handles_pickle_by_name_into_spawned_children(event_factory, mutex):
    ev = event_factory(auto_reset=True)
    assert ev.name.encode() in pickle.dumps(ev)
    p = start(H.set_event_handle, ev)
    try:
        assert ev.wait(timeout=20) is True
    finally:
        join_all([p], timeout=30)
    with mutex:
        q = start(H.mutex_handle_try, mutex)
        join_all([q], timeout=30)
    assert not mutex.locked()


def test_closed_handles_raise_segment_closed(name):
    ev = Event.create(name)
    ev.close()
    ev.close()
    for op in (ev.set, ev.is_set, ev.clear, lambda: ev.wait(timeout=0)):
        with pytest.raises(shmlink.SegmentClosed):
            op()
    m = Mutex.create(name + "-m")
    m.close()
    for op in (m.acquire, m.try_acquire, m.release, lambda: m.holder_pid):
        with pytest.raises(ShmlinkError):
            op()
