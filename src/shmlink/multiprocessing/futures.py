"""``concurrent.futures.ProcessPoolExecutor`` with both of its queues on shared memory.

``ProcessPoolExecutor(mp_context=shmlink.multiprocessing.get_context(...))``
(the one-line switch) moves only the result queue: the executor builds its
call queue as ``concurrent.futures.process._SafeQueue``, a standard
``multiprocessing.queues.Queue`` on a pipe, whatever the context.  The
subclass here replaces that call queue with a shmlink :class:`Queue` of the
same bound and the same error hook, and takes a shmlink context by default.
"""

from __future__ import annotations

from concurrent.futures import process as _cfp
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


class ProcessPoolExecutor(_cfp.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` whose call and result queues are shmlink's.

    The same parameters; ``mp_context`` defaults to
    ``shmlink.multiprocessing.get_context()`` (a standard context is
    replaced by shmlink's for the same start method).
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 *args: Any, **kwargs: Any) -> None:
        if mp_context is None:
            mp_context = get_context()
        elif not hasattr(mp_context, "_shmlink"):
            mp_context = get_context(mp_context.get_start_method())
        super().__init__(max_workers, mp_context, *args, **kwargs)
        std = self._call_queue
        self._call_queue = _SafeQueue(
            max_size=std._maxsize, ctx=self._mp_context,
            pending_work_items=self._pending_work_items,
            shutdown_lock=self._shutdown_lock,
            thread_wakeup=self._executor_manager_thread_wakeup)
        self._call_queue._ignore_epipe = True  # type: ignore[attr-defined]
        std.close()
        std.join_thread()
