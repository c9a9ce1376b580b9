"""The synthetic blog of bench/feeds.py: N posts, written once for each tool that builds it.

Every post has a title, a date, a summary, one to three tags from a pool of 20 and a body
of 2–4 KB of Markdown (headings, lists, code, links, emphasis, a quote). The same posts,
the same bodies, go into three site folders:

    postroom/  postroom.toml, posts/YYYY-MM-DD-slug.md (YAML front matter)
    hugo/      config.toml, layouts/index.rss.xml, content/posts/YYYY-MM-DD-slug.md (the
               same files as postroom's: Hugo reads the same YAML front matter)
    pelican/   pelicanconf.py, content/posts/YYYY-MM-DD-slug.md (Pelican's Markdown reader
               takes `Key: value` metadata, so only the header is written differently)

Each tool is set up to write only its feeds of the newest 50 posts with their full HTML,
and as little else as it can be told to: that is the fairest "feeds only" reference.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

FEED_ENTRIES = 50
SITE_TITLE = "Bench blog"
BASE_URL = "https://blog.bench.example"
NEWEST = datetime(2025, 11, 30, 12, 0, tzinfo=UTC)
SPACING = timedelta(hours=7)  # 10,000 posts go back about eight years
TAGS = ("python", "rust", "go", "web", "databases", "linux", "networking", "testing",
        "performance", "security", "devops", "javascript", "css", "design", "music", "books",
        "notes", "tools", "cloud", "data")
_WORD_TEXT = """the a of to and in that is for it with as on be this by are from at or an which
not have has can will more one all but also when there their them these some other into
than then only so what about time would like make each over out how most any such first
new way well may used just very many where after should through because while both much
even same does here between those before under since around without again later value
program server request query index cache thread memory compiler function module package
feed parser build release version deploy branch commit review test benchmark profile
latency throughput socket buffer schema migration table column row record stream file
folder path config setting option flag error warning log metric trace span queue worker
pool lock mutex channel future promise loop event signal handler route endpoint client
header cookie session token secret key hash digest signature certificate network packet
"""
WORDS = _WORD_TEXT.split()
LANGUAGES = ("python", "rust", "go", "sh", "sql")


@dataclass(frozen=True)
class SyntheticPost:
    """One post of the corpus, as data; each tool's file is written from it."""

    number: int  # 0 is the newest
    slug: str
    title: str
    published: datetime
    summary: str
    tags: tuple[str, ...]
    body: str

    @property
    def filename(self) -> str:
        return f"{self.published:%Y-%m-%d}-{self.slug}.md"


def synthetic_posts(count: int, seed: int = 9) -> Iterator[SyntheticPost]:
    """Yield `count` posts, newest first; the same count and seed give the same posts."""
    rng = random.Random(seed * 1_000_003 + count)
    for number in range(count):
        words = rng.sample(WORDS[40:], 3)
        slug = f"{words[0]}-{words[1]}-{number:05d}"
        topic = rng.choice(TAGS)
        title = f"{words[0].capitalize()} {words[1]} and {words[2]} in {topic.capitalize()}"
        if number % 10 == 3:
            title += f": notes & questions, part {number % 7 + 1}"
        tags = tuple(sorted({topic, *rng.sample(TAGS, rng.randint(0, 2))}))
        yield SyntheticPost(
            number=number, slug=slug, title=title, published=NEWEST - number * SPACING,
            summary=_sentence(rng, 22, 30), tags=tags,
            body=_body(rng, number, count, rng.randint(2048, 4096)))


def _sentence(rng: random.Random, least: int, most: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(least, most))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, number: int, count: int) -> str:
    sentences = [_sentence(rng, 8, 18) for _ in range(rng.randint(2, 4))]
    word = rng.choice(WORDS[40:])
    other = rng.randrange(count)
    sentences.insert(1, f"See *{word}* in [an earlier post](/posts/{word}-{other:05d}/) "
                        f"and the `{word}()` call, or [the reference](https://docs.example.org/"
                        f"{word}/#{number}).")
    return " ".join(sentences)


def _code(rng: random.Random) -> str:
    language = rng.choice(LANGUAGES)
    lines = []
    for i in range(rng.randint(5, 12)):
        a, b = rng.choice(WORDS[40:]), rng.choice(WORDS[40:])
        lines.append(f"{'    ' * (i % 3 != 0)}{a}_{i} = {b}(\"{a}\", {i * 7}) # {b} <{a}> & co")
    return f"```{language}\n" + "\n".join(lines) + "\n```"


def _body(rng: random.Random, number: int, count: int, size: int) -> str:
    blocks = [_paragraph(rng, number, count)]
    while sum(len(b) for b in blocks) < size:
        kind = rng.randrange(6)
        if kind == 0:
            blocks.append(f"## {_sentence(rng, 2, 5).rstrip('.')}")
            blocks.append(_paragraph(rng, number, count))
        elif kind == 1:
            blocks.append("\n".join(f"- {_sentence(rng, 3, 9)} `{rng.choice(WORDS)}`"
                                    for _ in range(rng.randint(3, 6))))
        elif kind == 2:
            blocks.append("\n".join(f"{i}. {_sentence(rng, 4, 10)}"
                                    for i in range(1, rng.randint(3, 5) + 1)))
        elif kind == 3:
            blocks.append(_code(rng))
        elif kind == 4:
            blocks.append(f"> {_sentence(rng, 10, 20)} **{rng.choice(WORDS)}**")
        else:
            blocks.append(_paragraph(rng, number, count))
    return "\n\n".join(blocks) + "\n"


# --- the three site folders ---------------------------------------------------------------

def yaml_front_matter(post: SyntheticPost) -> str:
    """The header postroom and Hugo read: YAML (JSON strings are valid YAML scalars)."""
    return (f"---\ntitle: {json.dumps(post.title)}\n"
            f"date: {post.published.isoformat()}\n"
            f"slug: {post.slug}\n"
            f"summary: {json.dumps(post.summary)}\n"
            f"tags: [{', '.join(post.tags)}]\n---\n\n")


def pelican_metadata(post: SyntheticPost) -> str:
    """The header Pelican's Markdown reader takes (Python-Markdown's meta extension)."""
    return (f"Title: {post.title}\nDate: {post.published:%Y-%m-%d %H:%M}\n"
            f"Slug: {post.slug}\nSummary: {post.summary}\n"
            f"Tags: {', '.join(post.tags)}\n\n")


POSTROOM_CONFIG = f"""\
# Written by bench/feeds.py: the feeds of the newest {FEED_ENTRIES} posts, full content.
[site]
title = "{SITE_TITLE}"
base_url = "{BASE_URL}"
language = "en"
timezone = "UTC"

[site.author]
name = "Bench"
email = "bench@blog.bench.example"

[paths]
posts = "posts"
output = "public"

[feeds]
formats = ["atom", "rss", "json"]
entries = {FEED_ENTRIES}
content = "full"
per_tag = false
"""

HUGO_CONFIG = f"""\
# Written by bench/feeds.py: one RSS feed of the newest {FEED_ENTRIES} posts (full content),
# and nothing else Hugo can be told not to write.
baseURL = "{BASE_URL}/"
title = "{SITE_TITLE}"
languageCode = "en"
timeZone = "UTC"
disableKinds = ["taxonomy", "term", "section", "sitemap", "robotsTXT", "404"]
enableRobotsTXT = false
disableAliases = true

[outputs]
home = ["RSS"]
page = []

[permalinks]
posts = "/posts/:slug/"

[services.rss]
limit = {FEED_ENTRIES}

# Code blocks as plain <pre><code>, as postroom writes them (Hugo highlights by default).
[markup.highlight]
codeFences = false

[author]
name = "Bench"
email = "bench@blog.bench.example"

# The posts are listed and linked, never written out as pages.
[[cascade]]
[cascade._build]
render = "link"
list = "always"
[cascade._target]
kind = "page"
"""

# Hugo's own RSS template (0.111), with the post's full HTML where Hugo puts .Summary, as
# postroom's feeds carry it (feeds.content = "full").
HUGO_RSS = """\
{{- $pages := .Site.RegularPages -}}
{{- $limit := .Site.Config.Services.RSS.Limit -}}
{{- if ge $limit 1 -}}{{- $pages = $pages | first $limit -}}{{- end -}}
{{- printf "<?xml version=\\"1.0\\" encoding=\\"utf-8\\" standalone=\\"yes\\"?>" | safeHTML }}
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">
  <channel>
    <title>{{ .Site.Title }}</title>
    <link>{{ .Permalink }}</link>
    <description>Recent content on {{ .Site.Title }}</description>
    <generator>Hugo -- gohugo.io</generator>
    <language>{{ .Site.LanguageCode }}</language>
    {{ if not .Date.IsZero }}<lastBuildDate>
      {{- .Date.Format "Mon, 02 Jan 2006 15:04:05 -0700" | safeHTML -}}
    </lastBuildDate>{{ end }}
    {{- with .OutputFormats.Get "RSS" -}}
    {{ printf "<atom:link href=%q rel=\\"self\\" type=%q />" .Permalink .MediaType | safeHTML }}
    {{- end -}}
    {{ range $pages }}
    <item>
      <title>{{ .Title }}</title>
      <link>{{ .Permalink }}</link>
      <pubDate>{{ .Date.Format "Mon, 02 Jan 2006 15:04:05 -0700" | safeHTML }}</pubDate>
      <guid>{{ .Permalink }}</guid>
      <description>{{ .Content | html }}</description>
      {{ range .Params.tags }}<category>{{ . }}</category>{{ end }}
    </item>
    {{ end }}
  </channel>
</rss>
"""

PELICAN_CONFIG = f"""\
# Written by bench/feeds.py: an Atom and an RSS feed of the newest {FEED_ENTRIES} posts (full
# content), and nothing else Pelican can be told not to write.
AUTHOR = "Bench"
SITENAME = "{SITE_TITLE}"
SITEURL = "{BASE_URL}"
FEED_DOMAIN = SITEURL
TIMEZONE = "UTC"
DEFAULT_LANG = "en"
PATH = "content"
ARTICLE_PATHS = ["posts"]
PAGE_PATHS = []
STATIC_PATHS = []
THEME_STATIC_PATHS = []
ARTICLE_URL = "posts/{{slug}}/"
FEED_ALL_ATOM = "feeds/all.atom.xml"
FEED_ALL_RSS = "feeds/all.rss.xml"
FEED_MAX_ITEMS = {FEED_ENTRIES}
RSS_FEED_SUMMARY_ONLY = False
FEED_ATOM = FEED_RSS = None
CATEGORY_FEED_ATOM = CATEGORY_FEED_RSS = None
TAG_FEED_ATOM = TAG_FEED_RSS = None
AUTHOR_FEED_ATOM = AUTHOR_FEED_RSS = None
TRANSLATION_FEED_ATOM = TRANSLATION_FEED_RSS = None
DIRECT_TEMPLATES = []
PAGINATED_TEMPLATES = {{}}
ARTICLE_SAVE_AS = ARTICLE_LANG_SAVE_AS = DRAFT_SAVE_AS = DRAFT_LANG_SAVE_AS = ""
PAGE_SAVE_AS = PAGE_LANG_SAVE_AS = DRAFT_PAGE_SAVE_AS = DRAFT_PAGE_LANG_SAVE_AS = ""
CATEGORY_SAVE_AS = CATEGORIES_SAVE_AS = TAG_SAVE_AS = TAGS_SAVE_AS = ""
AUTHOR_SAVE_AS = AUTHORS_SAVE_AS = ARCHIVES_SAVE_AS = ""
YEAR_ARCHIVE_SAVE_AS = MONTH_ARCHIVE_SAVE_AS = DAY_ARCHIVE_SAVE_AS = ""
# Python-Markdown's defaults in Pelican, less codehilite: code blocks as plain <pre><code>,
# as postroom writes them.
MARKDOWN = {{
    "extension_configs": {{"markdown.extensions.extra": {{}}, "markdown.extensions.meta": {{}}}},
    "output_format": "html5",
}}
CACHE_CONTENT = False
LOAD_CONTENT_CACHE = False
RELATIVE_URLS = False
DELETE_OUTPUT_DIRECTORY = False
"""


@dataclass(frozen=True)
class Corpus:
    """The three site folders of one corpus, and the posts the edit benchmark changes."""

    root: Path
    count: int
    in_main_feed: str  # a post file (relative to posts/) among the newest FEED_ENTRIES
    in_no_feed: str  # the oldest post: in no feed, per-tag feeds included

    @property
    def postroom(self) -> Path:
        return self.root / "postroom"

    @property
    def hugo(self) -> Path:
        return self.root / "hugo"

    @property
    def pelican(self) -> Path:
        return self.root / "pelican"

    def bytes_of_posts(self) -> int:
        return sum(entry.stat().st_size for entry in os.scandir(self.postroom / "posts"))


def write_corpus(root: Path, count: int) -> Corpus:
    """Write the three site folders of `count` posts under `root` (replacing any there)."""
    shutil.rmtree(root, ignore_errors=True)
    postroom_posts = root / "postroom" / "posts"
    hugo_posts = root / "hugo" / "content" / "posts"
    pelican_posts = root / "pelican" / "content" / "posts"
    for folder in (postroom_posts, hugo_posts, pelican_posts, root / "hugo" / "layouts"):
        folder.mkdir(parents=True)
    (root / "postroom" / "postroom.toml").write_text(POSTROOM_CONFIG, encoding="utf-8")
    (root / "hugo" / "config.toml").write_text(HUGO_CONFIG, encoding="utf-8")
    (root / "hugo" / "layouts" / "index.rss.xml").write_text(HUGO_RSS, encoding="utf-8")
    (root / "pelican" / "pelicanconf.py").write_text(PELICAN_CONFIG, encoding="utf-8")
    names: list[str] = []
    for post in synthetic_posts(count):
        text = yaml_front_matter(post) + post.body
        (postroom_posts / post.filename).write_text(text, encoding="utf-8")
        (hugo_posts / post.filename).write_text(text, encoding="utf-8")
        (pelican_posts / post.filename).write_text(pelican_metadata(post) + post.body,
                                                   encoding="utf-8")
        names.append(post.filename)
    return Corpus(root, count, in_main_feed=names[min(9, count - 1)], in_no_feed=names[-1])


def fresh_copy(source: Path, target: Path) -> Path:
    """A new folder with `source`'s files as hard links: a tool's caches and output are gone.

    Hard links make the copy cheap and its files byte-identical; no measured command writes
    into a post file (the edit benchmark works on a real copy).
    """
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)
    return target
