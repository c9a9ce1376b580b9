"""`postroom run`: the scheduler, the web server and the signals, in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine

from postroom import optin, outbox
from postroom.build import BuildReport, SiteBuilder
from postroom.config import Settings, load_settings
from postroom.errors import OutputError, PostroomError
from postroom.looplag import LoopLagProbe
from postroom.newsletter import create_digest, open_database, send_outbox
from postroom.schedule import missed_slot, parse_schedule
from postroom.sender import SenderHealth
from postroom.store import daemon_lock, get_meta, secret_key, set_meta
from postroom.templates import template_environment
from postroom.transport import make_transport
from postroom.watch import watch_folder
from postroom.web import create_app
from postroom.web.server import run_loop, server_config
from postroom.web.state import Health, WebState
from postroom.websub import HubNotifier, pings_for

log = logging.getLogger(__name__)
LAST_DIGEST_KEY = "digest_last_run"
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        return None


class Rerunner:
    """Runs one action at a time on the loop; asked again while running, runs once more.

    Owned by the loop. Sends: the scheduled job, the web app's "mail was queued" and the
    digest job all come here, so two sends never overlap inside one daemon. Rebuilds: the
    scan interval, a post coming due and the posts folder's watcher.
    """

    def __init__(self, send: Callable[[], Awaitable[None]], name: str = "send") -> None:
        self.send, self.name = send, name
        self.task: asyncio.Task[None] | None = None
        self.again = False
        self.closed = False

    def kick(self) -> None:
        if self.closed:
            return
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.create_task(self._run(), name=self.name)

    async def run_now(self) -> None:
        """Kick, then wait for the send (and any re-run it asked for) to finish."""
        self.kick()
        if self.task is not None:
            await asyncio.shield(self.task)

    async def _run(self) -> None:
        while True:
            self.again = False
            try:
                await self.send()
            except Exception:
                log.exception("the %s failed", self.name)
            if not self.again or self.closed:
                return


class Daemon:
    """Everything `postroom run` keeps alive; the pieces are rebuilt whole on SIGHUP.

    Concurrency: the jobs are coroutines on one loop. What blocks runs elsewhere: the site
    builder (scans, renders, digest planning) only ever in its own single thread, so it is
    never used by two jobs at once; database calls in worker threads (`asyncio.to_thread`).
    """

    def __init__(self, settings: Settings, config_path: Path | None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.config_path, self.clock = config_path, clock
        self.health = Health(sender=SenderHealth(), loop_lag=LoopLagProbe())
        self.stopping = asyncio.Event()
        self.scheduler: AsyncIOScheduler | None = None
        self.builder_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="site-builder")
        self.sends = Rerunner(self._send, "send")
        self.rebuilds = Rerunner(self._rebuild, "rebuild")
        self.hub_pings = HubNotifier()  # tells the WebSub hub, in its own tasks
        self.changed_posts: set[Path] = set()  # told by the watcher, for the next rebuild
        self.watch_stop = asyncio.Event()  # set to stop (or, on reload, restart) watching
        self.jobs: set[asyncio.Task[Any]] = set()
        self.spawned: set[asyncio.Task[None]] = set()
        self.build_error: str | None = None  # the last rebuild's error, logged once
        self.post_problems: set[str] = set()  # the problems the last rebuild reported
        self.post_notices: set[str] = set()  # and its notices (kept IDs, posts gone)
        self._apply(*self._parts_blocking(settings, open_database(settings)))
        # Without digest.since, the first digest starts when postroom first saw the posts:
        # for a daemon that is its first start, so a post written after it is new.
        outbox.first_seen(self.engine, clock())

    def _parts_blocking(self, settings: Settings, engine: Engine) -> tuple[Any, ...]:
        """Build the parts that depend on the settings (at start, and on SIGHUP)."""
        trigger = parse_schedule(settings.digest.schedule, settings.site.zone)
        templates = template_environment(settings.templates_dir)
        builder = SiteBuilder.long_running(settings)
        web = WebState.create(settings, engine, templates, secret_key(engine),
                              make_transport(settings), self.health)
        return settings, engine, trigger, builder, web

    def _apply(self, settings: Settings, engine: Engine, trigger: Any, builder: SiteBuilder,
               web: WebState) -> None:
        # Only once every part is built: a config that fails half-way changes nothing.
        web.outbox_ready = self.sends.kick
        self.settings, self.engine, self.trigger = settings, engine, trigger
        self.builder, self.web = builder, web

    async def _in_builder_thread(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.builder_thread, function, *args)

    # ---- the jobs ---------------------------------------------------------------------

    async def rebuild(self) -> None:
        """Rescan the posts; rebuild the feeds if anything changed or a post came due."""
        await self.rebuilds.run_now()

    async def _rebuild(self) -> None:
        now = self.clock()
        changed, self.changed_posts = self.changed_posts, set()
        try:
            report, upcoming = await self._in_builder_thread(self._build_blocking,
                                                             self.builder, now, changed)
        except (PostroomError, OSError) as err:
            self._build_failed(err)
            return
        if report.written or report.removed:
            # Served before anything is said or the hub is told (a hub fetches the feeds
            # it is told of). A failure is the web app's to report: it refreshes each second.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.web.feeds.refresh)
        self._say_what_changed(report)
        self.health.last_build = now
        # Returns at once: the hub is told (and retried) in tasks of the notifier's own.
        self.hub_pings.publish(pings_for(self.settings, report.written))
        # A post dated in the future is published at its date, not at the next rescan.
        if upcoming and self.scheduler is not None and not self.stopping.is_set():
            self.scheduler.add_job(self._job(self.rebuild), "date", run_date=upcoming,
                                   id="publish", replace_existing=True)

    def _build_failed(self, err: PostroomError | OSError) -> None:
        # The feeds on disk are kept as they were (each file whole, also on a full disk);
        # say it once, not on every scan.
        if isinstance(err, OSError):
            err = OutputError.of(self.settings.output_dir, err)
        if str(err) != self.build_error:
            log.error("feeds not rebuilt: %s", err)
        self.build_error = str(err)

    def _say_what_changed(self, report: BuildReport) -> None:
        if self.build_error is not None:
            log.info("feeds rebuilt again after: %s", self.build_error)
            self.build_error = None
        # Each problem and note is said once, when it appears, not on every scan.
        problems = {str(p) for p in report.problems}
        for problem in sorted(problems - self.post_problems):
            log.warning("post problem: %s", problem)
        notices = {str(p) for p in report.notices}
        for notice in sorted(notices - self.post_notices):
            log.info("post note: %s", notice)
        self.post_problems, self.post_notices = problems, notices
        if report.written or report.removed:
            log.info("feeds rebuilt: %d published posts, %d file(s) written, %d removed",
                     report.published, len(report.written), len(report.removed))

    @staticmethod
    def _build_blocking(builder: SiteBuilder, now: datetime, changed: set[Path]
                        ) -> tuple[BuildReport, datetime | None]:
        # What the watcher saw change is looked at alone (and parsed, even where size and
        # mtime look the same); a rescan on the interval (nothing changed) walks it all.
        report = builder.build(now, changed=changed or None)
        scan = builder.last_scan
        upcoming = [p.published for p in (scan.posts if scan else [])
                    if not p.draft and p.published > now]
        return report, min(upcoming, default=None)

    async def digest(self) -> None:
        """Create the digest if anything is new, then send it."""
        now = self.clock()
        plan = await self._in_builder_thread(create_digest, self.settings, self.engine,
                                             self.builder, now)
        # Recorded once the digest exists: a failed creation is tried again after a restart.
        await asyncio.to_thread(self._record_digest_run, now)
        self.health.last_digest = now
        if plan.digest_id is not None:
            await self.sends.run_now()

    def _record_digest_run(self, now: datetime) -> None:
        with self.engine.begin() as connection:
            set_meta(connection, LAST_DIGEST_KEY, now.isoformat())

    async def send(self) -> None:
        """Send due deliveries (new ones and retries whose time has come)."""
        await self.sends.run_now()

    async def _send(self) -> None:
        if self.stopping.is_set():
            return
        stats = await send_outbox(self.settings, self.engine, self.clock,
                                  wait_for_retries=0.0, stopping=self.stopping,
                                  transport=self.web.transport, health=self.health.sender)
        self.health.last_send = self.clock()
        if stats.sent or stats.failed or stats.retried:
            log.info("deliveries: %d sent, %d failed, %d to retry",
                     stats.sent, stats.failed, stats.retried)

    async def expire(self) -> None:
        days = self.settings.web.confirm_expiry_days
        removed = await asyncio.to_thread(optin.expire_pending, self.engine, self.clock(), days)
        if removed:
            log.info("forgot %d subscription request(s) unconfirmed after %d days",
                     removed, days)

    def _job(self, job: Callable[[], Awaitable[None]]
             ) -> Callable[[], Coroutine[Any, Any, None]]:
        """Wrap a job: tracked while it runs (shutdown waits for it), failures logged once."""

        async def tracked() -> None:
            task = asyncio.current_task()
            assert task is not None
            self.jobs.add(task)
            try:
                await job()
            except Exception:
                log.exception("the %s job failed; it runs again at its next time", job.__name__)
            finally:
                self.jobs.discard(task)

        tracked.__name__ = job.__name__
        return tracked

    # ---- running ----------------------------------------------------------------------

    def _digest_is_overdue_blocking(self) -> bool:
        """Whether a digest slot passed while the daemon was down (first start: no)."""
        now = self.clock()
        with self.engine.begin() as connection:
            value = get_meta(connection, LAST_DIGEST_KEY)
            if value is None:
                set_meta(connection, LAST_DIGEST_KEY, now.isoformat())
                return False
        return missed_slot(self.trigger, datetime.fromisoformat(value), now)

    async def watch_posts(self) -> None:
        """Rebuild soon after the posts folder changes; where it cannot be watched, say so
        once and try again after a scan interval (the periodic scan still runs)."""
        failure: str | None = None
        while not self.stopping.is_set():
            settings, stop = self.settings, self.watch_stop
            try:
                await watch_folder(settings.posts_dir, self._posts_changed,
                                   quiet_seconds=settings.daemon.watch_debounce, stop=stop)
            except Exception as err:  # whatever the platform says: the scan is the fallback
                if str(err) != failure:
                    log.warning("not watching %s (%s): changes are seen at the next scan, "
                                "every %.0f s", settings.posts_dir, err,
                                settings.daemon.scan_interval)
                failure = str(err)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.daemon.scan_interval)
            else:
                failure = None
            if stop.is_set() and not self.stopping.is_set():
                self.watch_stop = asyncio.Event()  # a reload: watch the (new) folder

    def _posts_changed(self, paths: set[Path]) -> None:
        self.changed_posts |= paths
        self.rebuilds.kick()

    async def run_once(self) -> None:
        """Do one pass of everything due, then return (for cron)."""
        # The daemon's lock too: a cron pass next to a running daemon must not make a
        # second digest for the same slot.
        with daemon_lock(self.engine, "a postroom daemon is running on this database"):
            await self.rebuild()
            if await asyncio.to_thread(self._digest_is_overdue_blocking):
                await self.digest()
            await self.send()
            await self.expire()
            await self.hub_pings.aclose(self.settings.daemon.shutdown_grace)
        self.builder_thread.shutdown()

    async def run_forever(self) -> None:
        with daemon_lock(self.engine):
            self._install_signals()
            probing = asyncio.create_task(self.health.loop_lag.run(), name="loop-lag") \
                if self.health.loop_lag else None
            self.scheduler = self._start_scheduler()
            overdue = await asyncio.to_thread(self._digest_is_overdue_blocking)
            server = self._server()
            serving = asyncio.create_task(server.serve(), name="web")
            watching = asyncio.create_task(self.watch_posts(), name="watch") \
                if self.settings.daemon.watch else None
            self._say_where()
            if overdue:
                log.info("a digest was due while postroom was stopped: running it now")
                self._spawn(self._job(self.digest)(), "overdue-digest")
            await self.stopping.wait()
            self.watch_stop.set()
            # The hub's requests in flight share the grace period with the jobs.
            hub_by = asyncio.get_running_loop().time() + self.settings.daemon.shutdown_grace
            await self._stop_jobs()
            await self.hub_pings.aclose(hub_by - asyncio.get_running_loop().time())
            server.should_exit = True
            await serving
            if watching:
                await watching
            if probing:
                probing.cancel()
            await self._in_builder_thread(self.builder.collection.save)
        self.builder_thread.shutdown()
        log.info("stopped")

    def _say_where(self) -> None:
        """One line at start: where it listens, what it reads, when the digest goes."""
        settings, job = self.settings, self.scheduler.get_job("digest") if self.scheduler else None
        upcoming = job.next_run_time if job is not None else None
        log.info("postroom running: web on http://%s:%d, posts in %s, database %s, next digest "
                 "%s", settings.web.host, settings.web.port, settings.posts_dir,
                 self.engine.url.render_as_string(hide_password=True),
                 f"{upcoming:%Y-%m-%d %H:%M %Z}" if upcoming else "not scheduled")

    async def _stop_jobs(self) -> None:
        """Take no new work; give running jobs (and their sends) the grace period; then
        cancel what is left, which hands in-flight deliveries back."""
        grace = self.settings.daemon.shutdown_grace
        log.info("stopping: no new work; in-flight sends have %.0f s", grace)
        assert self.scheduler is not None
        self.scheduler.pause()
        self.sends.closed = self.rebuilds.closed = True
        running = set(self.jobs)
        for runner in (self.sends, self.rebuilds):
            if runner.task is not None and not runner.task.done():
                running.add(runner.task)
        if running:
            _done, late = await asyncio.wait(running, timeout=grace)
            if late:
                log.warning("grace period over: handing in-flight deliveries back to pending")
                for task in late:
                    task.cancel()
                await asyncio.wait(late)
        self.scheduler.shutdown(wait=False)

    def _start_scheduler(self) -> AsyncIOScheduler:
        daemon = self.settings.daemon
        scheduler = AsyncIOScheduler(timezone=self.settings.site.zone)
        defaults = dict(max_instances=1, coalesce=True, misfire_grace_time=None)
        start = self.clock()
        scheduler.add_job(self._job(self.rebuild), "interval", seconds=daemon.scan_interval,
                          next_run_time=start, id="rebuild", **defaults)
        scheduler.add_job(self._job(self.digest), self.trigger, id="digest", **defaults)
        scheduler.add_job(self._job(self.send), "interval", seconds=daemon.retry_interval,
                          next_run_time=start + timedelta(seconds=1), id="send", **defaults)
        scheduler.add_job(self._job(self.expire), "interval", hours=1, next_run_time=start,
                          id="expire", **defaults)
        scheduler.start()
        self.health.scheduler_running = lambda: scheduler.running
        return scheduler

    def _server(self) -> QuietServer:
        web = self.settings.web
        self._app = create_app(self.web)
        return QuietServer(server_config(self._app, web, web.host, web.port))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self._spawn(self._job(self.reload)(), "reload"))

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Start a job outside the scheduler, keeping a reference until it ends."""
        task = asyncio.create_task(job, name=name)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)

    async def reload(self) -> None:
        """SIGHUP: re-read the config and templates; a bad new config keeps the old one."""
        try:
            parts = await asyncio.to_thread(self._reload_blocking)
        except PostroomError as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        self._apply(*parts)
        self.watch_stop.set()  # the watcher starts again on the new posts folder
        assert self.scheduler is not None
        self.scheduler.reschedule_job("digest", trigger=self.trigger)
        # The running app reads its state per request, so swapping it is enough.
        self._app.state.postroom = self.web
        log.info("configuration and templates reloaded from %s",
                 self.config_path or "built-in defaults")

    def _reload_blocking(self) -> tuple[Any, ...]:
        settings = load_settings(self.config_path)
        engine = self.engine if settings.database_url == self.settings.database_url \
            else open_database(settings)
        return self._parts_blocking(settings, engine)


def run(settings: Settings, config_path: Path | None, once: bool) -> None:
    """Run the daemon (or one pass of it) until SIGTERM/SIGINT."""

    async def main() -> None:
        daemon = Daemon(settings, config_path)
        if once:
            await daemon.run_once()
        else:
            await daemon.run_forever()

    run_loop(main())



def send_queued_mail(state: WebState, stopping: asyncio.Event) -> Rerunner:
    """Wire a web app without a daemon so the mail its pages queue is sent at once."""

    async def send() -> None:
        await send_outbox(state.settings, state.engine, utc_now, wait_for_retries=0.0,
                          stopping=stopping, transport=state.transport)

    sends = Rerunner(send, "send")
    state.outbox_ready = sends.kick
    return sends


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the web app alone (feeds and pages); the feeds are whatever `build` wrote.

    Mail the pages queue (confirmations) is sent from here too, as soon as it is queued.
    """
    engine = open_database(settings)
    state = WebState.create(settings, engine, template_environment(settings.templates_dir),
                            secret_key(engine), make_transport(settings))
    server = QuietServer(server_config(create_app(state), settings.web, host, port))

    async def main() -> None:
        stopping = asyncio.Event()
        sends = send_queued_mail(state, stopping)
        # Our own handlers, so SIGTERM is a clean stop with exit code 0.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        serving = asyncio.create_task(server.serve(), name="web")
        log.info("postroom serving: web on http://%s:%d, feeds from %s, database %s", host, port,
                 settings.output_dir, engine.url.render_as_string(hide_password=True))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
        stopping.set()
        sends.closed = True
        if sends.task is not None:
            await asyncio.wait({sends.task}, timeout=settings.daemon.shutdown_grace)
        server.should_exit = True
        await serving

    run_loop(main())
