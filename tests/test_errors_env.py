"""Errors from the environment: $SHMLINK_DIR, file names, what sits at a name, file descriptors.

Each names its cause and what to do, and has a type: :class:`BadDirectory`
(an OSError with ``errno``), :class:`InvalidName`, :class:`IncompatibleSegment`,
:class:`OutOfDescriptors`.  Nothing here is created outside a private
temporary directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import shmlink
from shmlink import (
    BadDirectory,
    IncompatibleSegment,
    InvalidName,
    OutOfDescriptors,
    Queue,
    Segment,
    SegmentNotFound,
    ShmlinkError,
)
from shmlink.segment import shm_dir
from support import python_env

INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")

# every call that finds a named object through $SHMLINK_DIR
CALLS = {
    "create": lambda: Segment.create("envx", 100),
    "open": lambda: Segment.open("envx", timeout=0.1),
    "create_or_open": lambda: Queue.create_or_open("envx", 4096),
    "list_segments": shmlink.list_segments,
    "gc": shmlink.gc,
    "remove": lambda: shmlink.remove("envx"),
    "info": lambda: shmlink.info("envx"),
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The test runs in an empty directory (so a segment made in '.' would show)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("call", sorted(CALLS))
def test_shmlink_dir_missing(in_tmp, monkeypatch, call):
    monkeypatch.setenv("SHMLINK_DIR", str(in_tmp / "missing"))
    with pytest.raises(BadDirectory) as exc:
        CALLS[call]()
    e = exc.value
    assert isinstance(e, OSError) and e.errno == errno.ENOENT
    assert f"$SHMLINK_DIR ({in_tmp / 'missing'}) does not exist" in str(e)
    assert "mkdir" in str(e)
    assert os.listdir(in_tmp) == []


@pytest.mark.parametrize("call", sorted(CALLS))
def test_shmlink_dir_is_a_regular_file(in_tmp, monkeypatch, call):
    (in_tmp / "afile").write_text("not a directory")
    monkeypatch.setenv("SHMLINK_DIR", str(in_tmp / "afile"))
    with pytest.raises(BadDirectory) as exc:
        CALLS[call]()
    assert exc.value.errno == errno.ENOTDIR
    assert f"$SHMLINK_DIR ({in_tmp / 'afile'}) is not a directory" in str(exc.value)
    assert os.listdir(in_tmp) == ["afile"]


@pytest.mark.parametrize("call", sorted(CALLS))
def test_shmlink_dir_empty_is_an_error_not_the_current_directory(in_tmp, monkeypatch, call):
    monkeypatch.setenv("SHMLINK_DIR", "")
    with pytest.raises(BadDirectory) as exc:
        CALLS[call]()
    assert "$SHMLINK_DIR is set but empty" in str(exc.value) and "unset it" in str(exc.value)
    assert os.listdir(in_tmp) == [], "a segment was made in the current directory"
    with pytest.raises(BadDirectory):
        shm_dir()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")
def test_shmlink_dir_proc_cannot_hold_segments(in_tmp, monkeypatch):
    monkeypatch.setenv("SHMLINK_DIR", "/proc")
    for create in (CALLS["create"], CALLS["create_or_open"]):
        with pytest.raises(BadDirectory) as exc:
            create()
        msg = str(exc.value)
        assert "cannot create files in $SHMLINK_DIR (/proc)" in msg and "/dev/shm" in msg
        assert "fit" not in msg  # not "0 bytes free: pick a smaller size"
    with pytest.raises(SegmentNotFound, match=r"'envx' does not exist in \$SHMLINK_DIR \(/proc\)"):
        CALLS["open"]()
    assert shmlink.list_segments() == []


def test_bad_directory_errors_pickle_with_their_errno():
    import pickle

    e = pickle.loads(pickle.dumps(BadDirectory("dir: gone", errno=errno.ENOTDIR)))
    assert type(e) is BadDirectory and e.errno == errno.ENOTDIR and str(e) == "dir: gone"


# --- file names too long for the system ----------------------------------------------------

def test_file_backed_path_whose_temporary_name_would_be_too_long(tmp_path):
    # the final name fits (240 bytes); the temporary one ("." + name + ".new.<pid>.<hex>") must too
    path = tmp_path / ("x" * 240)
    with Segment.create(None, 100, path=str(path)) as seg:
        seg.write(b"ok")
        assert Segment.open(path=str(path)).read(0, 2) == b"ok"
        seg.unlink()
    assert os.listdir(tmp_path) == []


def test_file_name_longer_than_the_file_system_allows(tmp_path):
    namemax = os.statvfs(tmp_path).f_namemax
    path = tmp_path / ("y" * (namemax + 1))
    for call in (lambda: Segment.create(None, 100, path=str(path)),
                 lambda: Segment.open(path=str(path))):
        with pytest.raises(InvalidName) as exc:
            call()
        assert f"the file name is {namemax + 1} bytes" in str(exc.value)
        assert f"allows {namemax}" in str(exc.value)
    assert os.listdir(tmp_path) == []


def test_path_longer_than_the_system_allows(tmp_path):
    path = str(tmp_path) + "/d" * 3000 + "/seg"
    with pytest.raises(InvalidName, match="longer than the system allows"):
        Segment.open(path=path)


# --- what sits at the name is not a segment -------------------------------------------------

def test_a_directory_at_the_name_is_called_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMLINK_DIR", str(tmp_path))
    os.mkdir(tmp_path / "shmlink.dirname")
    for call in (lambda: Segment.open("dirname"), lambda: Segment.open("dirname", readonly=True),
                 lambda: Queue.create_or_open("dirname", 4096), lambda: shmlink.remove("dirname")):
        with pytest.raises(IncompatibleSegment) as exc:
            call()
        msg = str(exc.value)
        assert "'dirname' is a directory" in msg and "rmdir" in msg
        assert "FIFO" not in msg and "socket" not in msg and "device" not in msg
    assert os.path.isdir(tmp_path / "shmlink.dirname")


def test_a_fifo_and_a_socket_at_the_name_are_called_what_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMLINK_DIR", str(tmp_path))
    os.mkfifo(tmp_path / "shmlink.fifo")
    with pytest.raises(IncompatibleSegment, match="'fifo' is a FIFO, not a shmlink segment"):
        Segment.open("fifo")
    with socket.socket(socket.AF_UNIX) as so:
        so.bind(str(tmp_path / "shmlink.sock"))
        with pytest.raises(IncompatibleSegment, match="'sock' is a socket, not a shmlink segment"):
            Segment.open("sock")


# --- running out of file descriptors -----------------------------------------------------------

FD_CHILD = textwrap.dedent("""
    import errno, os, resource, sys
    import shmlink
    from shmlink import OutOfDescriptors, Segment

    # about eight descriptors to spare, each segment holds two: the 5th one cannot be made
    spare = len(os.listdir("/proc/self/fd")) + 7
    resource.setrlimit(resource.RLIMIT_NOFILE, (spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    made = []
    for what, make in (("create", lambda i: Segment.create(f"fd{i}", 100)),
                       ("open", lambda i: Segment.open(f"fd{i}"))):
        got = []
        try:
            for i in range(20):
                got.append(make(i))
        except OutOfDescriptors as e:
            assert e.errno == errno.EMFILE and isinstance(e, OSError), e
            msg = str(e)
            assert f"'fd{len(got)}'" in msg and "no file descriptor left" in msg, msg
            assert f"the limit is {spare}" in msg and "each open segment holds two" in msg, msg
            assert "ulimit -n" in msg, msg
            print(what, len(got))
        for s in got:
            s.close()
        if what == "create":  # the failed creation left nothing behind
            names = sorted(os.listdir(os.environ["SHMLINK_DIR"]))
            assert names == [f"shmlink.fd{i}" for i in range(len(got))], names
    for i in range(3):  # with descriptors back, all is well
        Segment.open(f"fd{i}").close()
    print("ok")
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_running_out_of_file_descriptors(tmp_path):
    env = dict(python_env(), SHMLINK_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", FD_CHILD], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0::2] == ["create", "open", "ok"] and all(3 <= int(n) <= 4 for n in words[1::2]), \
        r.stdout


# --- the C header agrees on $SHMLINK_DIR --------------------------------------------------------

C_PROGRAM = r"""
#include "shmlink.h"
#include <stdio.h>

int main(void) {
    struct shmlink_segment seg;
    char path[4096];
    printf("path %d\n", shmlink_segment_path(path, sizeof path, "cx"));
    printf("open %d\n", shmlink_segment_open(&seg, "cx"));
    int rc = shmlink_segment_create(&seg, "cx", 1, 0, 64, 0600, 0, NULL, NULL);
    printf("create %d\n", rc);
    if (rc == 0)
        shmlink_segment_close(&seg);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_header_refuses_an_empty_shmlink_dir_and_reports_bad_ones(tmp_path):
    src = tmp_path / "envdir.c"
    src.write_text(C_PROGRAM)
    exe = tmp_path / "envdir"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", INCLUDE, str(src),
                    "-o", str(exe)], check=True, timeout=120)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "afile").write_text("x")
    expect = {"": errno.ENOENT, str(tmp_path / "missing"): errno.ENOENT,
              str(tmp_path / "afile"): errno.ENOTDIR}
    for d, code in expect.items():
        r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, cwd=str(work),
                           env=dict(os.environ, SHMLINK_DIR=d))
        got = dict(line.split() for line in r.stdout.splitlines())
        if d == "":
            assert got["path"] == str(-errno.ENOENT), r.stdout
        assert got["open"] == str(-code) and got["create"] == str(-code), (d, r.stdout)
    assert os.listdir(work) == [], "the C header made a segment in the current directory"


def test_every_environment_error_is_a_shmlink_error():
    for cls in (BadDirectory, OutOfDescriptors):
        assert issubclass(cls, ShmlinkError) and issubclass(cls, OSError)
