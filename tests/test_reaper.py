"""The job's first process as the reaper of its tree (``reaper.py``), in real processes: a
setsid daemon started below it is gone once it has finished (fastrun's path; the exec wrapper's
is tested through the server in test_server_process.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.test_server_process import _gone

FAKE = Path(__file__).parent / "support" / "fake_lm_eval.py"

PROGRAM = f"""
import os, subprocess, sys
from lmeval_trio.runners import reaper
assert reaper.become_subreaper()
out = subprocess.run([sys.executable, {str(FAKE)!r}], env={{**os.environ, "FAKE_MODE": "daemon"}},
                     capture_output=True, text=True, check=True).stdout
daemon = int(out.split()[1])
assert daemon in reaper.children()  # handed to us, not to init, when its parent exited
print(daemon, reaper.kill_descendants(), flush=True)
"""


def test_a_subreaper_kills_the_daemons_left_below_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    daemon, killed = (int(word) for word in done.stdout.split())
    assert killed >= 1  # the daemon (and the zombie of its first fork, if not yet reaped)
    assert _gone([daemon])
    assert (tmp_path / "heartbeat").read_text().startswith(f"{daemon}\n")


SIGTERMED = f"""
import os, signal, subprocess, sys
from lmeval_trio.runners import reaper
reaper.become_subreaper()
reaper.reap_on_sigterm()
out = subprocess.run([sys.executable, {str(FAKE)!r}], env={{**os.environ, "FAKE_MODE": "daemon"}},
                     capture_output=True, text=True, check=True).stdout
print(out.split()[1], flush=True)
signal.pause()
"""


def test_a_stopped_subreaper_kills_them_first(tmp_path: Path) -> None:
    """A stop's SIGTERM reaches the job's main program: it kills the daemon below it, then
    dies of the SIGTERM as it would have."""
    with subprocess.Popen(
        [sys.executable, "-c", SIGTERMED], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        daemon = int(proc.stdout.readline())
        assert not _gone([daemon])
        proc.terminate()
        assert proc.wait(timeout=60) == -signal.SIGTERM
    assert _gone([daemon])


FORKS = """
import json, multiprocessing, os, signal, threading
from lmeval_trio.runners import reaper

def handler_name(_: object = None) -> str:
    found = signal.getsignal(signal.SIGTERM)
    return "default" if found is signal.SIG_DFL else found.__qualname__

def in_child(reply) -> None:
    reply.send(handler_name())

def fork_and_ask() -> str:
    ask, reply = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=in_child, args=(reply,))
    child.start()
    child.join()
    return ask.recv()

reaper.become_subreaper()
reaper.reap_on_sigterm()
seen = {"main": handler_name(), "forked": fork_and_ask()}
thread = threading.Thread(target=lambda: seen.update(from_a_thread=fork_and_ask()))
thread.start()
thread.join()
with multiprocessing.get_context("fork").Pool(2) as pool:  # as lm-eval's bootstrap does
    seen["pool workers"] = sorted(set(pool.map(handler_name, range(8), chunksize=1)))
ask, reply = multiprocessing.Pipe()
pid = os.fork()  # a fork server's job: it installs a handler of its own; its forks drop it
if pid == 0:
    reaper.reap_on_sigterm()
    reply.send({"job": handler_name(), "job's fork": fork_and_ask()})
    os._exit(0)
os.waitpid(pid, 0)
seen.update(ask.recv())
print(json.dumps(seen), flush=True)
"""


def test_forks_of_the_job_die_of_sigterm_as_in_stock() -> None:
    """lm-eval's own forks (its bootstrap's ``multiprocessing`` pool) do not inherit the
    reaper's SIGTERM handler: ``Pool.terminate`` SIGTERMs the workers and joins them, and a
    worker that survived it hung the whole job (seen in CI). The job's main process keeps the
    handler, and so does a job forked by a fork server, which installs its own."""
    done = subprocess.run([sys.executable, "-c", FORKS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "main": "reap_on_sigterm.<locals>.handler",
        "forked": "default",
        "from_a_thread": "default",
        "pool workers": ["default"],
        "job": "reap_on_sigterm.<locals>.handler",
        "job's fork": "default",
    }
