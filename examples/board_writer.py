"""Board, writer side: publishes the latest sensor reading.  Run with examples/board_reader.py."""
import sys
import time

import shmlink

name = sys.argv[1] if len(sys.argv) > 1 else "sensor"
with shmlink.Board.create_or_open(name, capacity=256) as board:
    for i in range(5):
        board.write_object({"reading": i, "celsius": 21.5 + i / 10})
        time.sleep(0.05)
    board.write_object("done")
    print(f"writer: wrote 6 values, board version {board.version}")
