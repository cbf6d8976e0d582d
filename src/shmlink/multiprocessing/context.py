"""Contexts whose queues and pipes are shmlink's: :func:`get_context`.

A context here is the standard one for its start method (``Process``,
``Lock``, ``Event``, ``Pool``, ``Manager`` ... are the standard objects)
except that ``Queue``, ``JoinableQueue``, ``SimpleQueue`` and ``Pipe`` make
this package's objects, so ``multiprocessing.Pool(context=ctx)`` and
``concurrent.futures.ProcessPoolExecutor(mp_context=ctx)`` move their data
through shared memory.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

__all__ = ["get_context", "ShmlinkContextMixin"]


class ShmlinkContextMixin:
    """The four factories that differ from the standard context."""

    _shmlink = True

    def Queue(self, maxsize: int = 0) -> Any:
        """A shmlink :class:`~shmlink.multiprocessing.queues.Queue`."""
        from .queues import Queue
        return Queue(maxsize, ctx=self)

    def JoinableQueue(self, maxsize: int = 0) -> Any:
        """A shmlink :class:`~shmlink.multiprocessing.queues.JoinableQueue`."""
        from .queues import JoinableQueue
        return JoinableQueue(maxsize, ctx=self)

    def SimpleQueue(self) -> Any:
        """A shmlink :class:`~shmlink.multiprocessing.queues.SimpleQueue`."""
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self)

    def Pipe(self, duplex: bool = True) -> Any:
        """A pair of shmlink :class:`~shmlink.multiprocessing.connection.Connection` objects."""
        from .connection import Pipe
        return Pipe(duplex)

    def get_context(self, method: str | None = None) -> Any:
        """This context (``method=None``) or shmlink's context for ``method``."""
        if method is None:
            return self
        return get_context(method)


_contexts: dict[str, Any] = {}


def _make(method: str) -> Any:
    base = type(multiprocessing.get_context(method))
    cls = type(f"Shmlink{base.__name__}", (ShmlinkContextMixin, base),
               {"__module__": __name__, "__doc__": f"{base.__name__} with shmlink queues and pipes."})
    return cls()


def get_context(method: str | None = None) -> Any:
    """A context for ``method`` ("fork", "spawn", "forkserver"; None: the default
    start method) whose queues and pipes are shmlink's.

    Raises
    ------
    ValueError
        For an unknown start method, as ``multiprocessing.get_context``.
    """
    if method is None:
        method = multiprocessing.get_start_method(allow_none=True) or \
            multiprocessing.get_context().get_start_method()
    ctx = _contexts.get(method)
    if ctx is None:
        ctx = _contexts[method] = _make(method)
    return ctx


