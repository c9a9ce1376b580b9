"""Fuzz (Hypothesis) over what users hand postroom: post files (front matter and Markdown), the
config file and CSV imports, through the library functions the CLI calls (`check` is a build
that writes nothing; `subscribers import` is import_csv). Figure: tracebacks — exceptions
other than a PostroomError (which the CLI prints as one line) — bound 0.

Derandomized: the same examples every run. Few examples by default; many with --long.
"""

from __future__ import annotations

import io
import string
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import Figures
from mailsite import MailSite
from postroom import subscribers
from postroom.config import load_settings
from postroom.errors import PostroomError
from sites import BASE_CONFIG, NOW, Site, merged, toml_text

VARIANTS = [pytest.param(80, id="80"), pytest.param(1500, id="1500", marks=pytest.mark.long)]

AWKWARD = ["<", "&", "]]>", "\x00", "\x1b", "\u2028", "\ufeff", "\ufffe", "\r", "\n", "---",
           ":", "- ", "? ", "!!python/object:os.system", "&anchor", "*anchor", "{", "[", "'",
           '"', "#", "%", "@", ",", ";", "\t", "😀", "é", "\\"]
TEXT = st.one_of(st.sampled_from(AWKWARD), st.text(max_size=12),
                 st.lists(st.sampled_from(AWKWARD), max_size=6).map("".join))
SCALAR = st.one_of(TEXT, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                   st.dates(), st.datetimes(), st.just("2025-13-45"), st.just("tomorrow"))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
KEYS = st.sampled_from(["title", "date", "updated", "tags", "summary", "slug", "draft",
                        "author", "lang", "url", "image", "description"])
FRONT = st.dictionaries(st.one_of(KEYS, TEXT), VALUE, max_size=7)


def post_bytes() -> st.SearchStrategy[bytes]:
    """A post file: dumped front matter, raw front-matter text, or raw bytes; then a body."""
    dumped = FRONT.map(lambda front: yaml.safe_dump(front, allow_unicode=True))
    front_text = st.one_of(dumped, TEXT, st.text(max_size=200))
    body = st.one_of(TEXT, st.text(max_size=300),
                     st.lists(st.sampled_from(["# h", "**b", "[a](b", "<div>", "```", "\n",
                                               "<!--more-->", "| a |\n|-|", "> q"]),
                              max_size=10).map("".join))
    whole = st.builds(lambda f, b, closed: f"---\n{f}{'---' if closed else ''}\n{b}",
                      front_text, body, st.booleans()).map(lambda t: t.encode("utf-8", "replace"))
    return st.one_of(whole, st.binary(max_size=300),
                     whole.map(lambda b: b"\xef\xbb\xbf" + b),
                     st.builds(lambda b, cut: b[:cut], whole, st.integers(0, 400)))


def csv_bytes() -> st.SearchStrategy[bytes]:
    """A CSV file: a header (or none), rows of awkward cells, in one of the encodings users
    have; or raw bytes."""
    cell = st.one_of(TEXT, st.emails(), st.just("x" * 140_000), st.just(""),
                     st.just("=cmd|' /C calc'!A0"), st.just("Bob@Example.org"))
    header = st.sampled_from([["email", "name"], ["Email Address", "First Name"], ["name"],
                              ["email", "status", "created_at"], ["e-mail"], []])
    rows = st.lists(st.lists(cell, max_size=4), max_size=8)
    separator = st.sampled_from([",", ";", "\t"])

    def text(head: list[str], body: list[list[str]], sep: str) -> str:
        lines = ([head] if head else []) + body
        return "".join(sep.join(f'"{c}"' if sep in c or '"' in c else c for c in line) + "\n"
                       for line in lines)

    encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"])
    encoded = st.builds(lambda t, e: t.encode(e, "replace"),
                        st.builds(text, header, rows, separator), encodings)
    return st.one_of(encoded, st.binary(max_size=400))


def config_text() -> st.SearchStrategy[str]:
    """A config file: the base config with a few keys set to anything, or raw text."""
    tables = st.sampled_from(["site", "feeds", "paths", "digest", "smtp", "web", "mail",
                              "database", "daemon", "nonsense"])
    keys = st.sampled_from(["title", "base_url", "timezone", "entries", "schedule", "port",
                            "timeout", "max_attempts", "posts", "output", "url", "language",
                            "rate_per_client", "transport", "from_address", "since", "x"])
    scalar = st.one_of(st.text(alphabet=string.printable, max_size=20), st.integers(),
                       st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.dates(min_value=date(1, 1, 1)),
                       st.lists(st.text(max_size=5), max_size=3))
    changes = st.dictionaries(tables, st.dictionaries(keys, scalar, max_size=3), max_size=3)
    structured = changes.map(lambda c: toml_text(merged(BASE_CONFIG, c)))
    return st.one_of(structured, st.text(max_size=300),
                     structured.map(lambda t: t.replace("=", "", 1)))


def run_fuzz(strategy: st.SearchStrategy[Any], examples: int, check: Callable[[Any], None],
             known: list[Any]) -> tuple[int, list[str]]:
    """Run check() on the `known` inputs, then on `examples` derandomized examples; return
    how many ran and the tracebacks (non-PostroomError exceptions), described.

    The known inputs are the ones that broke postroom before: a short run always has them.
    """
    ran, tracebacks = 0, []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def each(example: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            check(example)
        except PostroomError:
            pass
        except Exception as err:  # the figure: anything else is a traceback for the user
            tracebacks.append(f"{type(err).__name__}: {str(err)[:100]} on {example!r:.50}…")

    for value in known:
        each = example(value)(each)
    each()
    return ran, tracebacks


@pytest.mark.parametrize("examples", VARIANTS)
def test_fuzzed_post_files_through_check(tmp_path: Path, figures: Figures,
                                         examples: int) -> None:
    site = Site(tmp_path / "site")
    site.posts.mkdir(parents=True)
    settings_ = site.configure()

    def check(raw: bytes) -> None:
        (site.posts / "fuzzed.md").write_bytes(raw)
        from postroom.build import SiteBuilder
        SiteBuilder(settings_).build(NOW, write=False)

    known = [b"---\n---\n", b"---\ntitle: [\n---\n", b"---\ndate: tomorrow\n---\nx",
             b"\xef\xbb\xbf---\ntitle: x\n", b"---\n- a\n---\n", b"\xff\xfe"]
    ran, tracebacks = run_fuzz(post_bytes(), examples, check, known)
    figures.hold(f"fuzz: post files (front matter + Markdown) through check, {ran} examples:"
                 " tracebacks", len(tracebacks), "0", not tracebacks, "; ".join(tracebacks[:2]))


@pytest.mark.parametrize("examples", VARIANTS)
def test_fuzzed_csv_files_through_import(tmp_path: Path, figures: Figures,
                                         examples: int) -> None:
    site = MailSite.create(tmp_path / "site")
    now = datetime.now(UTC)

    def check(raw: bytes) -> None:
        subscribers.import_csv(site.engine, "fuzzed.csv", io.BytesIO(raw), now)

    wide = b"x" * 140_000
    known = [b"", b"email\n", b"\x00\x00", b'"email\n', wide + b"\nb@example.org\n",
             b"email," + wide + b"\nb@example.org,B\n",
             b"email,name\na@example.org," + wide + b"\n"]
    ran, tracebacks = run_fuzz(csv_bytes(), examples, check, known)
    figures.hold(f"fuzz: CSV files through subscribers import, {ran} examples: tracebacks",
                 len(tracebacks), "0", not tracebacks, "; ".join(tracebacks[:2]))


@pytest.mark.parametrize("examples", VARIANTS)
def test_fuzzed_config_files_through_load(tmp_path: Path, figures: Figures,
                                          examples: int) -> None:
    config = tmp_path / "postroom.toml"

    def check(text: str) -> None:
        config.write_text(text, encoding="utf-8", errors="replace")
        load_settings(config, env={})

    known = ["", "[site]\nbase_url = 1\n", "[digest]\nschedule = \"funday 09:00\"\n", "x = ["]
    ran, tracebacks = run_fuzz(config_text(), examples, check, known)
    figures.hold(f"fuzz: config files through load_settings, {ran} examples: tracebacks",
                 len(tracebacks), "0", not tracebacks, "; ".join(tracebacks[:2]))
