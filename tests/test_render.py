"""render.py: Markdown to HTML with absolute URLs, summaries as HTML and text, post URLs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from html import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.posts import clean_text
from postroom.render import Renderer, cut_at_word, markdown_escape, post_url
from sites import Site

PAGE = "https://blog.example.org/posts/hello/"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("[up](../other/)", '<a href="https://blog.example.org/posts/other/">up</a>'),
        ("[root](/about/)", '<a href="https://blog.example.org/about/">root</a>'),
        ("[here](#part)", '<a href="https://blog.example.org/posts/hello/#part">here</a>'),
        ("[abs](https://x.org/a)", '<a href="https://x.org/a">abs</a>'),
        ("[mail](mailto:a@b.org)", '<a href="mailto:a@b.org">mail</a>'),
        ("![pic](img/a.png)",
         '<img src="https://blog.example.org/posts/hello/img/a.png" alt="pic" />'),
        ('<a href="x.html">raw</a>', '<a href="https://blog.example.org/posts/hello/x.html">raw</a>'),
        ("<img src='/i.png'>", "<img src='https://blog.example.org/i.png'>"),
    ],
)
def test_relative_urls_are_made_absolute(renderer: Renderer, markdown: str, html: str) -> None:
    assert html in renderer.to_html(markdown, PAGE)


def test_raw_html_block_urls_are_made_absolute(renderer: Renderer) -> None:
    html = renderer.to_html('<div>\n<a href="x/">x</a>\n<img src="y.png" />\n</div>\n', PAGE)
    assert 'href="https://blog.example.org/posts/hello/x/"' in html
    assert 'src="https://blog.example.org/posts/hello/y.png"' in html


def test_footnote_links_point_at_the_post(renderer: Renderer) -> None:
    html = renderer.to_html("Claim.[^1]\n\n[^1]: Source.\n", PAGE)
    assert f'href="{PAGE}#fn1"' in html
    assert f'href="{PAGE}#fnref1"' in html
    assert 'href="#' not in html


def test_code_is_not_rewritten(renderer: Renderer) -> None:
    html = renderer.to_html("```html\n<a href='x/'>x</a>\n```\n\n`<img src='y'>`\n", PAGE)
    assert "&lt;a href='x/'&gt;x&lt;/a&gt;" in html
    assert "&lt;img src='y'&gt;" in html


def test_commonmark_extensions(renderer: Renderer) -> None:
    html = renderer.to_html("| a | b |\n|---|---|\n| 1 | 2 |\n\n~~old~~ new\n", PAGE)
    assert "<table>" in html and "<td>1</td>" in html
    assert "<s>old</s> new" in html


def test_more_marker_and_control_characters_are_removed(renderer: Renderer) -> None:
    html = renderer.to_html("Before.\n\n<!--more-->\n\nAfter \x01\x08\x0b\x1f.\n", PAGE)
    assert html == "<p>Before.</p>\n<p>After .</p>\n"


def test_summary_is_the_text_before_more(renderer: Renderer) -> None:
    markdown = (
        "# Title\n\nFirst *para* with [a link](x/) & `code`.\n\nSecond.\n\n<!--more-->\n\nRest."
    )
    assert renderer.summary_of(markdown, 300) == "Title First para with a link & code. Second."


def test_summary_is_else_the_first_paragraph(renderer: Renderer) -> None:
    markdown = "## Heading\n\nThe *first*\nparagraph, with &amp; entity.\n\nThe second.\n"
    assert renderer.summary_of(markdown, 300) == "The first paragraph, with & entity."


def test_summary_of_a_post_without_paragraphs_is_empty(renderer: Renderer) -> None:
    assert renderer.summary_of("# Only a heading\n\n```\ncode\n```\n", 300) == ""


def test_summary_has_no_markup_left(renderer: Renderer) -> None:
    summary = renderer.summary_of("Some <b>bold</b> and <span class='x'>span</span>.\n", 300)
    assert summary == "Some bold and span."


def test_long_summary_is_cut_at_a_word_boundary(renderer: Renderer) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    assert renderer.summary_of(words, 40) == "alpha beta gamma delta epsilon zeta eta…"


@pytest.mark.parametrize(
    ("text", "limit", "cut"),
    [
        ("short", 10, "short"),
        ("exactly ten", 11, "exactly ten"),
        ("one two three", 7, "one…"),  # 'one two…' would be 8 characters
        ("one two three", 8, "one two…"),
        ("one two, three", 10, "one two…"),  # no dangling comma before the ellipsis
        ("abcdefghijklmnop", 8, "abcdefg…"),  # one long word: cut inside it
    ],
)
def test_cut_at_word(text: str, limit: int, cut: str) -> None:
    assert cut_at_word(text, limit) == cut
    assert len(cut_at_word(text, limit)) <= limit


def test_post_url_pattern(make_site: Callable[..., Site]) -> None:
    site = make_site(site={"post_url": "{base_url}/{year}/{month}/{day}/{slug}.html"})
    site.write_post("2025-03-09-x.md", "", title="X", date="2025-03-09 23:30:00")
    settings = site.settings()
    post = site.builder().collection.scan().posts[0]
    # The date parts are the post's own (site zone) date, not UTC's (which is 2025-03-09 22:30).
    assert post_url(settings, post) == "https://blog.example.org/2025/03/09/x.html"


def test_render_uses_explicit_summary_else_derived(site: Site) -> None:
    site.write_post("a.md", "Derived from here.\n", title="A", date=date(2025, 1, 1))
    site.write_post("b.md", "Not this.\n", title="B", date=date(2025, 1, 2), summary="Given.")
    settings = site.settings()
    posts = {p.slug: p for p in site.builder().collection.scan().posts}
    renderer = Renderer()
    a, b = renderer.render(settings, posts["a"]), renderer.render(settings, posts["b"])
    assert (a.summary, b.summary) == ("Derived from here.", "Given.")
    assert a.url == "https://blog.example.org/posts/a/"
    assert a.entry_id == "tag:blog.example.org,2025-01-01:/posts/a"
    assert a.content_html == "<p>Derived from here.</p>\n"


# --- summaries written in Markdown --------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "html", "text"),
    [
        ("A **bold** and *em* move.", "A <strong>bold</strong> and <em>em</em> move.",
         "A bold and em move."),
        ("Use `x < y` here.", "Use <code>x &lt; y</code> here.", "Use x < y here."),
        ("See [the docs](../docs/).",
         'See <a href="https://blog.example.org/posts/docs/">the docs</a>.', "See the docs."),
        ("An ![image](i.png).",
         'An <img src="https://blog.example.org/posts/hello/i.png" alt="image" />.',
         "An image."),
        ("~~Old~~ new &amp; \\*literal\\*.", "<s>Old</s> new &amp; *literal*.",
         "Old new & *literal*."),
        # Raw HTML is not HTML in a summary: it stays the text it is.
        ("Raw <b>html</b> & <script>x</script>",
         "Raw &lt;b&gt;html&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;",
         "Raw <b>html</b> & <script>x</script>"),
        # Footnote marks have nothing to point at in a summary: dropped, inline ones too.
        ("Engineers.[^1][^2][^note] And ^[an aside] more.", "Engineers. And  more.",
         "Engineers. And more."),
    ],
)
def test_summary_markdown_as_html_and_as_text(renderer: Renderer, markdown: str, html: str,
                                              text: str) -> None:
    assert renderer.summary_html(markdown, PAGE) == html
    assert renderer.summary_text(markdown) == text


@given(text=st.text(st.characters(exclude_categories=["Cs", "Cc"])).map(clean_text)
       .filter(lambda t: "[^" not in t))
def test_plain_text_made_markdown_reads_back_as_itself(text: str) -> None:
    renderer = Renderer()
    markdown = markdown_escape(text)
    assert renderer.summary_text(markdown) == text
    assert renderer.summary_html(markdown, PAGE) == escape(text, quote=False).replace(
        '"', "&quot;")


def test_render_gives_the_summary_as_text_html_and_markdown(site: Site) -> None:
    site.write_post("a.md", "Derived *from* &lt;here&gt; & [there](x/).\n", title="A",
                    date=date(2025, 1, 1))
    site.write_post("b.md", "Body.\n", title="B", date=date(2025, 1, 2),
                    summary="Given **bold** [link](x/).[^1]")
    site.write_post("c.md", "Body.\n", title="C", date=date(2025, 1, 3), summary="![](i.png)")
    settings = site.settings()
    posts = {p.slug: Renderer().render(settings, p)
             for p in site.builder().collection.scan().posts}
    a, b, c = posts["a"], posts["b"], posts["c"]
    # Taken from the body: plain text, and Markdown that reads back as that text.
    assert (a.summary, a.summary_html) == ("Derived from <here> & there.",
                                           "Derived from &lt;here&gt; &amp; there.")
    assert a.summary_markdown == markdown_escape(a.summary)
    # Written in the front matter: Markdown, links made absolute against the post.
    assert b.summary == "Given bold link."
    assert b.summary_html == (
        'Given <strong>bold</strong> <a href="https://blog.example.org/posts/b/x/">link</a>.')
    assert b.summary_markdown == "Given **bold** [link](x/).[^1]"
    # A summary with no words is none: the feeds show the title instead.
    assert (c.summary, c.summary_html) == ("", "")
