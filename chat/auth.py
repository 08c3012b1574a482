"""channels' AuthMiddlewareStack, with each socket's user loaded in the batched hop.

channels' AuthMiddleware loads a handshake's user with database_sync_to_async: a hop of
its own to the sockets' one thread for every connect, beside the connect's (batched,
chat.pipeline). Here channels' own get_user runs batched with the calls made alongside
it, so a burst of connects (a server's restart reconnects thousands) makes one hop per
batch, not one per socket; and a handshake without a session key makes none: its
session is empty, so its user is anonymous, as get_user finds without a query. An open
socket keeps its middleware's frames and scope copies for its whole life: these keep
none but the last scope, returning the application's coroutine instead of a coroutine of
their own (a frame, and the scope it was given), unless they wait for the user's query
(10,000 idle sockets, benchmarks/connect.py).

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

from collections.abc import Awaitable

from channels import auth, sessions
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from . import pipeline


class CookieMiddleware(sessions.CookieMiddleware):
    """channels' CookieMiddleware, returning the application's coroutine, not one of its own."""

    _asgi_single_callable = True  # see mysite.origins.StrictOriginValidator

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """Parse the Cookie header into scope["cookies"], as channels' does."""
        if "headers" not in scope:
            raise ValueError("CookieMiddleware was passed a scope that did not have headers")
        cookies = next(
            (parse_cookie(value.decode("latin1")) for name, value in scope["headers"]
             if name == b"cookie"),
            {},
        )  # fmt: skip
        return self.inner(dict(scope, cookies=cookies), receive, send)


class SessionMiddleware(sessions.SessionMiddleware):
    """channels' SessionMiddleware; a socket's frames go straight to the server.

    channels wraps every send to save a modified session with an HTTP response, which a
    socket never sends: its wrapper only cost each frame a call, and each open socket
    the wrapper.
    """

    _asgi_single_callable = True  # see mysite.origins.StrictOriginValidator

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """Load the scope's session; wrap send only for HTTP, which can carry a cookie."""
        if scope["type"] != "websocket":
            return super().__call__(scope, receive, send)
        wrapper = sessions.InstanceSessionWrapper(scope, send)
        # channels' resolve_session, which awaits nothing: the store loads when first read.
        session_key = wrapper.scope["cookies"].get(wrapper.cookie_name)
        wrapper.scope["session"]._wrapped = wrapper.session_store(session_key)
        return self.inner(wrapper.scope, receive, send)


class AuthMiddleware(auth.AuthMiddleware):
    """channels' AuthMiddleware, loading the user in a batched hop (pipeline.call_batched)."""

    _asgi_single_callable = True  # see mysite.origins.StrictOriginValidator

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """As channels' does, with one copy of the scope, not two; without a session key, the
        user is anonymous, as get_user finds without a query, and the application goes on
        at once."""
        scope = dict(scope)
        self.populate_scope(scope)
        if scope["session"].session_key is None:
            scope["user"]._wrapped = AnonymousUser()
            return self.inner(scope, receive, send)
        return self._with_user(scope, receive, send)

    async def _with_user(self, scope, receive, send):
        # channels' get_user itself, without its own hop (database_sync_to_async's func).
        scope["user"]._wrapped = await pipeline.call_batched(auth.get_user.func, scope)
        return await self.inner(scope, receive, send)


def AuthMiddlewareStack(inner):  # noqa: N802 (channels' name)
    """channels.auth.AuthMiddlewareStack, with this module's cookie, session and auth
    middleware."""
    return CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))
