"""Start one imgsvc worker: ``python worker.py [--burst]`` (settings from the environment)."""

import sys

from imgsvc.queue.worker import main

if __name__ == "__main__":
    sys.exit(main())
