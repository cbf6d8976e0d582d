"""What tests share for starting and watching child processes.

Children are started with the "spawn" start method (:data:`CTX`) or as
subprocesses, and take *names*, never mapped objects; their bodies live in
the ``workers`` package.  ``tests/`` is on ``sys.path`` (pyproject's
``pythonpath``; spawned children inherit it, and :func:`python_env` gives it
to plain subprocesses), so tests and children import ``support`` and
``workers.<family>`` by name.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

__all__ = ["CTX", "TESTS_DIR", "python_env", "join_all", "run_python", "wait_for", "kill"]

CTX = multiprocessing.get_context("spawn")

#: The ``tests`` directory: the root of ``support`` and the ``workers`` package.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def python_env() -> dict[str, str]:
    """This process's environment with :data:`TESTS_DIR` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, env.get("PYTHONPATH")) if p)
    return env


def join_all(procs, timeout: float = 60.0) -> None:
    """Join processes with one overall deadline; kill and fail on a hang."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    assert not hung, f"{len(hung)} child process(es) hung past {timeout} s"
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    assert not bad, f"child process(es) failed with exit codes {bad}"


def run_python(code: str, *args: str, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter, with a timeout."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill(proc, sig=signal.SIGKILL) -> None:
    """Send a signal to a multiprocessing.Process or Popen and reap it."""
    os.kill(proc.pid, sig)
    if hasattr(proc, "join"):
        proc.join(10)
    else:
        proc.wait(10)


def asleep_in_futex(*pids: int) -> bool:
    """Whether each of these processes' main thread sleeps in a futex wait now.

    How a test knows that a waiter has gone to sleep when nothing in shared
    memory counts sleepers (Event, Board): Linux's /proc/PID/wchan names the
    kernel function a sleeping task waits in.
    """
    for pid in pids:
        try:
            with open(f"/proc/{pid}/wchan") as f:
                if "futex" not in f.read():
                    return False
        except OSError:
            return False
    return True
