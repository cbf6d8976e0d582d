"""Topic, publisher side.  Run with examples/topic_subscriber.py (several, if you like):

    python examples/topic_subscriber.py & python examples/topic_publisher.py
"""
import sys
import time

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "prices"
with shmlink.Topic.create_or_open(name, capacity=1 << 20) as topic:
    for i in range(5):
        topic.publish(f"EURUSD {1.08 + i / 1000:.4f}".encode())
        time.sleep(0.01)
    topic.publish(b"")  # end of stream
    print(f"publisher: published 5 prices on {topic.name!r}")
