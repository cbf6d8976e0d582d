"""``ProcessPoolExecutor`` on shared memory, with a task protocol of its own.

``ProcessPoolExecutor(mp_context=shmlink.multiprocessing.get_context(...))``
(the one-line switch) moves only the standard executor's result queue: it
builds its call queue as ``concurrent.futures.process._SafeQueue``, a
standard queue on a pipe, whatever the context.  Even with both queues on
shared memory, the standard spends most of each small task in its own
Python: a work item, a hop through its manager thread, a ``_CallItem`` with
a ``functools.partial`` pickled by a feeder thread.

The executor here has the standard's API and semantics (futures, ``map``
with ``chunksize`` and ``timeout``, ``shutdown(wait, cancel_futures)``,
``initializer``, ``max_tasks_per_child``, ``BrokenProcessPool`` when a
worker dies, workers started on demand) on its own protocol:

* ``submit`` pickles the call into the shared call queue itself, in the
  caller's thread (one C call), while fewer than :data:`WINDOW` tasks per
  worker are out; beyond that, tasks wait in this process, where they can
  still be cancelled, and go out as results come back.
* Workers take ``(id, fn, args[, kwargs])`` and put ``(id, result,
  exception)`` on the shared result queue.
* One collector thread takes results (every one that is there per wake-up),
  settles their futures, and sends waiting tasks out.  It never touches the
  executor object, only the :class:`_Pool` they share, so an executor that
  is dropped without ``shutdown`` is shut down by its finalizer.

Deviation from the standard: a task is *running* (``Future.cancel()``
returns False) from the moment it is in the call queue, and up to
``WINDOW * max_workers`` tasks are (the standard moves ``max_workers + 1``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import _base
from concurrent.futures import process as _cfp
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from queue import Empty
from traceback import format_exception
from typing import Any, Callable, Iterable, Iterator

from .. import _core
from .context import get_context
from .queues import Queue

__all__ = ["ProcessPoolExecutor", "BrokenProcessPool"]

#: Tasks per worker that may be in the shared call queue at once: enough to
#: keep the workers busy while the collector thread waits for the GIL (1 costs
#: a quarter of the tasks/s at chunksize 1; 4 and 16 measure alike); the rest
#: of the submitted tasks wait in this process, where they can be cancelled.
WINDOW = 4
#: How often (s) the collector looks for a worker that died while tasks are out,
#: even while results keep coming from the others.
POLL = 0.1
#: How often (s) the collector looks for a worker that died while none has a task.
IDLE_POLL = 1.0
#: How often (s) an idle worker looks whether its parent is still alive.
ORPHAN_POLL = 1.0

# control messages on the result queue, beside (task id >= 0, result, exception)
_EXIT = -1  # (_EXIT, pid, None): this worker is leaving (max_tasks_per_child, or shutdown)
_WAKE = (-2, None, None)  # from this process: look at the pool's state

_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_global_shutdown = False


def _python_exit() -> None:
    """At interpreter exit (before non-daemon threads are joined): finish, then stop, every pool."""
    global _global_shutdown
    _global_shutdown = True
    pools = [p for p in _pools if p.pid == os.getpid()]  # not a fork() parent's
    for pool in pools:
        pool.request_shutdown()
    for pool in pools:
        t = pool.collector
        if t is not None:
            t.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # as concurrent.futures


class _TaskQueue(Queue):
    """The call and result queues: an item that does not pickle raises from ``put``, so
    its future fails with the error (a standard queue prints it from its feeder
    thread and drops the item)."""

    @staticmethod
    def _on_queue_feeder_error(e: BaseException, obj: Any) -> None:
        raise e


# -- the worker ----------------------------------------------------------------------------

def _worker(calls: _TaskQueue, results: _TaskQueue, parent: tuple[int, int],
            initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
            max_tasks: int | None) -> None:
    """A worker process: run calls until told to stop, the task limit, or the death of
    ``parent`` (the executor's process: pid and start time).

    Not the parent pid: under forkserver the server is the parent, and it lives
    while any worker does; and a worker still starting when the executor dies
    would take its new parent (init, a subreaper) for the executor.
    """
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            _base.LOGGER.critical("Exception in initializer:", exc_info=True)
            return  # unannounced: the parent sees the exit and breaks the pool (as the standard)
    get, put = calls.get, results.put
    done = 0
    while True:
        try:
            item = get(True, ORPHAN_POLL)
        except Empty:
            if not _core.process_alive(*parent):
                return  # orphaned: nobody will read a result
            continue
        if item is None:
            put((_EXIT, os.getpid(), None))
            return
        tid, fn, args = item[0], item[1], item[2]
        try:
            msg = (tid, fn(*args, **item[3]) if len(item) > 3 else fn(*args), None)
        except BaseException as e:
            msg = (tid, None, _cfp._ExceptionWithTraceback(e, e.__traceback__))
        del item, fn, args  # free the arguments now (as the standard)
        try:
            put(msg)
        except BaseException as e:  # the result does not pickle: fail its future with why
            put((tid, None, _cfp._ExceptionWithTraceback(e, e.__traceback__)))
        del msg
        done += 1
        if max_tasks is not None and done >= max_tasks:
            put((_EXIT, os.getpid(), None))
            return


def _run_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    return [fn(*args) for args in chunk]


def _chain(results: Iterator[list[Any]]) -> Iterator[Any]:
    """Each chunk's results in order, dropping each as it is yielded (no stale references)."""
    for chunk in results:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


# -- the pool: what the executor and its collector thread share ----------------------------

class _Pool:
    """Workers, queues and futures of one executor; all state under ``lock``."""

    def __init__(self, ctx: Any, max_workers: int, worker_args: tuple[Any, ...]) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.window = WINDOW * max_workers
        self.fork = ctx.get_start_method(allow_none=False) == "fork"
        self.worker_args = worker_args
        self.pid = os.getpid()  # a fork() child has a copy it must not use
        self.me = (self.pid, _core.process_start_time(self.pid))  # its workers exit when it is gone
        self.calls = _TaskQueue(ctx=ctx)
        self.results = _TaskQueue(ctx=ctx)
        self.lock = threading.RLock()  # re-entered by a reducer or done-callback that submits
        self.ids = itertools.count()
        self.processes: dict[int, Any] = {}
        self.running: dict[int, _base.Future] = {}  # in the call queue or in a worker
        self.backlog: deque[tuple[int, _base.Future, Any, tuple[Any, ...], dict[str, Any]]] = deque()
        self.idle = 0  # workers believed idle: a task submitted then needs no new worker
        self.broken: str | None = None
        self.shutdown = False
        self.closed = False
        self.sleeping = False  # the collector waits without a timeout: submit must wake it
        self.collector: threading.Thread | None = None

    # -- called with the lock held --

    def spawn(self) -> None:
        p = self.ctx.Process(target=_worker,
                             args=(self.calls, self.results, self.me, *self.worker_args))
        p.start()
        self.processes[p.pid] = p

    def adjust(self) -> None:
        """Workers for one more task, and the collector (the standard's policy)."""
        if self.fork:
            if self.collector is None:  # all at once, before this process has the thread
                while len(self.processes) < self.max_workers:
                    self.spawn()
        elif self.idle > 0:
            self.idle -= 1
        elif len(self.processes) < self.max_workers:
            self.spawn()
        if self.collector is None:
            t = threading.Thread(target=self.collect, name="shmlink-executor-collector")
            try:
                t.start()
            except RuntimeError as e:  # "can't create new thread at interpreter shutdown"
                self.broken = f"The executor could not start its collector thread: {e}"
                for p in self.processes.values():
                    p.terminate()
                for p in self.processes.values():
                    p.join()
                self.processes.clear()
                self.close()
                raise BrokenProcessPool(self.broken) from e
            self.collector = t
            _pools.add(self)

    def dispatch(self, tid: int, f: _base.Future, fn: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> BaseException | None:
        """Put one task in the call queue; the error to fail its future with, if it did not go."""
        if not f.set_running_or_notify_cancel():
            return None  # cancelled while it waited here
        self.running[tid] = f
        try:
            self.calls.put((tid, fn, args, kwargs) if kwargs else (tid, fn, args))
        except Exception as e:  # it does not pickle: its own future fails, not the pool
            del self.running[tid]
            tb = format_exception(type(e), e, e.__traceback__)
            e.__cause__ = _cfp._RemoteTraceback('\n"""\n{}"""'.format("".join(tb)))
            return e
        except BaseException:
            del self.running[tid]
            raise
        return None

    def wake(self) -> None:
        if self.sleeping and not self.closed:
            self.sleeping = False
            self.results.put(_WAKE)

    # -- called from any thread --

    def request_shutdown(self, cancel_futures: bool = False) -> None:
        if os.getpid() != self.pid:
            return  # a fork() child's copy: the workers, queues and futures are the parent's
        with self.lock:
            self.shutdown = True
            cancelled = [w[1] for w in self.backlog] if cancel_futures else []
            if cancel_futures:
                self.backlog.clear()
            if self.collector is None:
                self.close()
            elif not self.closed:
                self.results.put(_WAKE)
        for f in cancelled:
            f.cancel()

    def close(self) -> None:
        """Close both queues; with every worker joined, nothing pickled for one is pending."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            gone = not self.processes
        for q in (self.calls, self.results):
            if not gone:
                q.close()
                q.join_thread()
                continue
            ch = q._ch
            if ch is not None:
                ch.forget_pending()  # a worker killed while it started never took its handles
            q._terminate_broken()  # no reader left: a feeder still sending would wait forever

    # -- the collector thread --

    def collect(self) -> None:
        try:
            self.serve()
        except BaseException as e:  # a result that does not unpickle, a corrupt queue
            self.break_pool("A result could not be read from the result queue: "
                            f"{type(e).__name__}: {e}", e)
            return
        if not self.broken:
            self.stop_workers()

    def serve(self) -> None:
        get = self.results.get
        checked = time.monotonic()
        while True:
            with self.lock:
                if self.broken:
                    return
                if self.shutdown and not self.running and not self.backlog:
                    return
                self.sleeping = not self.running
                poll = IDLE_POLL if self.sleeping else POLL
            now = time.monotonic()
            if now - checked >= poll:  # also while the other workers keep answering
                checked = now
                self.check_workers()
                continue
            try:
                msg = get(True, checked + poll - now)
            except Empty:
                continue
            batch = [msg]
            try:
                while len(batch) < 1024:
                    batch.append(get(False))
            except Empty:
                pass
            except BaseException:  # an item that does not unpickle: those before it count
                self.settle(batch)
                raise
            self.settle(batch)
            del msg, batch  # results are the futures' alone (no stale references while idle)

    def settle(self, batch: list[tuple[int, Any, Any]]) -> None:
        done, failed, left = [], [], []
        with self.lock:
            for tid, value, exc in batch:
                if tid >= 0:
                    f = self.running.pop(tid, None)
                    if f is not None:
                        done.append((f, value, exc))
                    self.idle = min(self.idle + 1, len(self.processes))
                elif tid == _EXIT:
                    p = self.processes.pop(value, None)
                    if p is not None:
                        left.append(p)
                    self.idle = min(self.idle, len(self.processes))
            while self.backlog and len(self.running) < self.window:
                tid, f, fn, args, kwargs = self.backlog.popleft()
                err = self.dispatch(tid, f, fn, args, kwargs)
                if err is not None:
                    failed.append((f, err))
        del batch
        for f, value, exc in done:
            if exc is None:
                f.set_result(value)
            else:
                f.set_exception(exc)
        del done
        for f, err in failed:
            f.set_exception(err)
        for p in left:
            p.join()
        if left:
            self.replace(len(left))

    def replace(self, n: int) -> None:
        """Start ``n`` workers for ones that left (max_tasks_per_child) if work waits;
        a worker that cannot be started breaks the pool with why."""
        try:
            with self.lock:
                if self.running or self.backlog:  # submit may have started some meanwhile
                    for _ in range(min(n, self.max_workers - len(self.processes))):
                        self.spawn()
        except Exception as e:  # EAGAIN, EMFILE, ENOMEM, a handle that cannot be reserved
            self.break_pool(f"A worker could not be started to replace one that left: "
                            f"{type(e).__name__}: {e}", e)

    def check_workers(self) -> None:
        """Break the pool if a worker exited without saying so (killed, crashed, initializer)."""
        with self.lock:
            dead = [p for p in self.processes.values() if p.exitcode is not None]
        if not dead:
            return
        while True:  # an exit it announced may still be in the queue
            try:
                self.settle([self.results.get(False)])
            except Empty:
                break
        with self.lock:
            unannounced = [p for p in dead if p.pid in self.processes]
        if unannounced:
            codes = ", ".join(f"{p.pid}: {p.exitcode}" for p in unannounced)
            self.break_pool("A process in the process pool was terminated abruptly while the "
                            f"future was running or pending (pid: exit code {codes}).")

    def break_pool(self, reason: str, cause: BaseException | None = None) -> None:
        with self.lock:
            self.broken = reason
            futures = list(self.running.values()) + [w[1] for w in self.backlog]
            self.running.clear()
            self.backlog.clear()
            procs = list(self.processes.values())
        for f in futures:
            exc = BrokenProcessPool(reason)
            exc.__cause__ = cause
            try:
                f.set_exception(exc)
            except _base.InvalidStateError:  # cancelled meanwhile
                pass
        del futures
        for p in procs:
            if p.exitcode is None:
                p.terminate()
        for p in procs:
            p.join()
        with self.lock:
            self.processes.clear()
        self.close()

    def stop_workers(self) -> None:
        with self.lock:
            procs = list(self.processes.values())
            for _ in procs:
                self.calls.put(None)
        for p in procs:
            p.join()
        with self.lock:
            self.processes.clear()
        self.close()


# -- the executor ----------------------------------------------------------------------------

class ProcessPoolExecutor(_base.Executor):
    """``concurrent.futures.ProcessPoolExecutor``'s API on shared-memory queues of its own.

    The same parameters and behaviour; ``mp_context`` defaults to
    ``shmlink.multiprocessing.get_context()`` (spawn when
    ``max_tasks_per_child`` is given, as the standard), and a standard
    context is replaced by shmlink's for the same start method.  Not a
    subclass of the standard class.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (),
                 *, max_tasks_per_child: int | None = None) -> None:
        if max_workers is None:
            max_workers = getattr(os, "process_cpu_count", os.cpu_count)() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:
            mp_context = get_context("spawn" if max_tasks_per_child is not None else None)
        elif not hasattr(mp_context, "_shmlink"):
            mp_context = get_context(mp_context.get_start_method())
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError("max_tasks_per_child is incompatible with the 'fork' "
                                 "multiprocessing start method; supply a different mp_context.")
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._pool = _Pool(mp_context, max_workers, (initializer, initargs, max_tasks_per_child))
        # dropped without shutdown: the collector finishes what was submitted, then stops
        self._finalizer = weakref.finalize(self, self._pool.request_shutdown)

    @property
    def _processes(self) -> dict[int, Any]:
        """The worker processes by pid (as the standard's attribute)."""
        return self._pool.processes

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The collector thread (the role of the standard's manager thread, same name)."""
        return self._pool.collector

    @property
    def _broken(self) -> str | bool:
        """Why the pool broke, or False (as the standard's attribute)."""
        return self._pool.broken or False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _base.Future:
        pool = self._pool
        if os.getpid() != pool.pid:  # before the lock: the parent's threads may have held it
            raise BrokenProcessPool(
                f"this executor was created in process {pool.pid} and this process is a "
                "fork() of it: its workers, queues and collector thread are the parent's. "
                "Create a new executor in this process (for example lazily, on first use)")
        with pool.lock:
            if pool.broken:
                raise BrokenProcessPool(pool.broken)
            if pool.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            pool.adjust()
            f: _base.Future = _base.Future()
            tid = next(pool.ids)
            if pool.backlog or len(pool.running) >= pool.window:
                pool.backlog.append((tid, f, fn, args, kwargs))
                err = None
            else:
                err = pool.dispatch(tid, f, fn, args, kwargs)
            pool.wake()
        if err is not None:
            f.set_exception(err)
        return f

    submit.__doc__ = _base.Executor.submit.__doc__

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``map(fn, *iterables)`` in the workers, in order; ``chunksize`` calls per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        args = zip(*iterables)
        chunks = iter(lambda: tuple(itertools.islice(args, chunksize)), ())
        return _chain(super().map(partial(_run_chunk, fn), chunks, timeout=timeout))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pool = self._pool
        if os.getpid() != pool.pid:
            return  # a fork() child's copy: the parent's to shut down
        pool.request_shutdown(cancel_futures)
        t = pool.collector
        if wait and t is not None and t is not threading.current_thread():
            t.join()

    shutdown.__doc__ = _base.Executor.shutdown.__doc__
