"""shmlink.wait: wait on many objects at once, like multiprocessing.connection.wait."""

from __future__ import annotations

import math
import select
import time
from typing import Any, Iterable, TypeVar

from .errors import InvalidArgument

__all__ = ["wait"]

_T = TypeVar("_T")
_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


def _readiness_of(obj: Any) -> Any:
    """The shmlink readiness behind obj's fileno() (None for other objects and plain fds)."""
    get = getattr(type(obj), "_wait_ready", None)
    return None if get is None else get(obj)


def wait(objects: Iterable[_T], timeout: float | None = None) -> list[_T]:
    """Wait until at least one of ``objects`` is ready; return the ready ones.

    Like :func:`multiprocessing.connection.wait`, with shmlink objects mixed
    with anything that has a ``fileno()`` (sockets, pipes, the ends of
    :func:`multiprocessing.Pipe`) and plain descriptors (ints).  A shmlink
    object is ready when its wait may succeed now: a :class:`Queue`,
    :class:`Subscriber` or :class:`Connection` has a message (or, for a
    connection, its peer is gone: the receive raises), an :class:`Event`
    is set, a :class:`Board` changed since this handle last read it, a
    :class:`Listener` has a client waiting.  No polling: the call sleeps in
    ``poll(2)`` on the objects' descriptors (see :meth:`Queue.fileno`).

    A shmlink object in the result may still find nothing when another
    process or thread consumed it first: use the ``try_`` calls after it.

    Parameters
    ----------
    objects : iterable
        shmlink objects, objects with ``fileno()``, or ints.
    timeout : float or None
        Seconds to wait; None = until one is ready; 0 = just look.

    Returns
    -------
    list
        The ready objects, in the order given (empty when the timeout ran out).
    """
    if timeout is not None and (timeout != timeout or timeout < 0):
        raise InvalidArgument(f"timeout must be None or >= 0 seconds, not {timeout!r}")
    objs = list(objects)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready: set[int] = set()
        readies: dict[int, Any] = {}
        by_fd: dict[int, list[int]] = {}
        for i, o in enumerate(objs):
            r = _readiness_of(o)
            if r is not None:
                readies[i] = r
                if r.prepare():
                    ready.add(i)
                    continue
                fd = r.fd
            elif isinstance(o, int):
                fd = o
            else:
                fd = o.fileno()  # type: ignore[attr-defined]
            by_fd.setdefault(fd, []).append(i)
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLPRI)
        if ready:
            ms: int | None = 0
        elif deadline is None:
            ms = None
        else:
            ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        for fd, ev in poller.poll(ms):
            if ev & _READY:
                ready.update(by_fd.get(fd, ()))
        # a doorbell rung for a change someone else consumed: look again
        real = {i for i in ready if i not in readies or readies[i].hint()}
        if real or (deadline is not None and time.monotonic() >= deadline):
            return [objs[i] for i in sorted(real)]
