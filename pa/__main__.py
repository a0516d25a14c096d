"""`python -m pa <command>`; the commands live in pa.cli."""

import os
import sys

from pa.cli import main

if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`python -m pa ... | head`): no traceback, and none
        # again when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)
