"""Graceful shutdown on SIGTERM, wherever the signal lands, acted on once.

hypercorn's worker process dies instantly on a SIGTERM sent to it (directly, to the process
group, or by systemd), orphaning every job. We receive SIGTERM in the worker and start
hypercorn's own graceful shutdown: when a hypercorn parent runs us (workers >= 1), by setting
the shutdown event it shares with its workers; when hypercorn runs in-process (workers = 0),
as a SIGINT raised from KI-protected code so trio delivers KeyboardInterrupt to the main task,
which hypercorn treats as "shut down".

The parent is never signalled while it may be handling a SIGTERM of its own: its handler sets
that same event under a lock that is not re-entrant, so a second SIGTERM arriving during the
first (a group-wide SIGTERM plus a forwarded one) deadlocks it, and with it every worker that
polls the event. Only once the supervisor has stopped do we tell the parent (``finish``) not
to start a new worker; later SIGTERMs are logged and ignored.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from multiprocessing.synchronize import Event

import trio

log = logging.getLogger("lmeval_trio.signals")


class GracefulSigterm:
    """Turns the first SIGTERM into hypercorn's graceful shutdown; ``run`` owns the receiver."""

    def __init__(self) -> None:
        self.received = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                if self.received:
                    log.info("SIGTERM received again: already shutting down")
                    continue
                self.received = True
                log.info("SIGTERM received: shutting down gracefully")
                await _begin_shutdown()

    def finish(self) -> None:
        """After the supervisor stopped: a parent that saw no SIGTERM itself would otherwise
        start a new worker when this one exits. Its own SIGTERM, if any, is long handled."""
        parent = _parent_pid()
        if self.received and parent is not None:
            os.kill(parent, signal.SIGTERM)


async def _begin_shutdown() -> None:
    event = _hypercorn_shutdown_event()
    if event is not None:
        # Cross-process lock, held by the parent for microseconds: off the event loop anyway.
        await trio.to_thread.run_sync(event.set, abandon_on_cancel=True)
    elif (parent := _parent_pid()) is not None:  # an unknown hypercorn: its parent decides
        os.kill(parent, signal.SIGTERM)
    else:
        _interrupt_main_task()


def _parent_pid() -> int | None:
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else None


def _hypercorn_shutdown_event() -> Event | None:
    """The event hypercorn's parent passed this worker (its ``shutdown_event`` keyword)."""
    if multiprocessing.parent_process() is None:
        return None
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = kwargs.get("shutdown_event") if isinstance(kwargs, dict) else None
    return event if isinstance(event, Event) else None


@trio.lowlevel.enable_ki_protection
def _interrupt_main_task() -> None:
    """Raised from protected code, SIGINT reaches trio's main task, not this one."""
    signal.raise_signal(signal.SIGINT)
