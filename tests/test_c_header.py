"""The protocol header is usable from C and C++: a C program and Python share a queue."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import shmlink
from support import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(os.path.dirname(shmlink.__file__), "include")
FLAGS = ["-Wall", "-Wextra", "-Werror", "-I", INCLUDE]

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def echo_upper(tmp_path_factory):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / "echo_upper"
    subprocess.run(["cc", "-O2", "-std=gnu11", *FLAGS,
                    os.path.join(ROOT, "examples", "c", "echo_upper.c"), "-o", str(exe)],
                   check=True, timeout=120)
    return str(exe)


@pytest.fixture(scope="module")
def board_read(tmp_path_factory):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("c") / "board_read"
    subprocess.run(["cc", "-O2", "-std=gnu11", *FLAGS,
                    os.path.join(ROOT, "examples", "c", "board_read.c"), "-o", str(exe)],
                   check=True, timeout=120)
    return str(exe)


WRITER = """
import sys, shmlink
b = shmlink.Board.open(sys.argv[1])
i = 0
while True:
    i += 1
    b.write(bytes([i % 251 + 1]) * (100 + (i * 37) % 3000))
"""


def test_c_program_reads_a_board_without_tearing(board_read, name):
    with shmlink.Board.create(name, 4096) as board:
        board.write_text("hello from python")
        r = subprocess.run([board_read, name], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"version {board.version}: hello from python\n"
        board.write(b"\x01" * 64)  # from here on every value is one byte repeated
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, name]) for _ in range(2)]
        try:
            wait_for(lambda: board.version > 100, timeout=30, what="the writers to start")
            v0 = board.version
            r = subprocess.run([board_read, name, "check", "2000000"], capture_output=True,
                               text=True, timeout=120)
            v1 = board.version
        finally:
            for w in writers:
                w.kill()
                w.wait(10)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "2000000 whole reads\n"
        assert v1 - v0 > 100, "the writers did not run during the check"
        board.unlink()


@needs_cc
def test_header_compiles_as_cxx(tmp_path):
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "t.cpp"
    src.write_text('#include "shmlink.h"\nint main() { struct shmlink_segment s;'
                   ' return shmlink_segment_open(&s, "none") == 0; }\n')
    subprocess.run(["c++", "-std=c++17", *FLAGS, str(src), "-o", str(tmp_path / "t")],
                   check=True, timeout=120)


def test_c_program_and_python_share_queues(echo_upper, name):
    with shmlink.Queue.create(name + "-in", 4096) as q_in, \
            shmlink.Queue.create(name + "-out", 4096) as q_out:
        child = subprocess.Popen([echo_upper, q_in.name, q_out.name],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # enough traffic to wrap the 4 KiB ring many times, sizes up to the limit
            for i in range(2000):
                msg = (f"m{i}-" + "x" * (i % 700)).encode()
                q_in.send(msg, timeout=10)
                assert q_out.recv(timeout=10) == msg.upper()
            big = b"z" * q_in.max_message_size
            q_in.send(big, timeout=10)
            assert q_out.recv(timeout=10) == big.upper()
            q_in.send(b"", timeout=10)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        assert child.returncode == 0, err
        assert "echoed 2001 messages" in out
        assert q_in.stats()["received"] == 2002


def test_c_program_reports_missing_and_wrong_kind(echo_upper, name):
    r = subprocess.run([echo_upper, name + "-none", name + "-none2"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 1 and "cannot open" in r.stderr
    with shmlink.Mutex.create(name + "-m") as m:
        r = subprocess.run([echo_upper, m.name, m.name], capture_output=True, text=True, timeout=20)
        m.unlink()
    assert r.returncode == 1 and "not a queue" in r.stderr


HEADERS = sorted(os.listdir(os.path.join(INCLUDE, "shmlink")))


def test_the_umbrella_includes_every_protocol_header():
    umbrella = open(os.path.join(INCLUDE, "shmlink.h")).read()
    assert HEADERS, "no headers under include/shmlink/"
    for h in HEADERS:
        assert f'#include "shmlink/{h}"' in umbrella, h


@needs_cc
@pytest.mark.parametrize("lang", ["c11", "c++17"])
@pytest.mark.parametrize("header", ["shmlink.h", *(f"shmlink/{h}" for h in HEADERS)])
def test_each_header_compiles_alone(tmp_path, header, lang):
    """A translation unit that includes only this header builds warning-free."""
    cxx = lang.startswith("c++")
    compiler = "c++" if cxx else "cc"
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    src = tmp_path / ("t.cpp" if cxx else "t.c")
    src.write_text(f'#include "{header}"\nint main(void) {{ return 0; }}\n')
    subprocess.run([compiler, f"-std={lang}", *FLAGS, "-c", str(src),
                    "-o", str(tmp_path / "t.o")], check=True, timeout=120)


def test_no_unprefixed_names_in_header_or_binding():
    """The SHM_* compatibility spellings are gone: the header and the binding
    (src/shmlink/_csrc) use the SHMLINK_* vocabulary only."""
    import pathlib
    import re
    include = pathlib.Path(INCLUDE)
    # the binding's sources: beside the package (in-place build) or in this source tree;
    # wheels do not carry them
    csrc = next((d for d in (include.parent / "_csrc",
                             pathlib.Path(ROOT) / "src" / "shmlink" / "_csrc") if d.is_dir()), None)
    if csrc is None:
        pytest.skip("the binding's sources are not here (an installed wheel without a source tree)")
    files = [*sorted(include.rglob("*.h")), *sorted(csrc.glob("*.[ch]"))]
    assert any(f.parent.name == "_csrc" for f in files)
    for f in files:
        hits = re.findall(r"\bSHM_[A-Z_]+", f.read_text())
        assert not hits, f"{f.name}: {sorted(set(hits))}"


def _comment_above(lines: list[str], i: int) -> str:
    """The statement's own line plus the comment lines directly above it."""
    out = [lines[i]]
    j = i - 1
    while j >= 0:
        s = lines[j].strip()
        if s.startswith(("/*", "*")) or s.endswith("*/"):
            out.append(s)
            j -= 1
        else:
            break
    return "\n".join(out)


def test_every_release_store_names_its_acquire_partner():
    release = re.compile(r"SHMLINK_(STORE_RELEASE|STORE_SEQ_CST|FENCE_RELEASE)\(")
    missing = []
    for h in HEADERS:
        lines = open(os.path.join(INCLUDE, "shmlink", h)).read().splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("#define") or not release.search(line):
                continue
            if "SYNC:" not in _comment_above(lines, i):
                missing.append(f"{h}:{i + 1}: {line.strip()}")
    assert not missing, "release stores without a SYNC: label:\n" + "\n".join(missing)


def test_only_the_platform_file_calls_the_os():
    calls = re.compile(r"\b(syscall|open|close|mmap|munmap|flock|fstat|kill|getpid|getenv|"
                       r"clock_gettime|sched_yield|fopen)\s*\(")
    offenders = []
    for h in HEADERS:
        if h == "platform.h":
            continue
        for i, line in enumerate(open(os.path.join(INCLUDE, "shmlink", h)), 1):
            code = line.split("/*")[0]
            if calls.search(code):
                offenders.append(f"{h}:{i}: {line.strip()}")
    assert not offenders, "OS calls outside shmlink/platform.h:\n" + "\n".join(offenders)
