"""Queue, consumer side.  Run with examples/queue_producer.py, in either order."""
import pickle
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "jobs"
with shmlink.Queue.create_or_open(name, capacity=1 << 20) as q:
    while (msg := q.recv(timeout=10)) != b"":
        if msg.startswith(b"job"):
            print("consumer: got", msg.decode())
        else:
            print("consumer: got", pickle.loads(msg))
    q.unlink()  # the consumer is the last user: remove the name
