"""Ctrl-C reaches every blocking call, even when the signal never interrupts its sleep.

A process-directed SIGINT is delivered to one thread.  When that thread is
not the one waiting, the waiter's futex sleep is not cut short: only the
periodic check between sleep slices can notice the signal.  Each case runs
in a child whose main thread blocks SIGINT (so a helper thread receives
it) and then waits forever; it must raise KeyboardInterrupt within seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

#: setup code (names in argv) and the blocking call, per case
CASES = {
    "topic-publish-full": (
        "t = shmlink.Topic.open(a[0], wait='block'); s = t.subscribe()\n"
        "while t.try_publish(b'x' * 64): pass",
        "t.publish(b'x')"),
    "topic-recv": (
        "t = shmlink.Topic.open(a[0], wait='block'); s = t.subscribe()",
        "s.recv()"),
    "queue-recv": ("q = shmlink.Queue.open(a[1], wait='block')", "q.recv()"),
    "queue-send-full": (
        "q = shmlink.Queue.open(a[1], wait='block')\n"
        "while q.try_send(b'x' * 64): pass",
        "q.send(b'x' * 64)"),
    "board-wait": ("b = shmlink.Board.open(a[2])", "b.wait_for_change(b.version)"),
    "event-wait": ("e = shmlink.Event.open(a[3])", "e.wait()"),
    "mutex-acquire": ("m = shmlink.Mutex.open(a[4])", "m.acquire()"),  # the test holds it
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ctrl_c_reaches_a_waiter_whose_sleep_it_does_not_interrupt(case, names):
    import shmlink

    setup, call = CASES[case]
    made = [shmlink.Topic.create(names("t"), 1600), shmlink.Queue.create(names("q"), 4096),
            shmlink.Board.create(names("b"), 64), shmlink.Event.create(names("e")),
            shmlink.Mutex.create(names("m"))]
    made[-1].acquire()
    code = textwrap.dedent("""
        import signal, sys, threading, time, shmlink
        a = sys.argv[1:]
        {setup}
        # the helper thread keeps SIGINT unblocked and receives it
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            {call}
            print("returned", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted {{time.monotonic() - t0:.3f}}", flush=True)
        """).format(setup=setup, call=call)
    try:
        p = subprocess.Popen([sys.executable, "-c", code, *(m.name for m in made)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # let it reach its sleep
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=15)
        finally:
            p.kill()
            p.wait(10)
        assert out.startswith("interrupted"), (out, err)
    finally:
        made[-1].release()
        for m in made:
            m.unlink()
            m.close()
