"""``multiprocessing.shared_memory`` on shmlink segments: :class:`SharedMemory`,
:class:`ShareableList`.

The standard constructor and attributes (``name``, ``buf``, ``size``,
``close()``, ``unlink()``, pickling by name), with three differences that
are the point: ``size`` is exactly what the creator asked for (not rounded up
to a page), no resource tracker ever unlinks memory another process still
uses (CPython gh-82300; ``track=`` is accepted and ignored), and a segment
whose users all died without unlinking it is removed by ``shmlink gc``.  A
name lives in shmlink's namespace (``/dev/shm/shmlink.<name>``), so it does
not open a block made by the standard module.
"""

from __future__ import annotations

import secrets
import types
from multiprocessing import shared_memory as _std
from typing import Any

from ..errors import SegmentExists
from ..segment import Segment

__all__ = ["SharedMemory", "ShareableList"]


class SharedMemory:
    """A named block of shared memory, as ``multiprocessing.shared_memory.SharedMemory``.

    Parameters
    ----------
    name : str, optional
        The block's name; made up (``psm_<hex>``) when creating without one.
    create : bool
        Create a new block (``FileExistsError`` if the name is taken) instead
        of opening an existing one (``FileNotFoundError`` if there is none).
    size : int
        Bytes, when creating (exact); ignored when opening.
    track : bool
        Accepted for compatibility; there is no resource tracker.
    """

    _seg: Segment | None = None
    _buf: memoryview | None = None
    _name: str | None = None
    _size = 0

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0, *,
                 track: bool = True) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        if name is not None and name.startswith("/"):
            name = name[1:]
        if create:
            if name is None:
                while True:
                    try:
                        seg = Segment.create(_SHM_NAME_PREFIX + secrets.token_hex(8), size)
                        break
                    except SegmentExists:
                        continue
            else:
                seg = Segment.create(name, size)
        else:
            seg = Segment.open(name)  # type: ignore[arg-type]
        self._seg = seg
        self._name = seg.name
        self._size = seg.size
        self._buf = seg.buf

    @property
    def name(self) -> str | None:
        """The block's name (give it to other processes)."""
        return self._name

    @property
    def size(self) -> int:
        """Exact size in bytes."""
        return self._size

    @property
    def buf(self) -> memoryview | None:
        """A memoryview of the whole block."""
        return self._buf

    def close(self) -> None:
        """Detach from the block (it stays for others); ``BufferError`` while views are alive."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def unlink(self) -> None:
        """Remove the block's name (processes that have it keep using it)."""
        if self._name is not None and "\0" in self._name:
            raise ValueError("embedded null character in the name")
        if self._seg is not None:
            self._seg.unlink()
        elif self._name is not None:
            from ..segment import remove
            remove(self._name)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"


class ShareableList(_std.ShareableList):
    """The standard ``ShareableList`` (its own code) on a shmlink :class:`SharedMemory`."""

    # The interpreter's own __init__, run with this module's SharedMemory: the
    # list's layout is the standard one of the running Python, byte for byte.
    __init__ = types.FunctionType(  # type: ignore[assignment]
        _std.ShareableList.__init__.__code__,
        {**vars(_std), "SharedMemory": SharedMemory},
        "__init__",
        _std.ShareableList.__init__.__defaults__,
        _std.ShareableList.__init__.__closure__,
    )
    __init__.__kwdefaults__ = _std.ShareableList.__init__.__kwdefaults__


#: as the standard module's flag: names are POSIX shared-memory names
_USE_POSIX = True

#: the prefix of made-up names, as the standard module's
_SHM_NAME_PREFIX = "psm_"
