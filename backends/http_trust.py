"""One HTTP request to a server trusted only as it was given.

The partner's requests carry an API key and their replies are trained on, so a reply is
read on these terms (urllib's own would follow a redirect to any host with the key and
turn the POST into a bodiless GET, wait ``timeout`` per read rather than per reply, and
read a body of any size):

- a redirect is never followed: it ends the request with a line naming where it pointed
  (no user name, key or query of that address), so the key goes to ``partner.url`` only;
- ``timeout`` bounds the whole reply, connecting to the last byte: each read of the
  socket waits only for what is left of it, so a server trickling a byte a second ends
  in a timeout, not in an hour's wait;
- a body longer than ``max_bytes`` is not read further (nor at all when its
  ``Content-Length`` says so);
- a body that is not JSON is described (an event stream, a compressed body, a web page)
  so the line can say what to change.

Standard library only, like the partner. Proxies from the environment still apply.
"""

from __future__ import annotations

import functools
import http.client
import io
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

from saie_lite.safe_text import one_line


class BadReply(Exception):
    """The server answered, but with something not to read on: a redirect, a body over
    the size cap, or one that is not JSON. ``str()`` completes 'partner server URL ...'.
    None of these is retried: the next attempt would get the same."""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class _DeadlineReader(io.RawIOBase):
    """The response's socket reads, each waiting only for what is left until the deadline.
    Wraps the socket's own file object, which keeps the socket open until it is closed."""

    def __init__(self, inner, sock, deadline: float):
        self.inner, self.sock, self.deadline = inner, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self.sock.settimeout(_left(self.deadline))
        return self.inner.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: float, **kw):
        super().__init__(sock, *args, **kw)
        # the status line and headers are read through this too: a server trickling its
        # headers is bounded like one trickling its body
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


class _DeadlineConnection:
    """Mixin for http.client's connections: connecting, sending and every read of the
    response share one deadline."""

    def __init__(self, *args, deadline: float, **kw):
        super().__init__(*args, **kw)
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)

    def connect(self):
        self.timeout = _left(self._deadline)
        super().connect()
        self.sock.settimeout(_left(self._deadline))


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kw):
        return super().do_open(functools.partial(_HTTPConnection, deadline=req.deadline), req, **kw)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kw):
        return super().do_open(
            functools.partial(_HTTPSConnection, deadline=req.deadline), req, **kw
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an ``HTTPError`` for :func:`fetch` to turn into one line."""

    def _stop(self, req, fp, code, msg, headers):
        return None

    http_error_301 = http_error_302 = http_error_303 = _stop
    http_error_307 = http_error_308 = _stop


_OPENER = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


def public(url: str, base: str = "") -> str:
    """``url`` (relative to ``base``) as it may be shown: no user name or key before the
    host, no query or fragment (a signed address's token), control characters visible."""
    try:
        parts = urlsplit(urljoin(base, url) if base else url)
        host = parts.netloc.rpartition("@")[2]
        shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path
    except ValueError:
        shown = "an address that is not a URL"
    shown = one_line(shown)
    return shown if len(shown) <= 200 else shown[:200] + "..."


def fetch(url: str, data: bytes | None, headers: dict, timeout: float, max_bytes: int):
    """(headers, body) of a 2xx reply to a POST of ``data`` (a GET when None). An
    ``HTTPError`` for any other status but a redirect (its body read with
    :func:`error_text`), ``BadReply`` for a redirect or a body over ``max_bytes``, and
    ``TimeoutError`` or another network error when no whole reply came within ``timeout``."""
    req = urllib.request.Request(url, data=data, headers=headers)
    req.deadline = time.monotonic() + timeout
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if not 300 <= e.code < 400:
            raise
        location = e.headers.get("Location") if e.headers else None
        e.close()
        where = f"a redirect to {public(location, url)}" if location else "a redirect"
        raise BadReply(
            f"answered HTTP {e.code}, {where}, which is not followed (the request and its "
            "API key go only to partner.url): if the server now lives there, point "
            "partner.url at it"
        ) from None
    with resp:
        return resp.headers, _read_capped(resp, max_bytes)


def _too_big(max_bytes: int) -> BadReply:
    return BadReply(
        f"sent a reply over {max_bytes / 2**20:g} MB, which is not read: raise "
        "partner.max_reply_mb if its replies are meant to be that long"
    )


def _read_capped(resp, max_bytes: int) -> bytes:
    declared = (resp.headers.get("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_big(max_bytes)
    chunks, size = [], 0
    while True:
        # one byte past the cap tells a body at the cap from one over it
        chunk = resp.read(min(1 << 16, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _too_big(max_bytes)


def error_text(e: urllib.error.HTTPError, limit: int = 200) -> str:
    """The start of an error reply's body, fit for one line of a terminal: a hostile
    server's escape sequences are made visible, and at most ``limit`` characters of at
    most a few kilobytes read (within what is left of the deadline)."""
    try:
        raw = e.read(4 * limit)
    except (OSError, http.client.HTTPException, ValueError):
        return ""
    text = one_line(raw.decode("utf-8", "replace"))
    return text if len(text) <= limit else text[:limit] + "..."


def what_arrived(headers, body: bytes) -> str | None:
    """For a body that is not JSON: what it is and what to change, completing 'partner
    server URL ...'; None when it is just broken JSON (which may be a passing fault)."""
    ctype = one_line((headers.get("Content-Type") or "").split(";")[0].strip().lower())[:80]
    encoding = one_line((headers.get("Content-Encoding") or "").strip().lower())[:40]
    head = body[:512].lstrip().lower()
    if encoding not in ("", "identity") or body[:2] == b"\x1f\x8b":
        return (
            f"sent a compressed reply (Content-Encoding: {encoding or 'none, but gzip data'}), "
            "which is not decoded (saie-lite asks for Accept-Encoding: identity): turn "
            "compression off on the server or the proxy in front of it"
        )
    if ctype == "text/event-stream" or head.startswith((b"data:", b"event:")):
        return (
            f"sent an event stream ({ctype or 'data: lines'}), not one JSON reply "
            "(saie-lite asks for stream: false): set stream off on the server or proxy"
        )
    if ctype in ("text/html", "application/xhtml+xml") or head.startswith(
        (b"<!doctype html", b"<html")
    ):
        return (
            f"sent a web page ({ctype or 'HTML'}), not a chat completion: point partner.url "
            "at the server's OpenAI-compatible API (it usually ends in /v1)"
        )
    return None
