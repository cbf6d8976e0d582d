"""A Python process and a C program on the same shared-memory queues.

Builds examples/c/echo_upper.c against the protocol header, starts it, sends
it a few lines through one queue and reads the upper-cased replies from
another.  Run from the repository root:  python examples/c_interop.py
"""

import os
import subprocess
import sys
import tempfile
import uuid

import shmlink

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER_DIR = os.path.join(os.path.dirname(shmlink.__file__), "include")


def main() -> int:
    exe = os.path.join(tempfile.mkdtemp(), "echo_upper")
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-I", HEADER_DIR,
                    os.path.join(HERE, "c", "echo_upper.c"), "-o", exe], check=True)
    base = f"c-interop-{uuid.uuid4().hex[:8]}"
    with shmlink.Queue.create(base + ".in", 1 << 16) as q_in, \
            shmlink.Queue.create(base + ".out", 1 << 16) as q_out:
        child = subprocess.Popen([exe, q_in.name, q_out.name])
        try:
            lines = ["hello from python", "shared memory, no sockets", "ünïcode stays bytes"]
            for line in lines:
                q_in.send_text(line)
                print(f"python sent    {line!r}")
                print(f"C replied      {q_out.recv_text(timeout=10)!r}")
            q_in.send(b"")  # an empty message tells the C program to stop
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
            q_in.unlink()
            q_out.unlink()
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
