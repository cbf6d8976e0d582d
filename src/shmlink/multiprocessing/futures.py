"""``concurrent.futures.ProcessPoolExecutor`` with both of its queues on shared memory.

``ProcessPoolExecutor(mp_context=shmlink.multiprocessing.get_context(...))``
(the one-line switch) moves only the result queue: the executor builds its
call queue as ``concurrent.futures.process._SafeQueue``, a standard
``multiprocessing.queues.Queue`` on a pipe, whatever the context.  The
subclass here replaces that call queue with a shmlink :class:`Queue` of the
same bound and the same error hook, and takes a shmlink context by default.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import process as _cfp
from multiprocessing.connection import Connection as _PipeEnd
from traceback import format_exception
from typing import Any

from .context import get_context
from .queues import Queue

__all__ = ["ProcessPoolExecutor"]


class _SafeQueue(Queue):
    """The executor's call queue: a pickling error fails the task's future (as the standard's)."""

    def __init__(self, max_size: int = 0, *, ctx: Any, pending_work_items: Any,
                 shutdown_lock: Any, thread_wakeup: Any) -> None:
        self.pending_work_items = pending_work_items
        self.shutdown_lock = shutdown_lock
        self.thread_wakeup = thread_wakeup
        super().__init__(max_size, ctx=ctx)

    def _on_queue_feeder_error(self, e: BaseException, obj: Any) -> None:  # type: ignore[override]
        if isinstance(obj, _cfp._CallItem):
            tb = format_exception(type(e), e, e.__traceback__)
            e.__cause__ = _cfp._RemoteTraceback('\n"""\n{}"""'.format("".join(tb)))
            work_item = self.pending_work_items.pop(obj.work_id, None)
            with self.shutdown_lock:
                self.thread_wakeup.wakeup()
            if work_item is not None:
                work_item.future.set_exception(e)
        else:
            Queue._on_queue_feeder_error(e, obj)

    class _NoWriter:
        def close(self) -> None:
            pass

    #: 3.12+ closes ``call_queue._writer`` when the pool breaks (to unblock a feeder)
    _writer = _NoWriter()


class _Wakeup:
    """The manager thread's wake-up (the standard ``_ThreadWakeup``'s interface), coalesced.

    The standard writes one message into a pipe per ``submit`` and its manager
    thread reads them back one by one (a ``poll`` and a ``recv`` each, on
    every turn of its loop).  Here the pipe holds at most one byte, and
    ``_pending`` says whether it is there: ``wakeup`` writes it unless it is,
    ``clear`` reads it if it is.  Both look at ``_pending`` before taking the
    lock (two threads that took it around a system call each would queue on
    it for every task).  No wake-up is lost: ``clear`` drops ``_pending``
    only after it drained the byte, and the manager thread looks at the work
    queue and the shutdown flag after every ``clear``, so a ``wakeup`` that
    found ``_pending`` set while ``clear`` ran has its work seen anyway.
    """

    def __init__(self) -> None:
        r, w = os.pipe()
        self._reader = _PipeEnd(r, writable=False)  # what the manager's wait() selects on
        self._w = w
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False

    def wakeup(self) -> None:
        if self._pending:
            return
        with self._lock:
            if not self._closed and not self._pending:
                self._pending = True
                os.write(self._w, b"\0")

    def clear(self) -> None:
        if not self._pending:
            return
        with self._lock:
            if not self._closed and self._pending:
                os.read(self._reader.fileno(), 1)
                self._pending = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._w)
                self._reader.close()


class _ManagerThread(_cfp._ExecutorManagerThread):
    """The standard manager thread, taking a waiting result without a selector."""

    def wait_result_broken_or_wakeup(self) -> Any:
        # The standard builds a selector over the result queue, the wake-up and every
        # worker's sentinel for each result.  A result already in the ring needs none
        # of that (the standard reads a ready result first too, whatever else is ready).
        reader = self.result_queue._reader
        if reader.poll(0):
            try:
                item = reader.recv()
            except BaseException:
                return super().wait_result_broken_or_wakeup()  # let it report the breakage
            self.thread_wakeup.clear()
            return item, False, None
        return super().wait_result_broken_or_wakeup()


class ProcessPoolExecutor(_cfp.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` whose call and result queues are shmlink's.

    The same parameters; ``mp_context`` defaults to
    ``shmlink.multiprocessing.get_context()`` (a standard context is
    replaced by shmlink's for the same start method).
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 *args: Any, **kwargs: Any) -> None:
        if mp_context is None:
            # the standard's default: spawn when workers are replaced (max_tasks_per_child)
            mp_context = get_context("spawn" if kwargs.get("max_tasks_per_child") is not None else None)
        elif not hasattr(mp_context, "_shmlink"):
            mp_context = get_context(mp_context.get_start_method())
        super().__init__(max_workers, mp_context, *args, **kwargs)
        std = self._call_queue
        self._executor_manager_thread_wakeup.close()
        self._executor_manager_thread_wakeup = _Wakeup()
        self._call_queue = _SafeQueue(
            max_size=std._maxsize, ctx=self._mp_context,
            pending_work_items=self._pending_work_items,
            shutdown_lock=self._shutdown_lock,
            thread_wakeup=self._executor_manager_thread_wakeup)
        self._call_queue._ignore_epipe = True  # type: ignore[attr-defined]
        std.close()
        std.join_thread()

    def _start_executor_manager_thread(self) -> None:
        # the standard's (identical in 3.10 to 3.13) with the manager thread above
        if self._executor_manager_thread is None:
            if not self._safe_to_dynamically_spawn_children:  # fork: sentinels first
                self._launch_processes()
            self._executor_manager_thread = _ManagerThread(self)
            self._executor_manager_thread.start()
            _cfp._threads_wakeups[self._executor_manager_thread] = \
                self._executor_manager_thread_wakeup
