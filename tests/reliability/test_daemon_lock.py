"""The SQLite write lock held by another process past `database.busy_timeout_ms` while
`postroom run` sends a digest through a slow mail server: /healthz says 503 degraded while it
lasts, ok again after, and every reader gets the digest exactly once.

Long variant only (marker `long`): run with `summary.py --long`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from killing import wait_until

from conftest import Figures
from daemonproc import DaemonSite, PostroomProcess
from mailserver import MailServer

pytestmark = [pytest.mark.slow, pytest.mark.long]

READERS = 300
BUSY_TIMEOUT_MS = 500


def health_becomes(daemon: PostroomProcess, condition: Callable[[int, dict[str, Any]], bool],
                   timeout: float) -> tuple[bool, str]:
    """Poll /healthz until condition(status, JSON) holds; return (whether it did, last seen)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline and daemon.running():
        status, payload = daemon.health()
        last = f"{status} {payload.get('status')} sender={payload.get('sender')}"
        if condition(status, payload):
            return True, last
        time.sleep(0.05)
    return False, last


def test_a_write_lock_past_the_busy_timeout_mid_send(tmp_path: Path, figures: Figures) -> None:
    now = datetime.now(UTC)
    readers = [f"reader{n:03}@example.org" for n in range(READERS)]
    with MailServer(delay=0.02) as slow, DaemonSite.create(
            tmp_path / "site", smtp_port=slow.port,
            database={"busy_timeout_ms": BUSY_TIMEOUT_MS},
            daemon={"retry_interval": 0.5},
            digest={"schedule": f"daily {now - timedelta(hours=2):%H:%M}",
                    "since": now - timedelta(days=1)}) as site:
        site.write_post("big-news", "Big news", now - timedelta(minutes=10))
        site.add_subscribers(readers)
        daemon = site.start("run")
        daemon.wait_healthy()
        assert site.create_digest().recipients == READERS
        wait_until(lambda: slow.count() >= 20, 30, "the send began")

        holder = sqlite3.connect(site.root / "var" / "postroom.db", isolation_level=None,
                                 timeout=10.0)
        holder.execute("BEGIN IMMEDIATE")
        try:
            degraded, seen_locked = health_becomes(
                daemon, lambda status, h: status == 503 and h.get("status") == "degraded"
                and h["sender"]["ok"] is False, timeout=20)
            sent_while_locked = slow.count()
        finally:
            holder.rollback()
            holder.close()

        def all_sent() -> bool:
            return sum(d.status == "sent" for d in site.deliveries()) == READERS

        wait_until(all_sent, 60, "every delivery recorded sent after the lock", interval=0.05)
        ok_after, seen_after = health_becomes(
            daemon, lambda status, h: status == 200 and h.get("status") == "ok"
            and h["sender"]["ok"] is True, timeout=20)
        stopped = daemon.stop()
        log = daemon.log()

    per_recipient = slow.per_recipient()
    missed = len(set(readers) - set(per_recipient))
    duplicates = sum(n - 1 for n in per_recipient.values())
    case = f"database locked past busy_timeout ({BUSY_TIMEOUT_MS} ms) mid-send to {READERS}"
    figures.record(f"{case}: missed", missed, "0", missed == 0)
    figures.record(f"{case}: duplicates", duplicates, "0", duplicates == 0)
    figures.record(f"{case}: health degraded while locked", "yes" if degraded else "no",
                   "yes", degraded, f"{seen_locked}; {sent_while_locked} accepted by then")
    clean = ok_after and stopped == 0 and "Traceback" not in log
    figures.record(f"{case}: health ok after", "yes" if ok_after else "no", "yes", clean,
                   f"daemon exit {stopped}" + ("" if clean else f"; {seen_after}; {log[-300:]}"))
    figures.assert_held()
