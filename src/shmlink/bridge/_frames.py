"""The bridge's wire format: one Zenoh payload carries one frame.

Every frame starts with the same 32-byte little-endian header::

    u8  type      DATA (lossless batch), LATEST (latest batch or board value), ACK
    u8  flags     ACK: bit 0 = NACK (a gap was seen: retransmit now)
    u16 version   FORMAT (a frame of another version is refused)
    u32 count     DATA/LATEST: messages in the batch
    u64 session   the exporter's session id (random per exporter route start)
    u64 base      DATA: oldest unacknowledged sequence number at sending time;
                  ACK: the next sequence number the importer expects
    u64 first     DATA/LATEST: sequence number of the first message (board: its version);
                  ACK: the importer's session id

A DATA or LATEST frame then holds ``count`` u32 lengths and the messages back
to back.  Decoding checks every length against the payload, so a damaged or
foreign frame raises :class:`FrameError`, never reads past its end.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any, NamedTuple, Sequence

__all__ = ["DATA", "LATEST", "ACK", "FLAG_NACK", "FORMAT", "HEADER", "FrameError", "Header",
           "encode_batch", "encode_ack", "decode_header", "decode_messages"]

DATA = 1
LATEST = 2
ACK = 3
FLAG_NACK = 1
FORMAT = 1

HEADER = struct.Struct("<BBHIQQQ")
_U32 = array("I").itemsize == 4 and "I" or "L"


class FrameError(ValueError):
    """A payload that is not a frame of this format (damaged, foreign or another version)."""


class Header(NamedTuple):
    type: int
    flags: int
    count: int  # type: ignore[assignment]  # the wire format's name; shadows tuple.count
    session: int
    base: int
    first: int


def encode_batch(kind: int, session: int, base: int, first: int,
                 messages: Sequence[bytes]) -> bytes:
    """A DATA or LATEST frame holding ``messages`` (bytes-like), numbered from ``first``."""
    lengths = array(_U32, map(len, messages))
    return b"".join((HEADER.pack(kind, 0, FORMAT, len(messages), session, base, first),
                     lengths.tobytes(), *messages))


def encode_ack(session: int, next_expected: int, importer: int, *, nack: bool = False) -> bytes:
    """An ACK frame: the importer ``importer`` holds everything of ``session`` below
    ``next_expected`` in its local object."""
    return HEADER.pack(ACK, FLAG_NACK if nack else 0, FORMAT, 0, session, next_expected, importer)


def decode_header(buf: bytes) -> Header:
    """The header of ``buf``; FrameError if it is not one of ours."""
    if len(buf) < HEADER.size:
        raise FrameError(f"frame of {len(buf)} bytes is shorter than the {HEADER.size}-byte header")
    kind, flags, version, count, session, base, first = HEADER.unpack_from(buf)
    if version != FORMAT or kind not in (DATA, LATEST, ACK):
        raise FrameError(f"frame type {kind} version {version} is not a shmlink bridge frame "
                         f"of format {FORMAT}")
    return Header(kind, flags, count, session, base, first)


#: messages at least this long (on average in a frame) are handed out as views of the frame
VIEW_SIZE = 2048


def decode_messages(buf: bytes, count: int) -> list[Any]:
    """The ``count`` messages of a DATA or LATEST frame ``buf``: ``bytes``, or read-only
    ``memoryview`` slices of ``buf`` when they are large (no copy; the local objects take
    any bytes-like message)."""
    start = HEADER.size + 4 * count
    if start > len(buf):
        raise FrameError(f"frame says {count} messages but has {len(buf)} bytes")
    lengths = array(_U32)
    lengths.frombytes(buf[HEADER.size:start])
    out: list[Any] = []
    if len(buf) - start >= VIEW_SIZE * count:
        buf = memoryview(buf).toreadonly()  # type: ignore[assignment]
    pos = start
    for n in lengths:
        end = pos + n
        out.append(buf[pos:end])
        pos = end
    if pos != len(buf):
        raise FrameError(f"frame lengths add up to {pos} bytes, the payload has {len(buf)}")
    return out
