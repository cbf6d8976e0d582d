"""The README's examples are programs: run each pair end to end, in both start orders."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAIRS = [
    ("queue_consumer", "queue_producer", ["consumer: got job 2", "{'job': 3, 'args': [1, 2, 3]}"]),
    ("topic_subscriber", "topic_publisher", ["subscriber: got EURUSD 1.0840"]),
    ("board_reader", "board_writer", ["reader: latest done"]),
    ("server", "client", ["answered 3 requests"]),
    ("async_consumer", "queue_producer", ["async consumer: got job 2",
                                          "{'job': 3, 'args': [1, 2, 3]}"]),
    ("wait_loop", "queue_producer", ["wait loop: got b'job 2'"]),
]


def _run(script: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", script + ".py"), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# A client connects to a listening server, so the server pair runs server-first only.
RUNS = [(*pair, first) for pair in PAIRS for first in (True, False)
        if first or pair[0] != "server"]


@pytest.mark.parametrize("receiver,sender,expect,receiver_first", RUNS,
                         ids=[f"{r[0]}-{'receiver' if r[3] else 'sender'}-first" for r in RUNS])
def test_example_pair(receiver, sender, expect, receiver_first, name):
    first, second = (receiver, sender) if receiver_first else (sender, receiver)
    a = _run(first, name)
    time.sleep(0.3)
    b = _run(second, name)
    try:
        outs = {}
        for proc, script in ((a, first), (b, second)):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{script} failed:\n{err}"
            outs[script] = out
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    for line in expect:
        assert line in outs[receiver]


def test_demo_runs_two_processes():
    r = subprocess.run([sys.executable, "-m", "shmlink", "demo"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "[reader" in r.stdout and "[writer" in r.stdout
    assert "sum of values 14" in r.stdout


def test_c_interop_example():
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "c_interop.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HELLO FROM PYTHON" in r.stdout
