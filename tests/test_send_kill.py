"""The outbox's promise, end to end: a real `postroom digest send` to 2,000 subscribers,
killed with SIGKILL in the middle of the send (three times) and started again, delivers the
digest to every subscriber, and only messages handed to the server whose outcome was not
yet committed are sent twice: at most FLUSH_EVERY per sending process (README)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailserver import MailServer
from mailsite import MailSite, assert_no_traceback, start_postroom
from postroom.sender import FLUSH_EVERY

READERS = 2000
CONCURRENCY = 4
KILL_AFTER = (150, 700, 1400)  # messages the server has accepted when the sender is killed
BOUND = FLUSH_EVERY  # begun sends not yet recorded, in flight included, per sending process


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def kill_when(process: subprocess.Popen[bytes], server: MailServer, count: int,
              output: Path) -> int:
    """SIGKILL the process once the server has accepted `count` messages; return how many
    it had accepted when the process was gone."""
    deadline = time.monotonic() + 60
    while server.count() < count:
        assert process.poll() is None, f"the send ended before the kill:\n{output.read_text()}"
        assert time.monotonic() < deadline, "the send made no progress"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    # What the dead process had fully transmitted is still being read by the server.
    time.sleep(0.3)
    return server.count()


@pytest.mark.slow
def test_a_send_killed_three_times_reaches_everyone_once_but_for_in_flight(
    tmp_path: Path, server: MailServer
) -> None:
    site = MailSite.create(tmp_path, smtp_port=server.port,
                           smtp={"concurrency": CONCURRENCY, "timeout": 5.0})
    readers = [f"reader{i:04d}@example.org" for i in range(READERS)]
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email,name\n" + "".join(f"{e},Reader {i}\n"
                                                 for i, e in enumerate(readers)))
    imported = site.run("subscribers", "import", str(csv_file))
    assert imported.returncode == 0, imported.stderr
    assert f"{READERS} added" in imported.stdout
    site.write_post("big-news", "Big news")

    # Each run's messages start where the server's count stood when it started.
    boundaries = [0]
    for number, threshold in enumerate(KILL_AFTER, start=1):
        output = tmp_path / f"run-{number}.log"
        process = start_postroom("digest", "send", "--config", str(site.config), cwd=tmp_path,
                                 output=output)
        boundaries.append(kill_when(process, server, threshold, output))
        assert boundaries[-1] < READERS, "killed in the middle of the send"
    final = site.run("digest", "send", timeout=120)

    assert final.returncode == 0, final.stderr
    assert_no_traceback(final)
    received = server.messages()
    per_recipient = Counter(r for m in received for r in m.rcpt_tos)
    assert set(per_recipient) == set(readers), "every subscriber got the digest"
    duplicates = sum(n - 1 for n in per_recipient.values())
    assert duplicates <= BOUND * len(KILL_AFTER), per_recipient.most_common(20)
    # Per restart: only what was in flight at that kill is sent again.
    for start, end in zip(boundaries[1:], [*boundaries[2:], len(received)], strict=True):
        earlier = {r for m in received[:start] for r in m.rcpt_tos}
        again = [m for m in received[start:end] if m.rcpt_tos[0] in earlier]
        assert len(again) <= BOUND, [m.rcpt_tos for m in again]
    # A message sent twice carries the same Message-ID both times: receivers can tell.
    ids: dict[str, set[str]] = {}
    for message in received:
        ids.setdefault(message.rcpt_tos[0], set()).add(str(message.parsed()["Message-ID"]))
    assert all(len(found) == 1 for found in ids.values())

    rows = site.deliveries()
    assert len(rows) == READERS
    assert Counter(row.status for row in rows) == Counter({"sent": READERS})
    assert {row.message_id for row in rows} == {i for found in ids.values() for i in found}
    status = site.run("digest", "status")
    assert f"pending 0  sent {READERS}  failed 0" in status.stdout
