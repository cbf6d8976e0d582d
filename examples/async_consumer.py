"""Queue, asyncio consumer.  Run with examples/queue_producer.py, in either order."""
import asyncio
import pickle
import sys

import shmlink.asyncio

name = sys.argv[1] if len(sys.argv) > 1 else "jobs"


async def main() -> None:
    async with shmlink.asyncio.Queue.create_or_open(name, capacity=1 << 20) as q:
        while (msg := await q.recv(timeout=10)) != b"":  # the loop runs other tasks meanwhile
            if msg.startswith(b"job"):
                print("async consumer: got", msg.decode())
            else:
                print("async consumer: got", pickle.loads(msg))
        q.unlink()  # the consumer is the last user: remove the name


asyncio.run(main())
