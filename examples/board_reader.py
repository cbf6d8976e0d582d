"""Board, reader side: watches the latest value (it may skip values written faster than it reads)."""
import pickle
import sys

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "sensor"
with shmlink.Board.create_or_open(name, capacity=256) as board:
    for raw in board.watch(timeout=10, initial=True):
        value = pickle.loads(raw) if raw else None
        print("reader: latest", value)
        if value == "done":
            break
    board.unlink()
