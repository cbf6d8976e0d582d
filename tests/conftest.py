"""Shared fixtures: unique names, real child processes, and a /dev/shm leak check.

Children are started with the "spawn" start method or as subprocesses and are
given *names*, never mapped objects.  Every join has a timeout; pytest-timeout
turns a hang into a failure with stacks (see pyproject.toml).  The helpers that
start and watch children are in ``support.py``; child-process bodies in the
``workers`` package (``tests/`` is on ``sys.path``: pyproject's ``pythonpath``).
"""

from __future__ import annotations

import os
import uuid

import pytest

import shmlink
from shmlink.segment import PREFIX, shm_dir


def _ours() -> set[str]:
    try:
        return {e for e in os.listdir(shm_dir()) if e.startswith(PREFIX)}
    except FileNotFoundError:
        return set()


def _made_by_someone_else(entry: str) -> bool:
    """True for a segment whose creator is a live process outside this test run.

    Other test runs or benchmarks on the same machine may create segments
    while we run; only what this run (this process or its children, alive
    or dead) made counts as a leftover.
    """
    from shmlink.segment import inspect_path

    try:
        info = inspect_path(os.path.join(shm_dir(), entry))
    except Exception:
        return False
    pid = info.creator_pid
    if not pid or not shmlink._core.process_alive(pid, 0):
        return False
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return True
    return True


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_in_dev_shm():
    """The whole suite must leave nothing of ours in /dev/shm."""
    before = _ours()
    yield
    left = sorted(e for e in _ours() - before if not _made_by_someone_else(e))
    assert not left, f"tests left shared memory behind: {left}"


@pytest.fixture
def name(request):
    """A unique segment name for this test; whatever it names is removed afterwards."""
    base = f"t-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    made: list[str] = [base]

    def more(suffix: str = "") -> str:
        n = f"{base}-{suffix or len(made)}"
        made.append(n)
        return n

    request.node.more_names = more
    yield base
    _cleanup(made)


@pytest.fixture
def names(request):
    """A factory of unique names, all removed afterwards."""
    made: list[str] = []
    base = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def make(suffix: str = "") -> str:
        n = f"{base}-{suffix or len(made)}"
        made.append(n)
        return n

    yield make
    _cleanup(made)


def _cleanup(made: list[str]) -> None:
    for n in made:
        for entry in list(_ours()):
            full = entry[len(PREFIX):]
            # the segment itself, objects derived from it (n-..., n.sub...),
            # and temporary files of creators killed mid-creation
            if full == n or full.startswith(n + "-") or full.startswith(n + ".") or (
                    full.startswith(".new.") and full.endswith("." + n)):
                try:
                    os.unlink(os.path.join(shm_dir(), entry))
                except FileNotFoundError:
                    pass
