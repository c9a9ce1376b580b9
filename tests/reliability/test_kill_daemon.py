"""SIGKILL of `postroom run` at seeded random moments while it sends an overdue digest, then a
restart each time: after the last restart every reader gets the digest, at most FLUSH_EVERY
copies are resent per kill, each copy with the same Message-ID.

The moments are the mail server's message counts, drawn from the seeded random.Random.
Long variant only (marker `long`): run with `summary.py --long`.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from killing import kill_when, wait_connections_closed, wait_until

from conftest import Figures
from daemonproc import DaemonSite
from mailserver import MailServer
from postroom import subscribers
from postroom.daemon import LAST_DIGEST_KEY
from postroom.sender import FLUSH_EVERY

pytestmark = [pytest.mark.slow, pytest.mark.long]

READERS = 2000
KILLS = 3


def test_sigkill_of_the_daemon_mid_send(tmp_path: Path, figures: Figures,
                                        rng: random.Random) -> None:
    now = datetime.now(UTC)
    readers = [f"reader{i:05d}@example.org" for i in range(READERS)]
    moments = sorted(rng.sample(range(READERS // 50, READERS * 9 // 10), KILLS))
    print(f"kill when the server has accepted: {moments}")
    with MailServer() as server, DaemonSite.create(
            tmp_path / "site", smtp_port=server.port,
            smtp={"concurrency": 4, "timeout": 5.0},
            digest={"schedule": f"daily {now - timedelta(hours=2):%H:%M}",
                    "since": now - timedelta(days=1)}) as site:
        site.write_post("big-news", "Big news", now - timedelta(minutes=10))
        csv_bytes = ("email\n" + "".join(f"{e}\n" for e in readers)).encode()
        report = subscribers.import_csv(site.engine, "readers.csv", io.BytesIO(csv_bytes), now)
        assert report.added == READERS and not report.problems
        # A digest slot passed while postroom was down: it is created and sent at start.
        site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())

        for moment in moments:
            daemon = site.start("run")
            kill_when(daemon.popen, lambda m=moment: server.count() >= m, daemon.log_path,
                      f"the server accepted {moment} messages")
            wait_connections_closed(server)
        last = site.start("run")

        def all_sent() -> bool:
            rows = site.deliveries()
            return len(rows) == READERS and all(r.status == "sent" for r in rows)

        wait_until(all_sent, 180, "every delivery recorded sent after the last restart",
                   interval=0.2)
        stopped = last.stop()
        log = last.log()
        digests = len(site.digests())

    received = server.messages()
    per_recipient = Counter(r for m in received for r in m.rcpt_tos)
    missed = len(set(readers) - set(per_recipient))
    duplicates = sum(n - 1 for n in per_recipient.values())
    ids: dict[str, set[str]] = {}
    for message in received:
        ids.setdefault(message.rcpt_tos[0], set()).add(str(message.parsed()["Message-ID"]))
    other_ids = sum(len(found) - 1 for found in ids.values())

    case = f"SIGKILL ×{KILLS} of `postroom run` mid-send to {READERS:,}"
    note = f"kills at server counts {moments}; last run exit {stopped}; {digests} digest(s)"
    clean = stopped == 0 and "Traceback" not in log and digests == 1
    figures.record(f"{case}: missed", missed, "0", missed == 0 and clean,
                   note if clean else f"{note}; {log[-300:]}")
    figures.record(f"{case}: duplicates", duplicates, f"≤ {KILLS} × {FLUSH_EVERY}",
                   duplicates <= KILLS * FLUSH_EVERY)
    figures.record(f"{case}: copies with another Message-ID", other_ids, "0", other_ids == 0)
    figures.assert_held()
