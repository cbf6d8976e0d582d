"""The public API type-checks: ``mypy --strict`` and ``pyright`` on the examples and
on a typed user program, and both reject misspelt string options.

Skipped (with the reason) where a checker is not installed: ``pip install
".[test]"`` brings both.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

import shmlink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py"))) + [
    os.path.join(ROOT, "tests", "typed_program.py")]

# Each line is a type error: a misspelt Literal option, or Topic's old keywords.
BAD_PROGRAM = """\
import shmlink
shmlink.Queue.create("x", wait="fast")
shmlink.Topic.create("x", delivery="fastest")
shmlink.Topic.create("x", mode="latest")
shmlink.Topic.create("x", permissions=0o600)
shmlink.Segment.create("x", 8, lifetime="forever")
shmlink.Topic.open("x").subscribe(start="middle")
with shmlink.Queue.create("x") as q:
    q.publish(b"")
"""
BAD_LINES = set(range(2, 8)) | {9}


def _mypy(*args: str, cache: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install '.[test]')")
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                           "--cache-dir", cache, *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _pyright(*args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("pyright is not installed (pip install '.[test]')")
    probe = subprocess.run([sys.executable, "-m", "pyright", "--version"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"pyright could not start (it needs node): {probe.stderr.strip()[:200]}")
    return subprocess.run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable,
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_mypy_strict_passes_on_examples_and_typed_program(tmp_path):
    r = _mypy(*PROGRAMS, cache=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_pyright_passes_on_examples_and_typed_program():
    r = _pyright(*PROGRAMS)
    assert r.returncode == 0, r.stdout + r.stderr


def _error_lines(output: str, path: str) -> set[int]:
    lines = set()
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(path + ":") and "error" in line:
            lines.add(int(line[len(path) + 1:].split(":")[0]))
    return lines


def test_mypy_rejects_bad_options(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_PROGRAM)
    r = _mypy(str(bad), cache=str(tmp_path / "cache"))
    assert r.returncode == 1
    assert _error_lines(r.stdout, str(bad)) == BAD_LINES, r.stdout


def test_pyright_rejects_bad_options(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_PROGRAM)
    r = _pyright(str(bad))
    assert r.returncode == 1
    assert _error_lines(r.stdout, str(bad)) == BAD_LINES, r.stdout


def test_typed_program_runs(name):
    # The typed program is a real program, not only something to check.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "typed_program.py"),
                        name + "-"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "typed program: ok" in r.stdout
    left = [f for f in os.listdir(shmlink.segment.shm_dir()) if f.startswith(f"shmlink.{name}-")]
    assert left == []


def test_core_stub_matches_the_module(tmp_path):
    """src/shmlink/_core.pyi describes the C module: every class, method (with its
    parameters), attribute and constant, checked against the built module."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install '.[test]')")
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "shmlink._core",
                        "--mypy-config-file", os.devnull],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                       env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
