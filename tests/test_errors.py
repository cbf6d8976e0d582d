"""Errors: one typed hierarchy; bad input, foreign, corrupt and hostile headers.

Every bad input must end in a specific ``ShmlinkError`` subclass that also
is the builtin it refines -- never a crash, a hang, a bare OSError, or a
destroyed file.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import segment as H
import shmlink
from support import run_python
from shmlink import (
    AccessDenied,
    CorruptSegment,
    Event,
    IncompatibleSegment,
    InvalidName,
    InvalidSize,
    Mutex,
    Segment,
    SegmentExists,
    SegmentNotFound,
    ShmlinkError,
    WrongKind,
)
from shmlink import errors as E

HIERARCHY = {
    "ShmlinkError": (Exception,),
    "InvalidName": (ValueError,),
    "InvalidSize": (ValueError,),
    "SegmentNotFound": (FileNotFoundError,),
    "SegmentExists": (FileExistsError,),
    "AccessDenied": (PermissionError,),
    "ForeignOwner": (E.AccessDenied, PermissionError),
    "Timeout": (TimeoutError,),
    "IncompatibleSegment": (),
    "WrongKind": (IncompatibleSegment, TypeError),
    "CorruptSegment": (),
    "CreatorDied": (),
    "SegmentBusy": (BufferError,),
    "SegmentClosed": (ValueError,),
    "OutOfRange": (IndexError,),
    "TextTooLong": (ValueError,),
    "TextDecodeError": (ValueError,),
    "MessageTooLarge": (ValueError,),
    "OwnerDied": (),
    "NotOwner": (RuntimeError,),
    "PeerDisconnected": (ConnectionError,),
    "TooManyParticipants": (OSError,),
    "MessageOverwritten": (),
    "RemoteError": (RuntimeError,),
    "SettingsMismatch": (ValueError,),
    "InvalidArgument": (ValueError,),
    "InvalidState": (RuntimeError,),
    "BadDirectory": (OSError,),
    "BufferFull": (BufferError,),
    "OutOfDescriptors": (OSError,),
    "BridgeConfigError": (ValueError,),
    "EndpointUnreachable": (ConnectionError,),
}


def test_every_error_is_listed_and_exported():
    assert sorted(E.__all__) == sorted(HIERARCHY)
    for n in E.__all__:
        assert getattr(shmlink, n) is getattr(E, n)


@pytest.mark.parametrize("cls_name, bases", sorted(HIERARCHY.items()))
def test_hierarchy_mixes_in_the_builtin(cls_name, bases):
    cls = getattr(E, cls_name)
    assert issubclass(cls, ShmlinkError)
    for b in bases:
        assert issubclass(cls, b), f"{cls_name} must also be a {b.__name__}"
    assert cls.__doc__, f"{cls_name} needs a docstring"


@pytest.mark.parametrize("cls_name", sorted(HIERARCHY))
def test_errors_pickle(cls_name):
    """Errors cross process boundaries (multiprocessing pools, queues of results)."""
    cls = getattr(E, cls_name)
    e = cls("segment 'x': what happened; what to do")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e)


def test_owner_died_keeps_previous_pid_through_pickle():
    e = shmlink.OwnerDied("mutex 'm': holder died", previous_pid=4242)
    assert e.previous_pid == 4242
    assert pickle.loads(pickle.dumps(e)).previous_pid == 4242


# --- names ------------------------------------------------------------------------------

BAD_NAMES = ["", "a/b", "/abs", "a\0b", "a..b", "..", ".", ".hidden", "-dash", "x" * 201,
             "sp ace", "tab\t", "new\nline", "ünï", "a*b"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_name_is_invalid_name(bad):
    for call in (lambda: Segment.create(bad, 10), lambda: Segment.open(bad),
                 lambda: Segment.create_or_open(bad, 10), lambda: Mutex.create(bad),
                 lambda: Event.open(bad), lambda: shmlink.info(bad), lambda: shmlink.remove(bad)):
        with pytest.raises(InvalidName) as exc:
            call()
        assert isinstance(exc.value, ValueError)
        assert str(exc.value)


@pytest.mark.parametrize("bad", [None, b"bytes", 5, 1.5, ["a"]], ids=repr)
def test_non_str_name_is_invalid_name(bad):
    with pytest.raises(InvalidName):
        Segment.create(bad, 10)
    with pytest.raises(InvalidName):
        Segment.open(bad)


def test_longest_name_is_accepted(names):
    base = names("x")
    n = base + "y" * (200 - len(base))
    assert len(n) == 200
    seg = Segment.create(n, 10)
    seg.close()
    shmlink.remove(n)
    with pytest.raises(InvalidName):
        Segment.create(n + "y", 10)


@given(st.text(max_size=220))
@settings(max_examples=300, deadline=None)
def test_any_string_is_a_valid_name_or_invalid_name(text):
    try:
        Segment.open(text, timeout=0).close()
    except InvalidName:
        ok = False
    except ShmlinkError:  # SegmentNotFound, or whatever a file of that name holds
        ok = True
    else:
        ok = True
    rules = (0 < len(text) <= 200 and text[0] not in ".-" and ".." not in text
             and all(c.isascii() and (c.isalnum() or c in "_.-") for c in text))
    assert ok == rules, text


# --- sizes and other arguments ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, -(1 << 40), True, False, 1 << 50, 1.5, "10", None],
                         ids=repr)
def test_bad_size_is_invalid_size_and_creates_nothing(name, size):
    with pytest.raises(InvalidSize) as exc:
        Segment.create(name, size)
    assert isinstance(exc.value, ValueError) and str(exc.value)
    assert not [e for e in os.listdir(shmlink.segment.shm_dir()) if name in e], "left a file behind"
    with pytest.raises(SegmentNotFound):
        Segment.open(name)


def test_bad_mode_and_lifetime_are_value_errors(name):
    for kw in ({"mode": 0o1777}, {"mode": -1}, {"mode": "0600"}, {"lifetime": "forever"}):
        with pytest.raises(ValueError):
            Segment.create(name, 10, **kw)
    assert not os.path.exists(H.segment_file(name))


# --- foreign, truncated and corrupt files -------------------------------------------------------


@pytest.mark.parametrize("content", [os.urandom(8192), os.urandom(4096 + 64), b"short", b""],
                         ids=["random-8k", "random-4k+64", "short", "empty"])
def test_foreign_file_is_incompatible_and_left_alone(name, content):
    path = H.write_segment_file(name, content)
    with pytest.raises(IncompatibleSegment) as exc:
        Segment.open(name, timeout=0.5)
    assert name in str(exc.value)
    with pytest.raises(IncompatibleSegment):
        Segment.open(name, readonly=True, timeout=0.5)
    with pytest.raises(SegmentExists):
        Segment.create(name, 10)
    with open(path, "rb") as f:
        assert f.read() == content, "a failed open never changes the file"
    listed = {i.name: i for i in shmlink.list_segments()}
    assert listed[name].kind == "invalid" and listed[name].error
    assert shmlink.info(name).kind == "invalid"


def test_directory_in_place_of_a_segment_is_incompatible(name):
    path = H.segment_file(name)
    os.mkdir(path)
    try:
        with pytest.raises(IncompatibleSegment):
            Segment.open(name, timeout=0.5)
        with pytest.raises(SegmentExists):
            Segment.create(name, 10)
        shmlink.list_segments()  # must not crash
    finally:
        os.rmdir(path)


def test_fifo_in_place_of_a_segment_is_incompatible_and_does_not_hang(name):
    """Anyone can place a FIFO named shmlink.<x> in /dev/shm: opening it for reading
    blocks until a writer comes, so a read-only open, listing, inspecting and gc must
    not do that."""
    path = H.segment_file(name)
    os.mkfifo(path, 0o600)
    with pytest.raises(IncompatibleSegment):
        Segment.open(name, timeout=0.5)
    # in a subprocess with a timeout: a hang must fail this test, not the suite
    code = (
        "import sys, shmlink\n"
        "name = sys.argv[1]\n"
        "try:\n"
        "    shmlink.Segment.open(name, readonly=True, timeout=0.5)\n"
        "except shmlink.IncompatibleSegment:\n"
        "    pass\n"
        "infos = {i.name: i for i in shmlink.list_segments()}\n"
        "assert name not in infos or infos[name].kind == 'invalid', infos.get(name)\n"
        "try:\n"
        "    shmlink.info(name)\n"
        "except shmlink.ShmlinkError:\n"
        "    pass\n"
        "assert name not in shmlink.gc(dry_run=True)\n"
        "print('ok')\n"
    )
    try:
        r = run_python(code, name, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("open(readonly=True)/list_segments()/info()/gc() hung on a FIFO named like a segment")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_symlink_in_place_of_a_segment_is_not_followed(name, tmp_path):
    target = tmp_path / "target"
    content = bytes(H.header_bytes(64))
    target.write_bytes(content)
    os.symlink(target, H.segment_file(name))
    with pytest.raises(IncompatibleSegment):
        Segment.open(name, timeout=0.5)
    with pytest.raises(SegmentExists):
        Segment.create(name, 10)
    assert target.read_bytes() == content


def _real_segment_file(name: str, size: int) -> str:
    seg = Segment.create(name, size)
    seg.write(b"\x5a" * size)
    path = seg.path
    seg.close()
    return path


@pytest.mark.parametrize("keep", [4096 + 5000, 4096 + 1, 4096, 2000, 100],
                         ids=["half-data", "one-data-byte", "header-only", "half-page", "100-bytes"])
def test_truncated_segment_is_corrupt(name, keep):
    path = _real_segment_file(name, 10_000)
    os.truncate(path, keep)
    with pytest.raises(CorruptSegment) as exc:
        Segment.open(name, timeout=0.5)
    assert name in str(exc.value)
    assert os.path.getsize(path) == keep, "a failed open never repairs or removes"
    assert shmlink.info(name).kind == "invalid"


def test_extended_segment_is_corrupt(name):
    path = _real_segment_file(name, 100)
    with open(path, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(CorruptSegment):
        Segment.open(name, timeout=0.5)


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_other_layout_version_is_incompatible(name, version):
    H.write_segment_file(name, H.header_bytes(64, layout_version=version))
    with pytest.raises(IncompatibleSegment) as exc:
        Segment.open(name, timeout=0.5)
    assert not isinstance(exc.value, WrongKind)
    assert str(version) in str(exc.value)


def test_bad_magic_is_incompatible(name):
    H.write_segment_file(name, H.header_bytes(64, magic=H.MAGIC ^ 1))
    with pytest.raises(IncompatibleSegment):
        Segment.open(name, timeout=0.5)


@pytest.mark.parametrize(
    "fields",
    [{"kind": 0}, {"kind": 99}, {"data_offset": 0}, {"data_offset": 8192}, {"data_size": 0},
     {"data_size": 65, "total_size": 4096 + 65}, {"total_size": 1 << 63}, {"max_participants": 0},
     {"max_participants": 1 << 20}, {"ready": 7}],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_impossible_header_values_are_corrupt(name, fields):
    H.write_segment_file(name, H.header_bytes(64, **fields))
    with pytest.raises(CorruptSegment):
        Segment.open(name, timeout=0.5)


def test_other_kind_is_wrong_kind(name):
    seg = Segment.create(name, 64)
    with pytest.raises(WrongKind) as exc:
        Mutex.open(name)
    assert isinstance(exc.value, TypeError) and isinstance(exc.value, IncompatibleSegment)
    with pytest.raises(WrongKind):
        Event.open(name)
    seg.write(b"still fine")
    assert seg.read(0, 10) == b"still fine"
    seg.close()
    m = Mutex.create(name + "-m")
    with pytest.raises(WrongKind):
        Segment.open(name + "-m")
    m.close()


# the layout versions a mutex (2) and an event (3) record in the header
_KIND_VERSION = {2: 0, 3: shmlink._core.EVENT_LAYOUT["version"]}


@pytest.mark.parametrize("cls, kind", [(Mutex, 2), (Event, 3)], ids=["mutex", "event"])
def test_control_block_too_small_for_its_kind_is_corrupt(name, cls, kind):
    """A header claiming a mutex/event whose data area cannot hold its control block
    (a hostile or buggy peer) must be refused at open, not crash later with IndexError."""
    H.write_segment_file(name, H.header_bytes(1, kind=kind, kind_version=_KIND_VERSION[kind]))
    try:
        h = cls.open(name, timeout=0.5)
    except CorruptSegment:
        return
    try:
        if cls is Mutex:
            h.try_acquire()
        else:
            h.wait(timeout=0)
    except ShmlinkError:
        pass
    finally:
        h.close()
    pytest.fail(f"{cls.__name__}.open accepted a 1-byte control block")


# --- hostile headers: hypothesis writes garbage into every field ---------------------------------


def _field_values(fmt: str):
    bits = 64 if fmt.endswith("Q") else 32
    return st.one_of(
        st.integers(0, (1 << bits) - 1),
        st.sampled_from([0, 1, 2, 3, 7, 64, 4095, 4096, 4096 + 64, 128, 1 << 31, os.getpid(),
                         (1 << bits) - 1]),
    )


GARBAGE_HEADER = st.fixed_dictionaries(
    {},
    optional={f: _field_values(fmt) for f, (_, fmt) in H.HEADER_FIELDS.items()},
)
GARBAGE_SLOTS = st.lists(
    st.tuples(st.integers(0, 127), st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1)),
    max_size=4,
)


@given(fields=GARBAGE_HEADER, slots=GARBAGE_SLOTS, resize=st.sampled_from([0, 0, 0, -1, 1, -64, 4096]))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_header_gives_a_typed_error_never_a_crash(name, fields, slots, resize):
    content = H.header_bytes(64, **fields)
    for slot, pid, start in slots:
        struct.pack_into("<IIQ", content, H.PARTICIPANTS_AT + 16 * slot, pid, 0, start)
    content = bytes(content[:len(content) + resize]) if resize < 0 else bytes(content) + bytes(resize)
    path = H.write_segment_file(name, content)
    try:
        try:
            seg = Segment.open(name, timeout=0.05)
        except ShmlinkError:
            pass
        else:
            try:
                assert seg.size == len(content) - H.DATA_OFFSET
                assert len(seg.read()) == seg.size
                seg.write(b"ok")
                assert os.getpid() in seg.participants()
            finally:
                seg.close()
        try:
            info = shmlink.info(name)
            assert isinstance(info.participants, list)
        except (ShmlinkError, FileNotFoundError):
            pass  # FileNotFoundError: an "auto" flag in the garbage removed it on close
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# 128 bytes: an event's control block with its doorbell table (garbage doorbell ids
# must cost set() a failed ring at most); a mutex uses the first 64
@given(block=st.binary(min_size=128, max_size=128), kind=st.sampled_from([2, 3]))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_garbage_control_block_never_crashes_or_hangs(name, block, kind):
    content = H.header_bytes(128, kind=kind, kind_version=_KIND_VERSION[kind])
    content[H.DATA_OFFSET:] = block
    path = H.write_segment_file(name, bytes(content))
    try:
        h = (Mutex if kind == 2 else Event).open(name, timeout=0.05)
        try:
            if kind == 2:
                for attempt in (h.try_acquire, lambda: h.acquire(timeout=0.05)):
                    try:
                        got = attempt()
                    except shmlink.OwnerDied:
                        got = True  # taken from a "dead" garbage holder: we hold it
                    except ShmlinkError:
                        got = False
                    if got:
                        assert h.holder_pid == os.getpid()
                        h.release()
                h.stats()
            else:
                h.is_set(), h.stats(), h.auto_reset
                for _ in range(2):
                    try:
                        h.wait(timeout=0.01)
                    except ShmlinkError:
                        pass
                    h.set()
        finally:
            h.close()
    finally:
        os.unlink(path)


def test_list_segments_survives_foreign_and_corrupt_files(names):
    foreign, short, corrupt = names("foreign"), names("short"), names("corrupt")
    good = Segment.create(names("good"), 32)
    H.write_segment_file(foreign, os.urandom(5000))
    H.write_segment_file(short, b"xyz")
    H.write_segment_file(corrupt, H.header_bytes(64, data_size=1 << 40))
    listed = {i.name: i for i in shmlink.list_segments()}
    for n in (foreign, short, corrupt):
        assert listed[n].kind == "invalid", n
        assert listed[n].error
    assert listed[good.name].kind == "segment" and listed[good.name].size == 32
    assert listed[good.name].participants == [os.getpid()]
    good.close()


def test_access_denied_is_typed(name):
    """An unreadable file (EACCES) becomes AccessDenied, not a bare PermissionError."""
    if os.geteuid() == 0:
        pytest.skip("root ignores mode bits; covered by test_other_user_is_denied_by_the_mode")
    seg = Segment.create(name, 8, mode=0o000)
    with pytest.raises(AccessDenied):
        Segment.open(name)
    seg.close()


# --- argument errors of the calls that go straight to C --------------------------------------


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan")], ids=repr)
def test_bad_timeout_of_c_calls_is_invalid_argument(name, timeout):
    with shmlink.Queue.create(name, capacity=4096) as q:
        calls = [lambda: q.send(b"x", timeout=timeout), lambda: q.recv(timeout=timeout),
                 lambda: q.send_many([b"x"], timeout=timeout),
                 lambda: q.recv_many(3, timeout=timeout)]
        for call in calls:
            with pytest.raises(shmlink.InvalidArgument, match="timeout") as exc:
                call()
            assert isinstance(exc.value, ValueError)
    tname = name + "-t"
    with shmlink.Topic.create(tname, capacity=4096) as t:
        sub = t.subscribe()
        calls = [lambda: t.publish(b"x", timeout=timeout), lambda: sub.recv(timeout=timeout),
                 lambda: sub.recv_many(3, timeout=timeout),
                 lambda: t.publish_many([b"x"], timeout=timeout)]
        for call in calls:
            with pytest.raises(shmlink.InvalidArgument, match="timeout"):
                call()
        sub.close()
        t.unlink()


def test_max_count_below_one_is_invalid_argument(name):
    with shmlink.Queue.create(name, capacity=4096) as q:
        with pytest.raises(shmlink.InvalidArgument, match="max_count"):
            q.recv_many(0, timeout=0)
    tname = name + "-t"
    with shmlink.Topic.create(tname, capacity=4096) as t:
        with t.subscribe() as sub:
            with pytest.raises(shmlink.InvalidArgument, match="max_count"):
                sub.recv_many(0, timeout=0)
        t.unlink()
