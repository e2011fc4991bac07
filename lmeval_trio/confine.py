"""``python -P -m lmeval_trio.confine --walls=JSON -- <argv>``: confine this process, then become
``argv`` (the wall survives ``execve``), so any executable starts as a confined job.

``--probe`` instead puts up a wall that grants nothing and checks that the kernel enforces it
(the server's start-up check: a kernel may report Landlock yet a seccomp profile may block it).
Exit codes: 126 the wall could not be put up, 127 the command could not be started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lmeval_trio.confinement import ConfinementError, Walls, abi_version, enter, restrict

USAGE = "usage: python -m lmeval_trio.confine (--walls=JSON -- COMMAND... | --probe)"
EXIT_NO_WALL = 126
EXIT_NO_COMMAND = 127


def main(args: Sequence[str]) -> int:
    if list(args) == ["--probe"]:
        return probe()
    if len(args) < 3 or not args[0].startswith("--walls=") or args[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        enter(Walls.decode(args[0].split("=", 1)[1]))
    except (ConfinementError, ValueError) as err:
        print(f"lmeval-trio: cannot confine the job: {err}", file=sys.stderr)
        return EXIT_NO_WALL
    command = list(args[2:])
    try:
        os.execv(command[0], command)
    except OSError as err:
        print(f"lmeval-trio: cannot start {command[0]}: {err.strerror}", file=sys.stderr)
    return EXIT_NO_COMMAND


def probe() -> int:
    """Print the ABI version and exit 0 if a wall holds; else print why and exit 126."""
    abi = abi_version()
    try:
        restrict((), ())
    except ConfinementError as err:
        print(f"Landlock ABI {abi}: {err}", file=sys.stderr)
        return EXIT_NO_WALL
    try:
        os.listdir("/")
    except PermissionError:
        print(abi)
        return 0
    print(f"Landlock ABI {abi}: the wall was put up but does not hold", file=sys.stderr)
    return EXIT_NO_WALL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
