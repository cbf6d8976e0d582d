"""The connection protocol's shared-memory layouts, frame kinds and time slices.

Offsets are from the start of the mapping (``DATA_OFFSET`` is where a
segment's data area begins).  Both segment kinds carry a magic value and a
layout version, checked on attach.
"""

from __future__ import annotations

import re
import time
from typing import Literal, NamedTuple

from .. import _core
from ..segment import DATA_OFFSET, NAME_MAX

#: Longest a blocked call waits before it re-checks the peer (closed flag,
#: process alive), its own handle and its deadline, in seconds.
SLICE = 0.1

#: How an end waits for its ring (see :class:`~shmlink.Queue`).
WaitStrategy = Literal["hybrid", "block", "spin"]
#: Which end of a connection a handle is.
Role = Literal["client", "server"]

_monotonic = time.monotonic
_RING_HEADER = _core.RING_HEADER
_D = DATA_OFFSET

# --- frames -------------------------------------------------------------------
# Every ring message is a frame: an 8-byte header (kind, request id), then the
# payload.  The format lives in include/shmlink/connection.h alone: rings send
# and take frames with Ring.send_frame / Ring.recv_frame, which encode and
# check the header there; Python sees (kind, id, payload) tuples.

#: A frame as Ring.recv_frame returns it: (kind, request id, payload).
Frame = tuple[int, int, bytes]

_FRAME_SIZE = _core.FRAME_HEADER
_MSG = _core.FRAME_MSG  # plain message (id 0)
_REQ = _core.FRAME_REQ  # request (id >= 1)
_RESP = _core.FRAME_RESP  # its response (the request's id)
_ERR = _core.FRAME_ERR  # its error (the request's id; payload: the traceback, UTF-8)
_CLOSE = _core.FRAME_CLOSE  # end of stream: the sender closed its side
_WAKE = _core.FRAME_WAKE  # posted to one's own inbound ring to wake the local reader
_ID_MAX = _core.FRAME_ID_MAX  # largest request id

# --- connection segment layout (struct shmlink_conn_block in include/shmlink/connection.h) ---

_CB = _core.LAYOUT["connection"]
_C_MAGIC_VALUE = _core.CONN_MAGIC  # "CONN"
_C_VERSION = _core.CONN_VERSION
_C_MAGIC = _D + _CB["magic"][0]  # u32
_C_VERSION_OFF = _D + _CB["version"][0]  # u32
_C_RING_SIZE = _D + _CB["ring_size"][0]  # u64: bytes of each ring region (control block included)
# line 1: written by the client
_C_CLIENT_PID = _D + _CB["client_pid"][0]  # u32
_C_CLIENT_CLOSED = _D + _CB["client_closed"][0]  # u32: 1 once the client closed its side
_C_CLIENT_START = _D + _CB["client_start"][0]  # u64
# line 2: written by the server
_C_SERVER_PID = _D + _CB["server_pid"][0]  # u32, written before the accept CAS
_C_SERVER_CLOSED = _D + _CB["server_closed"][0]  # u32
_C_SERVER_START = _D + _CB["server_start"][0]  # u64
# line 3: the accept state (futex word)
_C_STATE = _D + _CB["state"][0]  # u32, one of the _ST_* values
_C_RINGS = _core.CONN_RINGS  # data-area offset of the client->server ring; server->client follows

_ST_PENDING = 0
_ST_ACCEPTED = 1
_ST_REFUSED = 2  # the listener closed before accepting
_ST_ABANDONED = 3  # the client gave up (timeout, Ctrl-C) or died before the accept
_ST_NAMES = {_ST_PENDING: "pending", _ST_ACCEPTED: "accepted", _ST_REFUSED: "refused",
             _ST_ABANDONED: "abandoned"}

_EC_OFFSET = _core.LAYOUT["ring"]["data_ec"][0]  # data_ec within struct shmlink_ring
# within struct shmlink_ring: the doorbell tables (include/shmlink/doorbell.h) of fileno()
_BELLS_OFFSET = _core.LAYOUT["ring"]["data_bells"][0]
_SPACE_EC_OFFSET = _core.LAYOUT["ring"]["space_ec"][0]
_SPACE_BELLS_OFFSET = _core.LAYOUT["ring"]["space_bells"][0]

# --- listener segment layout (struct shmlink_listener_block in include/shmlink/connection.h) ---

_LB = _core.LAYOUT["listener"]
_L_MAGIC_VALUE = _core.LISTENER_MAGIC  # "LSNR"
_L_VERSION = _core.LISTENER_VERSION
_L_MAGIC = _D + _LB["magic"][0]  # u32
_L_VERSION_OFF = _D + _LB["version"][0]  # u32
_L_PID = _D + _LB["pid"][0]  # u32: the server (the listener's creator)
_L_CLOSED = _D + _LB["closed"][0]  # u32: 1 once the server closed the listener
_L_START = _D + _LB["start"][0]  # u64
_L_CAPACITY = _D + _LB["capacity"][0]  # u64: each connection's ring capacity, bytes
_L_MAX_MESSAGE = _D + _LB["max_message"][0]  # u64: largest frame (0 = capacity - 8)
_L_BACKLOG = _D + _LB["backlog"][0]  # u32
_L_MODE = _D + _LB["mode"][0]  # u32: permission bits of connection segments
_L_ACCEPTED = _D + _LB["accepted"][0]  # u64: connections accepted so far
_L_RING = _core.LISTENER_RING  # data-area offset of the accept ring

_SUFFIX_RE = re.compile(r"c[0-9]{1,10}-[0-9a-f]{8}\Z")
_SUFFIX_MAX = 2 + 10 + 1 + 8  # "c" + pid + "-" + 8 hex digits (+ the dot)
#: Longest listener name: its connections are named ``<name>.c<pid>-<8 hex>``.
LISTENER_NAME_MAX = NAME_MAX - _SUFFIX_MAX
_ACCEPT_NAME = 24  # a pending connect posts its suffix NUL-padded to this many bytes ...
_ACCEPT_RECORD = 8 + _ACCEPT_NAME  # ... so that each takes exactly this much of the accept ring


# --- time -------------------------------------------------------------------------


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - _monotonic())


def _slice_end(deadline: float | None) -> float:
    end = _monotonic() + SLICE
    return end if deadline is None or deadline > end else deadline


def _ring_size(capacity: int) -> int:
    return (_RING_HEADER + capacity + 63) & ~63


class Request(NamedTuple):
    """A request taken with :meth:`Connection.recv_request`; answer it with :meth:`Connection.reply`."""

    id: int
    data: bytes
