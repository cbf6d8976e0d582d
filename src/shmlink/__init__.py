"""shmlink: inter-process communication through named shared memory.

Objects (each a named segment, opened by any process that knows the name):

* :class:`Segment` -- named memory: create/open by name, exact size, views, text.
* :class:`Mutex`, :class:`Event` -- robust synchronisation.
* :class:`Queue` -- lossless many-to-many messages.
* :class:`Topic`, :class:`Board`, :class:`Connection` / :class:`Listener`.

Every error is a :class:`ShmlinkError`; every blocking call takes ``timeout=``.
``Lifetime``, ``WaitMode``, ``Delivery`` and ``Start`` are the ``Literal``
types of the string options.
"""

from . import errors
from .errors import *  # noqa: F401,F403
from .segment import Lifetime, Segment, SegmentInfo, gc, info, list_segments, remove, trust

__version__ = "0.1.0"  # the one place: pyproject.toml reads it, shmlink --version prints it

__all__ = ["Segment", "SegmentInfo", "list_segments", "info", "gc", "remove", "trust", "__version__",
           "Lifetime"]
__all__ += errors.__all__

from .queue import MessageView, Queue, WaitMode
from .sync import Event, Mutex

__all__ += ["Mutex", "Event", "Queue", "MessageView", "WaitMode"]

from .board import Board

__all__ += ["Board"]

from .topic import Delivery, Start, Subscriber, Topic

__all__ += ["Topic", "Subscriber", "Delivery", "Start"]

from .connection import Connection, Listener, RemoteError, Request, connect, listen

__all__ += ["Connection", "Listener", "RemoteError", "Request", "connect", "listen"]

from ._multiwait import wait

__all__ += ["wait"]
