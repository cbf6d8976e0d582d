"""Connection, client side: sends requests and gets the matching responses."""
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "calc"
with shmlink.connect(name, timeout=30) as conn:
    for question in ("1 2 3", "40 2", "7"):
        answer = conn.request(question.encode(), timeout=10)
        print(f"client: {question} -> {answer.decode()}")
