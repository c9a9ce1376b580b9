"""The `postroom` command: parse arguments, call the library, print. Nothing else lives here.

Exit codes: 0 success; 1 done, but some input had problems (each printed as path:line:
message) or some deliveries failed; 2 usage or configuration error, nothing done; 3 could
not finish because the mail server or the storage is unavailable (the work is kept, and
what is pending and when it is next tried is printed).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from postroom import __version__
from postroom.config import CONFIG_ENV, Settings, find_config, load_settings
from postroom.errors import (
    STORAGE_ERRNOS,
    OutputError,
    PostroomError,
    Problem,
    SubscriberError,
)
from postroom.logs import setup_logging

# The rest is imported by the commands that use it: `build` and `check` must not pay for
# SQLAlchemy, Alembic and the mail stack, and every command starts in a fraction of the time.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from postroom.build import BuildReport
    from postroom.looplag import LoopLagProbe
    from postroom.sender import SendStats

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What every command gets: where the config is and how much to say."""

    def __init__(self, config: Path | None, verbosity: int, debug: bool = False) -> None:
        self.config_path, self.verbosity, self.debug = config, verbosity, debug

    def settings(self) -> Settings:
        path = find_config(self.config_path, os.environ)
        if path is None and self.verbosity >= 0:
            # Say it: run in the wrong folder, postroom would quietly make a site there.
            click.echo(f"postroom: no config file found (--config, ${CONFIG_ENV}, "
                       f"./postroom.toml): using the built-in defaults in {Path.cwd()}",
                       err=True)
        return load_settings(path)

    def say(self, message: str) -> None:
        if self.verbosity >= 0:
            click.echo(message)


def common_options(command: F) -> F:
    """Add --config/--quiet/--verbose/--debug to a command, so they work after its name too."""

    @click.option("--config", "-c", "config", type=click.Path(path_type=Path), default=None,
                  help="Config file (default: $POSTROOM_CONFIG, ./postroom.toml, built-ins).")
    @click.option("--quiet", "-q", is_flag=True, help="Print only problems and errors.")
    @click.option("--verbose", "-v", is_flag=True, help="Print what is done, file by file.")
    @click.option("--debug", is_flag=True, help="On an error, show its traceback and causes.")
    @click.pass_context
    @functools.wraps(command)
    def wrapper(ctx: click.Context, config: Path | None, quiet: bool, verbose: bool,
                debug: bool, **kwargs: Any) -> Any:
        parent: Context | None = ctx.obj
        config = config or (parent.config_path if parent else None)
        verbosity = -1 if quiet else 1 if verbose else (parent.verbosity if parent else 0)
        debug = debug or bool(parent and parent.debug)
        _setup_logging(verbosity)
        try:
            return command(Context(config, verbosity, debug), **kwargs)
        except PostroomError as err:
            _fail(str(err), err.exit_code, err if debug else None)
        except OSError as err:  # before Exception, which would re-raise it as a traceback
            where = f"{err.filename}: " if err.filename else ""
            # A full or failing disk is the machine's state; a folder that cannot be
            # written is the user's to fix.
            code = EXIT_UNAVAILABLE if err.errno in STORAGE_ERRNOS else EXIT_ERROR
            _fail(f"{where}{err.strerror or err}", code, err if debug else None)
        except Exception as err:
            if not _is_database_error(err):
                raise
            # Storage that refused the work (locked, full, read-only): nothing is lost.
            cause = getattr(err, "orig", None) or err
            _fail(f"database error: {cause}; nothing was lost, run the command again later",
                  EXIT_UNAVAILABLE, err if debug else None)

    return wrapper  # type: ignore[return-value]


def _is_database_error(err: Exception) -> bool:
    # Without SQLAlchemy imported, no error can come from it (and none is imported for it).
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(err, exc.SQLAlchemyError)


def _fail(message: str, code: int, error: BaseException | None) -> NoReturn:
    if error is not None:
        traceback.print_exception(error)
    click.echo(f"postroom: {message}", err=True)
    sys.exit(code)


def _setup_logging(verbosity: int) -> None:
    setup_logging(verbosity, os.environ.get("POSTROOM_LOG_FORMAT", "text"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $POSTROOM_CONFIG, ./postroom.toml, built-ins).")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems and errors.")
@click.option("--verbose", "-v", is_flag=True, help="Print what is done, file by file.")
@click.option("--debug", is_flag=True, help="On an error, show its traceback and causes.")
@click.version_option(__version__, prog_name="postroom")
@click.pass_context
def main(ctx: click.Context, config: Path | None, quiet: bool, verbose: bool,
         debug: bool) -> None:
    """Feeds and email digests for a folder of Markdown posts.

    Exit codes: 0 done; 1 done, but some input had problems or some deliveries failed;
    2 usage or configuration error; 3 could not finish (mail server or storage
    unavailable): the work is kept and finishes on a later run.
    """
    ctx.obj = Context(config, -1 if quiet else 1 if verbose else 0, debug)


def print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)


def print_notices(notices: list[Problem]) -> None:
    """Say what the author should know that is not a problem (exit code unchanged)."""
    for notice in notices:
        where = f"{notice.path}:{notice.line}" if notice.line > 0 else str(notice.path)
        click.echo(f"{where}: note: {notice.message}", err=True)


@main.command()
@click.option("--allow-empty", is_flag=True,
              help="Write empty feeds even though the last build had posts.")
@click.option("--no-ping", is_flag=True,
              help="Do not tell the WebSub hub (feeds.hub) which feeds changed.")
@common_options
def build(ctx: Context, allow_empty: bool, no_ping: bool) -> None:
    """Scan the posts and write the feeds that changed.

    A missing posts folder, or an empty one where the last build had posts, is an error
    (exit 2) that leaves the feeds as they were; so is an output folder that cannot be
    written (exit 3 when the disk is full or failing: each feed file stays whole).
    """
    from postroom.build import SiteBuilder

    settings = ctx.settings()
    try:
        report = SiteBuilder(settings).build(datetime.now(UTC), allow_empty=allow_empty)
    except OSError as err:  # a full disk, say: exit 3, naming the folder
        raise OutputError.of(settings.output_dir, err) from err
    print_problems(report.problems)
    print_notices(report.notices)
    ctx.say(_summary(report, settings))
    if ctx.verbosity > 0:
        for name in report.written:
            click.echo(f"  wrote {settings.output_dir / name}")
        for name in report.removed:
            click.echo(f"  removed {settings.output_dir / name}")
    if not no_ping:
        tell_hub(ctx, settings, report)
    sys.exit(EXIT_PROBLEMS if report.problems else EXIT_OK)


def tell_hub(ctx: Context, settings: Settings, report: BuildReport) -> None:
    """Tell the WebSub hub which feeds the build wrote, in one line; a hub that does not
    take it is a warning, never a failed build."""
    if settings.feeds.hub is None:
        return
    from postroom import websub

    pings = websub.pings_for(settings, report.written)
    if not pings:
        return
    notifier = websub.publish_blocking(pings)
    missed = [p for p in pings if p not in notifier.delivered]
    if not missed:
        ctx.say(f"told the WebSub hub {settings.feeds.hub} of {len(pings)} changed feed(s)")
        return
    why = notifier.failures.get(missed[0], "no answer in time")
    click.echo(f"postroom: warning: the WebSub hub {settings.feeds.hub} was not told of "
               f"{len(missed)} of {len(pings)} changed feed(s) ({why}); its subscribers "
               f"learn of them when they poll, or at the feeds' next change", err=True)


def _summary(report: BuildReport, settings: Settings) -> str:
    problems = f", {len(report.problems)} problem(s)" if report.problems else ""
    removed = f", {len(report.removed)} removed" if report.removed else ""
    return (
        f"{report.published} published posts; {len(report.feeds)} files in "
        f"{settings.output_dir}: {len(report.written)} written, "
        f"{len(report.unchanged)} unchanged{removed}{problems}"
    )


@main.command()
@common_options
def check(ctx: Context) -> None:
    """Report every problem in the posts; write nothing. Exit 1 if there is any."""
    from postroom.build import SiteBuilder

    settings = ctx.settings()
    report = SiteBuilder(settings).build(datetime.now(UTC), write=False)
    print_problems(report.problems)
    print_notices(report.notices)
    ctx.say(f"{report.published} published posts, {len(report.problems)} problem(s)")
    sys.exit(EXIT_PROBLEMS if report.problems else EXIT_OK)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@common_options
def init(ctx: Context, folder: Path) -> None:
    """Create a new site folder: a config, a sample post and the templates."""
    from postroom.sitefolder import create_site

    created = create_site(folder, today=datetime.now(UTC).date())
    for path in created:
        ctx.say(f"created {path}")
    ctx.say(f"next: cd {folder} && postroom build")




# ---- the newsletter -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def open_database(settings: Settings) -> Engine:
    """The configured database, its schema brought up to date (only what that needs)."""
    from postroom.store import migrate, open_engine

    engine = open_engine(settings.database_url, settings.database.busy_timeout_ms)
    migrate(engine)
    return engine


# What `subscribers.STATUSES` holds (tests/test_cli_subscribers.py keeps them equal): the
# options need it when the command line is parsed, before anything is imported.
STATUSES = ("pending", "active", "unsubscribed", "bounced")


@main.group()
def db() -> None:
    """The database: schema migrations."""


@db.command("upgrade")
@common_options
def db_upgrade(ctx: Context) -> None:
    """Apply every pending migration (also done automatically by every command)."""
    settings = ctx.settings()
    open_database(settings)
    ctx.say(f"database at {settings.database_url} is up to date")


@main.group("subscribers")
def subscribers_group() -> None:
    """Add, remove, list, import and export subscribers."""


@subscribers_group.command("add")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--pending", is_flag=True, help="Add as pending (awaiting confirmation).")
@common_options
def subscribers_add(ctx: Context, addresses: tuple[str, ...], pending: bool) -> None:
    """Add addresses as active subscribers (an unsubscribed one is left unsubscribed)."""
    from postroom import subscribers

    engine = open_database(ctx.settings())
    problems = 0
    with engine.begin() as connection:
        for address in addresses:
            try:
                email = subscribers.normalize_address(address)
            except SubscriberError as err:
                click.echo(f"postroom: {err}", err=True)
                problems += 1
                continue
            row, created = subscribers.add(
                connection, email, _now(), status="pending" if pending else "active")
            known = "" if row.email == email else f" (as {row.email})"  # another case
            ctx.say(f"added {email}" if created else f"{email} is already {row.status}{known}")
    sys.exit(EXIT_PROBLEMS if problems else EXIT_OK)


@subscribers_group.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@common_options
def subscribers_remove(ctx: Context, addresses: tuple[str, ...]) -> None:
    """Unsubscribe addresses (kept as unsubscribed, so an import will not bring them back)."""
    from postroom import subscribers

    engine = open_database(ctx.settings())
    missing = 0
    with engine.begin() as connection:
        for address in addresses:
            row = subscribers.find(connection, _normalized_or_raw(address))
            if row is None:
                click.echo(f"postroom: {address}: not a subscriber", err=True)
                missing += 1
                continue
            subscribers.set_status(connection, row.id, "unsubscribed", _now())
            ctx.say(f"unsubscribed {row.email}")
    sys.exit(EXIT_PROBLEMS if missing else EXIT_OK)


def _normalized_or_raw(address: str) -> str:
    from postroom import subscribers

    try:
        return subscribers.normalize_address(address)
    except SubscriberError:
        return address.strip()


@subscribers_group.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@common_options
def subscribers_list(ctx: Context, status: str | None) -> None:
    """List subscribers (email, status, since) and the count per status."""
    from postroom import subscribers
    from postroom.store import reading

    engine = open_database(ctx.settings())
    for row in subscribers.iter_subscribers(engine, status):
        click.echo(f"{row.email}\t{row.status}\t{row.status_changed_at:%Y-%m-%d}")
    with reading(engine) as connection:
        totals = subscribers.counts(connection)
    ctx.say(", ".join(f"{n} {s}" for s, n in totals.items()))


@subscribers_group.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--status", type=click.Choice(["active", "pending"]), default="active",
              help="Status of newly imported addresses.")
@common_options
def subscribers_import(ctx: Context, csv_file: Path, status: str) -> None:
    """Import a CSV with an `email` column (optional `name`); bad rows are reported by line."""
    from postroom import subscribers
    from postroom.progress import file_progress

    engine = open_database(ctx.settings())
    with (csv_file.open("rb") as stream,
          file_progress("importing", csv_file.stat().st_size, quiet=ctx.verbosity < 0) as shown):
        report = subscribers.import_csv(engine, str(csv_file), stream, _now(), status=status,
                                        on_progress=shown)
    print_problems(report.problems)
    ctx.say(f"{report.added} added, {report.unchanged} already subscribed, "
            f"{report.kept_status} unsubscribed/bounced left as they are, "
            f"{len(report.problems)} bad row(s)")
    sys.exit(EXIT_PROBLEMS if report.problems else EXIT_OK)


@subscribers_group.command("export")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write to this file (default: standard output).")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@common_options
def subscribers_export(ctx: Context, output: Path | None, status: str | None) -> None:
    """Export subscribers as CSV with a header."""
    from postroom import subscribers

    engine = open_database(ctx.settings())
    if output is None:
        subscribers.export_csv(engine, sys.stdout, status)
        return
    with output.open("w", encoding="utf-8", newline="") as handle:
        count = subscribers.export_csv(engine, handle, status)
    click.echo(f"exported {count} subscriber(s) to {output}", err=True)


@main.group()
def digest() -> None:
    """Create, preview, send and inspect email digests."""


@digest.command("preview")
@click.option("--to", "address", default="reader@example.org", help="Recipient to render for.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("digest-preview"),
              help="Folder for the preview files.")
@common_options
def digest_preview(ctx: Context, address: str, output: Path) -> None:
    """Render the next digest into HTML, text and .eml files and print their paths."""
    from postroom.build import SiteBuilder
    from postroom.newsletter import plan_digest
    from postroom.preview import write_preview

    settings = ctx.settings()
    engine = open_database(settings)
    plan = plan_digest(settings, engine, SiteBuilder(settings), _now())
    if not plan.posts:
        ctx.say(f"nothing new since {plan.start:%Y-%m-%d %H:%M %Z}: no digest would be sent")
        return
    for path in write_preview(settings, engine, plan, address, output, _now()):
        click.echo(str(path))


@digest.command("send")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and record nothing.")
@click.option("--to", "address", default=None,
              help="Send the next digest to this address only (a test send; not recorded).")
@click.option("--json", "as_json", is_flag=True,
              help="End with a JSON summary line (counts, seconds, event-loop lag).")
@click.option("--now", "now", is_flag=True,
              help="Send pending deliveries now, ignoring their retry backoff.")
@common_options
def digest_send(ctx: Context, dry_run: bool, address: str | None, as_json: bool,
                now: bool) -> None:
    """Create the next digest if anything is new, then send every pending delivery."""
    from postroom import outbox, subscribers
    from postroom.build import SiteBuilder
    from postroom.looplag import LoopLagProbe
    from postroom.newsletter import create_digest, plan_digest, sender_processes
    from postroom.preview import send_test
    from postroom.store import reading

    settings = ctx.settings()
    engine = open_database(settings)
    builder = SiteBuilder(settings)
    if dry_run or address:
        plan = plan_digest(settings, engine, builder, _now())
        if not plan.posts:
            ctx.say("nothing new: no digest would be created")
        elif address:
            import asyncio

            asyncio.run(send_test(settings, engine, plan, address, _now()))
            ctx.say(f"sent a test digest with {len(plan.posts)} post(s) to {address}")
        else:
            with reading(engine) as connection:
                active = subscribers.counts(connection)["active"]
            ctx.say(f"would create a digest of {len(plan.posts)} post(s) for {active} "
                    "subscriber(s):")
            for post in plan.posts:
                ctx.say(f"  {post.published:%Y-%m-%d}  {post.title}")
        return
    plan = create_digest(settings, engine, builder, _now())
    if plan.raced:
        ctx.say("another process created this digest just now; sending what is due")
    if now:
        moved = outbox.due_now(engine, _now())
        ctx.say(f"{moved} pending delivery(ies) made due now")
    started = time.monotonic()
    probe = LoopLagProbe()
    stats = _send_with_progress(settings, engine, ctx, probe)
    ctx.say(f"sent {stats.sent}, failed {stats.failed}, retried {stats.retried}"
            + (f", bounced {stats.bounced}" if stats.bounced else ""))
    if as_json:
        lag = probe.percentile(0.99)
        click.echo(json.dumps({
            "sent": stats.sent, "failed": stats.failed, "retried": stats.retried,
            "bounced": stats.bounced, "seconds": round(time.monotonic() - started, 3),
            "processes": sender_processes(settings),
            "loop_lag_p99_ms": None if lag is None else round(lag * 1000, 2),
        }))
    sys.exit(_send_exit_code(engine, stats))


def _send_exit_code(engine: Any, stats: SendStats) -> int:
    """3 if deliveries are left waiting for a retry (say what and when), 1 if some failed."""
    from postroom import outbox

    backlog = outbox.backlog(engine)
    if stats.retried and backlog.waiting:
        when = (f"{backlog.next_attempt.astimezone():%Y-%m-%d %H:%M:%S %Z}"
                if backlog.next_attempt else "later")
        click.echo(
            f"postroom: {backlog.waiting} delivery(ies) still to send, next attempt at {when}"
            f" (last error: {backlog.last_error}); `postroom run` sends them then, or "
            "`postroom digest send --now` once the mail server is back", err=True)
        return EXIT_UNAVAILABLE
    return EXIT_PROBLEMS if stats.failed else EXIT_OK


def _send_with_progress(settings: Settings, engine: Any, ctx: Context,
                        probe: LoopLagProbe | None = None) -> SendStats:
    import asyncio

    from postroom import outbox
    from postroom.newsletter import send_outbox
    from postroom.progress import send_progress

    pending = sum(d["pending"] + d["sending"] for d in outbox.status(engine))

    async def send(on_finish: Callable[[SendStats], None]) -> SendStats:
        probing = asyncio.create_task(probe.run()) if probe else None
        try:
            # From the command line, an unavailable database is waited for, then reported.
            return await send_outbox(settings, engine, _now, on_finish=on_finish,
                                     give_up_after=settings.database.give_up_after)
        finally:
            if probing:
                probing.cancel()

    with send_progress(pending, quiet=ctx.verbosity < 0) as on_finish:
        return asyncio.run(send(on_finish))


@digest.command("status")
@common_options
def digest_status(ctx: Context) -> None:
    """Show each digest with its pending, sent and failed deliveries."""
    from postroom import outbox

    engine = open_database(ctx.settings())
    rows = outbox.status(engine)
    if not rows:
        ctx.say("no digest yet")
    for row in rows:
        click.echo(
            f"digest {row['id']}  {row['created_at']:%Y-%m-%d %H:%M}  "
            f"pending {row['pending'] + row['sending']}  sent {row['sent']}  "
            f"failed {row['failed']}  {row['subject']}"
        )
        if row["next_attempt"] is not None and row["pending"]:
            click.echo(f"  next attempt {row['next_attempt'].astimezone():%Y-%m-%d %H:%M:%S}")
        if row["last_error"]:
            click.echo(f"  last error: {row['last_error']}")


@digest.command("retry")
@click.option("--digest", "digest_id", type=int, default=None, help="Only this digest.")
@common_options
def digest_retry(ctx: Context, digest_id: int | None) -> None:
    """Send failed deliveries again (to subscribers still active), and any pending ones."""
    from postroom import outbox

    settings = ctx.settings()
    engine = open_database(settings)
    again = outbox.retry_failed(engine, _now(), digest_id)
    ctx.say(f"{again} failed delivery(ies) queued again")
    stats = _send_with_progress(settings, engine, ctx)
    ctx.say(f"sent {stats.sent}, failed {stats.failed}, retried {stats.retried}")
    sys.exit(_send_exit_code(engine, stats))


# ---- the daemon -----------------------------------------------------------------------------


@main.command("run")
@click.option("--once", is_flag=True, help="Do one pass of everything due, then exit (cron).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines for people (text) or JSON lines for machines.")
@common_options
def run_command(ctx: Context, once: bool, log_format: str | None) -> None:
    """Run the daemon: rescan and rebuild feeds, send digests on schedule, serve the web app."""
    if log_format:
        setup_logging(ctx.verbosity, log_format)
    settings = ctx.settings()
    from postroom.daemon import run

    run(settings, find_config(ctx.config_path, os.environ), once=once)


@main.command("serve")
@click.option("--host", default=None, help="Address to listen on (default: web.host).")
@click.option("--port", type=int, default=None, help="Port (default: web.port).")
@common_options
def serve_command(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve only the web app (feeds and subscription pages), without the scheduler."""
    settings = ctx.settings()
    from postroom.daemon import serve

    serve(settings, host or settings.web.host, port if port is not None else settings.web.port)


if __name__ == "__main__":  # pragma: no cover
    main()
