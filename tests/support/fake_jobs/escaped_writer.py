"""Fake job: starts a child in a NEW session that keeps the job's stdout and stderr open and
sleeps forever, prints "escaped PID", then exits 0 (the child is outside the job's group)."""

import subprocess
import sys

SLEEPER = "import signal\nwhile True: signal.pause()"

child = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
print(f"escaped {child.pid}", flush=True)
