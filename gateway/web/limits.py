"""HTTP input limits, checked before anything else reads the request.

The outermost middleware of the web app. Before Starlette, the session cookie code or any
route sees a request, it

* caps the number and total size of the request's headers (431);
* parses the Cookie header itself, in one linear pass, and refuses pathological ones (too
  long, too many cookies, unbalanced quotes, long backslash runs) with 400: Python's own
  cookie unquoting is quadratic on backslashes (CVE-2024-7592), and Starlette calls it on
  every request that has a cookie;
* caps the request body per route while it streams in (413): a declared Content-Length over
  the limit is refused before a byte of the body is read, and a chunked body is counted as
  it arrives and cut off at the limit. This happens before authentication, so an anonymous
  client cannot make the server buffer a large body just to be told it has no key.

Every refusal is an RFC 9457 problem document (``application/problem+json``) that names the
limit, never the value that broke it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.web.problems import MEDIA_TYPE, TYPE_BASE

COOKIES_STATE = "cb_cookies"
# How much of a refused body is read and thrown away so the client sees the 413.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0
# A cookie value may hold a few escaped characters; nothing we set holds any backslash.
MAX_BACKSLASH_RUN = 8
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True)
class Limits:
    """The caps; :func:`from_config` fills them from ``[web]``."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_cookie_bytes: int = 8 * 1024
    max_cookies: int = 50
    # Bodies: the JSON API, and everything else (HTML forms). A route that needs more (a
    # future attachments upload) adds its path prefix here with its own cap.
    max_json_bytes: int = 1024 * 1024
    max_form_bytes: int = 256 * 1024
    routes: Mapping[str, int] = field(default_factory=dict)

    def body_limit(self, path: str) -> int:
        """The body cap for ``path``: the longest matching route prefix, else by area."""
        best = ""
        for prefix in self.routes:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        if best:
            return self.routes[best]
        if path == "/api/v1" or path.startswith("/api/"):
            return self.max_json_bytes
        return self.max_form_bytes


class CookieRefused(ValueError):
    """The Cookie header is one we will not parse; the message names the rule, not the value."""


def parse_cookies(raw: str, *, max_cookies: int = 50) -> dict[str, str]:
    """Parse a Cookie header in linear time, or raise :class:`CookieRefused`.

    Pairs are ``name=value`` separated by ``;``. A value may be wrapped in double quotes;
    inside them ``\\x`` stands for ``x``. Names that are not RFC 6265 tokens are skipped (as
    browsers' stray cookies should not cost a visitor the page); structural damage is refused:
    an unbalanced quote, a quote inside a value, a long run of backslashes, too many pairs.
    """
    out: dict[str, str] = {}
    pairs = 0
    for chunk in raw.split(";"):
        name, eq, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not name and not value:
            continue
        pairs += 1
        if pairs > max_cookies:
            raise CookieRefused(f"more than {max_cookies} cookies")
        run = 0
        for ch in value:
            run = run + 1 if ch == "\\" else 0
            if run > MAX_BACKSLASH_RUN:
                raise CookieRefused("a cookie value holds a long run of backslashes")
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"') or _escaped_end(value):
                raise CookieRefused("a cookie value has an unbalanced quote")
            value = _unescape(value[1:-1])
        elif '"' in value:
            raise CookieRefused("a cookie value has a stray quote")
        if not eq or not name or not all(ord(c) < 128 and ord(c) in _TOKEN_CHARS for c in name):
            continue
        # The last cookie of a name wins, as in Starlette's parser that this one replaces.
        out[name] = value
    return out


def _escaped_end(quoted: str) -> bool:
    # '"ab\"' ends with an escaped quote, not a closing one: count the backslashes before it.
    n = 0
    for ch in reversed(quoted[1:-1]):
        if ch != "\\":
            break
        n += 1
    return n % 2 == 1


def _unescape(inner: str) -> str:
    out: list[str] = []
    escaped = False
    for ch in inner:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            raise CookieRefused("a cookie value has a stray quote")
        else:
            out.append(ch)
    return "".join(out)


def _problem(
    status: int, slug: str, title: str, detail: str
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    ).encode()
    headers = [
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


async def _refuse(
    send: Send, status: int, slug: str, title: str, detail: str, drain: Receive | None = None
) -> None:
    headers, body = _problem(status, slug, title, detail)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if drain is not None:
        await _drain(drain)
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read and discard what the client is still sending, a little while, then give up.

    A client that sends its whole body before reading (most do, without Expect: 100-continue)
    would otherwise see the connection reset instead of our 413. Nothing is kept, so memory
    stays flat; past DRAIN_BYTES or DRAIN_SECONDS the connection is simply closed.
    """
    drained = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while drained < DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


class InputLimits:
    """The outermost middleware: headers, cookies and body size, before anything else."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self.limits
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if len(headers) > lim.max_headers:
            await _refuse(
                send,
                431,
                "headers-too-large",
                "Request header fields too large",
                f"a request may carry at most {lim.max_headers} header fields",
            )
            return
        total = 0
        cookie_bytes = 0
        declared: bytes | None = None
        for name, value in headers:
            total += len(name) + len(value) + 4
            if name == b"cookie":
                cookie_bytes += len(value) + 2
            elif name == b"content-length":
                if declared is not None and declared != value:
                    await _refuse(
                        send, 400, "bad-length", "Bad request", "conflicting Content-Length headers"
                    )
                    return
                declared = value
        if total > lim.max_header_bytes:
            await _refuse(
                send,
                431,
                "headers-too-large",
                "Request header fields too large",
                f"the request's header fields may total at most {lim.max_header_bytes} bytes",
            )
            return
        if cookie_bytes:
            if cookie_bytes > lim.max_cookie_bytes:
                await _refuse(
                    send,
                    400,
                    "bad-cookie",
                    "Bad request",
                    f"the Cookie header may be at most {lim.max_cookie_bytes} bytes; "
                    "clear this site's cookies",
                )
                return
            raw = "; ".join(v.decode("latin-1") for k, v in headers if k == b"cookie")
            try:
                cookies = parse_cookies(raw, max_cookies=lim.max_cookies)
            except CookieRefused as exc:
                await _refuse(
                    send,
                    400,
                    "bad-cookie",
                    "Bad request",
                    f"the Cookie header was refused ({exc}); clear this site's cookies",
                )
                return
            # Parsed once here, read by the session middleware instead of http.cookies.
            scope.setdefault("state", {})[COOKIES_STATE] = cookies
        limit = lim.body_limit(scope["path"])
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await _refuse(
                    send,
                    400,
                    "bad-length",
                    "Bad request",
                    "Content-Length must be a number of bytes",
                )
                return
            if int(declared) > limit:
                small = int(declared) <= DRAIN_BYTES
                await _refuse(
                    send, 413, "too-large", "Content too large", _too_large(limit),
                    drain=receive if small else None,
                )  # fmt: skip
                return
        await self._bounded(scope, receive, send, limit)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        refused = False  # the body went over the limit
        answered = False  # ...and the 413 is the answer (the app had not started one)
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused, answered
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        answered = True
                        drain = receive if message.get("more_body", False) else None
                        await _refuse(
                            send, 413, "too-large", "Content too large", _too_large(limit), drain
                        )
                    # The app sees the client go away; what it answers is dropped below.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The app failed on the body we cut off; the 413 is already the answer.


def _too_large(limit: int) -> str:
    return f"the request body may be at most {limit} bytes on this route"
