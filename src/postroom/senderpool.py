"""Sender processes: more senders on the same outbox, to use every core of the machine.

Each process runs its own Sender on its own event loop, with its own connections and its
own database engine, claiming its own batches: the outbox's leases keep them apart. The
parent stops them through an Event and collects what they did through a Queue.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from postroom.config import Settings
from postroom.sender import MessageFactory, Sender, SendStats, utc_now
from postroom.store import open_engine
from postroom.templates import template_environment
from postroom.transport import make_transport

log = logging.getLogger(__name__)
# Below this many due deliveries per process, another process costs more than it saves.
MIN_DUE_PER_PROCESS = 2000
JOIN_TIMEOUT = 5.0


class SenderProcesses:
    """Extra sender processes for one send; owned by the task that started them."""

    def __init__(self, settings: Settings, wait_for_retries: float) -> None:
        self.settings, self.wait = settings, wait_for_retries
        self.context: SpawnContext = multiprocessing.get_context("spawn")
        self.stop_event: Event | None = None
        self.results: Queue[dict[str, int]] | None = None
        self.processes: list[SpawnProcess] = []

    def start(self, count: int) -> None:
        if count <= 0:
            return
        # Made only when needed: they start multiprocessing's resource tracker process.
        self.stop_event = self.context.Event()
        self.results = self.context.Queue()
        for number in range(count):
            process = self.context.Process(
                target=run_sender_process, name=f"postroom-sender-{number + 1}", daemon=True,
                args=(self.settings, self.wait, self.stop_event, self.results),
            )
            process.start()
            self.processes.append(process)
        log.info("started %d more sender process(es)", count)

    def stop(self) -> None:
        """Ask every process to stop taking work and finish what is in flight."""
        if self.stop_event is not None:
            self.stop_event.set()

    def join(self) -> SendStats:
        """Blocking: wait for the processes to end; return what they sent, together."""
        total = SendStats()
        for process in self.processes:
            process.join()
            if process.exitcode != 0:
                log.error("sender process %s ended with exit code %s", process.name,
                          process.exitcode)
        while self.results is not None and not self.results.empty():
            total.add(SendStats(**self.results.get(timeout=JOIN_TIMEOUT)))
        return total


def run_sender_process(settings: Settings, wait: float, stop_event: Event,
                       results: Queue[dict[str, Any]]) -> None:
    """The body of a sender process: send until done or told to stop; report the stats."""
    # The parent owns SIGINT/SIGTERM (a terminal's ^C and systemd reach every process):
    # this one stops when the parent says so, finishing its in-flight sends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(levelname)s %(message)s")
    stats = asyncio.run(_send(settings, wait, stop_event))
    results.put(vars(stats))


async def _send(settings: Settings, wait: float, stop_event: Event) -> SendStats:
    engine = open_engine(settings.database_url, settings.database.busy_timeout_ms)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def relay_stop() -> None:  # a thread: Event.wait blocks
        stop_event.wait()
        loop.call_soon_threadsafe(stopping.set)

    threading.Thread(target=relay_stop, daemon=True, name="stop-relay").start()
    messages = MessageFactory(engine, settings, template_environment(settings.templates_dir))
    sender = Sender(engine, settings, make_transport(settings), messages, clock=utc_now,
                    stopping=stopping)
    try:
        return await sender.run(wait_for_retries=wait)
    finally:
        engine.dispose()
