"""Micro-benchmarks, in-process: postroom against a naive reference measured in the same run.

    .venv/bin/python bench/micro.py [--posts 10000] [--recipients 5000]

Not part of `make bench` (bench/run.py): bench/feeds.py measures the feeds against Hugo and
Pelican, bench/delivery.py the digests against Postfix's smtp-source.

1. Feeds for a synthetic collection: postroom's cold build, its rescan with nothing
   changed, and a naive script (python-frontmatter + markdown-it-py on every post + feedgen).
2. Digest messages: postroom's per-recipient bytes against building and serialising an
   EmailMessage per recipient.
Figures are wall-clock seconds (best of 3) and ratios; they depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import frontmatter
from feedgen.feed import FeedGenerator
from markdown_it import MarkdownIt

from postroom.build import SiteBuilder
from postroom.config import load_settings
from postroom.digest import DigestPost, compose_digest
from postroom.templates import template_environment

BODY = """Intro paragraph with *emphasis*, a [link](/posts/other/) and `code`.

## A heading

- one
- two

```python
print("hello")
```

""" * 4


def write_collection(folder: Path, count: int) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for i in range(count):
        day = start + timedelta(hours=i)
        text = (f"---\ntitle: Post number {i}\ndate: {day.isoformat()}\n"
                f"tags: [t{i % 20}, all]\n---\n\n{BODY}")
        (folder / f"{day:%Y-%m-%d}-post-{i}.md").write_text(text, encoding="utf-8")


def best_of(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def naive_feed(folder: Path) -> bytes:
    """The reference: parse and render every post, then feed the newest 20."""
    md = MarkdownIt("commonmark").enable("table")
    posts = []
    for path in sorted(folder.glob("*.md")):
        post = frontmatter.load(str(path))
        posts.append((post["date"], post["title"], md.render(post.content), path.stem))
    posts.sort(reverse=True)
    fg = FeedGenerator()
    fg.id("https://example.org/")
    fg.title("bench")
    fg.link(href="https://example.org/", rel="alternate")
    fg.description("bench")
    for date, title, html, slug in posts[:20]:
        fe = fg.add_entry()
        fe.id(f"https://example.org/{slug}")
        fe.title(title)
        fe.link(href=f"https://example.org/{slug}")
        fe.published(date)
        fe.content(html, type="html")
    return bytes(fg.rss_str())


def bench_feeds(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "posts").mkdir()
        write_collection(root / "posts", count)
        config = root / "postroom.toml"
        config.write_text('[site]\ntitle = "bench"\nbase_url = "https://example.org"\n'
                          '[site.author]\nname = "b"\n[feeds]\nper_tag = false\n')
        settings = load_settings(config, {})
        now = datetime.now(UTC)
        naive = best_of(3, lambda: naive_feed(root / "posts"))
        cold = best_of(3, lambda: SiteBuilder(settings).build(now))
        builder = SiteBuilder(settings)
        builder.build(now)
        warm = best_of(3, lambda: builder.build(now))
        print(f"feeds, {count} posts (best of 3):")
        print(f"  naive reference (render all + feedgen) {naive:8.3f} s")
        print(f"  postroom cold build                    {cold:8.3f} s   "
              f"{naive / cold:5.1f}x faster than the reference")
        print(f"  postroom rescan, nothing changed       {warm:8.3f} s   "
              f"{naive / warm:5.1f}x faster than the reference")


def bench_messages(recipients: int) -> None:
    settings = load_settings(None, {})
    environment = template_environment(None)
    posts = [DigestPost(f"tag:x,{i}", f"p{i}", f"Post {i} ✓", f"https://x.org/p{i}/",
                        "A summary of the post. " * 5, datetime.now(UTC)) for i in range(5)]
    prepared = compose_digest(environment, settings, posts)
    now = datetime.now(UTC)

    def ours() -> None:
        for i in range(recipients):
            link = f"https://x.org/unsubscribe/{i:020d}"
            prepared.for_recipient(f"r{i}@example.org", f"<{i}@x.org>", now, link, (link,))

    def reference() -> None:
        for i in range(recipients):
            link = f"https://x.org/unsubscribe/{i:020d}"
            message = EmailMessage()
            message["From"], message["To"] = "Site <n@x.org>", f"r{i}@example.org"
            message["Subject"], message["Message-ID"] = prepared.subject, f"<{i}@x.org>"
            message["List-Unsubscribe"] = f"<{link}>"
            message.set_content(prepared.text.replace("postroomRecipientLink7f3a9c", link))
            message.add_alternative(prepared.html, subtype="html")
            message.as_bytes()

    reference_s = best_of(3, reference)
    ours_s = best_of(3, ours)
    print(f"digest messages, {recipients} recipients (best of 3):")
    print(f"  EmailMessage per recipient (reference) {reference_s:8.3f} s   "
          f"{recipients / reference_s:8.0f} msg/s")
    print(f"  postroom per-recipient bytes           {ours_s:8.3f} s   "
          f"{recipients / ours_s:8.0f} msg/s   {reference_s / ours_s:5.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--recipients", type=int, default=5_000)
    args = parser.parse_args()
    bench_feeds(args.posts)
    bench_messages(args.recipients)


if __name__ == "__main__":
    main()
