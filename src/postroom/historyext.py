"""The feedgen extension that writes RFC 5005's history elements into Atom and RSS."""

from __future__ import annotations

from feedgen.ext.base import BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from postroom.feedhistory import History

FH = "http://purl.org/syndication/history/1.0"
ATOM = "http://www.w3.org/2005/Atom"


def add_history(generator: FeedGenerator, history: History) -> None:
    """Have the generator write the history marker and links into its Atom and RSS."""
    # After the entries are added: feedgen gives entries every feed extension, and this
    # one has no entry part.
    generator.register_extension("fh", _HistoryExtension, None)
    generator.fh.history = history


class _HistoryExtension(BaseExtension):
    """Writes RFC 5005's elements at the head of the feed (Atom wants them before entries)."""

    def __init__(self) -> None:
        self.history = History()

    def extend_ns(self) -> dict[str, str]:
        return {"fh": FH}

    def extend_atom(self, feed: etree._Element) -> etree._Element:
        # feedgen writes Atom's elements without a namespace, under xmlns="…Atom": so do we.
        self._insert(feed, before="entry", link="link")
        return feed

    def extend_rss(self, rss: etree._Element) -> etree._Element:
        self._insert(rss[0], before="item", link=f"{{{ATOM}}}link")
        return rss

    def _insert(self, parent: etree._Element, before: str, link: str) -> None:
        first = parent.find(before)
        at = list(parent).index(first) if first is not None else len(parent)
        # Made as children, so they use the document's prefixes (Atom's is the default).
        elements = []
        if self.history.marker:
            elements.append(etree.SubElement(parent, f"{{{FH}}}{self.history.marker}"))
        for rel, href in self.history.links:
            elements.append(etree.SubElement(parent, link, rel=rel, href=href))
        for offset, element in enumerate(elements):
            parent.insert(at + offset, element)  # moved from the end to before `before`
