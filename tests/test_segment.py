"""Segment (issue 2): named shared memory between real processes.

Every test talks through real shared memory between real OS processes
(spawned with ``CTX`` or run as subprocesses); children receive names.
Crash tests SIGKILL children; ``gc`` tests run in a private directory under
/dev/shm so they can never collect segments of concurrently running suites.
"""

from __future__ import annotations

import gc as pygc
import os
import pickle
import stat
import struct
import sys
import time
import uuid

import pytest

from workers import segment as H
import shmlink
from support import CTX, join_all, kill, run_python, wait_for
from shmlink import (
    AccessDenied,
    CreatorDied,
    OutOfRange,
    Segment,
    SegmentBusy,
    SegmentClosed,
    SegmentExists,
    SegmentNotFound,
    ShmlinkError,
    TextDecodeError,
    TextTooLong,
    Timeout,
)
from shmlink.segment import PREFIX, shm_dir

DATA_OFFSET = H.DATA_OFFSET


@pytest.fixture
def ctl(names):
    """A control segment for flags between the test and its children."""
    c = H.Ctl.create(names("ctl"))
    yield c
    c.close()


@pytest.fixture
def private_shm(monkeypatch):
    """Point shmlink (and spawned children) at a private directory in /dev/shm.

    ``shmlink.gc()`` scans the whole directory; in the shared /dev/shm it could
    collect segments of other test sessions running at the same time.
    """
    d = os.path.join("/dev/shm", f"shmlink-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(d, 0o700)
    monkeypatch.setenv("SHMLINK_DIR", d)
    yield d
    for entry in os.listdir(d):
        os.unlink(os.path.join(d, entry))
    os.rmdir(d)


def start(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


def seg_path(name: str) -> str:
    return os.path.join(shm_dir(), PREFIX + name)


# --- two processes exchange text through a name ------------------------------------


@pytest.mark.parametrize(
    "lifetime, encoding, text",
    [
        ("persist", "utf-8", "héllo, wörld ✓"),
        ("auto", "utf-8", "héllo, wörld ✓"),
        ("persist", "utf-16-le", "wide ✓ text"),
        ("auto", "latin-1", "ANSI café"),
    ],
)
def test_two_processes_exchange_text_and_lifetime(name, lifetime, encoding, text):
    writer = start(H.exchange_writer, name, text, lifetime, encoding)
    reader = start(H.exchange_reader, name, text, encoding)
    join_all([writer, reader], timeout=60)
    path = seg_path(name)
    if lifetime == "auto":
        assert not os.path.exists(path), "an auto segment must go when its last participant closes"
        with pytest.raises(SegmentNotFound):
            Segment.open(name)
        return
    assert os.path.exists(path), "a persist segment must outlive its participants"
    with Segment.open(name) as seg:
        assert seg.size == 512 and seg.lifetime == "persist"
        # the reader cleared everything, then set byte 1 ("read") only
        assert seg.read(0, 2) == b"\x00\x01"
        assert seg.read(2) == bytes(510), "clear() by the reader must have zeroed the data"
        assert seg.participants() == [os.getpid()]
        seg.unlink()
        assert not os.path.exists(path)
        with pytest.raises(SegmentNotFound):
            Segment.open(name)
        seg.write(b"still mapped")  # unlink removes the name, not the memory
        assert seg.read(0, 12) == b"still mapped"


def test_auto_segment_stays_while_another_process_is_attached(name, ctl):
    seg = Segment.create(name, 64, lifetime="auto")
    p = start(H.hold_open, name, ctl.seg.name)
    try:
        ctl.wait(0, timeout=30)
        seg.close()  # the creator leaves first
        assert os.path.exists(seg_path(name)), "removed while a participant was attached"
        ctl.set(1)
        ctl.wait(2, timeout=30)
        assert not os.path.exists(seg_path(name)), "the last participant to close must remove it"
    finally:
        ctl.set(1)
        join_all([p], timeout=30)


def test_persist_segment_stays_after_everyone_closes(name):
    p = start(H.create_and_close, name, "persist")
    join_all([p], timeout=30)
    assert os.path.exists(seg_path(name))
    with Segment.open(name) as seg:
        assert seg.read(0, 5) == b"clean"
        seg.unlink()
    assert not os.path.exists(seg_path(name))


# --- create / open / create_or_open -----------------------------------------------


def test_create_open_create_or_open(name):
    with pytest.raises(SegmentNotFound):
        Segment.open(name)
    a = Segment.create(name, 100)
    assert a.created
    with pytest.raises(SegmentExists) as exc:
        Segment.create(name, 100)
    assert isinstance(exc.value, FileExistsError) and name in str(exc.value)
    b = Segment.open(name)
    assert not b.created
    with pytest.raises(shmlink.SettingsMismatch, match="size 100, not 999") as exc2:
        Segment.create_or_open(name, 999)  # exists with another size: refused
    assert isinstance(exc2.value, ValueError)
    c = Segment.create_or_open(name, 100)  # exists with that size: opened
    assert not c.created and c.size == 100
    for h in (a, b, c):
        h.close()
    Segment.open(name).unlink()
    d = Segment.create_or_open(name, 7)  # free: created with the size asked
    assert d.created and d.size == 7
    d.close()


def test_create_or_open_from_another_process_checks_creators_size(name):
    seg = Segment.create_or_open(name, 333)
    assert seg.created
    r = run_python(
        "import sys, shmlink\n"
        "s = shmlink.Segment.create_or_open(sys.argv[1], 333)\n"
        "print(s.created, s.size)\n"
        "s.close()\n"
        "try:\n"
        "    shmlink.Segment.create_or_open(sys.argv[1], 5)\n"
        "except shmlink.SettingsMismatch as e:\n"
        "    print(e.differences)\n",
        name,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["False 333", "{'size': (333, 5)}"]
    seg.close()


def test_failed_create_leaves_existing_segment_intact(name):
    seg = Segment.create(name, 10)
    seg.write(b"keep me")
    with pytest.raises(SegmentExists):
        Segment.create(name, 20)
    with pytest.raises(SegmentExists):
        Segment.create(name, 10, lifetime="auto")
    assert seg.read(0, 7) == b"keep me"
    assert os.stat(seg_path(name)).st_size == DATA_OFFSET + 10
    seg.close()


def test_constructor_is_not_public():
    with pytest.raises(TypeError):
        Segment("x", 10)


@pytest.mark.parametrize("size", [1, 4097, 100_000])
def test_size_is_exact_in_every_process(name, size):
    seg = Segment.create(name, size)
    assert seg.size == size
    assert os.stat(seg.path).st_size == DATA_OFFSET + size, "data area must not be page-rounded"
    p = start(H.check_size_and_write_last, name, size)
    join_all([p], timeout=30)
    assert seg.read(size - 1, 1) == b"\xab"
    assert len(seg.read()) == size
    with pytest.raises(OutOfRange):
        seg.read(size, 1)
    seg.close()


def test_properties_and_repr(name):
    seg = Segment.create(name, 42)
    assert seg.name == name
    assert seg.path == os.path.join(shm_dir(), PREFIX + name)
    assert seg.readonly is False
    assert seg.closed is False
    assert seg.lifetime == "persist"
    assert seg.creator_pid == os.getpid()
    assert name in repr(seg) and "42" in repr(seg)
    seg.close()
    assert seg.closed is True
    assert "closed" in repr(seg)
    assert seg.name == name  # still answers after close


def test_header_matches_the_c_layout(name):
    """Python writes the header exactly where include/shmlink.h says it is."""
    seg = Segment.create(name, 123, lifetime="auto")
    with open(seg.path, "rb") as f:
        raw = f.read(DATA_OFFSET)
    field = lambda n: struct.unpack_from(H.HEADER_FIELDS[n][1], raw, H.HEADER_FIELDS[n][0])[0]  # noqa: E731
    assert field("magic") == H.MAGIC
    assert raw[:8] == b"\x01SHMLINK"
    assert field("layout_version") == H.LAYOUT_VERSION
    assert field("kind") == 1
    assert field("data_offset") == DATA_OFFSET
    assert field("data_size") == 123
    assert field("total_size") == DATA_OFFSET + 123
    assert field("creator_pid") == os.getpid()
    assert field("flags") & 0x1  # SHMLINK_FLAG_UNLINK_ON_LAST_CLOSE
    assert field("creator_start") == shmlink._core.process_start_time(os.getpid())
    assert field("ready") == 1
    assert field("max_participants") == H.MAX_PARTICIPANTS
    slots = [struct.unpack_from("<IIQ", raw, H.PARTICIPANTS_AT + 16 * i) for i in range(128)]
    assert [s[0] for s in slots if s[0]] == [os.getpid()]
    seg.close()


# --- participants --------------------------------------------------------------------


def test_participants_lists_both_processes_while_attached(name, ctl):
    seg = Segment.create(name, 16)
    assert seg.participants() == [os.getpid()]
    p = start(H.hold_open, name, ctl.seg.name)
    try:
        ctl.wait(0, timeout=30)
        assert seg.participants() == sorted([os.getpid(), p.pid])
        ctl.set(1)
        ctl.wait(2, timeout=30)
        assert seg.participants() == [os.getpid()], "a cleanly closed participant must leave the table"
    finally:
        ctl.set(1)
        join_all([p], timeout=30)
    seg.close()


def test_killed_participant_is_no_longer_listed(name, ctl):
    seg = Segment.create(name, 16)
    p = start(H.attach_and_sleep, name, ctl.seg.name)
    try:
        ctl.wait(0, timeout=30)
        assert p.pid in seg.participants()
    finally:
        kill(p)
    assert seg.participants() == [os.getpid()]
    info = shmlink.info(name)
    assert info.participants == [os.getpid()]
    assert info.dead_participants == [p.pid]
    seg.close()


def test_participant_liveness_uses_start_time_not_just_pid(name):
    """A slot whose PID is alive but whose start time differs is a reused PID: dead."""
    seg = Segment.create(name, 16)
    p = start(H.sleep_forever)
    try:
        real_start = wait_for(lambda: shmlink._core.process_start_time(p.pid), what="child start time")
        fd = os.open(seg.path, os.O_RDWR)
        try:
            slot = H.PARTICIPANTS_AT + 16 * 100
            os.pwrite(fd, struct.pack("<IIQ", p.pid, 0, real_start + 12345), slot)
            assert p.pid not in seg.participants(), "PID reuse mistaken for life"
            os.pwrite(fd, struct.pack("<IIQ", p.pid, 0, real_start), slot)
            assert p.pid in seg.participants()
            os.pwrite(fd, bytes(16), slot)
        finally:
            os.close(fd)
    finally:
        kill(p)
    seg.close()


# --- one mapping per process, pickling, context managers, close -------------------------


def test_same_name_twice_in_one_process_shares_one_mapping(name):
    a = Segment.create(name, 64)
    b = Segment.open(name)
    assert a._map is b._map, "the process-local registry must hand out one mapping"
    with a.view(0, 4) as va, b.view(0, 4) as vb:
        va[:] = b"abcd"
        assert bytes(vb) == b"abcd"
    a.close()
    assert b.read(0, 4) == b"abcd", "closing one handle must not unmap the other"
    assert b.participants() == [os.getpid()]
    b.close()
    with pytest.raises(SegmentClosed):
        b.read()


def test_pickled_handle_reopens_by_name_in_a_spawned_child(name):
    seg = Segment.create(name, 200)
    seg.write_text("from the parent")
    data = pickle.dumps(seg)
    assert b"from the parent" not in data and name.encode() in data, "pickled by name, not by content"
    p = start(H.read_handle, seg, "from the parent", os.getpid())
    join_all([p], timeout=30)
    assert seg.read_text(offset=100) == "FROM THE PARENT"
    twin = pickle.loads(data)
    assert twin._map is seg._map and not twin.created
    twin.close()
    seg.close()


def test_context_manager_and_idempotent_close(name):
    with Segment.create(name, 8) as seg:
        seg.write(b"x")
    assert seg.closed
    seg.close()
    seg.close()
    with pytest.raises(SegmentClosed) as exc:
        seg.read()
    assert isinstance(exc.value, ValueError)
    for op in (lambda: seg.write(b"a"), lambda: seg.view(), lambda: seg.size,
               lambda: seg.participants(), lambda: seg.read_text(), seg.clear):
        with pytest.raises(SegmentClosed):
            op()
    assert os.path.exists(seg_path(name)), "close() is not unlink()"
    seg.unlink()  # close() then unlink() removes the name, like CPython's SharedMemory
    assert not os.path.exists(seg_path(name))


def test_unlink_of_a_closed_handle_spares_a_newer_segment_of_the_same_name(name):
    old = Segment.create(name, 8)
    old.close()
    old_path = seg_path(name)
    os.unlink(old_path)
    newer = Segment.create(name, 16)
    old.unlink()  # must not remove the segment it did not open
    assert os.path.exists(old_path)
    assert Segment.open(name).size == 16
    newer.unlink()
    newer.close()


def test_close_with_live_view_raises_busy_and_works_after_release(name):
    seg = Segment.create(name, 32)
    v = seg.view(4, 4)
    with pytest.raises(SegmentBusy) as exc:
        seg.close()
    assert isinstance(exc.value, BufferError)
    assert not seg.closed, "a failed close must leave the handle usable"
    v[:] = b"live"
    assert seg.read(4, 4) == b"live"
    buf = seg.buf
    v.release()
    with pytest.raises(SegmentBusy):
        seg.close()
    buf.release()
    seg.close()
    assert seg.closed


def test_del_never_raises(name):
    caught = []
    old = sys.unraisablehook
    sys.unraisablehook = caught.append
    try:
        seg = Segment.create(name, 16)
        del seg
        pygc.collect()
        seg = Segment.open(name)
        view = seg.view()  # closing from __del__ will hit SegmentBusy: must be swallowed
        del seg
        pygc.collect()
        view[0] = 1  # the mapping lives on while the view does
        view.release()
        half = Segment.__new__(Segment)  # a half-built object
        half.close()
        repr(half)
        del half
        pygc.collect()
    finally:
        sys.unraisablehook = old
    assert caught == [], [c.exc_value for c in caught]


def test_view_is_zero_copy_across_processes(name):
    seg = Segment.create(name, 64)
    v = seg.view(10, 5)
    assert len(v) == 5 and not v.readonly
    p = start(H.write_at, name, b"hello", 10)
    join_all([p], timeout=30)
    assert bytes(v) == b"hello", "a write by another process must show through the view"
    v[:] = b"HELLO"
    p = start(H.expect_bytes, name, 10, b"HELLO")
    join_all([p], timeout=30)
    v.release()
    with seg.view(63) as last:
        assert len(last) == 1
    with seg.view(64) as empty:
        assert len(empty) == 0
    seg.close()


def test_out_of_range(name):
    seg = Segment.create(name, 10)
    for call in (
        lambda: seg.read(11),
        lambda: seg.read(-1),
        lambda: seg.read(5, 6),
        lambda: seg.read(0, -1),
        lambda: seg.write(b"x", 10),
        lambda: seg.write(b"xx", 9),
        lambda: seg.write(b"x", -1),
        lambda: seg.write(bytes(11)),
        lambda: seg.view(11),
        lambda: seg.view(0, 11),
        lambda: seg.view(5, 6),
        lambda: seg.view(-1, 1),
        lambda: seg.view(0, -1),
    ):
        with pytest.raises(OutOfRange) as exc:
            call()
        assert isinstance(exc.value, IndexError)
    assert seg.read() == bytes(10), "a write that does not fit must write nothing"
    assert seg.write(b"0123456789") == 10
    assert seg.read(3, 2) == b"34"
    assert seg.read(10) == b""
    seg.close()


def test_readonly_open_in_another_process(name):
    seg = Segment.create(name, 32)
    seg.write_text("read me")
    code = (
        "import sys, shmlink\n"
        "s = shmlink.Segment.open(sys.argv[1], readonly=True)\n"
        "assert s.readonly and s.read_text() == 'read me'\n"
        "for op in (lambda: s.write(b'x'), lambda: s.write_text('x'), s.clear):\n"
        "    try:\n"
        "        op()\n"
        "    except shmlink.AccessDenied as e:\n"
        "        assert isinstance(e, PermissionError)\n"
        "    else:\n"
        "        raise SystemExit('a write through a read-only handle succeeded')\n"
        "with s.view() as v:\n"
        "    assert v.readonly\n"
        "s.close()\n"
        "print('ok')\n"
    )
    r = run_python(code, name)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert seg.read_text() == "read me"
    seg.close()


def test_readonly_open_in_the_creating_process_refuses_writes(name):
    """open(readonly=True) must give a handle that refuses writes, even when this
    process already maps the segment read-write (the mapping is shared)."""
    seg = Segment.create(name, 32)
    ro = Segment.open(name, readonly=True)
    try:
        assert ro.readonly is True
        with pytest.raises(AccessDenied):
            ro.write(b"x")
        with pytest.raises(AccessDenied):
            ro.clear()
        assert seg.read(0, 1) == b"\x00"
    finally:
        ro.close()
        seg.close()


# --- text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, text, nul",
    [
        ("utf-8", "grüße ✓", b"\0"),
        ("latin-1", "café ÿ", b"\0"),
        ("utf-16-le", "wide ✓", b"\0\0"),
    ],
)
def test_text_is_nul_terminated_in_the_encodings_code_unit(name, encoding, text, nul):
    seg = Segment.create(name, 64)
    seg.write(b"\xff" * 64)  # garbage after the text must not be read
    n = seg.write_text(text, encoding, offset=3)
    encoded = text.encode(encoding)
    assert n == len(encoded) + len(nul)
    assert seg.read(3, n) == encoded + nul
    assert seg.read(3 + n, 1) == b"\xff"
    assert seg.read_text(encoding, offset=3) == text
    r = run_python(
        "import sys, shmlink\n"
        "s = shmlink.Segment.open(sys.argv[1])\n"
        "sys.stdout.buffer.write(s.read_text(sys.argv[2], offset=3).encode('utf-8'))\n"
        "s.close()\n",
        name, encoding,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == text
    seg.close()


def test_utf16_terminator_is_aligned_to_code_units(name):
    seg = Segment.create(name, 32)
    text = "a\u0100b"  # utf-16-le: 61 00 | 00 01 | 62 00 -- a zero pair at an odd offset
    seg.write_text(text, "utf-16-le")
    assert seg.read_text("utf-16-le") == text
    seg.close()


def test_text_exactly_filling_the_segment(name):
    seg = Segment.create(name, 6)
    assert seg.write_text("12345") == 6
    assert seg.read_text() == "12345"
    assert seg.write_text("ab", "utf-16-le", offset=0) == 6
    assert seg.read_text("utf-16-le") == "ab"
    seg.write(b"xyzxyz")
    assert seg.read_text() == "xyzxyz", "no NUL: the text runs to the end of the segment"
    seg.close()


@pytest.mark.parametrize(
    "encoding, text, offset",
    [("utf-8", "123456", 0), ("utf-8", "é" * 3, 0), ("utf-16-le", "abc", 0), ("utf-8", "ab", 4)],
)
def test_text_too_long_writes_nothing(name, encoding, text, offset):
    seg = Segment.create(name, 6)
    seg.write(b"UNTOUC")
    with pytest.raises(TextTooLong) as exc:
        seg.write_text(text, encoding, offset=offset)
    assert isinstance(exc.value, ValueError) and name in str(exc.value)
    assert seg.read() == b"UNTOUC"
    seg.close()


def test_undecodable_text_raises_text_decode_error(name):
    seg = Segment.create(name, 8)
    seg.write(b"\xff\xfeok\0")
    with pytest.raises(TextDecodeError) as exc:
        seg.read_text("utf-8")
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, ShmlinkError)
    assert seg.read_text("utf-8", errors="replace").endswith("ok")
    assert seg.read_text("latin-1") == "\xff\xfeok"
    seg.write(b"\x00\xd8\x00\x00")  # a lone UTF-16 surrogate
    with pytest.raises(TextDecodeError):
        seg.read_text("utf-16-le")
    seg.close()


def test_clear_zeroes_the_data_area_for_other_processes(name):
    seg = Segment.create(name, 100_000)
    seg.write(b"\x01" * 100_000)
    seg.write_text("text")
    r = run_python(
        "import sys, shmlink\n"
        "s = shmlink.Segment.open(sys.argv[1])\n"
        "s.clear()\n"
        "s.close()\n",
        name,
    )
    assert r.returncode == 0, r.stderr
    assert seg.read_text() == ""
    assert seg.read() == bytes(100_000)
    seg.close()


# --- file-backed segments ---------------------------------------------------------------


def test_file_backed_segment_reopened_by_path_and_persists(tmp_path):
    path = tmp_path / "x.seg"
    seg = Segment.create(None, 100, path=path)
    assert seg.created and seg.size == 100
    assert seg.path == str(path) and seg.name == "x.seg"
    assert os.stat(path).st_size == DATA_OFFSET + 100
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    seg.write_text("on disk")
    p = start(H.read_text_expect, str(path), "on disk")
    join_all([p], timeout=30)
    assert seg.read_text(offset=50) == "reply"
    seg.close()
    assert os.path.exists(path)
    assert sorted(os.listdir(tmp_path)) == ["x.seg"], "no temporary files left beside it"
    with Segment.open(path=path) as again:
        assert again.read_text() == "on disk" and again.read_text(offset=50) == "reply"
    with pytest.raises(SegmentExists):
        Segment.create(None, 100, path=path)
    with pytest.raises(SegmentNotFound):
        Segment.open(path=tmp_path / "missing.seg")


def test_file_backed_handle_pickles_by_path(tmp_path):
    path = tmp_path / "p.seg"
    seg = Segment.create(None, 300, path=str(path))
    seg.write_text("by path")
    p = start(H.read_handle, seg, "by path", os.getpid())
    join_all([p], timeout=30)
    assert seg.read_text(offset=100) == "BY PATH"
    seg.close()


# --- permissions ------------------------------------------------------------------------


def test_created_0600_by_default(name):
    old = os.umask(0)
    try:
        seg = Segment.create(name, 8)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(seg.path).st_mode) == 0o600
    seg.close()


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o000])
@pytest.mark.parametrize("mode", [0o644, 0o660, 0o600])
def test_mode_is_honoured_regardless_of_umask(names, umask, mode):
    n = names()
    old = os.umask(umask)
    try:
        seg = Segment.create(n, 8, mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(seg.path).st_mode) == mode
    seg.close()


DROP_AND_OPEN = """
import os, sys, shmlink
name, readonly = sys.argv[1], sys.argv[2] == "ro"
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    s = shmlink.Segment.open(name, readonly=readonly)
except shmlink.AccessDenied as e:
    print("denied", isinstance(e, PermissionError))
else:
    print("opened", s.read_text())
    s.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_other_user_is_denied_by_the_mode(names):
    private = Segment.create(names("private"), 16)  # 0600
    shared = Segment.create(names("shared"), 16, mode=0o644)
    shared.write_text("public")
    try:
        r = run_python(DROP_AND_OPEN, private.name, "rw", timeout=30)
        assert r.stdout.strip() == "denied True", r.stderr
        r = run_python(DROP_AND_OPEN, private.name, "ro", timeout=30)
        assert r.stdout.strip() == "denied True", r.stderr
        r = run_python(DROP_AND_OPEN, shared.name, "rw", timeout=30)
        assert r.stdout.strip() == "denied True", r.stderr
        r = run_python(DROP_AND_OPEN, shared.name, "ro", timeout=30)
        assert r.stdout.strip() == "opened public", r.stderr
    finally:
        private.close()
        shared.close()


# --- crashes: creators killed mid-creation, foreign in-place creators ----------------------


def test_creator_killed_before_ready_leaves_nothing_openable(private_shm, name, tmp_path):
    marker = tmp_path / "in-init"
    p = start(H.create_blocking, name, str(marker))
    try:
        wait_for(marker.exists, timeout=30, what="the creator to reach its init hook")
    finally:
        kill(p)
    with pytest.raises(SegmentNotFound):
        Segment.open(name, timeout=1)
    # The creator's temporary file: "shmlink." + a marker + "new.<pid>.<hex>." + name
    # (the marker is whatever keeps it apart from valid user names; see below).
    tmp = [e for e in os.listdir(private_shm)
           if e.startswith(PREFIX) and f"new.{p.pid}." in e and e.endswith("." + name)]
    assert len(tmp) == 1, os.listdir(private_shm)
    assert f"{PREFIX}{name}" not in os.listdir(private_shm)
    assert all(i.name != name for i in shmlink.list_segments())
    assert tmp[0] in shmlink.gc(dry_run=True)
    assert os.path.exists(os.path.join(private_shm, tmp[0])), "dry_run must not remove"
    assert tmp[0] in shmlink.gc()
    assert os.listdir(private_shm) == []
    seg = Segment.create(name, 8)  # the name is free
    seg.unlink()
    seg.close()


def _dead_identity(ctl) -> tuple[int, int]:
    """PID and start time of a child that has exited (and been reaped)."""
    p = start(H.report_start_time, ctl.seg.name)
    join_all([p], timeout=30)
    start_time = ctl.get_u64(8)
    assert start_time and not shmlink._core.process_alive(p.pid, start_time)
    return p.pid, start_time


def test_in_place_creator_that_died_raises_creator_died(name, ctl):
    pid, start_time = _dead_identity(ctl)
    H.write_segment_file(name, H.header_bytes(64, ready=0, creator_pid=pid, creator_start=start_time))
    t0 = time.monotonic()
    with pytest.raises(CreatorDied) as exc:
        Segment.open(name, timeout=10)
    assert time.monotonic() - t0 < 5
    assert str(pid) in str(exc.value)
    assert os.path.exists(seg_path(name)), "a failed open never destroys anything"


def test_in_place_creator_alive_open_times_out(name):
    H.write_segment_file(name, H.header_bytes(64, ready=0))  # creator: this live process
    t0 = time.monotonic()
    with pytest.raises(Timeout) as exc:
        Segment.open(name, timeout=0.3)
    elapsed = time.monotonic() - t0
    assert isinstance(exc.value, TimeoutError)
    assert 0.3 <= elapsed < 5
    assert os.path.exists(seg_path(name))


def test_in_place_creator_marks_ready_during_the_wait(name):
    path = H.write_segment_file(name, H.header_bytes(64, ready=0))
    p = start(H.set_ready_later, path, 0.3)
    try:
        t0 = time.monotonic()
        seg = Segment.open(name, timeout=20)
        assert time.monotonic() - t0 < 10
    finally:
        join_all([p], timeout=30)
    assert seg.size == 64 and os.getpid() in seg.participants()
    seg.close()


def test_ctrl_c_interrupts_an_open_waiting_for_ready(name):
    H.write_segment_file(name, H.header_bytes(64, ready=0))  # creator: this live process
    code = (
        "import sys, shmlink\n"
        "print('waiting', flush=True)\n"
        "shmlink.Segment.open(sys.argv[1], timeout=None)\n"
    )
    H.assert_ctrl_c_interrupts(code, name)


# --- gc ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", ["persist", "auto"])
def test_gc_removes_segment_whose_participants_all_died(private_shm, name, ctl, lifetime):
    if lifetime == "persist":
        p = start(H.create_persist_and_sleep, name, ctl.seg.name)
    else:
        seg = Segment.create(name, 100, lifetime="auto")
        p = start(H.attach_and_sleep, name, ctl.seg.name)
    try:
        ctl.wait(0, timeout=30)
        if lifetime == "auto":
            seg.close()  # the child is the only one attached now
            assert os.path.exists(os.path.join(private_shm, PREFIX + name))
        assert name not in shmlink.gc(dry_run=True), "gc must not touch a segment in use"
    finally:
        kill(p)
    assert shmlink.gc(dry_run=True) == [name]
    assert os.path.exists(os.path.join(private_shm, PREFIX + name)), "dry_run must not remove"
    assert shmlink.gc() == [name]
    assert os.listdir(private_shm) == [PREFIX + ctl.seg.name]


def test_gc_keeps_live_and_cleanly_closed_segments(private_shm, names, ctl):
    live, closed, foreign = names("live"), names("closed"), names("foreign")
    held = Segment.create(live, 10, lifetime="auto")  # auto, but held by this live process
    p = start(H.create_and_close, closed, "persist")
    join_all([p], timeout=30)
    H.write_segment_file(foreign, os.urandom(5000))
    # a persist segment whose other participant died, but that a live process holds
    mixed = names("mixed")
    m = Segment.create(mixed, 10)
    q = start(H.attach_and_sleep, mixed, ctl.seg.name)
    try:
        ctl.wait(0, timeout=30)
    finally:
        kill(q)
    everything = sorted(PREFIX + n for n in (live, closed, foreign, mixed, ctl.seg.name))
    assert shmlink.gc(dry_run=True) == []
    assert shmlink.gc() == []
    assert sorted(os.listdir(private_shm)) == everything
    with Segment.open(closed) as s:
        assert s.read(0, 5) == b"clean"
    assert shmlink.gc() == []
    held.close()  # auto: gone with its last participant
    assert not os.path.exists(os.path.join(private_shm, PREFIX + live))
    m.close()
    for n in (closed, foreign, mixed):
        os.unlink(os.path.join(private_shm, PREFIX + n))


def test_gc_never_mistakes_a_user_segment_for_a_creators_leftover(private_shm, ctl):
    """A valid user name may look like a temporary name ("new.<pid>.<hex>.<x>")."""
    dead_pid, _ = _dead_identity(ctl)
    tricky = f"new.{dead_pid}.deadbeef.data"
    p = start(H.create_and_close, tricky, "persist")
    join_all([p], timeout=30)
    assert shmlink.gc() == []
    with Segment.open(tricky) as s:
        assert s.read(0, 5) == b"clean"
