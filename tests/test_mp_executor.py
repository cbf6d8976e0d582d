"""shmlink.multiprocessing.ProcessPoolExecutor: its own task protocol, proven with real workers.

CPython's own executor tests run against it in test_mp_cpython; these cover what
they do not: the window of dispatched tasks and what stays cancellable, a worker
that dies with tasks both dispatched and waiting, results that do not pickle,
callbacks that submit, threads that submit at once, an executor dropped or left
running at interpreter exit, and a parent that is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import shmlink.multiprocessing as smp
from shmlink.multiprocessing import futures as F
from shmlink.segment import PREFIX, shm_dir
from support import python_env, run_python, wait_for
from workers import mp as W


def _executor(workers: int = 2, **kw):
    return smp.ProcessPoolExecutor(workers, mp_context=smp.get_context("spawn"), **kw)


def _segments_of(pid: int) -> set[str]:
    return {e for e in os.listdir(shm_dir()) if e.startswith(f"{PREFIX}mp.") and f".{pid}." in e}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_executor_runs_on_shmlink_queues():
    with smp.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert ex._mp_context.get_start_method() == "spawn" and hasattr(ex._mp_context, "_shmlink")
        assert isinstance(ex._pool.calls, smp.Queue) and isinstance(ex._pool.results, smp.Queue)
        assert list(ex.map(W.square, range(300), chunksize=1)) == [x * x for x in range(300)]
        assert list(ex.map(W.square, range(500), chunksize=64)) == [x * x for x in range(500)]
        # an argument that cannot be pickled fails its own future, not the pool, with the
        # pickler's own error (PicklingError up to 3.12, AttributeError on 3.13 for a lambda)
        unpicklable = lambda: 1  # noqa: E731
        with pytest.raises(Exception) as direct:
            pickle.dumps(unpicklable)
        bad = ex.submit(W.square, unpicklable)
        with pytest.raises(type(direct.value)) as ei:
            bad.result(30)
        assert str(ei.value) == str(direct.value)
        assert ex.submit(W.square, 9).result(30) == 81
    assert not _segments_of(os.getpid())


def test_only_the_window_is_dispatched_the_rest_stays_cancellable(tmp_path):
    window = F.WINDOW  # one worker: WINDOW tasks go out, the rest wait here
    with _executor(1) as ex:
        futs = [ex.submit(W.touch_after, str(tmp_path / str(i)), 0.02) for i in range(window + 8)]
        assert [f.cancel() for f in futs] == [False] * window + [True] * 8
        assert all(f.result(60) == str(tmp_path / str(i)) for i, f in enumerate(futs[:window]))
        assert all(f.cancelled() for f in futs[window:])
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == list(range(window))  # none ran


def test_shutdown_cancel_futures_drops_what_waits_and_finishes_what_went_out(tmp_path):
    ex = _executor(1)
    futs = [ex.submit(W.touch_after, str(tmp_path / str(i)), 0.02) for i in range(F.WINDOW + 5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.cancelled() for f in futs] == [False] * F.WINDOW + [True] * 5
    assert all(f.done() and f.exception() is None for f in futs[:F.WINDOW])
    assert len(list(tmp_path.iterdir())) == F.WINDOW
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(W.square, 2)
    assert not _segments_of(os.getpid())


@pytest.mark.parametrize("how", ["killed", "exits"])
def test_a_worker_that_dies_breaks_the_pool(how):
    with _executor(2) as ex:
        assert ex.submit(W.square, 3).result(60) == 9
        futs = [ex.submit(W.touch_after, os.devnull, 0.05) for _ in range(3 * F.WINDOW)]
        if how == "killed":
            os.kill(next(iter(ex._processes)), signal.SIGKILL)
        else:
            futs.append(ex.submit(W.die))
        for f in futs:  # dispatched and still waiting here alike; none hangs
            try:
                f.result(60)
            except BrokenProcessPool as e:
                assert "terminated abruptly" in str(e)
        assert isinstance(futs[-1].exception(60), BrokenProcessPool)
        with pytest.raises(BrokenProcessPool):
            ex.submit(W.square, 2)
    assert not ex._processes and not _segments_of(os.getpid())


def test_a_worker_killed_while_the_others_keep_answering_breaks_the_pool(tmp_path):
    """Results that keep coming from the other workers must not hide a dead one: its
    task fails within the liveness poll, not when the stream of results stops."""
    with _executor(2) as ex:
        assert ex.submit(W.square, 1).result(60) == 1
        mark = tmp_path / "pid"
        stuck = ex.submit(W.pid_then_sleep, str(mark), 120)
        victim = int(wait_for(lambda: mark.exists() and mark.read_text(), timeout=60,
                              what="the busy worker's pid"))
        stop = threading.Event()
        answered = []

        def stream():  # a result every few hundred microseconds, from the other worker
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answered.append(ex.submit(W.square, 2).result(30))
                except BrokenProcessPool:
                    return

        t = threading.Thread(target=stream)
        t.start()
        try:
            wait_for(lambda: len(answered) > 100, timeout=60, what="results to stream")
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            assert isinstance(stuck.exception(60), BrokenProcessPool)
            # generous: the stream alone runs for 30 s; the poll is 0.1 s
            assert time.monotonic() - killed < 15
        finally:
            stop.set()
            t.join(60)
    assert not ex._processes and not _segments_of(os.getpid())


def test_a_worker_that_cannot_be_replaced_breaks_the_pool_and_settles_every_future(monkeypatch):
    """A worker that leaves (max_tasks_per_child) while tasks wait must be replaced; when
    the replacement cannot start (EAGAIN, EMFILE, ...), every future fails with why."""
    import errno
    with _executor(1, max_tasks_per_child=1) as ex:
        pool = ex._pool
        real, started = pool.spawn, []

        def spawn_once():
            if started:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
            started.append(real())

        monkeypatch.setattr(pool, "spawn", spawn_once)
        futs = [ex.submit(W.square, i) for i in range(F.WINDOW + 3)]
        assert futs[0].result(60) == 0
        for f in futs[1:]:  # dispatched and waiting alike
            e = f.exception(60)
            assert isinstance(e, BrokenProcessPool) and "could not be started" in str(e), e
        with pytest.raises(BrokenProcessPool):
            ex.submit(W.square, 2)
    assert not ex._processes and not _segments_of(os.getpid())


_FORKED = textwrap.dedent("""
    import os, sys, warnings
    from concurrent.futures.process import BrokenProcessPool
    import shmlink.multiprocessing as smp
    used = smp.ProcessPoolExecutor(1, mp_context=smp.get_context("spawn"))
    unused = smp.ProcessPoolExecutor(1, mp_context=smp.get_context("spawn"))
    assert used.submit(abs, -3).result(60) == 3
    # the collector thread runs: 3.12+ warns that a fork of a threaded process may deadlock
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    pid = os.fork()
    if pid == 0:  # the child: neither executor is its own; its exit must not touch them
        code = 0
        for ex in (used, unused):
            try:
                ex.submit(abs, -1)
                code = 1
            except BrokenProcessPool as e:
                if "fork()" not in str(e) or "new executor" not in str(e):
                    code = 2
            ex.shutdown()
        # multiprocessing's own atexit would join the parent's processes ("can only join
        # a child process"): a quirk of os.fork() after Process.start(), shmlink or not
        import multiprocessing.process
        multiprocessing.process._children.clear()
        sys.exit(code)  # atexit, finalizers and queue exit hooks run
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
    print(sum(used.submit(abs, -i).result(60) for i in range(50)),
          unused.submit(abs, -7).result(60), flush=True)
    used.shutdown()
    unused.shutdown()
    print(os.getpid(), flush=True)
""")


def test_a_fork_child_cannot_use_the_parents_executor_and_leaves_it_working():
    """An executor cannot cross fork(): the child's copy refuses work with a message that
    says what to do (the standard's would send tasks to the parent's workers and take
    the parent's results), and the child's exit leaves the parent's pool working."""
    r = run_python(_FORKED, env=python_env(), timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    code, sums, pid = r.stdout.splitlines()
    assert code == "0"
    assert sums == f"{sum(range(50))} 7"
    assert not _segments_of(int(pid))


def test_workers_dying_under_large_calls_break_the_pool_without_a_hang():
    """Every worker dies while calls larger than the ring wait to go out: the feeder
    sending them must give up when the pool breaks (CPython gh-94777)."""
    with _executor(2) as ex:
        futs = []
        for _ in range(10):
            try:
                futs.append(ex.submit(W.die, "a" * (4 << 20)))
            except BrokenProcessPool:  # a worker died already: submit says so
                break
        assert futs
        for f in futs:
            assert isinstance(f.exception(60), BrokenProcessPool)
    assert not ex._processes and not _segments_of(os.getpid())


def test_an_initializer_that_fails_breaks_the_pool():
    with _executor(1, initializer=W.fail) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(W.square, 2).result(60)


def test_a_result_that_does_not_pickle_fails_only_its_future():
    with _executor(1) as ex:
        with pytest.raises(TypeError, match="pickle"):
            ex.submit(W.a_lock).result(60)
        assert ex.submit(W.square, 5).result(60) == 25


def test_a_done_callback_can_submit():
    with _executor(2) as ex:
        chained: list = []
        done = threading.Event()

        def then(fut):  # runs in the collector thread
            chained.append(ex.submit(W.square, fut.result()))
            done.set()

        ex.submit(W.square, 3).add_done_callback(then)
        assert done.wait(60)
        assert chained[0].result(60) == 81


def test_max_tasks_per_child_replaces_workers_and_finishes_every_task():
    with _executor(2, max_tasks_per_child=3) as ex:
        pids = list(ex.map(W.getpid_after, [0.005] * 40))
    assert len(set(pids)) >= 40 // 3 and max(pids.count(p) for p in set(pids)) <= 3


def test_executor_threads_submitting_lose_no_task():
    """Threads submitting at once, while the collector settles results and sends the
    backlog out (and goes to sleep now and then), must never leave a task unscheduled."""
    with _executor(2) as ex:
        futs: list = []
        lock = threading.Lock()

        def submitter(base: int) -> None:
            for i in range(300):
                f = ex.submit(W.square, base + i)
                with lock:
                    futs.append((base + i, f))
                if i % 50 == 0:
                    time.sleep(0.001)  # let the collector go idle now and then

        ts = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert len(futs) == 1200
        for x, f in futs:
            assert f.result(60) == x * x


_AT_EXIT = textwrap.dedent("""
    import os, sys
    import shmlink.multiprocessing as smp
    from workers import mp as W
    out = sys.argv[1]
    ex = smp.ProcessPoolExecutor(2, mp_context=smp.get_context("spawn"))
    futs = [ex.submit(W.square, i) for i in range(100)]
    pids = list(ex._processes)
    del ex  # dropped without shutdown: its finalizer lets it finish, then stops it
    print(sum(f.result(60) for f in futs), os.getpid(), *pids)
    left = smp.ProcessPoolExecutor(2, mp_context=smp.get_context("spawn"))
    for i in range(6):  # still running at exit: they finish first, as the standard's
        left.submit(W.touch_after, os.path.join(out, str(i)), 0.1)
    print(*left._processes, flush=True)
    left.shutdown(wait=False)  # returns at once; exit still waits for them (CPython gh-83386)
""")


def test_dropped_and_exiting_executors_finish_and_leave_nothing(tmp_path):
    r = run_python(_AT_EXIT, str(tmp_path), env=python_env(), timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    first, second = r.stdout.splitlines()
    total, pid, *workers = map(int, first.split())
    assert total == sum(i * i for i in range(100))
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(i) for i in range(6)]
    for w in workers + [int(p) for p in second.split()]:
        wait_for(lambda: not _alive(w), timeout=30, what=f"worker {w} to exit")
    assert not _segments_of(pid)


_ORPHANS = textwrap.dedent("""
    import os, sys, time
    import shmlink.multiprocessing as smp
    from workers import mp as W
    ex = smp.ProcessPoolExecutor(2, mp_context=smp.get_context(sys.argv[1]))
    futs = [ex.submit(W.square, i) for i in range(2)]  # two workers, started on demand
    if sys.argv[2] == "running":
        [f.result(60) for f in futs]
    print(*ex._processes, flush=True)  # "starting": killed while they may not have run a line
    time.sleep(60)
""")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("when", ["starting", "running"])
def test_workers_of_a_killed_parent_exit(method, when):
    import subprocess
    import sys
    parent = subprocess.Popen([sys.executable, "-c", _ORPHANS, method, when],
                              stdout=subprocess.PIPE, text=True, env=python_env())
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers
    finally:
        parent.kill()
        parent.wait(30)
    for w in workers:  # each notices within ORPHAN_POLL that nobody will read its results
        wait_for(lambda: not _alive(w), timeout=30, what=f"orphaned worker {w} to exit")
    smp_gc = __import__("shmlink").gc
    smp_gc()
    assert not _segments_of(parent.pid)


def test_ctrl_c_in_map_cancels_what_waits_and_exits_cleanly():
    code = textwrap.dedent("""
        import os, signal, sys, threading
        import shmlink.multiprocessing as smp
        from workers import mp as W
        with smp.ProcessPoolExecutor(1, mp_context=smp.get_context("spawn")) as ex:
            ex.submit(W.square, 1).result(60)
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            futs = []
            try:
                for r in ex.map(W.touch_after, [os.devnull] * 200, [0.02] * 200):
                    pass
            except KeyboardInterrupt:
                print("interrupted")
        print("clean", os.getpid())
    """)
    r = run_python(code, env=python_env(), timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.split()
    assert lines[:2] == ["interrupted", "clean"]
    assert not _segments_of(int(lines[2]))
