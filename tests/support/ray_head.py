"""A private, loopback-only Ray head for the Ray backend tests, started and stopped by PID.

``ray stop`` kills every Ray process on the machine by name, so the head runs as
``ray start --head --block`` in its own session and is taken down through that process, its
group and its recorded descendants (Ray's workers live in process groups of their own).
Facts that shaped it: starting takes 15-60 s and ~630 MB; 127.0.0.1 sticks only with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; a GCS port in 10002-19999 clashes with the worker ports
(every port here comes from the kernel's ephemeral range instead); with bytecode writing off
(PYTHONDONTWRITEBYTECODE) every Ray process compiles Ray anew and a loaded machine misses
Ray's own start-up deadlines, so the head gets a bytecode cache and longer deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 10.0


class RayHeadError(RuntimeError):
    """The head did not come up; the message holds the end of its log."""


@dataclass
class RayHead:
    process: subprocess.Popen[bytes]
    temp_dir: Path
    address: str  # the dashboard URL: what LMEVAL_RAY_ADDRESS takes

    @classmethod
    def start(cls, pycache: Path, attempts: int = 2) -> RayHead:
        """Start a head and wait until it accepts jobs; a failed start is tried again."""
        error: RayHeadError | None = None
        for _ in range(attempts):
            head = cls._launch(pycache)
            try:
                head._wait_ready()
                return head
            except RayHeadError as failure:
                error = failure
                head.stop()
        assert error is not None
        raise error

    @classmethod
    def _launch(cls, pycache: Path) -> RayHead:
        temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: socket paths
        gcs, dashboard, agent, agent_grpc, env_agent, metrics, client = _free_ports(7)
        argv = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={env_agent}",
            f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={client}",
            "--num-cpus=4",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            PYTHONPYCACHEPREFIX=str(pycache),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_raylet_start_wait_time_s="180",
            RAY_DASHBOARD_STARTUP_TIMEOUT_S="180",
            RAY_agent_register_timeout_ms="180000",
        )
        with open(temp_dir / "ray-start.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return cls(process, temp_dir, f"http://127.0.0.1:{dashboard}")

    def _wait_ready(self) -> None:
        """Up once a trivial job is accepted: the dashboard answers before its agent does."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RayHeadError(f"ray start exited ({self.process.returncode}):\n{self.log()}")
            if self._accepts_jobs():
                return
            time.sleep(1.0)
        raise RayHeadError(f"no Ray head after {START_TIMEOUT_S:g} s:\n{self.log()}")

    def _accepts_jobs(self) -> bool:
        body = json.dumps({"entrypoint": "true"}).encode()
        request = urllib.request.Request(
            self.address + "/api/jobs/", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        with suppress(OSError):
            return (self.temp_dir / "ray-start.log").read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        """SIGKILL the head's group and every process below it: never anyone else's Ray.

        Nothing of this throwaway cluster needs a graceful end, and ``ray start --block``
        takes over 15 s to honour SIGTERM on a busy machine.
        """
        leader = self.process.pid
        family = _descendants(leader)  # workers and job drivers live in groups of their own
        with suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)
        for pid in family:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _free_ports(count: int) -> list[int]:
    """Ports the kernel picks (32768+): never in Ray's worker range 10002-19999."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (from /proc), however many sessions deep."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
