"""Child-process bodies for tests/test_board.py.

Started with the "spawn" start method; each takes the board's *name* and
opens its own handle.  Values are self-checking, so a reader can tell a torn
value from a whole one without knowing which write it came from:

* ``checked_value``: ``seed (u64) | length (u32) | payload | crc32``, where
  the payload is the seed's bytes repeated;
* ``stamped_value``: blocks of 4 KiB, each starting with ``(stamp, length)``;
  used for large values, where the stamp is the version the value is
  written as.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib

_CHECK_HEAD = struct.Struct("<QI")
_STAMP = struct.Struct("<QQ")
BLOCK = 4096


def checked_value(seed: int, length: int) -> bytes:
    """A self-checking value of ``length`` payload bytes (plus 16 bytes of framing)."""
    head = _CHECK_HEAD.pack(seed, length)
    unit = head[:8]
    payload = (unit * (length // 8 + 1))[:length]
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def check_value(data: bytes) -> bool:
    """True if ``data`` is a whole value made by :func:`checked_value`."""
    if len(data) < _CHECK_HEAD.size + 4:
        return False
    body, crc = data[:-4], data[-4:]
    if struct.pack("<I", zlib.crc32(body)) != crc:
        return False
    _seed, length = _CHECK_HEAD.unpack_from(body)
    if length != len(body) - _CHECK_HEAD.size:
        return False
    unit = body[:8]
    return body[_CHECK_HEAD.size:] == (unit * (length // 8 + 1))[:length]


def stamped_value(stamp: int, length: int) -> bytes:
    """``length`` bytes in 4 KiB blocks that each start with ``(stamp, length)``."""
    block = _STAMP.pack(stamp, length) + bytes(BLOCK - _STAMP.size)
    return (block * (length // BLOCK + 1))[:length]


def stamp_of(data: bytes) -> int | None:
    """The stamp of a whole :func:`stamped_value`, or None if it is torn."""
    if len(data) < _STAMP.size:
        return None
    stamp, length = _STAMP.unpack_from(data)
    if length != len(data) or data != stamped_value(stamp, length):
        return None
    return stamp


# --- children ---------------------------------------------------------------------


def checked_writer(name: str, seed: int, max_len: int, stop, results) -> None:
    """Write self-checking values of random length until ``stop`` is set."""
    from shmlink import Board

    rng = random.Random(seed)
    board = Board.open(name, timeout=10)
    writes = 0
    try:
        while not stop.is_set():
            for _ in range(64):
                board.write(checked_value(rng.getrandbits(64), rng.randrange(max_len + 1)),
                            timeout=10)
            writes += 64
    finally:
        board.close()
        results.put(("writer", os.getpid(), writes))


def checked_reader(name: str, min_reads: int, max_seconds: float, results) -> None:
    """Read as fast as possible; report (reads, torn, versions seen, a torn sample)."""
    from shmlink import Board

    board = Board.open(name, timeout=10)
    read = board.read_versioned
    reads = torn = changes = 0
    last = -1
    sample = None
    end = time.monotonic() + max_seconds
    try:
        while reads < min_reads and time.monotonic() < end:
            for _ in range(256):
                version, data = read()
                if not check_value(data):
                    torn += 1
                    if sample is None:
                        sample = (version, len(data), data[:32].hex())
                if version != last:
                    changes += 1
                    last = version
            reads += 256
    finally:
        board.close()
        results.put(("reader", os.getpid(), reads, torn, changes, sample))


def stamped_writer(name: str, base: int, min_len: int, max_len: int) -> None:
    """Sole writer: write large stamped values in a loop until killed.

    ``base`` is the board's version when this writer starts; write number
    ``i`` becomes version ``base + i`` and is stamped with it.  The value is
    re-stamped in place, so that most of the time goes into ``write`` (with
    the writers' lock held) and a kill usually lands mid-write.
    """
    from shmlink import Board

    rng = random.Random()
    board = Board.open(name, timeout=10)
    buf = bytearray(max_len + BLOCK)  # room for a stamp that the value cuts short
    version = base
    while True:
        length = rng.randint(min_len, max_len)
        for at in range(0, length, BLOCK):
            _STAMP.pack_into(buf, at, version + 1, length)
        with memoryview(buf) as whole, whole[:length] as value:
            got = board.write(value, timeout=30)
        if got != version + 1:  # another writer: the stamps would lie
            os._exit(3)
        version = got


def fork_server(conn) -> None:
    """Start writers cheaply: fork one per request (no interpreter start-up each time).

    Requests on ``conn``: ``("writer", name, base, min_len, max_len)`` forks a
    :func:`stamped_writer` and answers its PID; ``("reap", pid)`` waits for it
    and answers the signal that ended it (0 if it exited); ``("exit",)``.
    The forked writer opens the board by name itself: nothing mapped is
    inherited (this process never opens it).
    """
    import shmlink.board  # noqa: F401  (imported once, before the forks)

    while True:
        req = conn.recv()
        if req[0] == "writer":
            pid = os.fork()
            if pid == 0:
                try:
                    stamped_writer(*req[1:])
                finally:
                    os._exit(1)
            conn.send(pid)
        elif req[0] == "reap":
            _, status = os.waitpid(req[1], 0)
            conn.send(os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)
        else:
            return


def stamped_reader(name: str, index: int, counters, stop, results) -> None:
    """Read until ``stop``; check every value; count reads in ``counters[index]``."""
    from shmlink import Board

    board = Board.open(name, timeout=10)
    reads = torn = 0
    last = -1
    backwards = 0
    slowest = 0.0
    try:
        while not stop.is_set():
            t = time.monotonic()
            version, data = board.read_versioned()
            slowest = max(slowest, time.monotonic() - t)
            if stamp_of(data) != version:
                torn += 1
            if version < last:
                backwards += 1
            last = version
            reads += 1
            counters[index] = reads
    finally:
        board.close()
        results.put(("reader", os.getpid(), reads, torn, backwards, slowest))


def waiter(name: str, since: int, timeout: float, results) -> None:
    """Wait for a change after ``since``; report the new version and value."""
    from shmlink import Board, Timeout

    board = Board.open(name, timeout=10)
    try:
        results.put(("ready", os.getpid()))
        try:
            version = board.wait_for_change(since, timeout=timeout)
        except Timeout:
            results.put(("timeout", os.getpid()))
            return
        results.put(("changed", version, board.read_text()))
    finally:
        board.close()


def watcher(name: str, count: int, timeout: float, results) -> None:
    """Watch for ``count`` values, reporting each (as text) as it comes."""
    from shmlink import Board

    board = Board.open(name, timeout=10)
    try:
        watch = board.watch(timeout=timeout)  # the starting point is taken here
        results.put(("ready", board.version))
        for i, value in enumerate(watch, 1):
            results.put(("value", value.decode()))
            if i >= count:
                break
    finally:
        board.close()
