"""Connection, server side: answers requests until its client leaves.  Run with examples/client.py:

    python examples/server.py & python examples/client.py
"""
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "calc"
with shmlink.listen(name) as listener:
    with listener.accept(timeout=30) as conn:
        print(f"server: client PID {conn.peer_pid} connected")
        served = conn.serve(lambda request: str(sum(map(int, request.split()))).encode())
        print(f"server: answered {served} requests; the client left")
