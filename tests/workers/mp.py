"""Child bodies for tests/test_mp.py (shmlink.multiprocessing); module level so spawn finds them."""

from __future__ import annotations

import os
import sys
import time


def echo_once(conn):
    conn.send(("pid", os.getpid(), conn.recv()))
    conn.close()


def send_then_exit(conn, n):
    for i in range(n):
        conn.send(i)
    os._exit(0)  # no close: the end goes with the process


def hold_forever(q, conn, ready):
    q.put("up")
    ready.send(os.getpid())
    time.sleep(60)


def square(x):
    return x * x


def put_many(q, n, size):
    for i in range(n):
        q.put(bytes([i % 256]) * size)


def put_many_cancel(q, n, size):
    q.cancel_join_thread()
    for i in range(n):
        q.put(bytes([i % 256]) * size)


def worker_tasks(q, results):
    while True:
        item = q.get(timeout=20)
        if item is None:
            q.task_done()
            return
        results.put(item * 2)
        q.task_done()


def attach_shm(name, size, out):
    from shmlink.multiprocessing import SharedMemory
    m = SharedMemory(name)
    out.put((m.size, bytes(m.buf[:size])))
    m.buf[0] = 42
    m.close()


def spawn_shm_child_then_exit(code):
    # run in a fresh interpreter by the test: creates, attaches from a child, exits cleanly
    import subprocess
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def client_then_exit(address):
    from shmlink.multiprocessing.connection import Client
    c = Client(address)
    c.send("hello")
    c.close()


def echo_items(qin, qout, n):
    for _ in range(n):
        qout.put(qin.get(timeout=30))


def drain_check(q, n, size, out):
    """Take n items (item i is bytes([i % 256]) * size); report how many were in order."""
    ok = 0
    for i in range(n):
        if q.get(timeout=30) == bytes([i % 256]) * size:
            ok += 1
    out.put(ok)


# -- shmlink.multiprocessing.ProcessPoolExecutor -----------------------------------------

def touch_after(path, delay):
    """A task with a visible side effect: the file exists only if the task ran."""
    time.sleep(delay)
    with open(path, "w"):
        pass
    return path


def die(*data):
    os._exit(3)  # a worker that vanishes mid-task, as if killed


def fail():
    raise RuntimeError("this initializer fails")


def a_lock():
    import threading
    return threading.Lock()  # a result that cannot be pickled


def pid_then_sleep(path, delay):
    """Say which worker runs this task (its pid, in ``path``), then keep it busy."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(delay)


def getpid_after(delay):
    time.sleep(delay)
    return os.getpid()
