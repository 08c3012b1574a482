"""chat.auth: channels' AuthMiddlewareStack, the user loaded in the batched hop."""

import gc
import types

import pytest
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator
from django.contrib.auth.models import User

from chat.auth import AuthMiddlewareStack
from chat.tests.conftest import communicator, logged_in_session_values, session_cookie_for

pytestmark = pytest.mark.django_db(transaction=True)


async def passed_on(headers: list, kind: str = "websocket") -> tuple[dict, object, object]:
    """The scope and the send that AuthMiddlewareStack hands the application, and the
    send it was given."""
    seen = []

    async def application(scope, receive, send):
        seen.append((scope, send))

    scope = {"type": kind, "path": "/ws/chat/lobby/", "headers": headers}
    communicator = ApplicationCommunicator(AuthMiddlewareStack(application), scope)
    await communicator.wait(timeout=5)
    (scope, send), server_send = seen[0], communicator.output_queue.put
    return scope, send, server_send


async def user_of(headers: list) -> object:
    """The scope["user"] that AuthMiddlewareStack hands the application for these headers."""
    scope, _, _ = await passed_on(headers)
    return scope["user"]._wrapped


async def test_a_handshake_without_a_session_cookie_speaks_as_an_anonymous_user():
    assert not (await user_of([])).is_authenticated


async def test_a_signed_in_sessions_handshake_speaks_as_its_user():
    user = await database_sync_to_async(User.objects.create_user)("ann", password="pw-123456")
    cookie = await session_cookie_for(**logged_in_session_values(user))
    assert (await user_of([cookie])).pk == user.pk


async def test_a_session_whose_password_changed_since_speaks_as_an_anonymous_user():
    user = await database_sync_to_async(User.objects.create_user)("bob", password="pw-123456")
    cookie = await session_cookie_for(**logged_in_session_values(user))
    user.set_password("pw-changed-654321")
    await database_sync_to_async(user.save)()
    assert not (await user_of([cookie])).is_authenticated


async def test_a_sockets_frames_go_straight_to_the_server_not_through_a_session_wrapper():
    _, send, server_send = await passed_on([await session_cookie_for(guest_name="ann")])
    assert send == server_send


async def test_an_http_response_still_goes_through_the_session_wrapper_which_sets_cookies():
    _, send, server_send = await passed_on([], kind="http")
    assert send != server_send


# The middleware in front of the consumer that decides without waiting (mysite.asgi).
NOT_KEPT = {
    "TrustedProxyMiddleware.__call__",
    "StrictOriginValidator.__call__",
    "CookieMiddleware.__call__",
    "SessionMiddleware.__call__",
    "AuthMiddleware.__call__",
}


@pytest.mark.usefixtures("redis_channel_layer")
async def test_an_open_sockets_middleware_keeps_no_coroutine_of_its_own():
    socket = communicator("lobby")
    connected, _ = await socket.connect()
    assert connected
    try:
        gc.collect()
        # type(), not isinstance: that would set up the lazy objects earlier tests left
        # (a request's csp_nonce raises once its response is written).
        running = {
            o.cr_code.co_qualname for o in gc.get_objects() if type(o) is types.CoroutineType
        }
        assert "ChatConsumer.__call__" in running  # the socket's own, as long as it is open
        assert running & NOT_KEPT == set()  # each kept one and the scope it was given
    finally:
        await socket.disconnect()
