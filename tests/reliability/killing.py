"""Killing real `postroom` processes at chosen moments, and waiting for what follows.

No fixed sleeps: a kill waits for an event (the mail server's count, a file growing, the
database changing), and what a dead process left behind is read once its connections are
closed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mailserver import MailServer


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.002) -> None:
    """Poll until condition() is truthy; fail after `timeout` seconds, saying `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(interval)


def sigkill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and reap it (it must not have exited by itself before)."""
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool],
              output: Path, what: str, timeout: float = 60.0) -> None:
    """SIGKILL the process as soon as condition() holds; fail if it exits before."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before the kill ({what}):\n{output.read_text()}"
        assert time.monotonic() < deadline, f"never {what} within {timeout} s"
        time.sleep(0.001)
    sigkill(process)


def wait_connections_closed(server: MailServer, timeout: float = 10.0) -> None:
    """Wait until the server has closed every connection: what a dead client had fully
    written has been read (and accepted or dropped) by then."""
    wait_until(lambda: all(s.closed is not None for s in server.greeted_sessions()),
               timeout, "the mail server closed the dead sender's connections")
