"""Graceful shutdown on SIGTERM, wherever the signal lands.

hypercorn's worker process dies instantly on a SIGTERM sent to it (directly, to the process
group, or by systemd), orphaning every job. We receive SIGTERM in the worker and forward it:
to the hypercorn parent when there is one (it then shuts all workers down gracefully), or,
when hypercorn runs in-process (workers = 0), as a SIGINT raised from KI-protected code so
trio delivers KeyboardInterrupt to the main task, which hypercorn treats as "shut down".
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal

import trio

log = logging.getLogger("lmeval_trio.signals")


async def forward_sigterm(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled, turning every SIGTERM into hypercorn's graceful shutdown."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            log.info("SIGTERM received: shutting down gracefully")
            parent = multiprocessing.parent_process()
            if parent is not None and parent.pid is not None:
                os.kill(parent.pid, signal.SIGTERM)
            else:
                _interrupt_main_task()


@trio.lowlevel.enable_ki_protection
def _interrupt_main_task() -> None:
    """Raised from protected code, SIGINT reaches trio's main task, not this one."""
    signal.raise_signal(signal.SIGINT)
