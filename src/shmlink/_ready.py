"""Readiness by file descriptor: the doorbell of one wait of one handle.

A :class:`Readiness` owns a doorbell (``_core.Doorbell``, an AF_UNIX
datagram socket in the abstract namespace: include/shmlink/doorbell.h)
registered in the doorbell table beside one event count of the handle's
mapping.  Whoever notifies that event count while it is armed also rings the
registered doorbells, so the descriptor becomes readable when the wait may
succeed.  :meth:`Readiness.prepare` is the arm/re-check step of every wait:

    drain the doorbell; arm the event count; re-check the condition (a
    lock-free hint).  True: ready now (don't sleep).  False: sleep on the
    descriptor; a notify that makes the condition true rings it.

Readiness may be spurious (another receiver took the message), never missed.
The doorbell is made on first use, in the process that uses it: a forked
child drops the handle's readiness objects (see segment._Named._fork_child)
and makes its own.  Private: the public surface is ``fileno()`` on the
objects, :func:`shmlink.wait` and :mod:`shmlink.asyncio`.
"""

from __future__ import annotations

import os
import select
from typing import Any, Callable

from . import _core
from .errors import InvalidState, TooManyParticipants

__all__ = ["Readiness", "BELL_SLOTS"]

#: doorbells one event count can hold (include/shmlink/doorbell.h)
BELL_SLOTS: int = _core.BELL_SLOTS


class Readiness:
    """One handle's descriptor for one of its waits (receive, send, change, ...).

    Parameters
    ----------
    mem : _core.Memory
        The handle's memory (its mapping).
    ec, bells : int
        Offsets in that mapping of the event count and its doorbell table.
    hint : callable
        ``hint() -> bool``: the wait may succeed now (lock-free, may be wrong
        in the "True" direction only).
    what : str
        Names the object in error messages.
    extra : callable or None
        ``extra() -> int | None``: a further descriptor that makes the wait
        ready when readable (a peer's pidfd: readable when it dies); it is
        combined with the doorbell in an epoll descriptor.
    """

    __slots__ = ("_mem", "_ec", "_bells", "hint", "_what", "_extra", "_bell", "_epoll",
                 "_xfd", "_pid", "__weakref__")

    def __init__(self, mem: Any, ec: int, bells: int, hint: Callable[[], bool], what: str,
                 extra: Callable[[], int | None] | None = None) -> None:
        self._mem = mem
        self._ec = ec
        self._bells = bells
        self.hint = hint
        self._what = what
        self._extra = extra
        self._bell: Any = None
        self._epoll: select.epoll | None = None
        self._xfd = -1
        self._pid = 0

    def _ensure(self) -> Any:
        bell = self._bell
        if bell is not None:
            if self._pid == os.getpid():
                return bell
            raise InvalidState(f"{self._what}: this descriptor belongs to PID {self._pid}; "
                               "a forked child gets its own from fileno()")
        bell = _core.Doorbell()
        try:
            if not self._mem.bells_claim(self._bells, bell.id):
                raise TooManyParticipants(
                    f"{self._what}: all {BELL_SLOTS} descriptor waiters (fileno() / asyncio / "
                    "shmlink.wait handles) of this wait are taken by live handles; close one, "
                    "or wait with the blocking call in a thread")
            if self._extra is not None:
                xfd = self._extra()
                if xfd is not None:
                    ep = select.epoll()
                    ep.register(bell.fileno(), select.EPOLLIN)
                    ep.register(xfd, select.EPOLLIN)
                    self._epoll, self._xfd = ep, xfd
        except BaseException:
            try:
                self._mem.bells_release(self._bells, bell.id)
            except Exception:
                pass
            bell.close()
            raise
        self._bell, self._pid = bell, os.getpid()
        return bell

    @property
    def fd(self) -> int:
        """The descriptor to wait on (made and registered on first use)."""
        bell = self._ensure()
        return self._epoll.fileno() if self._epoll is not None else int(bell.fileno())

    def prepare(self, ring: bool = False, hint: Callable[[], bool] | None = None) -> bool:
        """Drain, arm, re-check: True if the wait may succeed now.

        ``ring``: when ready, also make the descriptor readable (for callers
        that select on it without calling this first).  ``hint``: the
        re-check of this wait, in place of the one it was made with (e.g.
        "room for this many bytes").
        """
        bell = self._ensure()
        bell.drain()
        self._mem.ec_arm(self._ec)
        if (hint or self.hint)() or (self._xfd >= 0 and self.extra_ready()):
            if ring:
                bell.ring()
            return True
        return False

    def extra_ready(self) -> bool:
        """Whether the extra descriptor (the peer's pidfd) reads ready now."""
        if self._xfd < 0:
            return False
        p = select.poll()
        p.register(self._xfd, select.POLLIN)
        return bool(p.poll(0))

    def fileno(self) -> int:
        """The descriptor, prepared so that it reads ready if the wait may succeed now."""
        fd = self.fd
        self.prepare(ring=True)
        return fd

    def rearm(self) -> None:
        """After an attempt found nothing: forget stale rings (no-op before first use)."""
        if self._bell is not None and self._pid == os.getpid():
            self.prepare(ring=True)

    def close(self, release: bool = True) -> None:
        """Unregister (``release``: the mapping is still ours) and close the descriptors."""
        bell, self._bell = self._bell, None
        if bell is None:
            return
        mine = self._pid == os.getpid()
        if release and mine:
            try:
                self._mem.bells_release(self._bells, bell.id)
            except Exception:
                pass  # the mapping is going away: a stale slot costs one failed ring
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._xfd >= 0:
            try:
                os.close(self._xfd)
            except OSError:
                pass
            self._xfd = -1
        bell.close()


def close_all(readies: dict[str, Readiness] | None, release: bool = True) -> None:
    """Close every readiness in a handle's table (close(), or a fork child's drop)."""
    if readies:
        for r in list(readies.values()):
            r.close(release)
        readies.clear()


def pidfd_of(pid: int, start: int) -> int | None:
    """A descriptor readable once (pid, start) is gone; None where pidfds are missing.

    A PID that no longer names that process (dead, or reused) yields a
    descriptor that is readable at once: an eventfd with a count.
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0 and _core.process_alive(pid, start):
        return fd
    if fd >= 0:
        os.close(fd)
    if fd < 0 and _core.process_alive(pid, start):
        return None  # alive, but no pidfd here (old kernel): found at the slice checks
    efd = os.eventfd(1, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    return efd
