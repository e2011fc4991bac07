"""Fake job: a leader and a grandchild in the leader's process group that survives SIGTERM.

Each process prints "leader PID" / "grandchild PID" on stdout once its SIGTERM handling is in
place, then both block forever. Options:
  --term-log PATH           the grandchild appends "TERM" to PATH per SIGTERM (still survives it)
  --leader-exit-delay S     the leader dies from SIGTERM only S seconds after receiving it
  --obedient                the grandchild dies from SIGTERM like the leader
  --leader-exits            the leader exits 0 once the grandchild is ready, leaving it behind
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["leader", "grandchild"], default="leader")
    parser.add_argument("--term-log")
    parser.add_argument("--leader-exit-delay", type=float)
    parser.add_argument("--obedient", action="store_true")
    parser.add_argument("--leader-exits", action="store_true")
    args = parser.parse_args()
    if args.role == "grandchild":
        _become_grandchild(args.term_log, args.obedient)
    elif args.leader_exits:
        _leave_grandchild_behind()
    else:
        _become_leader(args.leader_exit_delay)
    print(f"{args.role} {os.getpid()}", flush=True)
    while True:
        signal.pause()


def _become_leader(exit_delay_s: float | None) -> None:
    if exit_delay_s is not None:
        signal.signal(signal.SIGTERM, lambda _sig, _frame: _die_later(exit_delay_s))
    subprocess.Popen([sys.executable, __file__, "--role=grandchild", *sys.argv[1:]])


def _leave_grandchild_behind() -> None:
    """Relays the grandchild's ready line, prints its own and exits; the grandchild keeps stderr."""
    argv = [sys.executable, __file__, "--role=grandchild", *sys.argv[1:]]
    grandchild = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert grandchild.stdout is not None
    print(grandchild.stdout.readline().decode().strip(), flush=True)
    print(f"leader {os.getpid()}", flush=True)
    os._exit(0)


def _die_later(delay_s: float) -> None:
    time.sleep(delay_s)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _become_grandchild(term_log: str | None, obedient: bool) -> None:
    if obedient:
        return
    if term_log is None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return

    def log_term(_sig: int, _frame: FrameType | None) -> None:
        with open(term_log, "a") as log:
            log.write("TERM\n")

    signal.signal(signal.SIGTERM, log_term)


if __name__ == "__main__":
    main()
