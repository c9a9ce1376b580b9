"""`postroom run`: the scheduler, the web server and the signals, in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine

from postroom import optin, outbox
from postroom.build import SiteBuilder
from postroom.config import Settings, load_settings
from postroom.errors import PostroomError, StoreError
from postroom.newsletter import create_digest, make_transport, open_database, send_outbox
from postroom.schedule import missed_slot, parse_schedule
from postroom.store import get_meta, process_lock, secret_key, set_meta
from postroom.templates import template_environment
from postroom.web import create_app
from postroom.web.state import Health, WebState

log = logging.getLogger(__name__)
LAST_DIGEST_KEY = "digest_last_run"


def utc_now() -> datetime:
    return datetime.now(UTC)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        return None


class Daemon:
    """Everything `postroom run` keeps alive; the pieces are rebuilt whole on SIGHUP."""

    def __init__(self, settings: Settings, config_path: Path | None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.config_path, self.clock = config_path, clock
        self.health = Health()
        self.stopping = asyncio.Event()
        self.sending: asyncio.Task[Any] | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._apply(settings, open_database(settings))
        # Without digest.since, the first digest starts when postroom first saw the posts:
        # for a daemon that is its first start, so a post written after it is new.
        outbox.first_seen(self.engine, clock())

    def _apply(self, settings: Settings, engine: Engine) -> None:
        """Build the parts that depend on the settings (at start, and on SIGHUP)."""
        trigger = parse_schedule(settings.digest.schedule, settings.site.zone)
        templates = template_environment(settings.templates_dir)
        builder = SiteBuilder(settings)
        web = WebState.create(settings, engine, templates, secret_key(engine),
                              make_transport(settings), self.health)
        # Only once every part is built: a config that fails half-way changes nothing.
        self.settings, self.engine, self.trigger = settings, engine, trigger
        self.builder, self.web = builder, web

    # ---- the jobs ---------------------------------------------------------------------

    async def rebuild(self) -> None:
        """Rescan the posts; rebuild the feeds if anything changed or a post came due."""
        now = self.clock()
        report = await asyncio.to_thread(self.builder.build, now)
        self.health.last_build = now
        for problem in report.problems:
            log.warning("post problem: %s", problem)
        if report.written or report.removed:
            log.info("feeds rebuilt: %d published posts, %d file(s) written, %d removed",
                     report.published, len(report.written), len(report.removed))
        self._schedule_next_publication(now)

    def _schedule_next_publication(self, now: datetime) -> None:
        # A post dated in the future is published at its date, not at the next rescan.
        scan = self.builder.last_scan
        upcoming = [p.published for p in (scan.posts if scan else [])
                    if not p.draft and p.published > now]
        if upcoming and self.scheduler is not None:
            self.scheduler.add_job(self.rebuild, "date", run_date=min(upcoming),
                                   id="publish", replace_existing=True)

    async def digest(self) -> None:
        """Create the digest if anything is new, then send it."""
        now = self.clock()
        plan = await asyncio.to_thread(create_digest, self.settings, self.engine,
                                       self.builder, now)
        # Recorded once the digest exists: a failed creation is tried again after a restart.
        await asyncio.to_thread(self._record_digest_run, now)
        self.health.last_digest = now
        if plan.digest_id is not None:
            await self.send()

    def _record_digest_run(self, now: datetime) -> None:
        with self.engine.begin() as connection:
            set_meta(connection, LAST_DIGEST_KEY, now.isoformat())

    async def send(self) -> None:
        """Send due deliveries (new ones and retries whose time has come)."""
        if self.stopping.is_set() or (self.sending and not self.sending.done()):
            return
        self.sending = asyncio.current_task()
        try:
            stats = await send_outbox(self.settings, self.engine, self.clock,
                                      wait_for_retries=0.0, stopping=self.stopping,
                                      transport=self.web.transport)
        except StoreError as err:
            log.warning("send skipped: %s", err)
            return
        if stats.sent or stats.failed or stats.retried:
            log.info("deliveries: %d sent, %d failed, %d to retry",
                     stats.sent, stats.failed, stats.retried)

    async def expire(self) -> None:
        days = self.settings.web.confirm_expiry_days
        removed = await asyncio.to_thread(optin.expire_pending, self.engine, self.clock(), days)
        if removed:
            log.info("forgot %d subscription request(s) unconfirmed after %d days",
                     removed, days)

    # ---- running ----------------------------------------------------------------------

    def digest_is_overdue(self) -> bool:
        """Whether a digest slot passed while the daemon was down (first start: no)."""
        now = self.clock()
        with self.engine.begin() as connection:
            value = get_meta(connection, LAST_DIGEST_KEY)
            if value is None:
                set_meta(connection, LAST_DIGEST_KEY, now.isoformat())
                return False
        return missed_slot(self.trigger, datetime.fromisoformat(value), now)

    async def run_once(self) -> None:
        """Do one pass of everything due, then return (for cron)."""
        # The daemon's lock too: a cron pass next to a running daemon must not make a
        # second digest for the same slot.
        with process_lock(self.engine, "daemon",
                          "a postroom daemon is running on this database"):
            await self.rebuild()
            if self.digest_is_overdue():
                await self.digest()
            await self.send()
            await self.expire()

    async def run_forever(self) -> None:
        with process_lock(self.engine, "daemon",
                          "another postroom daemon is running on this database"):
            self._install_signals()
            self.scheduler = self._start_scheduler()
            overdue = self.digest_is_overdue()
            server = self._server()
            serving = asyncio.create_task(server.serve())
            if overdue:
                log.info("a digest was due while postroom was stopped: running it now")
                self._overdue = asyncio.create_task(self.digest())
            await self.stopping.wait()
            log.info("stopping: no new work; in-flight sends have %.0f s",
                     self.settings.daemon.shutdown_grace)
            self.scheduler.shutdown(wait=False)
            await self._finish_sending()
            server.should_exit = True
            await serving
        log.info("stopped")

    def _start_scheduler(self) -> AsyncIOScheduler:
        daemon = self.settings.daemon
        scheduler = AsyncIOScheduler(timezone=self.settings.site.zone)
        defaults = dict(max_instances=1, coalesce=True, misfire_grace_time=None)
        start = self.clock()
        scheduler.add_job(self.rebuild, "interval", seconds=daemon.scan_interval,
                          next_run_time=start, id="rebuild", **defaults)
        scheduler.add_job(self.digest, self.trigger, id="digest", **defaults)
        scheduler.add_job(self.send, "interval", seconds=daemon.retry_interval,
                          next_run_time=start + timedelta(seconds=1), id="send", **defaults)
        scheduler.add_job(self.expire, "interval", hours=1, next_run_time=start, id="expire",
                          **defaults)
        scheduler.start()
        self.health.scheduler_running = lambda: scheduler.running
        return scheduler

    def _server(self) -> QuietServer:
        web = self.settings.web
        self._app = create_app(self.web)
        config = uvicorn.Config(
            self._app, host=web.host, port=web.port, log_level="warning",
            proxy_headers=bool(web.trusted_proxies),
            forwarded_allow_ips=list(web.trusted_proxies) or None, access_log=False,
        )
        return QuietServer(config)

    async def _finish_sending(self) -> None:
        task = self.sending
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.settings.daemon.shutdown_grace)
        except TimeoutError:
            log.warning("grace period over: handing in-flight deliveries back to pending")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: re-read the config and templates; a bad new config keeps the old one."""
        try:
            settings = load_settings(self.config_path)
            engine = self.engine if settings.database_url == self.settings.database_url \
                else open_database(settings)
            self._apply(settings, engine)
        except PostroomError as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        assert self.scheduler is not None
        self.scheduler.reschedule_job("digest", trigger=self.trigger)
        # The running app reads its state per request, so swapping it is enough.
        self._app.state.postroom = self.web
        log.info("configuration and templates reloaded from %s",
                 self.config_path or "built-in defaults")


def run(settings: Settings, config_path: Path | None, once: bool) -> None:
    """Run the daemon (or one pass of it) until SIGTERM/SIGINT."""

    async def main() -> None:
        daemon = Daemon(settings, config_path)
        if once:
            await daemon.run_once()
        else:
            await daemon.run_forever()

    asyncio.run(main())



def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the web app alone (feeds and pages); the feeds are whatever `build` wrote."""
    engine = open_database(settings)
    state = WebState.create(settings, engine, template_environment(settings.templates_dir),
                            secret_key(engine), make_transport(settings))
    web = settings.web
    server = QuietServer(uvicorn.Config(
        create_app(state), host=host, port=port, log_level="warning",
        proxy_headers=bool(web.trusted_proxies),
        forwarded_allow_ips=list(web.trusted_proxies) or None, access_log=False,
    ))

    async def main() -> None:
        # Our own handlers, so SIGTERM is a clean stop with exit code 0.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        await server.serve()

    asyncio.run(main())
