"""A full disk, on a real size-limited tmpfs the test mounts (disks.py; skipped, with the
reason, where the machine allows no mount):

- while `postroom digest send` sends: the database's disk fills up mid-send. The command
  retries for `database.give_up_after` seconds, then exits 3 with a message naming the
  database and the error; once space is freed, the next `digest send` finishes the digest:
  missed 0, duplicates within the README's bound (200 per sending process that stopped
  without recording its outcomes), every delivery recorded.
- while feeds are written: the output folder's disk cannot hold the new feeds. `postroom
  build` exits 3 naming the folder and leaves every feed file whole — byte-identical when no
  new file fitted, else each the old file or the whole new one — with no temporary file
  left; the build after space is freed writes them all. The daemon says so once, serves
  the old feeds meanwhile, and rebuilds at its next scan once there is room again.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from disks import MountRefused, fill, free_space, tmpfs
from killing import wait_until
from lxml import etree

from conftest import Figures
from daemonproc import DaemonSite, utc_now
from mailserver import MailServer
from mailsite import MailSite, start_postroom
from postroom.sender import FLUSH_EVERY
from sites import NOW, Site, run_postroom, write_post_file

pytestmark = pytest.mark.slow

GIVE_UP_AFTER = 0.5  # database.give_up_after for the sends here (the default is 120 s)


# ---- while sending -------------------------------------------------------------------

def send_until_the_disk_fills(site: MailSite, server: MailServer, disk: Path, fill_at: int,
                              log: Path) -> tuple[int, int, str]:
    """Start `postroom digest send`, fill the database's disk once the server has accepted
    `fill_at` messages, free it once the command ended; return (exit code, messages
    accepted when the disk was full, the command's output)."""
    process = start_postroom("digest", "send", "--config", str(site.config), cwd=site.root,
                             output=log)
    try:
        wait_until(lambda: server.count() >= fill_at or process.poll() is not None, 60,
                   f"{fill_at} messages accepted")
        ballast = fill(disk)
        accepted = server.count()
        code = process.wait(60 + GIVE_UP_AFTER * 4)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    ballast.unlink()
    return code, accepted, log.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("readers_count, rounds", [
    pytest.param(600, 1, id="600x1"),
    pytest.param(3000, 3, id="3000x3", marks=pytest.mark.long),
])
def test_the_disk_fills_while_a_digest_is_sent(tmp_path: Path, figures: Figures,
                                               rng: random.Random, readers_count: int,
                                               rounds: int) -> None:
    case = f"disk full while sending to {readers_count:,} (×{rounds}), space freed, sent again"
    readers = [f"reader{n:05d}@example.org" for n in range(readers_count)]
    runs: list[tuple[int, int, str]] = []
    try:
        with tmpfs(tmp_path / "disk", "8m") as disk, MailServer(delay=0.004) as server:
            site = MailSite.create(tmp_path / "site", smtp_port=server.port, database={
                "url": f"sqlite:///{disk / 'postroom.db'}", "give_up_after": GIVE_UP_AFTER})
            site.add_subscribers(readers)
            site.write_post("news", "News")
            assert site.create_digest().recipients == readers_count
            # Closed: each command starts its own write-ahead log, which must grow to record.
            site.engine.dispose()
            for number in range(rounds):
                fill_at = server.count() + rng.randrange(50, readers_count // (rounds + 1))
                runs.append(send_until_the_disk_fills(site, server, disk, fill_at,
                                                      tmp_path / f"send-{number + 1}.log"))
            server.delay = 0.0
            final = run_postroom("digest", "send", "--config", str(site.config),
                                 cwd=site.root, timeout=120)
            statuses = Counter(row.status for row in site.deliveries())
            site.engine.dispose()
            received = server.per_recipient()
    except MountRefused as refused:
        figures.skip(case, f"no tmpfs for the database's disk: {refused}")

    messages = [output.strip().splitlines()[-1] if output.strip() else "" for *_, output
                in runs]
    clear = [code == 3 and message.startswith("postroom: gave up sending")
             and "full" in message and str(tmp_path / "disk") in message
             and "Traceback" not in output
             for (code, _, output), message in zip(runs, messages, strict=True)]
    figures.record(f"{case}: exit code", ", ".join(str(code) for code, *_ in runs),
                   "3 each; the message names the database and the full disk; no traceback",
                   all(clear), f"filled after {[accepted for _, accepted, _ in runs]} "
                   f"accepted; {messages[0][:230]}")
    missed = sum(1 for reader in readers if received[reader] == 0)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    recorded = statuses == Counter({"sent": readers_count})
    figures.record(f"{case}: missed", missed, "0, every delivery recorded sent",
                   missed == 0 and recorded and final.returncode == 0
                   and "Traceback" not in final.stderr,
                   f"deliveries {dict(statuses)}; the last send exited {final.returncode}"
                   f"{'' if final.returncode == 0 else ': ' + final.stderr[-200:]}")
    bound = rounds * FLUSH_EVERY
    figures.record(f"{case}: duplicates", duplicates,
                   f"≤ {bound} ({FLUSH_EVERY} per send that gave up)", duplicates <= bound,
                   "each copy with the same Message-ID")
    figures.assert_held()


# ---- while writing feeds -------------------------------------------------------------

def feed_files(output: Path) -> dict[str, bytes]:
    return {p.relative_to(output).as_posix(): p.read_bytes()
            for p in sorted(output.rglob("*")) if p.is_file()}


def whole(name: str, data: bytes) -> bool:
    """Whether a feed file parses as a whole (XML, JSON for .json; an HTML page ends with
    its </html>, the <head> snippet with a whole <link> line)."""
    if name.endswith(".html"):
        lines = data.decode("utf-8", "replace").splitlines()
        if name == "feeds-head.html":
            return bool(lines) and all(ln.startswith("<link ") and ln.endswith(">")
                                       for ln in lines)
        return data.rstrip().endswith(b"</html>")
    try:
        if name.endswith(".json"):
            json.loads(data)
        else:
            etree.fromstring(data)
    except (ValueError, etree.XMLSyntaxError):
        return False
    return True


def temporary(names: Iterable[str]) -> list[str]:
    return [name for name in names if name.endswith(".tmp")]


def write_posts(site: Site, posts: int, paragraphs: int) -> None:
    """Write the posts, in five tags, each `paragraphs` paragraphs long."""
    for i in range(posts):
        write_post_file(site.posts, f"p{i:03d}", f"Post {i}", NOW - timedelta(hours=i + 1),
                        "Some words in a paragraph of this post.\n\n" * paragraphs,
                        tags=[f"t{i % 5}"])


def build(site: Site) -> subprocess.CompletedProcess[str]:
    return run_postroom("build", "--config", str(site.config_path), cwd=site.root)


def pages(sizes: Iterable[int]) -> int:
    """Return the 4 KiB pages files of these sizes take on a tmpfs."""
    return sum(-(-size // 4096) for size in sizes)


def test_the_disk_fills_while_feeds_are_built(tmp_path: Path, figures: Figures) -> None:
    case = "disk full while `postroom build` writes the feeds"
    site = Site(tmp_path / "site")
    site.posts.mkdir(parents=True)
    output = site.root / "disk" / "public"
    try:
        with tmpfs(site.root / "disk", "1m") as disk:
            site.configure(site={"title": "Blog before"}, paths={"output": "disk/public"})
            write_posts(site, 30, 5)
            first = build(site)
            assert first.returncode == 0, first.stderr
            old = feed_files(output)
            # Every feed changes, and grows: the build has the whole folder to replace.
            site.configure(site={"title": "Blog after"}, paths={"output": "disk/public"})
            write_posts(site, 30, 15)
            new = site.build(NOW, write=False).feeds
            ballast = fill(disk)
            no_room = build(site)
            after_no_room = feed_files(output)
            # Room for the biggest new file and half the growth: some files are replaced,
            # then the disk is full.
            growth = pages(map(len, new.values())) - pages(map(len, old.values()))
            room = 4096 * (max(pages([len(data)]) for data in new.values()) + growth // 2)
            os.truncate(ballast, max(ballast.stat().st_size - room, 0))
            some_room = build(site)
            after_some_room = feed_files(output)
            ballast.unlink()
            room_left = free_space(disk)
            freed = build(site)
            final = feed_files(output)
    except MountRefused as refused:
        figures.skip(case, f"no tmpfs for the output folder: {refused}")

    message = no_room.stderr.strip().splitlines()[-1:] or [""]
    clean = all("Traceback" not in run.stdout + run.stderr for run in (no_room, some_room))
    figures.record(f"{case}: exit code", f"{no_room.returncode}, {some_room.returncode}",
                   "3 (storage unavailable), the folder named, no traceback",
                   no_room.returncode == some_room.returncode == 3 and clean
                   and message[0].startswith(f"postroom: {output}: cannot write the feeds"),
                   message[0][:200])
    changed = [name for name, data in old.items() if after_no_room.get(name) != data]
    figures.record(f"{case}, no room at all: feed files not byte-identical to before",
                   len(changed), "0", not changed and set(after_no_room) == set(old),
                   f"{len(old)} files; {changed[:3]}")
    torn = [name for name, data in after_some_room.items() if not name.endswith(".tmp")
            and data != old.get(name) and data != new.get(name)]
    replaced = sum(1 for name, data in after_some_room.items()
                   if data != old.get(name) and data == new.get(name))
    missing = set(old) - set(after_some_room)
    figures.record(f"{case}, room for some: feed files torn or missing",
                   len(torn) + len(missing), "0",
                   not torn and not missing and 0 < replaced < len(new),
                   f"{replaced} of {len(new)} replaced by their whole new version, the rest "
                   f"byte-identical{'; ' + str(torn[:3]) if torn else ''}")
    litter = temporary(after_no_room) + temporary(after_some_room) + temporary(final)
    figures.record(f"{case}: temporary files left", len(litter), "0", not litter,
                   str(litter[:3]) if litter else "")
    renewed = [name for name, data in new.items() if final.get(name) == data and whole(name, data)]
    figures.record(f"{case}: the build after space is freed", f"exit {freed.returncode}",
                   "exit 0, every file new and whole",
                   freed.returncode == 0 and len(renewed) == len(new),
                   f"{len(renewed)} of {len(new)} files new; {room_left // 1024} KiB free "
                   "before it")
    figures.assert_held()


def feed_body(site: DaemonSite, path: str) -> bytes:
    response = httpx.get(site.url(path), timeout=5)
    assert response.status_code == 200, f"{path}: {response.status_code}"
    return response.content


def test_the_disk_fills_while_the_daemon_rebuilds_feeds(tmp_path: Path,
                                                        figures: Figures) -> None:
    case = "disk full while `postroom run` rebuilds the feeds"
    root = tmp_path / "site"
    try:
        with tmpfs(root / "disk", "1m") as disk, MailServer() as sink, DaemonSite.create(
                root, smtp_port=sink.port, paths={"output": "disk/public"},
                daemon={"scan_interval": 0.2}) as site:
            for n in range(20):
                site.write_post(f"post-{n}", f"Post {n}", utc_now() - timedelta(hours=n + 1),
                                tags=(f"t{n % 4}",))
            output = disk / "public"
            daemon = site.start("run")
            daemon.wait_healthy()
            # The manifest is written last: the first build is whole once it is there.
            wait_until(lambda: (output / ".postroom-manifest.json").exists(), 20,
                       "the first build", interval=0.01)
            old = feed_files(output)
            ballast = fill(disk)
            site.write_post("fresh", "Fresh news")
            assert daemon.wait_for_log(r"feeds not rebuilt: ", timeout=20), daemon.log()
            # Each failed rebuild makes a temporary file beside the feeds and removes it,
            # which changes the folder: wait for three more failed scans.
            stamps = [output.stat().st_mtime_ns]

            def another_scan() -> bool:
                if (stamp := output.stat().st_mtime_ns) != stamps[-1]:
                    stamps.append(stamp)
                return len(stamps) > 6  # each failure changes the folder twice
            wait_until(another_scan, 20, "three more rebuild attempts")
            served = {path: feed_body(site, path) for path in ("/feed.atom", "/feed.json")}
            # A rebuild that is failing right now has its temporary file open for a moment:
            # what is left behind is judged once the daemon has stopped.
            while_full = {name: data for name, data in feed_files(output).items()
                          if not name.endswith(".tmp")}
            failures = len(daemon.log().split("feeds not rebuilt: ")) - 1
            ballast.unlink()
            freed = time.monotonic()
            recovered = daemon.wait_for_log(r"feeds rebuilt again after: ", timeout=20)
            on_disk = b"Fresh news" in (output / "feed.atom").read_bytes()
            # The web app may read the new files a moment after the build wrote them.
            deadline = freed + 20
            while not (fresh := b"Fresh news" in feed_body(site, "/feed.atom")) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            served_after = time.monotonic() - freed
            stopped = daemon.stop()
            log = daemon.log()
            left = temporary(feed_files(output))
    except MountRefused as refused:
        figures.skip(case, f"no tmpfs for the output folder: {refused}")

    error = next((line for line in log.splitlines() if "feeds not rebuilt" in line), "")
    figures.record(f"{case}: failures logged", failures,
                   "1 (said once), names the folder, no traceback",
                   failures == 1 and "Traceback" not in log and str(output) in error,
                   f"over ≥ 3 failed scans; {error.split('ERROR', 1)[-1].strip()[:160]}")
    same = all(served[path] == old[path.lstrip("/")] for path in served)
    figures.record(f"{case}: old feeds served while full", "yes" if same else "no",
                   "yes (200, byte-identical)", same and while_full == old,
                   "" if while_full == old else
                   f"files differ: {sorted(set(while_full) ^ set(old))[:3]}")
    figures.record(f"{case}: temporary files left", len(left), "0", not left, str(left[:3]))
    figures.record(f"{case}: rebuilt at the next scan after space is freed",
                   "yes" if recovered and fresh else "no", "yes, daemon exit 0",
                   recovered and fresh and stopped == 0,
                   f"logged: {recovered}; new post on disk: {on_disk}, served: {fresh} "
                   f"{served_after:.1f} s after space was freed; daemon exit {stopped}")
    figures.assert_held()
