"""Run CPython's own multiprocessing tests against shmlink.multiprocessing.

Usage::

    python tools/cpython_mp.py run CLASS [TEST ...]   # one class (or some of its tests), JSON last
    python tools/cpython_mp.py table [--pythons 3.10 3.11 ...] # every class, every interpreter

``run`` builds the test class from the interpreter's ``test`` package through
its mixin with shmlink's objects substituted (``Queue``, ``JoinableQueue``,
``Pipe``, ``connection``; ``shared_memory`` in the test module; and
``multiprocessing.Queue``/``JoinableQueue``/``SimpleQueue``/``Pipe``/
``queues.Queue`` for the tests that call the module directly), runs it with
unittest and prints ``{"class", "passed", "failed": {test: reason}, "skipped":
{test: reason}}``.  ``table`` runs every class in a child process per class
and interpreter (``.venv-3.X/bin/python`` next to this checkout, made with
``python3.X -m venv .venv-3.X && .venv-3.X/bin/pip install -e .``, or the
interpreter itself if shmlink imports there) and prints a table.

Classes: the ``_test_multiprocessing`` ones listed in MP_CLASSES; and from
``test_concurrent_futures`` (interpreters that ship it: 3.10 and 3.13 here),
for each start method in FUTURES_METHODS, ``ProcessPoolExecutorTest`` with
shmlink's context and the standard executor (``[fork]``), and the classes of
FUTURES_TESTS with ``executor_type`` set to
``shmlink.multiprocessing.ProcessPoolExecutor`` (``[fork+subclass]``: the name
is older than the class, which is no longer a subclass of the standard one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unittest

MP_CLASSES = ["_TestQueue", "_TestConnection", "_TestListener", "_TestListenerClient",
              "_TestPoll", "_TestSharedMemory"]
FUTURES_METHODS = ["fork", "spawn", "forkserver"]
ALL_CLASSES = MP_CLASSES + [f"ProcessPoolExecutorTest[{m}]" for m in FUTURES_METHODS] + [
    f"{t}[{m}+subclass]" for t in ("ProcessPoolExecutorTest", "ProcessPoolShutdownTest",
                                   "ExecutorDeadlockTest", "InitializerTest",
                                   "FailingInitializerTest") for m in FUTURES_METHODS]


def _substitute() -> None:
    """Point the standard names the tests call directly at shmlink's objects."""
    import multiprocessing
    import multiprocessing.queues

    import shmlink.multiprocessing as smp

    multiprocessing.Queue = smp.Queue  # type: ignore[assignment]
    multiprocessing.JoinableQueue = smp.JoinableQueue  # type: ignore[assignment]
    multiprocessing.SimpleQueue = smp.SimpleQueue  # type: ignore[assignment]
    multiprocessing.Pipe = smp.Pipe  # type: ignore[assignment]
    multiprocessing.queues.Queue = smp.Queue  # type: ignore[misc]


def _mp_class(name: str) -> type:
    import test._test_multiprocessing as tm

    import shmlink.multiprocessing as smp

    tm.shared_memory = smp.shared_memory  # type: ignore[attr-defined]

    class ShmlinkMixin(tm.ProcessesMixin):  # type: ignore[name-defined,misc]
        Pipe = staticmethod(smp.Pipe)
        Queue = staticmethod(smp.Queue)
        JoinableQueue = staticmethod(smp.JoinableQueue)
        connection = smp.connection

    base = getattr(tm, name)
    cls = type("WithShmlink" + name[1:], (base, ShmlinkMixin, unittest.TestCase),
               {"__module__": __name__})
    globals()[cls.__name__] = cls
    return cls


#: test_concurrent_futures' process-pool test classes, and their module in 3.13's package
FUTURES_TESTS = {"ProcessPoolExecutorTest": "test_process_pool",
                 "ProcessPoolShutdownTest": "test_shutdown",
                 "ExecutorDeadlockTest": "test_deadlock",
                 "InitializerTest": "test_init",
                 "FailingInitializerTest": "test_init"}


def _futures_class(method: str, subclass: bool = False, test: str = "ProcessPoolExecutorTest") -> type:
    """The executor tests with shmlink's context (the one-line switch), or with
    ``shmlink.multiprocessing.ProcessPoolExecutor`` itself (``subclass``)."""
    import importlib

    import shmlink.multiprocessing as smp

    try:
        mod = importlib.import_module("test.test_concurrent_futures." + FUTURES_TESTS[test])  # 3.13
        from test.test_concurrent_futures import util
        util.setup_module()
    except ImportError:
        import test.test_concurrent_futures as mod  # 3.10: one file
    base = getattr(mod, f"ProcessPool{method.capitalize()}{test}")

    def get_context(self: object) -> object:
        base.get_context(self)  # its skips (system limits, no fork in threads...)
        return smp.get_context(method)

    attrs = {"__module__": __name__, "get_context": get_context}
    if subclass:
        attrs["executor_type"] = smp.ProcessPoolExecutor
    tag = "Subclass" if subclass else ""
    cls = type(f"Shmlink{tag}{method.capitalize()}{test}", (base,), attrs)
    globals()[cls.__name__] = cls
    return cls


def _reason(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "?"


def _build(name: str) -> type:
    """The class for ``name``; also run at import in spawned children (they unpickle its methods)."""
    import multiprocessing

    os.environ["CPYTHON_MP_CLASS"] = name
    test = name.partition("[")[0]
    if test in FUTURES_TESTS:
        method, _, variant = name[name.index("[") + 1:-1].partition("+")
        return _futures_class(method, variant == "subclass", test)
    _substitute()
    if multiprocessing.current_process().name == "MainProcess" and __name__ == "__main__":
        multiprocessing.set_start_method(os.environ.get("MP_START_METHOD", "fork"), force=True)
    return _mp_class(name)


def run(name: str, only: list[str] | None = None) -> dict[str, object]:

    try:
        cls = _build(name)
    except (ImportError, AttributeError) as e:
        return {"class": name, "passed": 0, "failed": {}, "skipped": {},
                "absent": f"this interpreter ships no test_concurrent_futures ({e})"}
    if only:
        suite = unittest.TestSuite(cls(t) for t in only)
    else:
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(cls)
    result = unittest.TestResult()
    t0 = time.monotonic()
    suite.run(result)
    out = {
        "class": name,
        "python": "%d.%d" % sys.version_info[:2],
        "seconds": round(time.monotonic() - t0, 1),
        "passed": result.testsRun - len(result.failures) - len(result.errors)
        - len(result.skipped) - len(result.expectedFailures),
        "failed": {t.id().rsplit(".", 1)[-1]: _reason(e)
                   for t, e in result.failures + result.errors},
        "skipped": {t.id().rsplit(".", 1)[-1]: r for t, r in result.skipped},
    }
    return out


def run_child(python: str, name: str, timeout: float = 300) -> dict[str, object]:
    """Run one class in a child interpreter; its JSON result."""
    env = dict(os.environ)
    try:
        p = subprocess.run([python, os.path.abspath(__file__), "run", name],
                           capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"class": name, "passed": 0, "failed": {"*": f"timed out after {timeout} s"},
                "skipped": {}}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return {"class": name, "passed": 0,
            "failed": {"*": f"exit {p.returncode}: {_reason(p.stderr)}"}, "skipped": {}}


def _interpreter(version: str) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(root, f".venv-{version}", "bin", "python")
    if os.path.exists(venv):
        return venv
    return None


def table(versions: list[str], classes: list[str]) -> int:
    rows = []
    for v in versions:
        py = _interpreter(v)
        if py is None:
            print(f"# {v}: no .venv-{v} (python{v} -m venv .venv-{v} && "
                  f".venv-{v}/bin/pip install -e .)", flush=True)
            continue
        for c in classes:
            r = run_child(py, c)
            rows.append((v, r))
            absent = r.get("absent")
            if absent:
                print(f"{v:5} {c:34} absent: {absent}", flush=True)
                continue
            print(f"{v:5} {c:34} passed {r['passed']:3}  failed {len(r['failed']):2}  "  # type: ignore[arg-type]
                  f"skipped {len(r['skipped']):2}  ({r.get('seconds', '?')} s)", flush=True)  # type: ignore[arg-type]
            for t, why in sorted(r["failed"].items()):  # type: ignore[attr-defined]
                print(f"        FAIL {t}: {why}", flush=True)
            for t, why in sorted(r["skipped"].items()):  # type: ignore[attr-defined]
                print(f"        skip {t}: {why}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        print("\n" + json.dumps(run(argv[1], argv[2:])), flush=True)
        return 0
    if argv and argv[0] == "table":
        versions = ["3.10", "3.11", "3.12", "3.13"]
        if "--pythons" in argv:
            versions = argv[argv.index("--pythons") + 1:]
        return table(versions, ALL_CLASSES)
    print(__doc__)
    return 2


if __name__ == "__mp_main__" and os.environ.get("CPYTHON_MP_CLASS"):
    _build(os.environ["CPYTHON_MP_CLASS"])  # a spawned child: the same class as its parent

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
