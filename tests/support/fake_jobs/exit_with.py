"""Fake job: `exit_with.py CODE [STDOUT_FILE [STDERR_FILE]]`.

Copies the files' bytes to stdout / stderr unchanged, then exits with CODE; a negative CODE
means "kill yourself with signal -CODE", which a parent sees as returncode CODE.
"""

import os
import sys


def main() -> None:
    code = int(sys.argv[1])
    for path, out in zip(sys.argv[2:], (sys.stdout, sys.stderr), strict=False):
        with open(path, "rb") as source:
            out.buffer.write(source.read())
        out.buffer.flush()
    if code < 0:
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
