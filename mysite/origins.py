"""The WebSocket handshake's Origin check: Django's CSRF origin rule, applied to sockets.

Browsers let any page open a WebSocket to any server, with the user's cookies: only the
`Origin` header tells the chat which page is asking. channels' AllowedHostsOriginValidator
compares its host name alone, so a page on another port or scheme of the same host
(`http://127.0.0.1:9999`) chats as whoever is logged in; and it never looks at `Host`.

StrictOriginValidator accepts a handshake when, as Django's CsrfViewMiddleware does for a
POST:
- its `Host` is one of ALLOWED_HOSTS (Django's own `request.get_host()`, so
  USE_X_FORWARDED_HOST and the DEBUG defaults apply as they do to HTTP), and
- its `Origin` is that host's own origin, scheme, host and port exactly: `http://` on
  `ws`, `https://` on `wss`, or on whatever SECURE_PROXY_SSL_HEADER says behind a TLS
  proxy; or one of CSRF_TRUSTED_ORIGINS, exactly or by its `https://*.example.com` form.

Anything else is refused before the application sees it (HTTP 403, no close frame), with
one warning line giving the client's address and the reason.

A program that is not a browser sends an API token instead (chat.tokens): in an
`Authorization: Bearer <token>` header, or, where headers cannot be set, as a subprotocol
`chat.token.<token>`. A valid token makes the socket its user's, with no Origin check (no
browser sends either, so no page can make a visitor's browser send it); an invalid one is
refused, never taken for a guest. Cookies are dropped from a token's handshake: it speaks
as the token only.
"""

import logging
from collections.abc import Awaitable
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.http.request import is_same_domain

from chat import metrics, tokens

logger = logging.getLogger("mysite.origins")


class _HandshakeRequest(HttpRequest):
    """Just enough of an HttpRequest for Django's host and scheme rules: its META.

    As Django's WSGIRequest, it does not call HttpRequest.__init__, whose empty query
    dicts, files and cookies took most of the check's time, at every handshake.
    """

    def __init__(self, scope: dict):
        self.META = {}
        for name, value in scope.get("headers", []):
            key = "HTTP_" + name.decode("latin1").upper().replace("-", "_")
            # Repeated headers are joined, as ASGIRequest does.
            old = self.META.get(key)
            value = value.decode("latin1")
            self.META[key] = value if old is None else f"{old},{value}"
        self._secure_transport = scope.get("scheme", "ws") in {"wss", "https"}

    def _get_scheme(self) -> str:
        # HttpRequest.scheme consults SECURE_PROXY_SSL_HEADER first, then this.
        return "https" if self._secure_transport else "http"


def refusal_reason(scope: dict) -> str | None:
    """Why a WebSocket handshake must be refused, or None when its Origin is trusted."""
    request = _HandshakeRequest(scope)
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        return "no Origin header"
    if "HTTP_HOST" not in request.META:
        return "no Host header"
    try:
        host = request.get_host()
    except DisallowedHost:
        return f"Host {request.META['HTTP_HOST']!r} is not in ALLOWED_HOSTS"
    if origin == f"{request.scheme}://{host}":
        return None
    if _is_trusted(origin):
        return None
    return f"Origin {origin!r} is neither {request.scheme}://{host} nor in CSRF_TRUSTED_ORIGINS"


def _is_trusted(origin: str) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS lists this origin, as Django's CSRF check reads it."""
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in (pattern for pattern in trusted if "*" not in pattern):
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, pattern_netloc.lstrip("*"))
        for pattern_scheme, pattern_netloc, *_ in (urlsplit(p) for p in trusted if "*" in p)
        if pattern_scheme == parsed.scheme
    )


class StrictOriginValidator:
    """ASGI middleware: passes a WebSocket on only when refusal_reason() finds none, or when
    it presents a valid API token (then as the token's user, without cookies)."""

    def __init__(self, application):
        self.application = application

    # An ASGI 3 application, though __call__ is no coroutine function (asgiref would
    # take it for ASGI 2's double callable).
    _asgi_single_callable = True

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """Refuse the handshake (403) unless its token is valid, or its Host and Origin are
        this site's.

        Not a coroutine: a handshake from this site's page goes on as the application's
        own, so an open socket keeps no frame of this check.
        """
        if scope["type"] != "websocket":
            raise ValueError("StrictOriginValidator only guards WebSocket connections")
        raw = tokens.presented_token(scope)
        if raw is not None:
            return self._as_token_user(raw, scope, receive, send)
        reason = refusal_reason(scope)
        if reason is None:
            return self.application(scope, receive, send)
        return self._refuse(reason, scope, receive, send)

    async def _as_token_user(self, raw: str, scope, receive, send):
        token = await database_sync_to_async(tokens.token_for)(raw)
        if token is None:
            reason = "an invalid, revoked or deactivated API token"
            return await self._refuse(reason, scope, receive, send)
        headers = [(name, value) for name, value in scope["headers"] if name != b"cookie"]
        scope = {**scope, "headers": headers, "api_token": token}
        return await self.application(scope, receive, send)

    async def _refuse(self, reason: str, scope, receive, send):
        client = scope.get("client") or ["unknown"]
        metrics.HANDSHAKES_REFUSED.labels("origin").inc()
        logger.warning(
            "WebSocket handshake from %s to %s refused: %s",
            client[0],
            scope.get("path"),
            reason,
            extra={"client": client[0]},
        )
        return await WebsocketDenier()(scope, receive, send)


class TokenUserMiddleware:
    """Inside AuthMiddlewareStack: a handshake with an API token speaks as the token's user.

    StrictOriginValidator checked the token and dropped the handshake's cookies, so the
    stack found no session and an anonymous user; the token's user replaces it. Not a
    channels BaseMiddleware, which copies every scope: an open socket holds each copy
    (and the coroutine that made it) for its whole life. Not a coroutine either: it
    returns the application's, which the layer above awaits, so it keeps no frame.
    """

    def __init__(self, application):
        self.application = application

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """Pass the socket on, as the token's user when it has one."""
        token = scope.get("api_token")
        if token is not None:
            scope = {**scope, "user": token.user}
        return self.application(scope, receive, send)
