"""Duplex connections with request/response: :class:`Connection` and :class:`Listener`.

A server calls :func:`listen` to make a named :class:`Listener`; each client
calls :func:`connect` with that name and gets its own :class:`Connection`,
which the server gets from :meth:`Listener.accept`.  Any number of clients
may be connected at once; a client that leaves and a new one that connects
both work.

The package: :mod:`._layout` (segment layouts, frame kinds, time
slices), :mod:`._reader` (the reader role and the routing of inbound
frames), :mod:`._connection` (:class:`Connection`) and :mod:`._listener`
(:class:`Listener`, :func:`listen`, :func:`connect`).

How the pieces fit:

* **The listener** is a segment (kind ``listener``) holding the server's
  identity (PID and start time), a closed flag, the settings every
  connection gets (ring capacity, permission bits) and an *accept ring*: a
  :class:`~shmlink.Queue`-style ring of pending connection requests.
* **A connection** is a segment of its own named
  ``<listener>.c<client pid>-<random>`` (kind ``connection``,
  ``lifetime="auto"``), created by the client: a small header (client PID and
  start time, server PID and start time, one closed flag per side, the
  accept state) and two rings, client->server and server->client.  The
  client posts the name's suffix on the accept ring and waits (bounded by
  its ``timeout``) until the server marks the connection accepted.  Accept,
  refusal and a client that gave up are one compare-and-swap on the accept
  state, so exactly one of them wins.
* **Frames.**  Each ring message starts with an 8-byte little-endian frame
  header ``id << 8 | kind``: a plain message (``send``/``recv``, id 0), a
  request, its response or its error (same id), an in-band end of stream
  sent by ``close``, and a wake-up a process posts to its *own* inbound ring
  to interrupt its blocked reader.  The format lives in
  ``include/shmlink/connection.h`` alone: ``Ring.send_frame`` builds a frame
  and ``Ring.recv_frame`` checks one (in C) and returns ``(kind, id,
  payload)``; a frame that breaks the rules raises
  :class:`~shmlink.CorruptSegment`.
* **One reader, one future per request.**  One thread at a time holds the
  *reader role* and reads the inbound ring; every frame it reads is routed
  in one place: plain messages and requests to queues other threads take
  from, and a response to the future its :meth:`Connection.request`
  registered under the request's id (whichever thread reads it), so
  concurrent requests from several threads each get their own response.
* **Disconnects are seen within a fraction of a second.**  ``close`` sets the
  side's closed flag and sends the end-of-stream frame (the blocked peer
  wakes at once; messages sent before it are still delivered).  Blocked
  receives and sends wait in slices of :data:`SLICE` seconds and, between
  slices, check the peer's closed flag and whether the peer process is
  still alive (PID plus start time).  A peer that closed or died raises
  :class:`~shmlink.PeerDisconnected` (iteration ends).
* **Lifetime.**  Connection segments are ``lifetime="auto"``: the last side
  to close (or the survivor of a crash) removes the name; when both sides
  died, ``shmlink gc`` does.  The listener's owner removes its name on
  ``close``; a listener whose server died is taken over by the next
  :func:`listen` of that name (and removed by ``shmlink gc``).

The hot path of a round trip is one ``Ring.try_send_frame`` and one
``Ring.recv_frame`` per direction: frames are built and checked in C
(``connection.h``), never packed or sliced in Python.  How an end waits is the ring's own wait (the
``wait`` strategy: ``"hybrid"`` spins briefly, then yields the CPU, then
sleeps on the ring's futex); while the peer answers within the spin, no
system call is made.

Threads: a thread holding the reader role may also send (``close`` waits
for it); other senders hold a send lock for the duration of their
``try_send_frame``.  ``close`` from another thread wakes a blocked reader of this
process by a frame it posts to its own inbound ring, then unmaps once both
locks are free (the last thread out does it when ``close`` is called from a
handler).

fork(): a connection end belongs to the process that connected or accepted
it.  In a forked child every call on an inherited end raises
:class:`~shmlink.InvalidState` (connect a new one there), and closing it or
exiting there tells the peer nothing.  An inherited listener may accept (a
pre-forked server); only the process that created it removes it.
"""

from __future__ import annotations

from ..errors import RemoteError
from ._connection import Connection
from ._layout import LISTENER_NAME_MAX, SLICE, Request, Role, WaitStrategy
from ._listener import Listener, connect, listen

__all__ = ["Connection", "Listener", "Request", "RemoteError", "connect", "listen", "SLICE",
           "LISTENER_NAME_MAX", "Role", "WaitStrategy"]
