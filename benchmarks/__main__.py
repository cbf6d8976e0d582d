"""``python -m benchmarks``: run the shmlink benchmark suite."""
import sys

from benchmarks import main

if __name__ == "__main__":
    sys.exit(main())
