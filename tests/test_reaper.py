"""The job's first process as the reaper of its tree (``reaper.py``), in real processes: a
setsid daemon started below it is gone once it has finished (fastrun's path; the exec wrapper's
is tested through the server in test_server_process.py)."""

from __future__ import annotations

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
