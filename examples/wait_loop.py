"""Serve a queue and an event from one loop with shmlink.wait (no thread per object).

Run with examples/queue_producer.py, in either order; set the event
"<name>-stop" (shmlink.Event.open(name + "-stop").set()) to stop early.
"""
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "jobs"
with shmlink.Queue.create_or_open(name, capacity=1 << 20) as q, \
        shmlink.Event.create_or_open(name + "-stop") as stop:
    done = False
    while not done:
        ready = shmlink.wait([q, stop], timeout=10)  # sleeps in poll(2) on both
        if not ready:
            sys.exit("wait loop: nothing for 10 s")
        if stop in ready:
            break
        while (msg := q.try_recv()) is not None:  # readiness may be spurious: try_
            if msg == b"":
                done = True
                break
            print("wait loop: got", msg[:20])
    q.unlink()
    stop.unlink()
