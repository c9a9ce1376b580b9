"""A WebSub hub for the tests: a real HTTP server on a loopback port, in a thread.

    with TestHub(verify=True) as hub:          # listening on hub.url
        hub.fail_next(2, 503, retry_after="0")
        ...                                      # postroom pings it
        hub.wait_for(lambda pings: len(pings) >= 3)

It takes `hub.mode=publish` pings (form-encoded POSTs; anything else is a 400), answers 204
or the failures it was told to give, and records every request (`Received`). Like a real hub
(Switchboard), with `verify=True` it fetches the pinged URL before answering and refuses
(400) a topic that does not answer 2xx; the status and body it fetched are kept with the
ping. `hold()` keeps every request waiting for `release()`: a hub that takes the connection
and does not answer. Waits are on a condition, with a deadline: no fixed sleeps.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Received:
    """One request the hub got, and how it answered."""

    form: dict[str, list[str]]
    content_type: str
    user_agent: str
    status: int  # what the hub answered
    fetched_status: int | None = None  # verify=True: what the topic answered
    fetched_body: bytes = b""
    fetched_headers: dict[str, str] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.form.get("hub.url", [""])[0]

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # a client that gave up on a held request: nothing to say


class TestHub:
    """A WebSub hub on 127.0.0.1 (port chosen by the system) recording its publish pings."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, *, verify: bool = False) -> None:
        self.verify = verify
        self.received: list[Received] = []
        self._failures: list[tuple[int, str | None]] = []
        self._changed = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        self.arrived = threading.Event()  # set when any request arrives (held or not)
        self.server = QuietServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       name="websub-hub",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> TestHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    # ---- what it is told to do ----------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next `count` pings with `status` (and a Retry-After header)."""
        with self._changed:
            self._failures += [(status, retry_after)] * count

    def hold(self) -> None:
        """Keep every request from now on waiting, unanswered, until `release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    # ---- what it saw --------------------------------------------------------------------

    def pings(self) -> list[Received]:
        with self._changed:
            return list(self.received)

    def delivered_topics(self) -> list[str]:
        """The topics of the pings the hub took (2xx), in the order they came."""
        return [r.topic for r in self.pings() if r.delivered]

    def wait_for(self, condition: Callable[[list[Received]], bool],
                 timeout: float = 10.0) -> list[Received]:
        """Wait until condition(every request so far) holds; return the requests."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(list(self.received)), timeout):
                raise AssertionError(f"the hub never saw what was expected in {timeout} s; "
                                     f"it got: {self.received}")
            return list(self.received)

    # ---- serving ------------------------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    def _next_failure(self) -> tuple[int, str | None] | None:
        with self._changed:
            return self._failures.pop(0) if self._failures else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                hub.arrived.set()
                length = int(self.headers.get("content-length", "0"))
                form = parse_qs(self.rfile.read(length).decode("utf-8"))
                hub._open.wait()
                status, retry_after = hub._next_failure() or (204, None)
                fetched: tuple[int | None, bytes, dict[str, str]] = (None, b"", {})
                if form.get("hub.mode") != ["publish"] or not form.get("hub.url"):
                    status = 400
                elif status == 204 and hub.verify:
                    fetched = _fetch(form["hub.url"][0])
                    if fetched[0] is None or not 200 <= fetched[0] < 300:
                        status = 400  # Switchboard: "The topic URL returned a 404"
                hub._record(Received(form, self.headers.get("content-type", ""),
                                     self.headers.get("user-agent", ""), status, *fetched))
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                body = b"" if status == 204 else f"test hub: {status}\n".encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: the test reads `received`

        return Handler


def _fetch(url: str) -> tuple[int | None, bytes, dict[str, str]]:
    """GET the topic as a hub would; return its status, body and headers (None: no answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read(), _lower(response.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read(), _lower(err.headers.items())
    except OSError:
        return None, b"", {}


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}
