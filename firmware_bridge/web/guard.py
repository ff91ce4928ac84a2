"""What keeps the head's web page from being misused: request rates, body sizes, the token and
the CSRF check, and the headers every answer carries.

Choices:

* **Rates**: a token bucket per client address (``rate`` requests per second, ``burst`` at
  once; 20 and 60 by default: a live page refreshing every second and a sample page with its
  ten pictures fit, a loop hammering the head does not). Over it: 429 with ``Retry-After``.
  At most ``clients`` addresses are remembered; the longest idle is forgotten first.
* **Bodies**: at most ``max_body`` bytes (16 KiB: a label form is well under 2 KiB), by the
  ``Content-Length`` header, which a request with a body must have (uvicorn's HTTP parser
  reads no byte past it); over it: 413, without it: 411.
* **Changing state** (labels, abort) needs the token of the head file's ``[web]`` (or
  ``GLASS_INSPECT_WEB_TOKEN``), typed in the form, and the CSRF check: the double-submit
  cookie (a random value set in a ``SameSite=Strict`` cookie when a page is shown, repeated
  in a hidden field of its forms; both must be there and equal), plus, where the browser sends
  ``Origin``, an origin equal to the page's own. Comparisons are constant-time.
* **Headers**: a Content-Security-Policy that allows the page's own pictures and inline style
  only (the page has no script), no framing, no sniffing, no referrer.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse

CSRF_COOKIE = "gi_csrf"
CSRF_FIELD = "csrf"
TOKEN_FIELD = "token"
TOKEN_ENV = "GLASS_INSPECT_WEB_TOKEN"

HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class TokenBuckets:
    """Per-client token buckets; :meth:`take` says whether a request may go on, and if not,
    in how many seconds it could."""

    def __init__(self, rate: float = 20.0, burst: float = 60.0, clients: int = 1024) -> None:
        self.rate, self.burst, self.clients = rate, burst, clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """0 when the request may go on, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level, then = self._buckets.pop(client, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            wait = 0.0 if level >= 1.0 else (1.0 - level) / self.rate
            self._buckets[client] = (level - 1.0 if wait == 0.0 else level, now)
            while len(self._buckets) > self.clients:
                self._buckets.popitem(last=False)
            return wait


class Guard:
    """ASGI middleware: rate and body limits, and the security headers on every answer."""

    def __init__(self, app, buckets: TokenBuckets | None = None, max_body: int = 16 * 1024
                 ) -> None:
        self.app = app
        self.buckets = buckets or TokenBuckets()
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.buckets.take(client)
        if wait > 0:
            await self._refuse(scope, receive, send, 429, "too many requests from "
                               f"{client}; try again in {wait:.1f} s",
                               [(b"retry-after", str(max(1, round(wait))).encode())])
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # the HTTP server holds a body to its Content-Length: with one, the limit is exact
            await self._refuse(scope, receive, send, 411, "a request with a body needs "
                               "Content-Length")
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(scope, receive, send, 413, "request body larger than "
                               f"{self.max_body} bytes")
            return

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _refuse(self, scope, receive, send, status: int, text: str,
                      headers: list | None = None) -> None:
        response = PlainTextResponse(text + "\n", status_code=status)
        response.raw_headers += HEADERS + (headers or [])
        await response(scope, receive, send)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    """Both given, non-empty and equal (constant time)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def refusal(request, form, token: str) -> str | None:
    """Why a state-changing request may not go on, or None: the CSRF check first (a request
    from another site is refused before its token is even looked at), then the token."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return f"the request came from another site ({origin}), not from this page"
    if not same(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
        return ("the form's CSRF check failed (cookies off, or a form from an older page): "
                "reload the page and send it again")
    if not token:
        return (f"this page is read-only: the head file has no [web] token and {TOKEN_ENV} is "
                "not set")
    if not same(form.get(TOKEN_FIELD), token):
        return "wrong or missing token (the head file's [web] token)"
    return None
