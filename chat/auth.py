"""channels' AuthMiddlewareStack, with each socket's user loaded in the batched hop.

channels' AuthMiddleware loads a handshake's user with database_sync_to_async: a hop of
its own to the sockets' one thread for every connect, beside the connect's (batched,
chat.pipeline). Here channels' own get_user runs batched with the calls made alongside
it, so a burst of connects (a server's restart reconnects thousands) makes one hop per
batch, not one per socket; and a handshake without a session key makes none: its
session is empty, so its user is anonymous, as get_user finds without a query. An open
socket keeps its middleware's frames and scope copies for its whole life: these keep
fewer of them than channels' (10,000 idle sockets, benchmarks/connect.py).

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

from channels import auth, sessions
from channels.sessions import CookieMiddleware
from django.contrib.auth.models import AnonymousUser

from . import pipeline


class SessionMiddleware(sessions.SessionMiddleware):
    """channels' SessionMiddleware; a socket's frames go straight to the server.

    channels wraps every send to save a modified session with an HTTP response, which a
    socket never sends: its wrapper only cost each frame a call, and each open socket
    the wrapper.
    """

    async def __call__(self, scope, receive, send):
        """Load the scope's session; wrap send only for HTTP, which can carry a cookie."""
        wrapper = sessions.InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        if scope["type"] != "websocket":
            return await self.inner(wrapper.scope, receive, wrapper.send)
        # While the socket is open, this frame keeps neither the wrapper nor the scope
        # it was given (the one above keeps its own).
        scope, wrapper = wrapper.scope, None
        return await self.inner(scope, receive, send)


class AuthMiddleware(auth.AuthMiddleware):
    """channels' AuthMiddleware, loading the user in a batched hop (pipeline.call_batched)."""

    async def __call__(self, scope, receive, send):
        """As channels' does, with one copy of the scope, not two: an open socket holds
        each copy, and the coroutine that made it, for its whole life."""
        scope = dict(scope)
        self.populate_scope(scope)
        await self.resolve_scope(scope)
        return await self.inner(scope, receive, send)

    async def resolve_scope(self, scope):
        """Load the session's user as channels' get_user does; without a session key, none."""
        if scope["session"].session_key is None:
            scope["user"]._wrapped = AnonymousUser()
        else:
            # channels' get_user itself, without its own hop (database_sync_to_async's func).
            scope["user"]._wrapped = await pipeline.call_batched(auth.get_user.func, scope)


def AuthMiddlewareStack(inner):  # noqa: N802 (channels' name)
    """channels.auth.AuthMiddlewareStack, with this module's session and auth middleware."""
    return CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))
