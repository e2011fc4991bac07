#!/usr/bin/env python3
"""A stand-in for lm_eval, used as ``lm_eval_path`` by tests that need a controllable child.

The request's ``env_vars`` choose the behaviour (FAKE_MODE):
  env      print the environment and argv as JSON on stdout, exit 0
  env_block  print them too, then wait until killed
  exit     print argv, write the line in the file FAKE_ERROR_FILE (default: a ValueError
           line) to stderr, exit with FAKE_CODE
  exit_once  like exit when FAKE_MARKER does not exist yet (and create it), else like block
  oom      kill itself with SIGKILL, as the OOM killer would
  flood    write FAKE_MB megabytes of tqdm-style redraws to stderr (some stdout), exit 0
  block    print "ready", then wait for stdin-less eternity (killed by SIGTERM)
  tree     start a grandchild that ignores SIGTERM, print both pids, wait forever
  tree_once  like tree when FAKE_MARKER does not exist yet (and create it), else exit 0
  swap     in its folder, swap out.txt between a file and a symlink to FAKE_TARGET, and the
           folder d/ (holding f.txt) with a symlink to FAKE_TARGET_DIR (names in the data
           directory), until killed
  say      copy the file FAKE_TEXT_FILE to stderr, exit 0
  daemon   double-fork a setsid daemon that beats (a line to ./heartbeat) forever, print
           "daemon <pid>", exit 0 (daemon_block: then wait until killed)
  bars     print FAKE_TOTAL tqdm redraws of a "Requesting API" bar, one per line of
           FAKE_GATE (a FIFO) read, then exit 0: lets a test hold the job mid-progress
"""

import json
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    mode = os.environ.get("FAKE_MODE", "env")
    if mode == "exit_once":  # fail the first time, block when run again
        marker = os.environ["FAKE_MARKER"]
        mode = "block" if os.path.exists(marker) else "exit"
        open(marker, "a").close()
    if mode in ("env", "env_block"):
        print(json.dumps({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}))
        sys.stdout.flush()
        while mode == "env_block":
            signal.pause()
    elif mode == "exit":
        print(json.dumps(sys.argv), flush=True)
        error = "ValueError: fake failure for the test"
        if "FAKE_ERROR_FILE" in os.environ:
            with open(os.environ["FAKE_ERROR_FILE"]) as text:
                error = text.read().strip()
        sys.stderr.write(error + "\n")
        sys.exit(int(os.environ.get("FAKE_CODE", "1")))
    elif mode == "oom":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "flood":
        flood(int(os.environ.get("FAKE_MB", "1")))
    elif mode == "block":
        print("ready", flush=True)
        while True:
            signal.pause()
    elif mode == "tree":
        tree()
    elif mode == "tree_once":  # block (as a tree) the first time, succeed when run again
        marker = os.environ["FAKE_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            tree()
        print("second run", flush=True)
    elif mode == "swap":
        swap(os.environ["FAKE_TARGET"], os.environ["FAKE_TARGET_DIR"])
    elif mode == "say":
        with open(os.environ["FAKE_TEXT_FILE"]) as text:
            sys.stderr.write(text.read())
    elif mode in ("daemon", "daemon_block"):
        print("daemon", daemonise(), flush=True)
        while mode == "daemon_block":
            signal.pause()
    elif mode == "bars":
        bars(int(os.environ.get("FAKE_TOTAL", "10")), os.environ["FAKE_GATE"])


def swap(target: str, target_dir: str) -> None:
    """Race the server's reads: each name is a plain file (folder) one moment and a symlink
    to someone else's file (folder) the next."""
    target, target_dir = (os.path.join("..", "..", name) for name in (target, target_dir))
    os.makedirs("d", exist_ok=True)
    with open("d/f.txt", "w") as file:
        file.write("own folder file")
    print("ready", flush=True)
    while True:
        with open("out.tmp", "w") as file:
            file.write("own file")
        os.replace("out.tmp", "out.txt")
        os.symlink(target, "out.lnk")
        os.replace("out.lnk", "out.txt")
        os.rename("d", "d.real")
        os.symlink(target_dir, "d")
        os.unlink("d")
        os.rename("d.real", "d")


def flood(megabytes: int) -> None:
    line = ("Requesting API:  37%|###7      | 84/228 [00:39<01:05,  2.21it/s]" + " " * 50)[:100]
    chunk = ("\r" + line) * 100
    written = 0
    target = megabytes * 1024 * 1024
    while written < target:
        sys.stderr.write(chunk)
        written += len(chunk)
        if written % (1024 * 1024) < len(chunk):
            sys.stdout.write(f"{written} bytes written\n")
    sys.stderr.write("\n")


def tree() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,os\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('grandchild', os.getpid(), flush=True)\nwhile True: signal.pause()",
        ],
    )
    del child
    print("leader", os.getpid(), flush=True)
    while True:
        signal.pause()


def daemonise() -> int:
    """The classic double fork: the daemon leaves the job's session and process group."""
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)  # a daemon lets go of the job's pipes
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            while True:
                with open("heartbeat", "a") as beat:
                    beat.write(f"{os.getpid()}\n")
                if write >= 0:  # it beat once: report it
                    os.write(write, f"{os.getpid()}\n".encode())
                    os.close(write)
                    write = -1
                time.sleep(0.2)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        return int(pipe.readline())


def bars(total: int, gate: str) -> None:
    print("INFO [evaluator:589] Running loglikelihood requests", file=sys.stderr, flush=True)
    with open(gate) as steps:
        for n in range(total + 1):
            pct = n * 100 // total
            sys.stderr.write(f"\rRequesting API: {pct:3d}%|#| {n}/{total} [00:01<00:02,  2.00it/s]")
            sys.stderr.flush()
            if n < total:
                steps.readline()
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
