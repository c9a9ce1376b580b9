"""One digest per window, end to end: real `postroom digest send` processes (and a cron pass,
`postroom run --once`) started together on one site create exactly one digest, and every
subscriber gets it exactly once from the real SMTP test server's point of view.

The processes import postroom, say they are ready, and wait for one line on stdin; the test
releases them all at once, so they race from the first line of the command itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailserver import MailServer
from mailsite import MailSite
from postroom.daemon import LAST_DIGEST_KEY
from postroom.schema import deliveries, digests
from postroom.store import set_meta
from sites import postroom_env

pytestmark = pytest.mark.slow

# More readers than one claim holds (smtp.concurrency × 16), so the senders share the sends.
READERS = [f"reader{i:03d}@example.org" for i in range(50)]
SEND = ("digest", "send")
CRON = ("run", "--once")

# The real command's entry point, held at a gate until the test says go.
GATED_POSTROOM = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from postroom.cli import main

    ready, args = Path(sys.argv[1]), sys.argv[2:]
    ready.touch()
    sys.stdin.readline()
    sys.argv = ["postroom", *args]
    main()
    """
)


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


@pytest.fixture
def site(tmp_path: Path, server: MailServer) -> MailSite:
    site = MailSite.create(tmp_path, smtp_port=server.port, smtp={"concurrency": 1})
    site.add_subscribers(READERS)
    return site


def wait_for_files(paths: list[Path], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, [p.name for p in paths if not p.exists()]
        time.sleep(0.01)


def race(site: MailSite, commands: list[tuple[str, ...]], round_number: int
         ) -> list[tuple[int, str]]:
    """Start the commands held at the gate, release them together, wait for them all;
    return each one's (exit code, output)."""
    gate = site.root / f"round-{round_number}"
    gate.mkdir()
    started = []
    for number, command in enumerate(commands):
        ready, log = gate / f"ready-{number}", gate / f"output-{number}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-c", GATED_POSTROOM, str(ready), *command,
                 "--config", str(site.config)],
                cwd=site.root, env=postroom_env(), stdin=subprocess.PIPE, stdout=sink,
                stderr=subprocess.STDOUT)
        started.append((process, ready, log))
    try:
        wait_for_files([ready for _, ready, _ in started])
        for process, _, _ in started:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        for process, _, _ in started:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=60)
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, log.read_text()) for process, _, log in started]


def digest_counts(site: MailSite) -> list[int]:
    """Return, per digest in id order, how many deliveries it has."""
    with site.engine.connect() as connection:
        return list(connection.execute(
            select(func.count(deliveries.c.id))
            .select_from(digests.outerjoin(deliveries, deliveries.c.digest_id == digests.c.id))
            .group_by(digests.c.id).order_by(digests.c.id)
        ).scalars())


def run_rounds(site: MailSite, server: MailServer, commands: list[tuple[str, ...]],
               rounds: int) -> None:
    """Each round: a new post, the commands racing; then exactly one more digest, and one
    more message for every reader."""
    for round_number in range(1, rounds + 1):
        now = datetime.now(UTC)
        # Published now: after the last digest's cutoff, so it is new this round.
        site.write_post(f"post-{round_number}", f"Post {round_number}", published=now)
        if CRON in commands:
            # The cron pass makes a digest only when a scheduled slot passed since its last.
            with site.engine.begin() as connection:
                set_meta(connection, LAST_DIGEST_KEY, (now - timedelta(days=8)).isoformat())

        results = race(site, commands, round_number)

        for command, (code, output) in zip(commands, results, strict=True):
            assert code == 0, f"round {round_number}: postroom {' '.join(command)}:\n{output}"
            assert "Traceback" not in output, output
        assert digest_counts(site) == [len(READERS)] * round_number, (
            f"round {round_number}: " + "\n---\n".join(output for _, output in results))
        assert server.per_recipient() == Counter({r: round_number for r in READERS})
        assert {row.status for row in site.deliveries()} == {"sent"}
    assert len(server.messages()) == rounds * len(READERS)


@pytest.mark.parametrize(("senders", "rounds"), [(2, 5), (3, 5), (10, 1)])
def test_concurrent_digest_sends_create_one_digest_and_send_it_once(
    site: MailSite, server: MailServer, senders: int, rounds: int
) -> None:
    run_rounds(site, server, [SEND] * senders, rounds)


def test_digest_sends_racing_a_cron_pass_create_one_digest_and_send_it_once(
    site: MailSite, server: MailServer
) -> None:
    run_rounds(site, server, [SEND, CRON, SEND], rounds=3)
