"""Hostile memory (issue 8): positions near 2^63, board constants at extreme
values, and a file truncated under every kind of participant.

A peer writes the segment through its own mapping, as another process
would.  Each outcome is "works correctly" or ``CorruptSegment`` within the
call's timeout: never a lost message, a hang, or a dead process.  Anything
that could kill or hang the interpreter runs in a child process with a
wall-clock limit.  These tests also run under AddressSanitizer in CI.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

import shmlink
from shmlink import _core
from shmlink.segment import PREFIX, shm_dir
from support import python_env, run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")
U64 = 2**64
LIMIT = 2**63  # SHMLINK_RING_POS_LIMIT: positions never pass it

# ---------------------------------------------------------------------------
# 1. Queue and topic positions near 2^63 and 2^64
# ---------------------------------------------------------------------------

QUEUE_POSITIONS = r"""
import mmap, os, struct, sys, time
from hypothesis import given, settings, strategies as st
import shmlink
from shmlink import _core
from shmlink.segment import PREFIX, shm_dir

name = sys.argv[1]
R = _core.DATA_OFFSET
U64, LIMIT, CAP, T = 2**64, 2**63, 512, 0.2
q = shmlink.Queue.create(name, CAP, max_message_size=200)
fd = os.open(os.path.join(shm_dir(), PREFIX + name), os.O_RDWR)
mm = mmap.mmap(fd, 0)
os.close(fd)
snap = mm[R:R + 320 + CAP]

def put(off, v):
    struct.pack_into("<Q", mm, R + off, v % U64)

def get(off):
    return struct.unpack_from("<Q", mm, R + off)[0]

def valid_empty(h, t):
    return h == t and t <= LIMIT and t % 8 == 0

def fits(t, n):
    # where the record goes (after a wrap marker if it does not fit before the end)
    need = 8 + (n + 7) // 8 * 8
    to_end = CAP - t % CAP
    pos = t + to_end if need > to_end else t
    return pos + need <= LIMIT

def op(kind):
    if kind == "send":
        q.send(b"S" * 40, timeout=T); return [b"S" * 40]
    if kind == "try_send":
        return [b"t" * 7] if q.try_send(b"t" * 7) else []
    if kind == "send_many":
        n = q.send_many([b"a" * 100, b"", b"b" * 30], timeout=T)
        return [b"a" * 100, b"", b"b" * 30][:n]
    if kind == "recv":
        return q.recv(timeout=T)
    if kind == "try_recv":
        return q.try_recv()
    if kind == "recv_many":
        return q.recv_many(5, timeout=T)
    if kind == "recv_view":
        with q.recv_view(timeout=T) as v:
            return bytes(v)
    if kind == "recv_into":
        b = bytearray(200)
        return bytes(b[:q.recv_into(b, timeout=T)])
    raise AssertionError(kind)

SENDS = ("send", "try_send", "send_many")
pos = st.one_of(st.sampled_from([0, 8, 504, 512, LIMIT - 512, LIMIT - 64, LIMIT - 8, LIMIT - 1,
                                 LIMIT, LIMIT + 8, U64 - 512, U64 - 8, U64 - 1]),
                st.integers(0, U64 - 1))
delta = st.sampled_from([0, 0, 0, 8, 16, 24, 512, -8, 2**63, U64 - 8])

@settings(max_examples=int(sys.argv[2]), deadline=None, database=None)
@given(head=pos, d=delta, kind=st.sampled_from(SENDS + ("recv", "try_recv", "recv_many",
                                                       "recv_view", "recv_into")),
       records=st.booleans())
def check(head, d, kind, records):
    mm[R:R + 320 + CAP] = snap
    tail = (head + d) % U64
    put(144, head); put(80, tail)
    clean = valid_empty(head, tail)
    if records and clean and fits(tail, 40):
        q.send(b"R" * 40, timeout=T)  # a real record at these positions
    now = get(80)
    sent0 = get(88)
    t0 = time.monotonic()
    try:
        got = op(kind)
        err = None
    except (shmlink.CorruptSegment, shmlink.Timeout) as e:
        got, err = None, e
    took = time.monotonic() - t0
    assert took < T + 1.0, (kind, head, tail, took)
    h2, t2 = get(144), get(80)
    if kind in SENDS:
        if clean and fits(now, 152 if kind == "send_many" else 40):  # 152: all three
            assert err is None, (kind, head, tail, err)
        if err is not None and not isinstance(err, shmlink.Timeout):
            return  # CorruptSegment: nothing was claimed
        got = got or []  # Timeout: nothing was sent
        # never a lost message: whatever the call says it sent is there, in order
        assert get(88) - sent0 == len(got), (kind, head, tail, got)
        if got and clean:
            # (behind garbage a peer left in the ring, a receive reports that first)
            assert (t2 - h2) % U64 <= CAP
            back = q.recv_many(10, timeout=T)
            assert back[-len(got):] == got, (kind, head, tail, back, got)
    else:
        if err is None and got not in (None, [], b""):
            # a well-formed message: what a real record held
            assert got in (b"R" * 40, [b"R" * 40]), (kind, head, tail, got)
        if records and valid_empty(head, tail) and fits(tail, 40):
            assert err is None and got in (b"R" * 40, [b"R" * 40]), (kind, head, tail, got, err)
    owners = struct.unpack_from("<I", mm, R + 64)[0], struct.unpack_from("<I", mm, R + 128)[0]
    assert owners == (0, 0), (kind, head, tail, "a lock left held")

try:
    check()
finally:
    mm.close()
    q.unlink()
print("ok")
"""


def test_queue_positions_near_2_63_never_lose_or_hang(name):
    """BUG: head = tail = X >= 2^63 made the write position a negative return
    code: send returned True with nothing written (``sent`` unchanged) or spun
    forever holding the GIL."""
    r = run_python(QUEUE_POSITIONS, name, "400", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok")


@pytest.mark.parametrize("x", [2**63 - 8, 2**63, 2**63 + 8, 2**64 - 8, 2**64 - 1])
@pytest.mark.parametrize("op", ["send", "try_send", "send_many"])
def test_send_at_an_impossible_position_is_corrupt(name, x, op):
    code = r"""
import mmap, os, struct, sys, shmlink
from shmlink import _core
from shmlink.segment import PREFIX, shm_dir
name, x, op = sys.argv[1], int(sys.argv[2]), sys.argv[3]
q = shmlink.Queue.create(name, 512, max_message_size=200)
fd = os.open(os.path.join(shm_dir(), PREFIX + name), os.O_RDWR); mm = mmap.mmap(fd, 0); os.close(fd)
struct.pack_into("<QQ", mm, _core.DATA_OFFSET + 80, x, 0)
struct.pack_into("<Q", mm, _core.DATA_OFFSET + 144, x)
try:
    if op == "send": q.send(b"m" * 40, timeout=0.5)
    elif op == "try_send": q.try_send(b"m" * 40)
    else: q.send_many([b"m" * 40], timeout=0.5)
    print("sent", q.stats()["sent"])
except shmlink.CorruptSegment:
    print("corrupt")
mm.close(); q.unlink()
"""
    r = run_python(code, name, str(x), op, timeout=30)
    assert r.returncode == 0, r.stderr
    # none of these positions leaves room for a 48-byte record below 2^63
    assert r.stdout.strip() == "corrupt"


TOPIC_POSITIONS = r"""
import mmap, os, struct, sys, time
import shmlink
from shmlink import _core
from shmlink.segment import PREFIX, shm_dir
name, mode = sys.argv[1], sys.argv[2]
D, U64, LIMIT = _core.DATA_OFFSET, 2**64, 2**63
t = shmlink.Topic.create(name, 1024, delivery=mode)
s = t.subscribe()
fd = os.open(os.path.join(shm_dir(), PREFIX + name), os.O_RDWR); mm = mmap.mmap(fd, 0); os.close(fd)
snap = mm[D:]
out = []
for x in [0, 1024, LIMIT - 1024, LIMIT - 32, LIMIT - 16, LIMIT - 1, LIMIT, LIMIT + 16,
          U64 - 1024, U64 - 32, U64 - 16, U64 - 1]:
    mm[D:] = snap
    struct.pack_into("<QQ", mm, D + 128, x, x)  # tail, head
    s.close()
    struct.pack_into("<Q", mm, D + 320 + 16, x)
    sub = None
    try:
        sub = t.subscribe()
    except shmlink.CorruptSegment:
        out.append((x, "subscribe corrupt")); continue
    t0 = time.monotonic()
    try:
        t.publish(b"p" * 7, timeout=0.2)
        pub = "ok"
    except shmlink.CorruptSegment:
        pub = "corrupt"
    try:
        got = sub.recv(timeout=0.2)
    except shmlink.CorruptSegment:
        got = "corrupt"
    except shmlink.Timeout:
        got = "timeout"
    assert time.monotonic() - t0 < 2.0, x
    valid = x % 16 == 0 and x + 32 <= LIMIT
    if valid:
        assert (pub, got) == ("ok", b"p" * 7), (x, pub, got)
    else:
        # never a message published and then lost
        assert pub == "corrupt", (x, pub, got)
    out.append((x, pub, got))
    s = sub
s.close(); mm.close(); t.unlink()
print("ok", len(out))
"""


@pytest.mark.parametrize("mode", ["lossless", "latest"])
def test_topic_positions_near_2_63_never_lose_or_hang(name, mode):
    """BUG: tail = head = 2^64 - 16 let publish succeed while its tail wrapped
    to 16: the message was never delivered (lossless mode included)."""
    r = run_python(TOPIC_POSITIONS, name, mode, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok")


# ---------------------------------------------------------------------------
# 2. Board constants at extreme values: Python and the C reader
# ---------------------------------------------------------------------------

EXTREMES = [0, 1, 2**31, 2**32, 2**63, 2**63 + 64, 2**64 - 1]
L = _core.BOARD_LAYOUT
SLOT0 = L["slot0"]
CAPACITY = 100
STRIDE = L["slot_header"] + 128  # shmlink_board_stride(100)
BOARD_FIELDS = {  # offset from the board block, width
    "magic": (0, 4), "layout_version": (4, 4), "capacity": (8, 8), "slot0_offset": (16, 8),
    "slot_stride": (24, 8), "version": (128, 8),
    "slot0_seq": (SLOT0, 8), "slot0_length": (SLOT0 + 8, 8),
    "slot1_seq": (SLOT0 + STRIDE, 8), "slot1_length": (SLOT0 + STRIDE + 8, 8),
}

BOARD_PY = r"""
import sys, shmlink
try:
    b = shmlink.Board.open(sys.argv[1])
except (shmlink.CorruptSegment, shmlink.IncompatibleSegment) as e:
    print("open", type(e).__name__)
    sys.exit(0)
for what in ("read", "wait"):
    try:
        if what == "read":
            b.read()
        else:
            b.wait_for_change(0, timeout=0.2)
        print(what, "ok")
    except (shmlink.CorruptSegment, shmlink.IncompatibleSegment, shmlink.Timeout) as e:
        print(what, type(e).__name__)
b.close()
"""


def _compile(tmp_path_factory, tag, *extra):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / f"board_read_{tag}"
    r = subprocess.run(["cc", "-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I",
                        INCLUDE, *extra, os.path.join(ROOT, "examples", "c", "board_read.c"),
                        "-o", str(exe)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        if extra:
            pytest.skip(f"cannot build with {extra}: {r.stderr[-300:]}")
        raise AssertionError(r.stderr)
    return str(exe)


@pytest.fixture(scope="module")
def board_readers(tmp_path_factory):
    plain = _compile(tmp_path_factory, "plain")
    try:
        san = _compile(tmp_path_factory, "san", "-fsanitize=address,undefined",
                       "-fno-sanitize-recover=all")
    except pytest.skip.Exception:
        san = None
    return [x for x in (plain, san) if x]


def _poke(path, off, width, value):
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    try:
        struct.pack_into("<I" if width == 4 else "<Q", mm, _core.DATA_OFFSET + off,
                         value % 2**(8 * width))
    finally:
        mm.close()


@pytest.mark.parametrize("field", sorted(BOARD_FIELDS))
def test_board_fields_at_extreme_values_never_crash(name, field, board_readers):
    """BUG: shmlink_board_read re-read the stride, and 2*stride > size - slot0
    overflowed: stride 2^63 + 64 made board_read.c die of SIGBUS."""
    off, width = BOARD_FIELDS[field]
    path = os.path.join(shm_dir(), PREFIX + name)
    env = dict(python_env(), ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1")
    env.pop("LD_PRELOAD", None)
    with shmlink.Board.create(name, CAPACITY) as b:
        b.write(b"v" * 50)
        b.write(b"w" * 60)
        for value in EXTREMES:
            _poke(path, off, width, value)
            r = subprocess.run([sys.executable, "-c", BOARD_PY, name], capture_output=True,
                               text=True, timeout=30, env=python_env())
            assert r.returncode == 0, (field, value, r.stderr[-2000:])
            for line in r.stdout.split("\n"):
                if not line:
                    continue
                assert line.split()[1] in ("ok", "CorruptSegment", "IncompatibleSegment",
                                           "Timeout"), (field, value, r.stdout)
            for exe in board_readers:
                c = subprocess.run([exe, name], capture_output=True, text=True, timeout=30,
                                   env=env)
                # a value, or a clean error exit: never a signal or a sanitizer report
                assert c.returncode in (0, 1), (field, value, exe, c.returncode, c.stderr[-2000:])
                assert "runtime error" not in c.stderr and "Sanitizer" not in c.stderr, c.stderr
                if c.returncode == 0:
                    assert c.stdout.startswith("version "), c.stdout
        b.unlink()


# ---------------------------------------------------------------------------
# 3. Truncation: the file shrinks under every kind of participant
# ---------------------------------------------------------------------------

TRUNCATE = r"""
import os, sys, threading, time, shmlink
from shmlink.segment import PREFIX, shm_dir
kind, name = sys.argv[1], sys.argv[2]
path = os.path.join(shm_dir(), PREFIX + name)
T = 5.0

def truncate_soon():
    time.sleep(0.3)
    os.truncate(path, 4096)  # what any process that may write the file can do

def expect_corrupt(call, what):
    t0 = time.monotonic()
    try:
        r = call()
    except shmlink.CorruptSegment as e:
        assert "truncated" in str(e), e
        assert time.monotonic() - t0 < T, what
        print(what, "CorruptSegment")
        return
    raise AssertionError(f"{what} returned {r!r}")

def loop(call):
    def run():
        t0 = time.monotonic()
        while time.monotonic() - t0 < T:
            call()
    return run

threading.Thread(target=truncate_soon, daemon=True).start()
if kind == "queue_recv":
    q = shmlink.Queue.create(name, 1 << 16)
    expect_corrupt(lambda: q.recv(timeout=T), "blocked recv")
    expect_corrupt(lambda: q.send(b"x", timeout=0.5), "send after")
    expect_corrupt(q.try_recv, "try_recv after")
    q.close()
elif kind == "queue_send":
    q = shmlink.Queue.create(name, 1 << 16)
    expect_corrupt(loop(lambda: q.send(q.recv(timeout=1) if q.try_send(b"y" * 1000) else b"",
                                      timeout=1)), "send/recv loop")
    q.close()
elif kind == "board":
    b = shmlink.Board.create(name, 1 << 16)
    b.write(b"hello" * 1000)
    expect_corrupt(loop(b.read), "board reader loop")
    expect_corrupt(lambda: b.wait_for_change(0, timeout=0.5), "wait_for_change after")
    b.close()
elif kind == "board_wait":
    b = shmlink.Board.create(name, 1 << 16)
    v = b.write(b"hello")
    expect_corrupt(lambda: b.wait_for_change(v, timeout=T), "blocked wait_for_change")
    b.close()
elif kind == "topic":
    t = shmlink.Topic.create(name, 1 << 16)
    s = t.subscribe()
    expect_corrupt(lambda: s.recv(timeout=T), "blocked subscriber")
    expect_corrupt(lambda: t.publish(b"x", timeout=0.5), "publish after")
    s.close()
    t.close()
elif kind == "segment":
    sg = shmlink.Segment.create(name, 1 << 16)
    expect_corrupt(loop(lambda: sg.read(60000, 100)), "Segment.read loop")
    expect_corrupt(lambda: sg.write(b"z" * 10, 60000), "Segment.write after")
    sg.close()
else:
    raise AssertionError(kind)
os.unlink(path)
print("alive")
"""


@pytest.mark.parametrize("kind", ["queue_recv", "queue_send", "board", "board_wait", "topic",
                                  "segment"])
def test_truncated_file_is_corrupt_segment_not_sigbus(name, kind):
    """BUG: `truncate -s 4096` killed every participant with SIGBUS."""
    r = run_python(TRUNCATE, kind, name, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.strip().endswith("alive"), r.stdout


def test_a_fault_outside_any_segment_still_kills(name):
    """The guard only answers for registered mappings: any other SIGBUS keeps
    its usual effect (here: a plain mmap of a truncated file)."""
    code = r"""
import mmap, os, sys, tempfile, shmlink
q = shmlink.Queue.create(sys.argv[1], 4096)  # _core loaded, a mapping registered
fd, p = tempfile.mkstemp()
os.ftruncate(fd, 8192)
mm = mmap.mmap(fd, 8192)
os.ftruncate(fd, 0)
os.unlink(p)
q.unlink()
sys.stdout.write("before\n"); sys.stdout.flush()
mm[5000]
print("after")
"""
    r = run_python(code, name, timeout=30)
    assert r.stdout.strip() == "before"
    assert r.returncode != 0
