"""A drop-in for ``multiprocessing``'s data paths, on shared memory.

``Queue``, ``JoinableQueue``, ``SimpleQueue``, ``Pipe``,
``connection.Listener``/``Client``/``wait`` and
``shared_memory.SharedMemory``/``ShareableList`` with the standard API;
:func:`get_context`, a context whose ``Process``, ``Lock``, ``Event`` ... are
the standard ones and whose queues and pipes are these; and
:class:`ProcessPoolExecutor`, the standard executor's API on a task protocol
of its own (the one-line switch is the import)::

    from shmlink.multiprocessing import ProcessPoolExecutor, get_context
    ProcessPoolExecutor(mp_context=get_context("spawn"))

The standard ``concurrent.futures.ProcessPoolExecutor`` runs with this
package's context too, but moves only its result queue.

Anonymous queues and pipes get unique names (``mp.<kind>.<pid>.<hex>``), are
handed to children by pickling (spawn, forkserver, through queues) or
inherited (fork), and are removed when the last process using them closes
or exits; ``shmlink gc`` removes those of crashed processes.  Deviations
from the standard library are listed in ``docs/multiprocessing.md``.
"""

from __future__ import annotations

from queue import Empty, Full

from . import connection, futures, queues, shared_memory
from .connection import Pipe
from .context import get_context
from .futures import ProcessPoolExecutor
from .queues import JoinableQueue, Queue, SimpleQueue
from .shared_memory import ShareableList, SharedMemory

__all__ = ["Queue", "JoinableQueue", "SimpleQueue", "Pipe", "get_context", "SharedMemory",
           "ShareableList", "ProcessPoolExecutor", "Empty", "Full", "connection", "futures", "queues",
           "shared_memory"]
