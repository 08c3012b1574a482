"""API tokens (chat.tokens): stored as a hash, found by prefix, made and revoked on a page
and in the admin."""

import asyncio
import hashlib
import json
import subprocess
import sys
from datetime import timedelta

import pytest
import websocket
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from chat import protocol, tokens
from chat.models import ApiToken, Message
from chat.tests.conftest import (
    ALLOWED_HOST,
    ALLOWED_ORIGIN,
    next_frame,
    session_cookie_for,
    token_made_on,
)
from conftest import ROOT
from mysite.asgi import application

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="x")


def test_a_token_is_stored_only_as_its_hash_and_public_prefix(alice):
    token, raw = tokens.create_token(alice, "ci")
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    secret = raw.rsplit("_", 1)[1]
    assert all(secret not in str(value) for value in row.values())
    assert row["digest"] == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(f"chat_{row['prefix']}_")


def test_only_the_exact_token_finds_its_user(alice):
    token, raw = tokens.create_token(alice, "ci")
    assert tokens.token_for(raw) == token
    assert tokens.token_for(raw).user == alice
    other_secret = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    _, other = tokens.create_token(alice, "other")
    for wrong in (other_secret, raw + "x", raw.upper(), "", "Bearer " + raw, other[:18] + raw[18:]):
        assert tokens.token_for(wrong) is None


def test_an_inactive_users_token_authenticates_nobody(alice):
    _, raw = tokens.create_token(alice, "ci")
    alice.is_active = False
    alice.save()
    assert tokens.token_for(raw) is None


def test_a_revoked_token_authenticates_nobody(alice):
    token, raw = tokens.create_token(alice, "ci")
    token.delete()
    assert tokens.token_for(raw) is None


def test_last_use_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    token, raw = tokens.create_token(alice, "ci")
    with django_assert_num_queries(2):  # the lookup, and the first use's write
        tokens.token_for(raw)
    with django_assert_num_queries(1):
        tokens.token_for(raw)
    ApiToken.objects.filter(pk=token.pk).update(last_used=token.created - timedelta(minutes=2))
    with django_assert_num_queries(2):
        tokens.token_for(raw)


def test_a_token_needs_a_name_and_a_user_has_at_most_twenty(alice):
    with pytest.raises(tokens.InvalidToken):
        tokens.create_token(alice, "")
    for number in range(tokens.MAX_TOKENS_PER_USER):
        tokens.create_token(alice, f"t{number}")
    with pytest.raises(tokens.InvalidToken, match="revoke one"):
        tokens.create_token(alice, "one more")


# --- The page ------------------------------------------------------------------------------


def test_the_tokens_page_needs_a_login():
    response = Client().get("/accounts/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_logged_in_users_pages_link_to_their_tokens(alice):
    client = Client()
    assert "/accounts/tokens/" not in client.get("/chat/").content.decode()
    client.force_login(alice)
    assert 'href="/accounts/tokens/"' in client.get("/chat/").content.decode()


def test_a_token_made_on_the_page_is_shown_once_then_listed_by_prefix(alice):
    client = Client()
    client.force_login(alice)
    made = client.post("/accounts/tokens/", {"name": "deploy bot"})
    raw = made.context["new_token"]
    assert raw in made.content.decode()
    assert "no-store" in made["Cache-Control"] or "max-age=0" in made["Cache-Control"]
    listed = client.get("/accounts/tokens/").content.decode()
    assert raw not in listed
    assert "deploy bot" in listed and raw[:17] in listed


def test_a_nameless_token_is_refused_with_its_reason(alice):
    client = Client()
    client.force_login(alice)
    response = client.post("/accounts/tokens/", {"name": "  "})
    assert response.status_code == 400 and "Name the token" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_user_revokes_their_own_tokens_and_nobody_elses(alice):
    bob = User.objects.create_user("bob", password="x")
    mine, _ = tokens.create_token(alice, "mine")
    theirs, _ = tokens.create_token(bob, "theirs")
    client = Client()
    client.force_login(alice)
    for prefix in (theirs.prefix, mine.prefix):
        assert client.post("/accounts/tokens/", {"revoke": prefix}).status_code == 302
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["theirs"]


# --- The admin -----------------------------------------------------------------------------


def test_an_admin_makes_a_token_for_a_user_shown_once_and_revokes_it(alice):
    admin = User.objects.create_superuser("root", password="x")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/chat/apitoken/add/", {"user": alice.pk, "name": "from admin"}, follow=True
    )
    (shown,) = [str(m) for m in response.context["messages"] if "shown once" in str(m)]
    raw = shown.rsplit(" ", 1)[1]
    token = tokens.token_for(raw)
    assert (token.user, token.name) == (alice, "from admin")
    listing = client.get("/admin/chat/apitoken/").content.decode()
    assert token.prefix in listing and raw not in listing
    client.post(f"/admin/chat/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert tokens.token_for(raw) is None


# --- Sockets opened with a token -----------------------------------------------------------


def _token_socket(headers=(), subprotocols=None, origin: bytes | None = None):
    """A socket in lobby from a program: Host, no Origin unless given, no cookie."""
    all_headers = [(b"host", ALLOWED_HOST), *headers]
    if origin is not None:
        all_headers.append((b"origin", origin))
    return WebsocketCommunicator(
        application, "/ws/chat/lobby/", headers=all_headers, subprotocols=subprotocols
    )


def _bearer(raw: str):
    return [(b"authorization", f"Bearer {raw}".encode())]


@pytest.fixture
async def token_sockets(redis_channel_layer, transactional_db):
    """Open token sockets; every one is disconnected afterwards."""
    opened = []

    async def _open(**kwargs) -> tuple[WebsocketCommunicator, bool, int | str | None]:
        socket = _token_socket(**kwargs)
        connected, detail = await socket.connect()
        opened.append(socket)
        return socket, connected, detail

    yield _open
    await asyncio.gather(*(socket.disconnect() for socket in opened))


async def _says(socket, text: str) -> dict:
    await socket.send_json_to({"message": text})
    while (frame := await next_frame(socket)).get("message") != text:
        pass
    return frame


def test_a_handshake_presents_a_bearer_header_or_a_token_subprotocol():
    assert tokens.presented_token({"headers": [(b"authorization", b"Bearer abc")]}) == "abc"
    assert tokens.presented_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert tokens.presented_token({"subprotocols": ["chat", "chat.token.abc"]}) == "abc"
    assert tokens.presented_token({"headers": [(b"cookie", b"sessionid=x")]}) is None
    assert tokens.accepted_subprotocol({"subprotocols": ["chat.token.abc", "chat"]}) == "chat"
    assert tokens.accepted_subprotocol({"subprotocols": ["chat.token.abc"]}) == "chat.token.abc"
    assert tokens.accepted_subprotocol({}) is None


async def test_a_bearer_token_socket_is_its_user_and_needs_no_origin(token_sockets, alice):
    _, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    socket, connected, _ = await token_sockets(headers=_bearer(raw))
    assert connected
    frame = await _says(socket, "hi from a program")
    assert (frame["user"], frame["guest"], frame["bot"]) == ("alice", False, False)


async def test_a_token_subprotocol_socket_is_accepted_with_the_chat_subprotocol(
    token_sockets, alice
):
    _, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    socket, connected, subprotocol = await token_sockets(subprotocols=["chat", f"chat.token.{raw}"])
    assert (connected, subprotocol) == (True, "chat")
    assert (await _says(socket, "via subprotocol"))["user"] == "alice"
    _, connected, subprotocol = await token_sockets(subprotocols=[f"chat.token.{raw}"])
    assert (connected, subprotocol) == (True, f"chat.token.{raw}")


async def test_an_invalid_token_is_refused_never_taken_for_a_guest(token_sockets, alice):
    token, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    wrong = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    for kwargs in (
        {"headers": _bearer(wrong)},
        {"headers": _bearer("nonsense")},
        {"subprotocols": [f"chat.token.{wrong}"]},
        # A valid Origin does not rescue a bad token: it is refused, not a guest.
        {"headers": _bearer(wrong), "origin": ALLOWED_ORIGIN},
    ):
        _, connected, _ = await token_sockets(**kwargs)
        assert not connected
    await database_sync_to_async(token.delete)()
    _, connected, _ = await token_sockets(headers=_bearer(raw))
    assert not connected


async def test_a_token_socket_speaks_as_the_token_whatever_cookie_it_sends(token_sockets, alice):
    bob = await database_sync_to_async(User.objects.create_user)("bob", password="x")
    cookie = await session_cookie_for(
        _auth_user_id=str(bob.pk),
        _auth_user_backend="django.contrib.auth.backends.ModelBackend",
        _auth_user_hash=bob.get_session_auth_hash(),
    )
    _, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    socket, connected, _ = await token_sockets(headers=[*_bearer(raw), cookie])
    assert connected
    assert (await _says(socket, "who am I"))["user"] == "alice"


@pytest.mark.parametrize("change", ["revoke", "deactivate"])
async def test_revoking_a_token_or_deactivating_its_user_closes_its_sockets(
    token_sockets, alice, change
):
    token, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    socket, connected, _ = await token_sockets(headers=_bearer(raw))
    assert connected
    await _says(socket, "before")

    def revoke():
        if change == "revoke":
            token.delete()
        else:
            alice.is_active = False
            alice.save()

    await database_sync_to_async(revoke)()
    while (message := await socket.receive_output(timeout=5))["type"] != "websocket.close":
        pass
    expected = {
        "revoke": protocol.CLOSE_IDENTITY_CHANGED,
        "deactivate": protocol.CLOSE_ACCOUNT_DEACTIVATED,
    }
    assert message["code"] == expected[change]


async def test_a_token_socket_whose_user_is_deactivated_without_signals_stores_nothing_more(
    token_sockets, alice
):
    token, raw = await database_sync_to_async(tokens.create_token)(alice, "bot")
    socket, connected, _ = await token_sockets(headers=_bearer(raw))
    assert connected
    await _says(socket, "before")

    # QuerySet.update sends no signal, so no event closes the socket: its next message must.
    await database_sync_to_async(User.objects.filter(pk=alice.pk).update)(is_active=False)
    await socket.send_json_to({"message": "after"})
    while (message := await socket.receive_output(timeout=5))["type"] != "websocket.close":
        pass
    assert message["code"] == protocol.CLOSE_IDENTITY_CHANGED
    texts = await database_sync_to_async(list)(Message.objects.values_list("text", flat=True))
    assert texts == ["before"]


def test_revoking_a_token_closes_its_sockets_on_every_process(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    raw = token_made_on(first, "revokee", "revoked on both")
    sockets = [
        websocket.create_connection(
            server.url.replace("http://", "ws://") + "/ws/chat/revoked/",
            header=[f"Authorization: Bearer {raw}"],
            timeout=10,
        )
        for server in (first, second)
    ]
    sockets[0].send(json.dumps({"message": "as a token"}))
    for socket in sockets:
        while (frame := json.loads(socket.recv())).get("message") != "as a token":
            pass
        assert frame["user"] == "revokee"
    prefix = raw.split("_")[1]
    revoke = f"from chat.models import ApiToken; ApiToken.objects.get(prefix='{prefix}').delete()"
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", revoke],
        cwd=ROOT,
        env=first.env,
        check=True,
        capture_output=True,
    )
    for socket in sockets:
        while (frame := socket.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:
            pass
        assert int.from_bytes(frame.data[:2], "big") == protocol.CLOSE_IDENTITY_CHANGED
        socket.shutdown()
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(
            second.url.replace("http://", "ws://") + "/ws/chat/revoked/",
            header=[f"Authorization: Bearer {raw}"],
            timeout=10,
        )


def test_the_admin_refuses_a_token_past_a_users_limit_with_its_reason(alice):
    for number in range(tokens.MAX_TOKENS_PER_USER):
        tokens.create_token(alice, f"t{number}")
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    response = client.post("/admin/chat/apitoken/add/", {"user": alice.pk, "name": "one more"})
    assert response.status_code == 200 and "revoke one first" in response.content.decode()
    assert ApiToken.objects.filter(user=alice).count() == tokens.MAX_TOKENS_PER_USER
