"""shmlink/connection.h against Python peers: a C client of a Python Listener,
a Python client of a C listener, peer death, and hostile frames.

The C program is tests/c/conn_peer.c, compiled here with ``cc`` (the tests
skip without one), once normally and once with AddressSanitizer and
UndefinedBehaviorSanitizer when the compiler supports them.  Every process
is a real OS process given names only; every wait is bounded.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import shmlink
from shmlink import _core
from shmlink.connection import _layout as L

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")
SOURCE = os.path.join(HERE, "c", "conn_peer.c")
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined"]

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _build(out, *flags: str) -> str:
    exe = str(out / "conn_peer")
    subprocess.run(["cc", "-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-I", INCLUDE,
                    *flags, SOURCE, "-o", exe], check=True, timeout=120)
    return exe


def _sanitizers_work(tmp) -> bool:
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    r = subprocess.run(["cc", *SANITIZE, str(src), "-o", str(tmp / "probe")],
                       capture_output=True, timeout=60)
    return r.returncode == 0 and subprocess.run([str(tmp / "probe")], timeout=30).returncode == 0


@pytest.fixture(scope="module", params=["plain", "sanitized"])
def peer(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("conn_peer")
    if request.param == "plain":
        return _build(out)
    if not _sanitizers_work(out):
        pytest.skip("cc cannot build with -fsanitize=address,undefined here")
    return _build(out, *SANITIZE)


@pytest.fixture(scope="module")
def plain_peer(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("conn_peer_plain"))


# A Python server in its own process: listen, print "ready", accept one
# client and answer with the request reversed ("block" blocks forever, for
# the tests that kill it); "frames" mode sends hand-made frames instead.
PY_SERVER = r"""
import sys, time, shmlink
name, capacity, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lst = shmlink.listen(name, capacity=capacity)
print("ready", flush=True)
conn = lst.accept(timeout=30)
lst.close()
if mode == "serve":
    def handle(r):
        if r == b"block":
            time.sleep(3600)
        return r[::-1]
    print("served", conn.serve(handle), flush=True)
elif mode == "frames":
    out = conn._out  # the raw outbound ring: frames no Connection method would send
    for frame in [b"\0" * 8 + b"hello",
                  b"\0\0\0",                                  # shorter than a header
                  bytes([9]) + b"\0" * 7 + b"x",               # unknown kind
                  bytes([0, 5]) + b"\0" * 6,                   # a message with an id
                  bytes([1]) + b"\0" * 7,                      # a request without one
                  bytes([5]) + b"\0" * 7,                      # a wake-up: skipped
                  b"\0" * 8 + b"bye"]:
        assert out.try_send(frame)
    conn.close()
    print("sent", flush=True)
elif mode == "corrupt":
    import mmap
    conn.send(b"x" * 16, timeout=5)
    # flip the check word of that record: the first of the server->client ring
    d, ring_header = int(sys.argv[4]), int(sys.argv[5])
    with open(conn.path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        ring_size = int.from_bytes(mm[d + 8:d + 16], "little")
        rec = d + 256 + ring_size + ring_header
        mm[rec + 4:rec + 8] = bytes(b ^ 0xFF for b in mm[rec + 4:rec + 8])
        mm.close()
    print("sent", flush=True)
    deadline = time.monotonic() + 20
    while not conn.peer_closed and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.close()
"""


class Proc:
    """A child process whose stdout lines are read with a timeout."""

    def __init__(self, argv: list[str], stdin: bool = False):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True)

    def line(self, timeout: float = 20) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        got = out[0].strip() if out else ""
        if not got:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"{self.proc.args[:2]}: no output line within {timeout} s; "
                                 f"stderr: {err[-2000:]}")
        return got

    def finish(self, timeout: float = 60) -> str:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"{self.proc.args[:2]} hung; stderr: {err[-2000:]}")
        assert self.proc.returncode == 0, (self.proc.args[:2], self.proc.returncode, out, err)
        return out.strip()

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if f is not None:
                f.close()


def py_server(name: str, capacity: int, mode: str, *extra: str) -> Proc:
    p = Proc([sys.executable, "-c", PY_SERVER, name, str(capacity), mode, *extra])
    assert p.line() == "ready"
    return p


def _ours(name: str) -> list[str]:
    return [e for e in os.listdir(shmlink.segment.shm_dir()) if name in e]


# --- the layout -------------------------------------------------------------------


def test_the_c_layout_is_the_python_layout(plain_peer):
    out = subprocess.run([plain_peer, "layout"], capture_output=True, text=True, timeout=20,
                         check=True).stdout
    relative = {k for k in vars(L) if k.startswith(("_C_", "_L_"))} - {
        "_C_MAGIC_VALUE", "_C_VERSION", "_C_RINGS", "_L_MAGIC_VALUE", "_L_VERSION", "_L_RING"}
    seen = 0
    for line in out.splitlines():
        key, value = line.split()
        if key in ("DATA_OFFSET", "RING_HEADER"):
            expected = getattr(_core, key)  # the binding's own export
        elif key == "LISTENER_NAME_MAX":
            expected = L.LISTENER_NAME_MAX
        else:
            expected = getattr(L, key) - (L._D if key in relative else 0)
        assert int(value) == expected, key
        seen += 1
    assert seen == 39


# --- a C client, a Python server ----------------------------------------------------


def test_c_client_makes_10000_checked_requests_to_a_python_listener(peer, name):
    n = 10000 if "sanitized" not in peer else 3000
    with py_server(name, 1 << 16, "serve") as server:
        out = subprocess.run([peer, "client", name, str(n)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, (out.stdout, out.stderr)
        # sizes went up to the largest message Python allows on this listener
        assert out.stdout.strip() == f"ok {n} max {(1 << 16) - 16} dropped 0"
        assert server.finish() == f"served {n}"
    assert _ours(name) == []


def test_c_connect_reports_no_listener_and_no_accept(plain_peer, name):
    assert subprocess.run([plain_peer, "connect", name], capture_output=True, text=True,
                          timeout=20).stdout.strip() == "ENOENT"
    with shmlink.listen(name) as lst:  # never accepts
        r = subprocess.run([plain_peer, "connect", name], capture_output=True, text=True,
                           timeout=20)
        assert r.stdout.strip() == "ETIMEDOUT"
        assert lst.clients() == [] or all(c["accept"] == "abandoned" for c in lst.clients())
    assert _ours(name) == []


def test_c_connect_is_refused_when_the_listener_closes_before_accepting(plain_peer, name):
    lst = shmlink.listen(name)
    try:
        c = Proc([plain_peer, "connect", name])
        with c:
            # wait until its request is pending, then close without accepting
            deadline = time.monotonic() + 10
            while not lst.clients() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert lst.clients(), "the C client never posted its connection"
            lst.close()
            assert c.finish(timeout=20) == "ECONNREFUSED"
    finally:
        lst.close()
    assert _ours(name) == []


# --- a Python client, a C server ------------------------------------------------------


def test_python_client_makes_10000_checked_requests_to_a_c_listener(peer, name):
    n = 10000 if "sanitized" not in peer else 3000
    with Proc([peer, "server", name, str(1 << 16)]) as server:
        assert server.line() == "ready"
        conn = shmlink.connect(name, timeout=20)
        try:
            m = conn.max_message_size
            assert m == (1 << 16) - 16
            for i in range(n):
                size = (m, m - 1, m - 8, 0, 1)[i % 5] if i % 40 == 0 else (i * 7919) % 3000
                req = (i.to_bytes(4, "little") * (size // 4 + 1))[:size]
                assert conn.request(req, timeout=20) == req[::-1], i
        finally:
            conn.close()
        assert server.finish() == f"served {n}"
    assert _ours(name) == []


# --- peer death -------------------------------------------------------------------


@pytest.mark.parametrize("blocked_in", ["recv", "send"])
def test_c_side_reports_a_killed_python_peer_within_a_second(plain_peer, name, blocked_in):
    with py_server(name, 1 << 14, "serve") as server, \
            Proc([plain_peer, "death", name, blocked_in]) as c:
        assert c.line() == "connected"
        time.sleep(0.5)  # the C side is now blocked (its request unanswered / the ring full)
        assert c.proc.poll() is None
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        assert c.finish(timeout=10) == "ECONNRESET"
        took = time.monotonic() - t0
        assert took < 1.0, f"the C side took {took:.2f} s to notice its peer died"
    assert _ours(name) == []


# --- hostile frames -----------------------------------------------------------------


def test_garbage_frames_are_rejected_with_ebadmsg(peer, name):
    with py_server(name, 1 << 14, "frames") as server, \
            Proc([peer, "frames", name, "8"], stdin=True) as c:
        assert c.line() == "connected"
        assert server.finish() == "sent"
        c.proc.stdin.write("go\n")
        c.proc.stdin.flush()
        assert c.finish().splitlines() == [
            "msg hello", "EBADMSG", "EBADMSG", "EBADMSG", "EBADMSG", "msg bye", "ECONNRESET"]
    assert _ours(name) == []


def test_a_corrupt_ring_record_is_rejected_with_ebadmsg(peer, name):
    with py_server(name, 1 << 14, "corrupt", str(L._D), str(_core.RING_HEADER)) as server, \
            Proc([peer, "frames", name, "2"], stdin=True) as c:
        assert c.line() == "connected"
        assert server.line() == "sent"
        c.proc.stdin.write("go\n")
        c.proc.stdin.flush()
        # the record stays where it is: every receive reports it, none crashes
        assert c.finish().splitlines() == ["EBADMSG", "EBADMSG"]
        server.finish()
    assert _ours(name) == []
