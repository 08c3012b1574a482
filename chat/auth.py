"""channels' AuthMiddlewareStack, with each socket's user loaded in the batched hop.

channels' AuthMiddleware loads a handshake's user with database_sync_to_async: a hop of
its own to the sockets' one thread for every connect, beside the connect's (batched,
chat.pipeline). Here channels' own get_user runs batched with the calls made alongside
it, so a burst of connects (a server's restart reconnects thousands) makes one hop per
batch, not one per socket; and a handshake without a session key makes none: its
session is empty, so its user is anonymous, as get_user finds without a query.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

from channels import auth
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.contrib.auth.models import AnonymousUser

from . import pipeline


class AuthMiddleware(auth.AuthMiddleware):
    """channels' AuthMiddleware, loading the user in a batched hop (pipeline.call_batched)."""

    async def resolve_scope(self, scope):
        """Load the session's user as channels' get_user does; without a session key, none."""
        if scope["session"].session_key is None:
            scope["user"]._wrapped = AnonymousUser()
        else:
            # channels' get_user itself, without its own hop (database_sync_to_async's func).
            scope["user"]._wrapped = await pipeline.call_batched(auth.get_user.func, scope)


def AuthMiddlewareStack(inner):  # noqa: N802 (channels' name)
    """channels.auth.AuthMiddlewareStack, with this module's AuthMiddleware."""
    return CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))
