"""Topic, subscriber side: every subscriber gets every message (lossless mode)."""
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "prices"
with shmlink.Topic.create_or_open(name, capacity=1 << 20) as topic:
    # "oldest": also get what was published before we subscribed
    with topic.subscribe(start="oldest") as sub:
        while (msg := sub.recv(timeout=10)) != b"":
            print("subscriber: got", msg.decode())
    topic.unlink()  # remove the name; processes that have it open keep it
