"""The SMTP fault matrix: each misbehaviour of a real SMTP server (aiosmtpd on loopback, see
tests/mailserver.py), met by postroom's sender through its API. Per fault, the figures: lost
deliveries (0), the attempts the faulty delivery took (within smtp.max_attempts), and for a
permanent refusal the server's reply recorded on the delivery.

A delivery is lost when it ends neither sent (and received by the server) nor failed with
the server's reply, or when the server got it more than once.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from killing import wait_until

from conftest import Figures
from daemonproc import free_port
from mailserver import Fault, MailServer
from mailsite import MailSite

ANN, BOB, CAT = "ann@example.org", "bob@example.org", "cat@example.org"
READERS = [ANN, BOB, CAT]
MAX_ATTEMPTS = 5


def make_site(root: Path, port: int, readers: list[str] = READERS, **smtp: Any) -> MailSite:
    site = MailSite.create(root, smtp_port=port,
                           smtp={"max_attempts": MAX_ATTEMPTS, "backoff_base": 0.02,
                                 "backoff_max": 0.1, "timeout": 0.5, **smtp})
    site.write_post("news", "News")
    site.add_subscribers(readers)
    assert site.create_digest().recipients == len(readers)
    return site


def lost(site: MailSite, server: MailServer) -> list[str]:
    """Return the deliveries that ended neither sent once nor failed with a reply."""
    received = server.per_recipient()
    wrong = []
    for row in site.deliveries():
        sent_once = row.status == "sent" and received[row.email] == 1
        failed_with_reply = row.status == "failed" and bool(row.last_reply) \
            and received[row.email] == 0
        if not (sent_once or failed_with_reply):
            wrong.append(f"{row.email}: {row.status}, received {received[row.email]}")
    return wrong


def attempts_of(site: MailSite, email: str) -> int:
    [row] = [row for row in site.deliveries() if row.email == email]
    return int(row.attempts)


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def reader(name: str) -> str:
    """The address that meets one fault: its name, made into a local part."""
    local = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"{local}@example.org"


TRANSIENT: list[tuple[str, Fault]] = [
    *[(f"{code} on {stage.upper()}", Fault(stage, f"{code} 4.{sub} try again later", times=2))  # type: ignore[arg-type]
      for stage in ("rcpt", "data")
      for code, sub in (("450", "2.0"), ("451", "3.0"), ("452", "3.1"))],
    ("421 on RCPT (closes the connection)", Fault("rcpt", "421 4.3.2 shutting down", times=2)),
    ("drop mid-DATA", Fault("data", action="drop", times=2)),
    ("drop after the final dot (no reply)", Fault("data", action="stall", seconds=0.0,
                                                  times=2)),
    ("hang past the timeout (RCPT)", Fault("rcpt", action="stall", seconds=3.0, times=1)),
    ("hang past the timeout (after DATA)", Fault("data", action="stall", seconds=3.0,
                                                 times=1)),
]


def test_each_transient_fault_is_retried_within_max_attempts(
        tmp_path: Path, server: MailServer, figures: Figures) -> None:
    # One send, one faulty reader per fault (and two readers the server never troubles).
    faulty = {reader(name): name for name, _ in TRANSIENT}
    server.fail(*(replace(fault, recipient=reader(name)) for name, fault in TRANSIENT))
    site = make_site(tmp_path, server.port, [*faulty, ANN, CAT])

    stats = site.send()

    missing = lost(site, server)
    for email, name in faulty.items():
        attempts = attempts_of(site, email)
        fired = sum(1 for e in server.outcomes(email) if not e.outcome.startswith("250"))
        wrong = [m for m in missing if m.startswith(email)]
        figures.record(f"SMTP {name}: lost, attempts", f"lost {len(wrong)}, attempts {attempts}",
                       f"lost 0, attempts {fired + 1} ≤ {MAX_ATTEMPTS}",
                       not wrong and fired > 0 and attempts == fired + 1 <= MAX_ATTEMPTS,
                       "; ".join(wrong) or f"fault fired {fired}×")
    figures.record("SMTP transient faults, all in one send: sent, lost",
                   f"sent {stats.sent}, lost {len(missing)}",
                   f"sent {len(faulty) + 2}, lost 0",
                   stats.sent == len(faulty) + 2 and not missing, "; ".join(missing))
    figures.assert_held()


PERMANENT: list[tuple[str, Fault]] = [
    ("550 on RCPT", Fault("rcpt", "550 5.1.1 user unknown")),
    ("554 on DATA", Fault("data", "554 5.7.1 message refused")),
    ("553 on MAIL", Fault("mail", "553 5.7.1 sender not allowed", messages=(1,))),
]


def test_each_permanent_refusal_fails_at_once_with_the_reply(
        tmp_path: Path, server: MailServer, figures: Figures) -> None:
    # The MAIL refusal takes the first transaction: ANN's, the first reader on the one
    # connection; the others are refused for one reader each.
    faulty = [reader(name) for name, fault in PERMANENT if fault.stage != "mail"]
    server.fail(*(fault if fault.stage == "mail" else replace(fault, recipient=reader(name))
                  for name, fault in PERMANENT))
    site = make_site(tmp_path, server.port, [ANN, *faulty, BOB, CAT], concurrency=1)

    stats = site.send()

    missing = lost(site, server)
    failed = [row for row in site.deliveries() if row.status == "failed"]
    for name, fault in PERMANENT:
        rows = [row for row in failed if row.last_reply == fault.reply]
        attempts = sorted(row.attempts for row in rows)
        figures.record(f"SMTP {name}: lost, failed with the reply",
                       f"lost {len(missing)}, failed {len(rows)} after {attempts} attempt(s)",
                       "lost 0, 1 failed after 1 attempt with the reply",
                       not missing and attempts == [1], f"{fault.reply!r}")
    figures.record("SMTP permanent refusals, all in one send: failed, lost",
                   f"failed {stats.failed}, lost {len(missing)}", f"failed {len(PERMANENT)}, "
                   "lost 0", stats.failed == len(failed) == len(PERMANENT) and not missing,
                   "; ".join(missing))
    figures.assert_held()


def test_a_rate_limit_phase_is_waited_out(tmp_path: Path, server: MailServer,
                                          figures: Figures) -> None:
    # Every transaction of the first six answers 4.7.x: the whole list is held back a while.
    server.fail(Fault("rcpt", "451 4.7.1 rate limited, slow down", messages=tuple(range(1, 7))))
    site = make_site(tmp_path, server.port, concurrency=1)

    stats = site.send()

    missing = lost(site, server)
    worst = max(row.attempts for row in site.deliveries())
    figures.hold("SMTP 4.7.x rate-limit phase (6 refusals): lost, attempts",
                 f"lost {len(missing)}, most attempts {worst}", f"lost 0, ≤ {MAX_ATTEMPTS}",
                 not missing and stats.sent == 3 and worst <= MAX_ATTEMPTS)


class _Refuser(socketserver.ThreadingTCPServer):
    """A server that greets every connection with 421 and hangs up (a busy MTA)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.refused = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _RefuseHandler)


class _RefuseHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"421 4.3.2 too busy, try again later\r\n")
        server = self.server
        assert isinstance(server, _Refuser)
        with server.lock:
            server.refused += 1


def mail_server_on(port: int) -> MailServer:
    """A MailServer for a given port, to start with `with` (MailServer picks a free port; a
    server coming back on the port the site knows is the point here)."""
    server = MailServer()
    server._controller.port = port
    return server


def error_recorded(site: MailSite) -> bool:
    """Whether a delivery carries the error of a failed attempt (it is retried later)."""
    return any(row.last_reply for row in site.deliveries())


@pytest.mark.parametrize("down", ["closed port", "421 at connect"])
def test_a_server_down_then_up_loses_nothing(tmp_path: Path, figures: Figures,
                                             down: str) -> None:
    port = free_port()
    refuser = _Refuser(port) if down == "421 at connect" else None
    if refuser is not None:
        threading.Thread(target=refuser.serve_forever, daemon=True).start()
    site = make_site(tmp_path, port, retry_wait=20.0, concurrency=2)
    outcome: list[Any] = []
    sending = threading.Thread(target=lambda: outcome.append(site.send()))
    sending.start()
    # The send has met the fault (its error is recorded), then the server comes up.
    wait_until(lambda: error_recorded(site), 10, "a failed attempt recorded")
    errors = sorted({row.last_reply[:70] for row in site.deliveries() if row.last_reply})
    refused = 0
    if refuser is not None:
        refuser.shutdown()
        refuser.server_close()
        refused = refuser.refused
    with mail_server_on(port) as server:
        sending.join(30)
        assert not sending.is_alive(), "the send did not finish after the server came up"
        missing = lost(site, server)
        worst = max(row.attempts for row in site.deliveries())
    note = f"{refused} connection(s) refused with 421 first; " if refuser else ""
    figures.hold(f"SMTP server down ({down}) then up: lost, attempts",
                 f"lost {len(missing)}, most attempts {worst}", f"lost 0, ≤ {MAX_ATTEMPTS}",
                 not missing and outcome[0].sent == 3 and worst <= MAX_ATTEMPTS
                 and (refuser is None or refused > 0), f"{note}while down: {errors}")


@pytest.mark.slow
def test_the_cli_exits_3_while_down_and_sends_everything_with_now_once_up(
        tmp_path: Path, figures: Figures) -> None:
    port = free_port()
    site = make_site(tmp_path, port, retry_wait=0.3, backoff_base=30.0, backoff_max=60.0)

    down = site.run("digest", "send")
    pending_after_down = sum(row.status == "pending" for row in site.deliveries())
    with mail_server_on(port) as server:
        up = site.run("digest", "send", "--now")
        missing = lost(site, server)
    clean = "Traceback" not in down.stderr + up.stderr
    figures.hold("SMTP server down: `digest send` exit code, pending kept",
                 f"exit {down.returncode}, {pending_after_down} pending",
                 "exit 3, 3 pending, no traceback",
                 down.returncode == 3 and pending_after_down == 3 and clean,
                 down.stderr.strip().splitlines()[-1][:160] if down.stderr.strip() else "")
    figures.hold("SMTP server back: `digest send --now`: exit code, lost",
                 f"exit {up.returncode}, lost {len(missing)}", "exit 0, lost 0",
                 up.returncode == 0 and not missing and clean,
                 "" if up.returncode == 0 else up.stderr[-200:])
