"""Child-process bodies for test_segment.py, test_errors.py and test_sync.py.

Spawned children import their target from here (never from a test file's
closures).  Every child gets *names* (or plain paths), opens its own handles,
and bounds every wait with a deadline, so a broken library makes a child fail
or exit -- never hang the suite.  A failed check raises, which gives the child a
non-zero exit code that ``join_all`` reports.

Coordination between a test and its children goes through a small *control*
segment (see :class:`Ctl`): byte ``i`` is flag ``i``.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time

import shmlink
from shmlink import Event, Mutex, Segment

CTL_SIZE = 64
WAIT_S = 30.0  # upper bound on any wait inside a child


class Ctl:
    """Flags in a control segment shared by a test and its children."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg

    @classmethod
    def create(cls, name: str) -> "Ctl":
        return cls(Segment.create(name, CTL_SIZE))

    @classmethod
    def open(cls, name: str) -> "Ctl":
        return cls(Segment.open(name))

    def set(self, i: int, value: int = 1) -> None:
        self.seg.write(bytes([value]), i)

    def get(self, i: int) -> int:
        return self.seg.read(i, 1)[0]

    def put_u64(self, i: int, value: int) -> None:
        self.seg.write(struct.pack("<Q", value), i)

    def get_u64(self, i: int) -> int:
        return struct.unpack("<Q", self.seg.read(i, 8))[0]

    def wait(self, i: int, value: int = 1, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while self.get(i) != value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"control flag {i} never became {value}")
            time.sleep(0.002)

    def close(self) -> None:
        self.seg.close()


def open_when_created(name: str, timeout: float = WAIT_S, **kw) -> Segment:
    """Open a segment another process is about to create."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Segment.open(name, **kw)
        except shmlink.SegmentNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


# --- segments -------------------------------------------------------------------

# Layout of the exchange segment: byte 0 "written", byte 1 "read and cleared",
# text from offset 8.
TEXT_AT = 8


def exchange_writer(name: str, text: str, lifetime: str, encoding: str) -> None:
    """Create ``name``, write ``text``, wait for the reader to read and clear it."""
    seg = Segment.create(name, 512, lifetime=lifetime)
    assert seg.created and seg.lifetime == lifetime
    seg.write_text(text, encoding, offset=TEXT_AT)
    seg.write(b"\x01", 0)
    deadline = time.monotonic() + WAIT_S
    while seg.read(1, 1) != b"\x01":
        assert time.monotonic() < deadline, "reader never answered"
        time.sleep(0.002)
    # The reader cleared the whole data area, then set byte 1 only.
    assert seg.read_text(encoding, offset=TEXT_AT) == ""
    assert seg.read(0, 1) == b"\x00"
    seg.close()


def exchange_reader(name: str, text: str, encoding: str) -> None:
    """Open ``name`` by name, check the text, clear the segment, answer."""
    seg = open_when_created(name)
    assert not seg.created
    assert seg.size == 512
    deadline = time.monotonic() + WAIT_S
    while seg.read(0, 1) != b"\x01":
        assert time.monotonic() < deadline, "writer never wrote"
        time.sleep(0.002)
    assert seg.read_text(encoding, offset=TEXT_AT) == text
    assert len(seg.participants()) == 2, seg.participants()
    seg.clear()
    assert seg.read_text(encoding, offset=TEXT_AT) == ""
    seg.write(b"\x01", 1)
    seg.close()


def hold_open(name: str, ctl_name: str, path: str | None = None) -> None:
    """Open a segment; flag 0 when attached; close on flag 1; flag 2 when closed."""
    ctl = Ctl.open(ctl_name)
    seg = Segment.open(name) if path is None else Segment.open(path=path)
    ctl.set(0)
    ctl.wait(1)
    seg.close()
    ctl.set(2)
    ctl.close()


def attach_and_sleep(name: str, ctl_name: str) -> None:
    """Open a segment, flag 0, then sleep until killed."""
    ctl = Ctl.open(ctl_name)
    seg = Segment.open(name)  # noqa: F841 -- kept attached until SIGKILL
    ctl.set(0)
    time.sleep(WAIT_S)
    raise SystemExit(3)  # should have been killed


def create_persist_and_sleep(name: str, ctl_name: str) -> None:
    """Create a persist segment, write to it, flag 0, sleep until killed."""
    ctl = Ctl.open(ctl_name)
    seg = Segment.create(name, 100)
    seg.write(b"left behind")
    ctl.set(0)
    time.sleep(WAIT_S)
    raise SystemExit(3)


def create_and_close(name: str, lifetime: str) -> None:
    """Create a segment, write to it, close it cleanly."""
    seg = Segment.create(name, 100, lifetime=lifetime)
    seg.write(b"clean")
    seg.close()


def read_handle(seg: Segment, expected: str, expected_pid: int) -> None:
    """Receive a pickled handle (re-opened by name), read through it."""
    assert isinstance(seg, Segment) and not seg.closed
    assert seg.read_text() == expected
    assert expected_pid in seg.participants() and os.getpid() in seg.participants()
    seg.write_text(expected.upper(), offset=100)
    seg.close()


def write_at(name: str, data: bytes, offset: int, path: str | None = None) -> None:
    """Open by name (or path), write bytes at offset, close."""
    seg = Segment.open(name) if path is None else Segment.open(path=path)
    seg.write(data, offset)
    seg.close()


def read_text_expect(path: str, expected: str) -> None:
    """Open a file-backed segment by path, check its text, write a reply."""
    seg = Segment.open(path=path)
    assert seg.size == 100, seg.size
    assert seg.read_text() == expected
    seg.write_text("reply", offset=50)
    seg.close()


def create_blocking(name: str, marker: str) -> None:
    """Start creating ``name`` and block inside the creation until killed."""

    def init(mm) -> None:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(WAIT_S)

    Segment._create_kind(name, 64, kind=1, init=init)
    raise SystemExit(3)  # should have been killed mid-creation


def report_start_time(ctl_name: str) -> None:
    """Write this process's start time at ctl offset 8, then exit."""
    ctl = Ctl.open(ctl_name)
    ctl.put_u64(8, shmlink._core.process_start_time(os.getpid()))
    ctl.close()


def set_ready_later(path: str, delay: float) -> None:
    """Act as a C creator laying a segment out in place: mark it ready after ``delay``."""
    import mmap

    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 4096)
        mem = shmlink._core.Memory(mm)
        time.sleep(delay)
        mem.store32(64, 1)
        mem.wake32(64)
        mem.release()
        mm.close()
    finally:
        os.close(fd)


def sleep_forever() -> None:
    time.sleep(WAIT_S)
    raise SystemExit(3)


# --- Mutex ------------------------------------------------------------------------


def mutex_increment(mutex_name: str, seg_name: str, n: int) -> None:
    """Increment a u64 counter at offset 0 of a segment ``n`` times under the mutex."""
    m = Mutex.open(mutex_name)
    seg = Segment.open(seg_name)
    for _ in range(n):
        m.acquire(timeout=WAIT_S)
        try:
            (v,) = struct.unpack("<Q", seg.read(0, 8))
            seg.write(struct.pack("<Q", v + 1), 0)
        finally:
            m.release()
    seg.close()
    m.close()


def mutex_hold_until(mutex_name: str, event_name: str) -> None:
    """Acquire the mutex, hold it until the event is set, release it."""
    m = Mutex.open(mutex_name)
    ev = Event.open(event_name)
    m.acquire(timeout=WAIT_S)
    assert m.holder_pid == os.getpid()
    ev.wait(timeout=WAIT_S)
    m.release()
    ev.close()
    m.close()


def mutex_acquire_and_die(mutex_name: str) -> None:
    """Acquire the mutex and SIGKILL ourselves while holding it."""
    m = Mutex.open(mutex_name)
    m.acquire(timeout=WAIT_S)
    os.kill(os.getpid(), signal.SIGKILL)


def mutex_acquire_and_sleep(mutex_name: str) -> None:
    """Acquire the mutex and sleep (holding it) until killed."""
    m = Mutex.open(mutex_name)
    m.acquire(timeout=WAIT_S)
    time.sleep(WAIT_S)
    raise SystemExit(3)


def mutex_expect_owner_died(mutex_name: str, dead_pid: int) -> None:
    """Acquire; expect OwnerDied naming ``dead_pid``; release without repairing."""
    m = Mutex.open(mutex_name)
    try:
        m.acquire(timeout=10)
    except shmlink.OwnerDied as e:
        assert e.previous_pid == dead_pid, (e.previous_pid, dead_pid)
    else:
        raise AssertionError("acquire did not report the dead holder")
    assert m.holder_pid == os.getpid()
    assert not m.consistent
    m.release()
    m.close()


# --- Event ------------------------------------------------------------------------


def event_wait_flag(event_name: str, ctl_name: str, slot: int, timeout: float) -> None:
    """Wait for the event once; then set control flag ``slot``."""
    ev = Event.open(event_name)
    ctl = Ctl.open(ctl_name)
    ev.wait(timeout=timeout)
    ctl.set(slot)
    ctl.close()
    ev.close()


def event_set_after(event_name: str, delay: float) -> None:
    ev = Event.open(event_name)
    time.sleep(delay)
    ev.set()
    ev.close()


def event_producer(event_name: str, seg_name: str, n: int) -> None:
    """For i in 1..n: write i at offset 0; set()."""
    ev = Event.open(event_name)
    seg = Segment.open(seg_name)
    for i in range(1, n + 1):
        seg.write(struct.pack("<Q", i), 0)
        ev.set()
    seg.close()
    ev.close()


def event_consumer(event_name: str, seg_name: str, n: int) -> None:
    """Wait and read until the final value ``n`` is seen; values never go back."""
    ev = Event.open(event_name)
    seg = Segment.open(seg_name)
    last = 0
    wakeups = 0
    while last != n:
        ev.wait(timeout=10)  # a lost wake-up turns into Timeout, a non-zero exit
        wakeups += 1
        (v,) = struct.unpack("<Q", seg.read(0, 8))
        assert v >= last, (v, last)
        last = v
    seg.write(struct.pack("<Q", wakeups), 8)
    seg.close()
    ev.close()


def event_pong(ping_name: str, pong_name: str, rounds: int) -> None:
    """Answer each ping with a pong, ``rounds`` times."""
    ping = Event.open(ping_name)
    pong = Event.open(pong_name)
    for _ in range(rounds):
        ping.wait(timeout=10)
        pong.set()
    ping.close()
    pong.close()


def check_size_and_write_last(name: str, size: int) -> None:
    """Open by name: the size is the creator's exact size; write the last byte."""
    seg = Segment.open(name)
    assert seg.size == size, (seg.size, size)
    assert len(seg.read()) == size
    seg.write(b"\xab", size - 1)
    try:
        seg.write(b"\xab", size)
    except shmlink.OutOfRange:
        pass
    else:
        raise AssertionError("write past the end did not raise OutOfRange")
    seg.close()


def expect_bytes(name: str, offset: int, data: bytes) -> None:
    """Open by name and check the bytes at offset."""
    seg = Segment.open(name)
    got = seg.read(offset, len(data))
    assert got == data, (got, data)
    seg.close()


# --- forging headers, as a C program (or a hostile peer) would lay them out -------

# struct shmlink_header in include/shmlink.h: name -> (offset, struct format)
HEADER_FIELDS = {
    "magic": (0, "<Q"),
    "layout_version": (8, "<I"),
    "kind": (12, "<I"),
    "data_offset": (16, "<Q"),
    "data_size": (24, "<Q"),
    "total_size": (32, "<Q"),
    "creator_pid": (40, "<I"),
    "flags": (44, "<I"),
    "creator_start": (48, "<Q"),
    "created_ns": (56, "<Q"),
    "ready": (64, "<I"),
    "max_participants": (68, "<I"),
    "kind_version": (72, "<I"),
}
MAGIC = 0x4B4E494C4D485301
LAYOUT_VERSION = 1
DATA_OFFSET = 4096
MAX_PARTICIPANTS = 128
PARTICIPANTS_AT = 128


def header_bytes(size: int, **fields: int) -> bytearray:
    """A whole segment file (header + ``size`` data bytes) laid out per shmlink.h."""
    values = {
        "magic": MAGIC,
        "layout_version": LAYOUT_VERSION,
        "kind": 1,
        "data_offset": DATA_OFFSET,
        "data_size": size,
        "total_size": DATA_OFFSET + size,
        "creator_pid": os.getpid(),
        "flags": 0,
        "creator_start": shmlink._core.process_start_time(os.getpid()),
        "created_ns": time.time_ns(),
        "ready": 1,
        "max_participants": MAX_PARTICIPANTS,
        "kind_version": 0,
    }
    values.update(fields)
    buf = bytearray(DATA_OFFSET + size)
    for field, value in values.items():
        off, fmt = HEADER_FIELDS[field]
        struct.pack_into(fmt, buf, off, value)
    return buf


def segment_file(name: str) -> str:
    from shmlink.segment import PREFIX, shm_dir

    return os.path.join(shm_dir(), PREFIX + name)


def write_segment_file(name: str, content: bytes, mode: int = 0o600) -> str:
    """Place ``content`` at the segment file of ``name`` (replacing what is there)."""
    path = segment_file(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return path


# --- Ctrl-C -------------------------------------------------------------------------


def _readline(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child printed nothing"
    return proc.stdout.readline()


def assert_ctrl_c_interrupts(code: str, *args: str, blocked=None, settle: float = 0.2) -> None:
    """Run ``code`` in a fresh interpreter; it prints a line, then blocks.  Once it is
    blocked (``blocked()`` true, then ``settle`` seconds), send SIGINT: it must exit
    within 5 s with a KeyboardInterrupt traceback."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = _readline(proc, 30)
        assert line.strip(), f"child exited early: {proc.communicate(timeout=10)[1]}"
        deadline = time.monotonic() + 10
        while blocked is not None and not blocked():
            assert time.monotonic() < deadline, "the child never blocked"
            time.sleep(0.005)
        time.sleep(settle)  # let it go to sleep
        assert proc.poll() is None, "the wait returned before Ctrl-C"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError("still blocked 5 s after Ctrl-C") from None
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err, err


def set_event_handle(ev: Event) -> None:
    """Receive a pickled Event handle (re-opened by name) and set it."""
    assert isinstance(ev, Event) and not ev.closed
    ev.set()
    ev.close()


def mutex_handle_try(m: Mutex) -> None:
    """Receive a pickled Mutex handle; it is held by the parent, so try_acquire fails."""
    assert isinstance(m, Mutex)
    assert m.try_acquire() is False
    m.close()
