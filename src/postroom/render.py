"""Markdown → HTML with absolute URLs, summaries as HTML and as plain text, a post's URL."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any, cast
from urllib.parse import urljoin

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

from postroom.config import Settings
from postroom.posts import MORE_MARKER, Author, Post, clean_text

# Attributes in raw HTML whose value is a URL a feed reader would have to resolve.
HTML_URL_ATTR = re.compile(r"""(\s(?:href|src)\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
UNPRINTABLE_IN_HTML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# A footnote mark ('[^1]', '[^note]'): a summary stands alone, with no footnotes to point at.
FOOTNOTE_MARK = re.compile(r"\[\^[^\]\s]+\]")
# ASCII punctuation, which a backslash makes literal in CommonMark.
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


@dataclass(frozen=True)
class RenderedPost:
    """A post ready for a feed or a digest: everything a reader sees, resolved."""

    entry_id: str
    url: str
    title: str
    published: datetime
    updated: datetime
    summary: str  # plain text (JSON Feed, plain-text mail)
    summary_html: str  # the same summary as inline HTML (Atom, RSS, HTML mail)
    summary_markdown: str  # what both are made from (a digest keeps it): inline Markdown
    content_html: str
    tags: tuple[str, ...]
    author: Author | None


def post_url(settings: Settings, post: Post) -> str:
    """Given the settings and a post, return the post's absolute URL from the URL pattern."""
    local = post.published
    return settings.site.post_url.format(
        base_url=settings.site.base_url,
        slug=post.slug,
        year=f"{local:%Y}",
        month=f"{local:%m}",
        day=f"{local:%d}",
    )


class Renderer:
    """CommonMark plus tables, footnotes and strikethrough, with URLs made absolute."""

    def __init__(self) -> None:
        # html=True: the posts are the site owner's own writing, like any static site's.
        self._md = (
            MarkdownIt("commonmark", {"html": True})
            .enable(["table", "strikethrough"])
            .use(footnote_plugin)
        )
        # The footnote plugin writes its links as bare fragments ('#fn1'), which a reader
        # resolves against the feed, not the post: point them at the page's URL instead.
        rules = cast(RendererHTML, self._md.renderer).rules
        for name in ("footnote_ref", "footnote_anchor"):
            self._md.add_render_rule(name, _on_page(rules[name]))
        # A summary is one line of inline Markdown (emphasis, code, links) and no raw HTML:
        # it reaches mail and feed readers' lists, where a stray tag does harm.
        self._inline = (
            MarkdownIt("commonmark", {"html": False}).enable(["strikethrough"])
            .use(footnote_plugin)
        )

    def to_html(self, markdown: str, base_url: str) -> str:
        """Given Markdown and the page's URL, return HTML whose links and images are absolute.

        Feed readers and mail clients resolve nothing, so a relative link would break there.
        """
        env: dict[str, object] = {"page_url": base_url}
        tokens = self._md.parse(markdown.replace(MORE_MARKER, ""), env)
        _absolutize(tokens, base_url)
        html = self._md.renderer.render(tokens, self._md.options, env)
        return UNPRINTABLE_IN_HTML.sub("", html)

    def summary_of(self, markdown: str, limit: int) -> str:
        """Return a plain-text summary: the text before <!--more-->, else the first paragraph."""
        head, marker, _ = markdown.partition(MORE_MARKER)
        tokens = self._md.parse(head if marker else markdown, {})
        inlines = [t for t in tokens if t.type == "inline"]
        if not marker:
            inlines = _first_paragraph(tokens)
        text = clean_text(" ".join(_plain_text(t.children or []) for t in inlines))
        return cut_at_word(text, limit)

    def summary_html(self, markdown: str, page_url: str) -> str:
        """Given a summary in inline Markdown and its post's URL, return it as inline HTML:
        links absolute, footnote marks dropped."""
        children = self._summary_tokens(markdown)
        _absolutize(children, page_url)
        html = self._inline.renderer.render(children, self._inline.options, {})
        return UNPRINTABLE_IN_HTML.sub("", html)

    def summary_text(self, markdown: str) -> str:
        """Given a summary in inline Markdown, return it as plain text on one line: the
        words of links and emphasis, images' alt text, no marks and no footnote marks."""
        return clean_text(_plain_text(self._summary_tokens(markdown)))

    def _summary_tokens(self, markdown: str) -> list[Token]:
        kept: list[Token] = []
        for inline in self._inline.parseInline(markdown, {})[:1]:
            for token in inline.children or []:
                if token.type == "text":
                    token.content = FOOTNOTE_MARK.sub("", token.content)
                # An inline footnote ('^[note]') is a footnote_ref: dropped like '[^1]'.
                if token.type != "footnote_ref":
                    kept.append(token)
        return kept

    def render(self, settings: Settings, post: Post) -> RenderedPost:
        """Given a post, return it with its URL, entry ID, HTML and summary resolved.

        Raises PostChanged if the post's file changed since it was scanned.
        """
        url = post_url(settings, post)
        limit = settings.feeds.summary_length
        body = post.read_body()
        # A summary of the front matter is Markdown; one taken from the body is plain text
        # (cut to a length), made Markdown that reads back as the same text.
        summary = post.summary or markdown_escape(self.summary_of(body, limit))
        text = self.summary_text(summary)
        return RenderedPost(
            entry_id=post.entry_id(settings.site.host),
            url=url,
            title=post.title,
            published=post.published,
            updated=post.updated,
            summary=text,
            # A summary with no words (only an image, say) is no summary: feeds show the title.
            summary_html=self.summary_html(summary, url) if text else "",
            summary_markdown=summary,
            content_html=self.to_html(body, url),
            tags=post.tags,
            author=post.author,
        )


def markdown_escape(text: str) -> str:
    """Given plain text, return Markdown that renders as exactly that text."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def cut_at_word(text: str, limit: int) -> str:
    """Given text, return it cut to at most `limit` characters at a word boundary, with '…'."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-–—") + "…"


def _absolutize(tokens: Sequence[Token], base_url: str) -> None:
    for token in tokens:
        for attr in ("href", "src"):
            value = token.attrGet(attr)
            if isinstance(value, str):
                token.attrSet(attr, urljoin(base_url, value))
        if token.type in ("html_block", "html_inline"):
            token.content = HTML_URL_ATTR.sub(
                lambda m: f"{m[1]}{m[2]}{urljoin(base_url, m[3])}{m[2]}", token.content
            )
        if token.children:
            _absolutize(token.children, base_url)


def _on_page(rule: Callable[..., str]) -> Callable[..., str]:
    """Given a footnote render rule, return it with its '#fragment' links made absolute."""

    def render(
        self: object, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]
    ) -> str:
        page = escape(str(env["page_url"]))
        return rule(tokens, idx, options, env).replace(' href="#', f' href="{page}#')

    return render


def _first_paragraph(tokens: Sequence[Token]) -> list[Token]:
    for index, token in enumerate(tokens):
        if token.type == "paragraph_open" and index + 1 < len(tokens):
            return [tokens[index + 1]]
    return []


def _plain_text(children: Sequence[Token]) -> str:
    parts: list[str] = []
    for child in children:
        if child.type == "text":
            parts.append(FOOTNOTE_MARK.sub("", child.content))
        elif child.type == "code_inline":
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(_plain_text(child.children or []))
    return "".join(parts)
