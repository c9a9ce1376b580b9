"""SIGKILL at random moments during a real `postroom digest send`: nobody is missed, and only
what was in flight at a kill is sent again — at most FLUSH_EVERY per kill (README: "P × 200"),
each copy with the same Message-ID.

The moments are the mail server's message counts, drawn from the seeded random.Random: the
same seed kills at the same points of the send.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from killing import kill_when, wait_connections_closed

from conftest import Figures
from mailserver import MailServer
from mailsite import MailSite, assert_no_traceback, start_postroom
from postroom import subscribers
from postroom.sender import FLUSH_EVERY

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def import_readers(site: MailSite, count: int) -> list[str]:
    """Add `count` active readers through postroom's import; return their addresses."""
    readers = [f"reader{i:05d}@example.org" for i in range(count)]
    csv_bytes = ("email\n" + "".join(f"{e}\n" for e in readers)).encode()
    report = subscribers.import_csv(site.engine, "readers.csv", io.BytesIO(csv_bytes),
                                    datetime.now(UTC))
    assert report.added == count and not report.problems
    return readers


@pytest.mark.parametrize("readers_count, kills", [
    pytest.param(2000, 5, id="2000x5"),
    pytest.param(10_000, 20, id="10000x20", marks=pytest.mark.long),
])
def test_sigkill_during_a_send(tmp_path: Path, server: MailServer, figures: Figures,
                               rng: random.Random, readers_count: int, kills: int) -> None:
    site = MailSite.create(tmp_path, smtp_port=server.port,
                           smtp={"concurrency": 4, "timeout": 5.0})
    readers = import_readers(site, readers_count)
    site.write_post("big-news", "Big news")
    # Kill points in the server's count (duplicates included), spread over the send.
    moments = sorted(rng.sample(range(readers_count // 50, readers_count * 9 // 10), kills))
    print(f"kill when the server has accepted: {moments}")

    boundaries = [0]  # where each run's messages start in the server's record
    for number, moment in enumerate(moments, start=1):
        output = tmp_path / f"run-{number}.log"
        process = start_postroom("digest", "send", "--config", str(site.config),
                                 cwd=tmp_path, output=output)
        kill_when(process, lambda m=moment: server.count() >= m, output,
                  f"the server accepted {moment} messages")
        wait_connections_closed(server)
        boundaries.append(server.count())
    final = site.run("digest", "send", timeout=300)
    assert_no_traceback(final)

    received = server.messages()
    per_recipient = Counter(r for m in received for r in m.rcpt_tos)
    missed = len(set(readers) - set(per_recipient))
    duplicates = sum(n - 1 for n in per_recipient.values())
    worst_restart = 0
    for start, end in zip(boundaries[1:], [*boundaries[2:], len(received)], strict=True):
        earlier = {r for m in received[:start] for r in m.rcpt_tos}
        worst_restart = max(worst_restart, sum(m.rcpt_tos[0] in earlier
                                               for m in received[start:end]))
    ids: dict[str, set[str]] = {}
    for message in received:
        ids.setdefault(message.rcpt_tos[0], set()).add(str(message.parsed()["Message-ID"]))
    copies_with_another_id = sum(len(found) - 1 for found in ids.values())
    rows = Counter(row.status for row in site.deliveries())

    case = f"SIGKILL ×{kills} during digest send to {readers_count:,}"
    note = f"kills at server counts {moments}; final run exit {final.returncode}"
    figures.hold(f"{case}: missed", missed, "0", missed == 0, note)
    figures.hold(f"{case}: duplicates", duplicates, f"≤ {kills} × {FLUSH_EVERY}",
                 duplicates <= kills * FLUSH_EVERY, f"worst restart resent {worst_restart}")
    figures.hold(f"{case}: resent after one kill (worst)", worst_restart,
                 f"≤ {FLUSH_EVERY}", worst_restart <= FLUSH_EVERY)
    figures.hold(f"{case}: copies with another Message-ID", copies_with_another_id, "0",
                 copies_with_another_id == 0)
    finished = rows == Counter({"sent": readers_count}) and final.returncode == 0
    figures.hold(f"{case}: deliveries recorded sent", rows["sent"], f"= {readers_count}",
                 finished, "" if finished else f"{dict(rows)}; {final.stderr[-300:]}")
