"""Queue, producer side.  Run with examples/queue_consumer.py, in either order:

    python examples/queue_consumer.py & python examples/queue_producer.py
"""
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "jobs"
with shmlink.Queue.create_or_open(name, capacity=1 << 20) as q:
    for i in range(3):
        q.send_text(f"job {i}")
    q.send_object({"job": 3, "args": [1, 2, 3]})
    q.send(b"")  # an empty message ends the stream
    print(f"producer: sent 5 messages to {q.name!r}")
