"""A feed checker for the tests: the W3C Feed Validation Service's checks that bear on
postroom's feeds, reproduced from their public rules (RFC 4287, RSS 2.0, the RSS Advisory
Board's profile, the validator's documented messages), not from its code.

`check_feed(name, data)` returns every finding; [] means no error and no warning. Each
finding is named after the validator's message class (DuplicateUpdated, CharacterData,
MissingSelf, InvalidRFC2822Date, ...) and has its level there. A few rules are stricter
than the service, where the issue asks for it:

- CharacterData: an RSS plain-text element (title, description of the channel, category,
  author, dc:creator, ...) whose text is written with &amp; &lt; &gt;, decimal references
  or CDATA, instead of the profile's &#x26; &#x3C; &#x3E;. (The service warns only when
  the decoded text looks like markup and the line has no hexadecimal reference.)
- DuplicatePublished: two entries with one published time (the service checks updated).
- ContainsRelRef in Atom HTML as well as in RSS.

What it does not reproduce: the network (HTTP headers, SelfDoesntMatchLocation unless the
URL is given), html5lib's parse errors (NotHtml), and extensions other than those postroom
writes. `check_json_feed(data)` validates a JSON Feed against the JSON Feed 1.1 schema
(tests/data/jsonfeed-1.1.schema.json) and checks its ids and dates the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz
from html.entities import name2codepoint
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
from lxml import etree

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM = f"{{{ATOM_NS}}}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
SCHEMA_FILE = Path(__file__).parent / "data" / "jsonfeed-1.1.schema.json"
ERROR, WARNING = "error", "warning"
# Dates before this, or more than 10 minutes after now, are implausible (ImplausibleDate).
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)

RFC_3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
# RFC 822 as the profile recommends it: "Mon, 15 Oct 2007 14:10:00 GMT", a 4-digit year,
# one space between parts, a numeric or US zone (the military zones are unreliable).
RFC_822 = re.compile(
    r"((?P<dow>Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d\d? "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d(:\d\d)? "
    r"([+-]\d\d[0-5]\d|UT|GMT|EST|EDT|CST|CDT|MST|MDT|PST|PDT|Z)")
# What RFC 822 also allows but readers get wrong (ProblematicalRFC822Date).
RFC_822_LOOSE = re.compile(
    r"((mon|tue|wed|thu|fri|sat|sun)\s*,\s*)?\d\d?\s+"
    r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\s+\d\d(\d\d)?\s+\d\d:\d\d(:\d\d)?"
    r"\s+([+-]\d{4}|ut|gmt|[ecmp][sd]t|[a-ik-z])?")
# A full URI: a scheme, then RFC 3986 characters.
FULL_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(//)?[0-9A-Za-z;/?:@&=+$.\-_!~*'()%,#\[\]]+")
TAG_URI = re.compile(  # RFC 4151
    r"tag:([a-z0-9\-._]+@)?[a-z0-9.\-]+,\d{4}(-\d\d(-\d\d)?)?:"
    r"[0-9a-zA-Z;/?:@&=+$.\-_!~*'()%,]*(#[0-9a-zA-Z;/?:@&=+$.\-_!~*'()%,]*)?")
UUID_URN = re.compile(r"urn:uuid:[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")



def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# HTML a reader may show as it is, and HTML that a validator calls a risk in a feed.
SAFE_ELEMENTS = _names("""
    a abbr acronym address area article aside audio b bdi bdo big blockquote br button canvas
    caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl
    dt em fieldset figcaption figure font footer form h1 h2 h3 h4 h5 h6 header hgroup hr i
    img input ins kbd label legend li main map mark menu meter nav noscript ol optgroup
    option output p picture pre progress q rp rt ruby s samp section select small source
    span strike strong sub summary sup table tbody td template textarea tfoot th thead time
    tr track tt u ul var video wbr""")
RISKY_ELEMENTS = _names("""
    applet base basefont body embed frame frameset head html iframe isindex link listing meta
    noframes object param plaintext script style title xmp""")
HTML_ELEMENTS = SAFE_ELEMENTS | RISKY_ELEMENTS
SAFE_ATTRIBUTES = _names("""
    abbr accept accept-charset accesskey action align alt autoplay axis bgcolor border
    cellpadding cellspacing char charoff charset checked cite class clear color cols colspan
    compact controls coords datetime decoding default dir disabled download enctype face for
    frame headers height hidden high href hreflang hspace id ismap itemprop itemscope
    itemtype kind label lang list loading longdesc loop low max maxlength media method min
    multiple muted name nohref noshade nowrap open optimum pattern ping placeholder poster
    preload readonly referrerpolicy rel rev reversed rows rowspan rules scope selected shape
    size sizes span src srclang srcset start step summary tabindex target title translate
    type usemap valign value vspace width wrap xml:lang""")
SAFE_CSS = _names("""
    background-color border border-bottom border-collapse border-color border-left
    border-right border-spacing border-style border-top border-width clear color cursor
    direction display float font font-family font-size font-style font-variant font-weight
    height letter-spacing line-height list-style-type margin margin-bottom margin-left
    margin-right margin-top padding padding-bottom padding-left padding-right padding-top
    text-align text-decoration text-indent unicode-bidi vertical-align white-space
    width""")

RSS_CHANNEL = _names("""
    title link description language copyright managingEditor webMaster pubDate lastBuildDate
    category generator docs cloud ttl image rating textInput skipHours skipDays item""")
RSS_ITEM = _names("title link description author category comments enclosure guid pubDate source")
RSS_SINGLE = frozenset(RSS_CHANNEL - {"category", "item"}) | {"link", "guid", "author"}
# The profile's character data: plain text in every RSS element but an item's description.
RSS_CHANNEL_TEXT = ("title", "description", "copyright", "category", "generator",
                    "managingEditor", "webMaster")
RSS_ITEM_TEXT = ("title", "category", "author", "source", f"{DC}creator")
NOT_HEX = re.compile(r"&(amp|lt|gt|#38|#60|#62);|<!\[CDATA\[")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning", as the validator ranks the rule
    rule: str  # the validator's message class, e.g. "DuplicateUpdated"
    where: str  # the element, e.g. "entry[3]/updated" or "line 12"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.rule} at {self.where}: {self.message}"


def check_feed(name: str, data: bytes, *, self_url: str | None = None,
               now: datetime | None = None) -> list[Finding]:
    """Given a feed file's name (its suffix names the format) and bytes, return findings."""
    if name.endswith(".json"):
        return check_json_feed(data, now=now)
    checker = _Checker(data, now or datetime.now(UTC))
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False,
                                                      no_network=True, recover=False))
    except etree.XMLSyntaxError as err:
        return [Finding(ERROR, "SAXError", f"line {err.lineno}", str(err))]
    if root.tag == f"{ATOM}feed":
        checker.atom(root, self_url)
    elif root.tag == "rss":
        checker.rss(root, self_url)
    else:
        checker.add(ERROR, "UndefinedElement", root.tag, "not an Atom feed or RSS")
    return checker.findings


def check_json_feed(data: bytes, *, now: datetime | None = None) -> list[Finding]:
    """Given a JSON Feed's bytes, return the schema's findings and those on ids and dates."""
    checker = _Checker(data, now or datetime.now(UTC))
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return [Finding(ERROR, "InvalidJSON", "document", str(err))]
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    for error in jsonschema.Draft202012Validator(schema).iter_errors(document):
        where = "/".join(str(p) for p in error.absolute_path) or "document"
        checker.add(ERROR, "JsonFeedSchema", where, error.message)
    items = document.get("items") if isinstance(document, dict) else None
    if isinstance(items, list):
        entries = [i for i in items if isinstance(i, dict)]
        checker.unique("DuplicateEntries", [(f"items[{n}]/id", i.get("id"))
                                            for n, i in enumerate(entries)], level=ERROR)
        for field, rule in (("date_modified", "DuplicateUpdated"),
                            ("date_published", "DuplicatePublished")):
            moments = [(f"items[{n}]/{field}", checker.rfc_3339(i[field], "", quiet=True))
                       for n, i in enumerate(entries) if isinstance(i.get(field), str)]
            checker.unique(rule, moments)
            for where, moment in moments:
                checker.plausible(where, moment)
    return checker.findings


class _Checker:
    """Findings for one document, and the rules shared by its elements."""

    def __init__(self, data: bytes, now: datetime) -> None:
        self.lines = data.decode("utf-8", errors="replace").split("\n")
        self.now = now
        self.findings: list[Finding] = []

    def add(self, level: str, rule: str, where: str, message: str) -> None:
        self.findings.append(Finding(level, rule, where, message))

    # ---- Atom (RFC 4287) ---------------------------------------------------------------

    def atom(self, feed: etree._Element, self_url: str | None) -> None:
        self.required(feed, "feed", ATOM, ("id", "title", "updated"))
        self.single(feed, "feed", ATOM, ("id", "title", "updated", "subtitle", "rights",
                                          "generator", "icon", "logo"))
        self.atom_id(feed.find(f"{ATOM}id"), "feed/id")
        self.atom_date(feed.find(f"{ATOM}updated"), "feed/updated")
        self.links(feed, "feed", self_url)
        for tag in ("title", "subtitle", "rights"):
            self.text_construct(feed.find(f"{ATOM}{tag}"), f"feed/{tag}")
        feed_author = feed.find(f"{ATOM}author") is not None
        entries = feed.findall(f"{ATOM}entry")
        for number, entry in enumerate(entries, start=1):
            self.atom_entry(entry, f"entry[{number}]", feed_author)
        self.unique("DuplicateEntries", [(f"entry[{n}]/id", e.findtext(f"{ATOM}id"))
                                         for n, e in enumerate(entries, start=1)])
        for tag, rule in (("updated", "DuplicateUpdated"), ("published", "DuplicatePublished")):
            self.unique(rule, [(f"entry[{n}]/{tag}",
                                self.rfc_3339(e.findtext(f"{ATOM}{tag}"), "", quiet=True))
                               for n, e in enumerate(entries, start=1)
                               if e.find(f"{ATOM}{tag}") is not None])
        self.characters(feed)

    def atom_entry(self, entry: etree._Element, where: str, feed_author: bool) -> None:
        self.required(entry, where, ATOM, ("id", "title", "updated"))
        self.single(entry, where, ATOM, ("id", "title", "updated", "published", "summary",
                                         "content", "rights", "source"))
        if not feed_author and entry.find(f"{ATOM}author") is None:
            self.add(ERROR, "MissingElement", where, "no author, and the feed has none")
        self.atom_id(entry.find(f"{ATOM}id"), f"{where}/id")
        self.atom_date(entry.find(f"{ATOM}updated"), f"{where}/updated")
        self.atom_date(entry.find(f"{ATOM}published"), f"{where}/published")
        self.links(entry, where, None)
        content, summary = entry.find(f"{ATOM}content"), entry.find(f"{ATOM}summary")
        if content is None and summary is None:
            self.add(WARNING, "MissingTextualContent", where, "neither content nor summary")
        alternates = [link for link in entry.findall(f"{ATOM}link")
                      if link.get("rel", "alternate") == "alternate"]
        if content is None and not alternates:
            self.add(ERROR, "MissingContentOrAlternate", where, "no content, no alternate link")
        for tag in ("title", "summary", "content", "rights"):
            self.text_construct(entry.find(f"{ATOM}{tag}"), f"{where}/{tag}")
        for person in entry.findall(f"{ATOM}author"):
            if not (person.findtext(f"{ATOM}name") or "").strip():
                self.add(ERROR, "MissingElement", f"{where}/author", "an author needs a name")

    def atom_id(self, element: etree._Element | None, where: str) -> None:
        if element is None:
            return
        value = element.text or ""
        if value != value.strip():
            self.add(ERROR, "UnexpectedWhitespace", where, repr(value))
        self.uri(value.strip(), where)

    def atom_date(self, element: etree._Element | None, where: str) -> None:
        if element is not None:
            self.plausible(where, self.rfc_3339(element.text, where))

    def links(self, parent: etree._Element, where: str, self_url: str | None) -> None:
        links = parent.findall(f"{ATOM}link")
        seen: set[tuple[str, str | None, str | None]] = set()
        for link in links:
            href, rel = link.get("href"), link.get("rel", "alternate")
            if not href:
                self.add(ERROR, "MissingHref", f"{where}/link", "a link needs an href")
                continue
            key = (rel, link.get("type"), link.get("hreflang"))
            if rel == "alternate" and key in seen:
                self.add(ERROR, "DuplicateAtomLink", f"{where}/link", f"{key}")
            seen.add(key)
            if link.text and link.text.strip():
                self.add(WARNING, "AtomLinkNotEmpty", f"{where}/link", link.text)
        if parent.tag == f"{ATOM}feed":
            self.self_link([link for link in links if link.get("rel") == "self"],
                           where, self_url, "MissingSelf")

    def self_link(self, links: list[etree._Element], where: str, self_url: str | None,
                  missing: str) -> None:
        if not links:
            self.add(WARNING, missing, where, 'no atom:link rel="self"')
            return
        href = links[0].get("href") or ""
        if not FULL_URI.fullmatch(href):
            self.add(WARNING, "RelativeSelf", where, href)
        if self_url is not None and href != self_url:
            self.add(WARNING, "SelfDoesntMatchLocation", where, f"{href} != {self_url}")

    def text_construct(self, element: etree._Element | None, where: str) -> None:
        """An Atom text construct: text (no markup in it), or html (safe, absolute links)."""
        if element is None:
            return
        kind = element.get("type", "text")
        if kind not in ("text", "html", "xhtml"):
            self.add(ERROR, "InvalidTextType", where, kind)
            return
        value = element.text or ""
        if kind == "html":
            self.safe_html(value, where)
        elif kind == "text":
            self.no_markup(element, value, where, "ContainsUndeclaredHTML", rss=False)
        if not value.strip() and len(element) == 0:
            self.add(WARNING, "NotBlank", where, "empty")

    # ---- RSS 2.0 and the RSS Advisory Board's profile ------------------------------------

    def rss(self, root: etree._Element, self_url: str | None) -> None:
        if root.get("version") != "2.0":
            self.add(ERROR, "InvalidRSSVersion", "rss", str(root.get("version")))
        channels = root.findall("channel")
        if len(channels) != 1:
            self.add(ERROR, "MissingChannel" if not channels else "DuplicateElement", "rss",
                     f"{len(channels)} channels")
            return
        channel = channels[0]
        self.required(channel, "channel", "", ("title", "link", "description"))
        self.single(channel, "channel", "", tuple(RSS_SINGLE & RSS_CHANNEL))
        self.core_elements(channel, "channel", RSS_CHANNEL)
        self.full_url(channel.findtext("link"), "channel/link")
        self.self_link([link for link in channel.findall(f"{ATOM}link")
                        if link.get("rel") == "self"], "channel", self_url, "MissingAtomSelfLink")
        for tag in ("pubDate", "lastBuildDate"):
            self.rfc_822(channel.find(tag), f"channel/{tag}")
        for tag in RSS_CHANNEL_TEXT:
            for element in channel.findall(tag):
                self.plain_text(element, f"channel/{tag}")
        for tag in ("managingEditor", "webMaster"):
            self.email_with_name(channel.find(tag), f"channel/{tag}")
        items = channel.findall("item")
        seen_item = False
        for child in channel:
            if child.tag == "item":
                seen_item = True
            elif seen_item and child.tag in RSS_CHANNEL:
                self.add(WARNING, "MisplacedItem", f"channel/{child.tag}",
                         "channel elements should come before the items")
        for number, item in enumerate(items, start=1):
            self.rss_item(item, f"item[{number}]")
        self.unique("DuplicateValue", [(f"item[{n}]/guid", i.findtext("guid"))
                                       for n, i in enumerate(items, start=1)
                                       if i.find("guid") is not None], level=ERROR)
        self.unique("DuplicatePublished", [(f"item[{n}]/pubDate",
                                            _rfc_822_moment(i.findtext("pubDate")))
                                           for n, i in enumerate(items, start=1)
                                           if i.find("pubDate") is not None])
        self.characters(root)

    def rss_item(self, item: etree._Element, where: str) -> None:
        if item.find("title") is None and item.find("description") is None:
            self.add(ERROR, "ItemMustContainTitleOrDescription", where, "")
        self.single(item, where, "", (*RSS_SINGLE & RSS_ITEM, "description"))
        self.core_elements(item, where, RSS_ITEM)
        self.full_url(item.findtext("link"), f"{where}/link")
        self.guid(item.find("guid"), f"{where}/guid")
        self.rfc_822(item.find("pubDate"), f"{where}/pubDate")
        for tag in RSS_ITEM_TEXT:
            for element in item.findall(tag):
                self.plain_text(element, f"{where}/{_local(tag)}")
        self.email_with_name(item.find("author"), f"{where}/author")
        for core, extension in (("author", f"{DC}creator"), ("category", f"{DC}subject"),
                                ("pubDate", f"{DC}date"), ("guid", f"{ATOM}id")):
            if item.find(core) is not None and item.find(extension) is not None:
                self.add(WARNING, "DuplicateItemSemantics", where,
                         f"both {core} and {_local(extension)}")
        tags = [child.tag for child in item]
        if f"{CONTENT}encoded" in tags and (
                "description" not in tags
                or tags.index("description") > tags.index(f"{CONTENT}encoded")):
            self.add(WARNING, "NeedDescriptionBeforeContent", where,
                     "description should precede content:encoded")
        for tag in ("description", f"{CONTENT}encoded"):
            element = item.find(tag)
            if element is not None:
                self.safe_html(element.text or "", f"{where}/{_local(tag)}")

    def guid(self, guid: etree._Element | None, where: str) -> None:
        if guid is None:
            self.add(WARNING, "MissingGuid", where, "an item should have a guid")
            return
        value = guid.text or ""
        flag = guid.get("isPermaLink", "true")
        if flag not in ("true", "false"):
            self.add(ERROR, "InvalidBooleanAttribute", where, f"isPermaLink={flag!r}")
        if flag == "true":
            if not FULL_URI.fullmatch(value):
                self.add(ERROR, "InvalidHttpGUID", where, value)
            elif value.lower().startswith(("tag:", "urn:uuid:")):
                self.add(ERROR, "InvalidPermalink", where, f"{value} is not a URL to open")
        elif value.isdigit() and len(value) < 9:
            self.add(WARNING, "NotSufficientlyUnique", where, value)

    def plain_text(self, element: etree._Element, where: str) -> None:
        """RSS character data: hexadecimal references for '&' and '<' (the profile)."""
        raw = self.raw_text(element)
        if raw is not None and NOT_HEX.search(raw):
            self.add(WARNING, "CharacterData", where,
                     f'Encode "&" and "<" in plain text using hexadecimal character '
                     f"references: {raw!r}")
        self.no_markup(element, element.text or "", where, "ContainsHTML", rss=True)

    def email_with_name(self, element: etree._Element | None, where: str) -> None:
        """An address with a name, as the profile recommends: 'luksa@example.com (Luksa)'."""
        if element is None:
            return
        value = (element.text or "").strip()
        match = re.fullmatch(r"(?P<address>\S+@\S+) \((?P<name>.+)\)", value)
        if match is None:
            rule = "MissingRealName" if re.fullmatch(r"\S+@\S+", value) else "EmailFormat"
            self.add(WARNING, rule, where, value)
        elif not re.fullmatch(r"[\w.%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+",
                              match["address"]):
            self.add(ERROR, "InvalidContact", where, value)

    def rfc_822(self, element: etree._Element | None, where: str) -> None:
        if element is None:
            return
        value = element.text or ""
        match = RFC_822.fullmatch(value)
        if match is None:
            loose = RFC_822_LOOSE.fullmatch(re.sub(r"\s+", " ", value.strip().lower()))
            self.add(WARNING if loose else ERROR,
                     "ProblematicalRFC822Date" if loose else "InvalidRFC2822Date", where, value)
            return
        moment = _rfc_822_moment(value)
        if moment is None:
            self.add(ERROR, "InvalidRFC2822Date", where, value)
            return
        written = parsedate_tz(value)
        # The day of the week of the date as written (in its own zone, not UTC's).
        if match["dow"] and written and match["dow"] != f"{datetime(*written[:3]):%a}":
            self.add(ERROR, "IncorrectDOW", where, value)
        self.plausible(where, moment)

    def full_url(self, value: str | None, where: str) -> None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+.*", value.strip()):
            self.add(ERROR, "InvalidFullLink", where, value)

    # ---- shared -----------------------------------------------------------------------

    def required(self, parent: etree._Element, where: str, ns: str, tags: tuple[str, ...]
                 ) -> None:
        for tag in tags:
            if parent.find(f"{ns}{tag}") is None:
                self.add(ERROR, "MissingElement", where, f"no {tag}")

    def single(self, parent: etree._Element, where: str, ns: str, tags: tuple[str, ...]
               ) -> None:
        for tag in tags:
            if len(parent.findall(f"{ns}{tag}")) > 1:
                self.add(ERROR, "DuplicateElement", where, f"more than one {tag}")

    def core_elements(self, parent: etree._Element, where: str, known: frozenset[str]
                      ) -> None:
        """RSS 2.0's own elements have no namespace; anything else needs one."""
        for child in parent:
            if isinstance(child.tag, str) and not child.tag.startswith("{") and \
                    child.tag not in known:
                self.add(ERROR, "UndefinedElement", f"{where}/{child.tag}", "not RSS 2.0")

    def uri(self, value: str, where: str) -> None:
        scheme = value.split(":", 1)[0].lower()
        if scheme == "tag":
            if not TAG_URI.fullmatch(value):
                self.add(ERROR, "InvalidTAG", where, value)
        elif scheme == "urn":
            if value.lower().startswith("urn:uuid:") and not UUID_URN.fullmatch(value):
                self.add(ERROR, "InvalidUUID", where, value)
        elif not FULL_URI.fullmatch(value):
            self.add(ERROR, "InvalidFullLink", where, value)
        elif scheme in ("http", "https") and _canonical(value) != value:
            self.add(WARNING, "NonCanonicalURI", where, f"{value} (should be {_canonical(value)})")

    def rfc_3339(self, value: str | None, where: str, *, quiet: bool = False
                 ) -> datetime | None:
        if value is not None and RFC_3339.fullmatch(value):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
        if not quiet:
            self.add(ERROR, "InvalidRFC3339Date", where, repr(value))
        return None

    def plausible(self, where: str, moment: datetime | None) -> None:
        if moment is not None and not EARLIEST <= moment <= self.now + timedelta(minutes=10):
            self.add(WARNING, "ImplausibleDate", where, moment.isoformat())

    def unique(self, rule: str, values: list[tuple[str, object]], level: str = WARNING
               ) -> None:
        first: dict[object, str] = {}
        for where, value in values:
            if value is None:
                continue
            if value in first:
                self.add(level, rule, where, f"{value} is also {first[value]}'s")
            else:
                first[value] = where

    def raw_text(self, element: etree._Element) -> str | None:
        """The element's text as written in the file, between its tags (None if the
        element spans lines in a way this does not follow)."""
        start = (element.sourceline or 1) - 1
        end = start + (element.text or "").count("\n") + 1
        written = "\n".join(self.lines[start:end])
        qname = _local(element.tag)
        if element.prefix:
            qname = f"{element.prefix}:{qname}"
        match = re.search(rf"<{re.escape(qname)}(\s[^>]*)?>(.*?)</{re.escape(qname)}>",
                          written, re.DOTALL)
        return None if match is None else match[2]

    def no_markup(self, element: etree._Element, text: str, where: str, rule: str, *,
                  rss: bool) -> None:
        """Plain text that reads as HTML: an end tag, an entity, or (RSS) '<' or '&#',
        unless the element's lines use hexadecimal references (the validator's test)."""
        tags = [t for t in re.findall(r"</(\w+)>", text) if t.lower() in HTML_ELEMENTS]
        if tags:
            self.add(WARNING, rule, where, f"contains </{tags[0]}>")
            return
        start = (element.sourceline or 1) - 1
        lines = self.lines[start:start + text.count("\n") + 1]
        if any("&#x" in line for line in lines):
            return
        entities = [e for e in re.findall(r"&(#?\w+)", text)
                    if e in name2codepoint or e == "apos" or not e.isalpha()]
        if entities:
            self.add(WARNING, rule, where, f"contains &{entities[0]}")
        elif rss and re.search(r"&#[x0-9]|<[/a-zA-Z]", text):
            self.add(WARNING, "CharacterData", where,
                     'Encode "&" and "<" in plain text using hexadecimal character references')

    def safe_html(self, html: str, where: str) -> None:
        """HTML a reader can show: no risky elements or attributes, absolute links."""
        scanner = _HtmlScanner()
        scanner.feed(html)
        scanner.close()
        for tag, attributes in scanner.tags:
            if tag not in HTML_ELEMENTS:
                self.add(WARNING, "NotHtml", where, f"<{tag}> is not HTML")
            elif tag in RISKY_ELEMENTS:
                self.add(WARNING, "SecurityRisk", where, f"<{tag}>")
            for name, value in attributes:
                if name == "style":
                    self.style(value or "", where)
                elif name not in SAFE_ATTRIBUTES and not name.startswith("data-"):
                    self.add(WARNING, "SecurityRiskAttr", where, f"<{tag} {name}>")
                if (tag, name) in (("a", "href"), ("img", "src")) and \
                        not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value or ""):
                    self.add(WARNING, "ContainsRelRef", where, f"<{tag} {name}={value!r}>")

    def style(self, style: str, where: str) -> None:
        for declaration in filter(str.strip, style.split(";")):
            prop, _, value = declaration.partition(":")
            if prop.strip().lower() not in SAFE_CSS or re.search(
                    r"url\(|expression|javascript:|\\", value, re.IGNORECASE):
                self.add(WARNING, "DangerousStyleAttr", where, declaration.strip())

    def characters(self, root: etree._Element) -> None:
        """Text with C1 controls or U+FFFD: Windows-1252 or double-encoded UTF-8."""
        for element in root.iter():
            for text in (element.text, element.tail):
                if text and re.search("[\x80-\x9f\ufffd]", text):
                    self.add(WARNING, "BadCharacters", _local(str(element.tag)), repr(text))


class _HtmlScanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _rfc_822_moment(value: str | None) -> datetime | None:
    parsed = parsedate_tz(value or "")
    if parsed is None:
        return None
    try:
        naive = datetime(*parsed[:6])  # type: ignore[misc]
    except ValueError:
        return None
    return (naive - timedelta(seconds=parsed[9] or 0)).replace(tzinfo=UTC)


def _canonical(uri: str) -> str:
    """An http(s) URI as RFC 3986 normalises it: scheme and host in lower case, no default
    port, a path, upper-case percent escapes."""
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = re.sub(r"%[0-9a-f]{2}", lambda m: m[0].upper(), parts.path or "/")
    rebuilt = f"{parts.scheme.lower()}://{netloc}{path}"
    if parts.query:
        rebuilt += f"?{parts.query}"
    if parts.fragment:
        rebuilt += f"#{parts.fragment}"
    return rebuilt


def assert_valid(name: str, data: bytes, **options: object) -> None:
    """Assert the feed gives no error and no warning, listing every finding if it does."""
    findings = check_feed(name, data, **options)  # type: ignore[arg-type]
    assert not findings, f"{name}:\n" + "\n".join(map(str, findings))
