"""A deactivated account is signed out everywhere and its browsers are refused as guests
(chat.deactivation): sessions, pages, endpoints, sockets, on every process."""

import json
import subprocess
import sys
import time

import pytest
import websocket
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client

from chat import deactivation, protocol
from chat.tests.conftest import (
    SocketsOnProcesses,
    communicator,
    logged_in_session_values,
    new_session,
)
from chat.tests.test_revocation import Browser, close_code_within, join_as
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("limits_count_from_zero")

# Every HTTP way into the chat a browser session uses: (method, path, answers in JSON).
WAYS_IN = [
    ("get", "/chat/", False),
    ("get", "/chat/lobby/", False),
    ("get", "/chat/lobby/messages/", True),
    ("get", "/api/rooms/", True),
    ("post", "/api/rooms/lobby/read/", True),
    ("post", "/accounts/name/", False),
    ("get", "/accounts/signup/", False),
    ("post", "/rooms/new/", False),
]


@pytest.fixture
def alice(transactional_db):
    return User.objects.create_user("alice", password="correct horse battery staple")


def _session_of(user) -> str:
    session = SessionStore()
    session.update(logged_in_session_values(user))
    session.create()
    return session.session_key


def _browser(session_key: str) -> Client:
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = session_key
    return client


def _deactivate(user):
    user.is_active = False
    user.save()


def test_deactivating_signs_out_every_session_of_the_user_and_marks_it(alice):
    bob = User.objects.create_user("bob")
    alices, bobs = [_session_of(alice), _session_of(alice)], _session_of(bob)
    _deactivate(alice)
    for key in alices:
        assert SessionStore(session_key=key).load() == {deactivation.DEACTIVATED_KEY: alice.pk}
    assert SessionStore(session_key=bobs).load()[SESSION_KEY] == str(bob.pk)


def test_a_deactivated_accounts_browser_is_refused_at_every_way_in(alice, redis_channel_layer):
    browser = _browser(_session_of(alice))
    _deactivate(alice)
    for method, path, json_answer in WAYS_IN:
        response = getattr(browser, method)(path)
        assert response.status_code == 403, path
        if json_answer:
            assert response.json()["error"]["code"] == "account_deactivated", path
        else:
            assert b"This account has been deactivated." in response.content, path


def test_reactivation_lets_the_user_log_in_again(alice, redis_channel_layer):
    browser = _browser(_session_of(alice))
    _deactivate(alice)
    assert browser.get("/chat/").status_code == 403
    alice.is_active = True
    alice.save()
    page = browser.get("/chat/")
    assert page.status_code == 200 and page.context["author"].is_guest  # signed out
    credentials = {"username": "alice", "password": "correct horse battery staple"}
    assert browser.post("/accounts/login/", credentials).status_code == 302
    assert not browser.get("/chat/").context["author"].is_guest


def test_a_deactivation_without_signals_is_refused_and_marked_at_the_next_request(
    alice, redis_channel_layer
):
    key = _session_of(alice)
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert _browser(key).get("/chat/lobby/").status_code == 403
    assert SessionStore(session_key=key).load() == {deactivation.DEACTIVATED_KEY: alice.pk}
    User.objects.filter(pk=alice.pk).update(is_active=True)
    assert _browser(key).get("/chat/lobby/").status_code == 200  # a guest now


def test_other_guests_and_users_are_not_refused(alice, redis_channel_layer):
    _deactivate(alice)
    assert Client().get("/chat/lobby/").status_code == 200
    bob = User.objects.create_user("bob")
    assert _browser(_session_of(bob)).get("/chat/lobby/").status_code == 200


async def test_deactivation_closes_the_users_sockets_with_4412_and_refuses_the_browser_after(
    join, alice
):
    key = await new_session(**logged_in_session_values(alice))
    socket = await join_as(join, key)
    bystander = await join("lobby")
    await database_sync_to_async(_deactivate)(alice)
    assert await close_code_within(socket) == protocol.CLOSE_ACCOUNT_DEACTIVATED
    assert await close_code_within(bystander, 0.3) is None

    cookie = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode())
    again = communicator("lobby", headers=[cookie])  # the page reconnecting with its cookie
    connected, _ = await again.connect()
    assert connected  # accepted, so that the page reads why
    closed = await again.receive_output(timeout=2)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4412)
    await again.wait()


# --- Across processes --------------------------------------------------------------------


def _close_code(socket: websocket.WebSocket) -> int:
    """The code of the close frame the server sends, reading past other frames."""
    socket.settimeout(5)
    while (frame := socket.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:
        pass
    return int.from_bytes(frame.data[:2], "big")


def test_deactivating_on_one_process_closes_sockets_on_both_and_refuses_the_browser(
    start_chat_server,
):
    first, second = start_chat_server(), start_chat_server()
    browser = Browser()
    password = "correct horse battery staple"
    fields = {"username": "leaver", "password1": password, "password2": password}
    browser.post_form(first.url, "/accounts/signup/", fields)  # signed up and logged in
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookie(settings.SESSION_COOKIE_NAME)}"
    sockets = SocketsOnProcesses([first, second], "farewell", cookie=cookie)
    sockets.sockets[0].send(json.dumps({"message": "as leaver"}))
    sockets.read_until(1)

    deactivate = (
        "from django.contrib.auth.models import User; "
        "user = User.objects.get(username='leaver'); user.is_active = False; user.save()"
    )
    manage = [sys.executable, "manage.py", "shell", "-c", deactivate]
    subprocess.run(manage, cwd=ROOT, env=first.env, check=True, capture_output=True)
    started = time.monotonic()
    assert [_close_code(socket) for socket in sockets.sockets] == [4412, 4412]
    assert time.monotonic() - started < 5
    sockets.close()

    again = websocket.create_connection(
        second.url.replace("http://", "ws://") + "/ws/chat/farewell/",
        origin=second.url,
        cookie=cookie,
        timeout=10,
    )
    assert _close_code(again) == protocol.CLOSE_ACCOUNT_DEACTIVATED
    again.close()
    with pytest.raises(Exception) as refused:
        browser.opener.open(first.url + "/chat/farewell/")
    assert refused.value.code == 403
    assert b"This account has been deactivated." in refused.value.read()
