"""The HTTP API for programs (chat.api): tokens, posts through chat.posting, the shared page
query, limits per token, and its OpenAPI description."""

import json
import re
import urllib.error
import urllib.request

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import IntegrityError, OperationalError
from django.test import Client

from chat import memberships, moderation, services, tokens
from chat.identity import Author
from chat.tests.conftest import SocketsOnProcesses, next_frame, token_made_on

pytestmark = pytest.mark.usefixtures("redis_channel_layer")
# What any way in answers a stranger to a private room, and anyone for a missing one.
NO_SUCH_ROOM = {"error": {"code": "no_such_room", "detail": "There is no such room."}}

OPERATIONS = {
    ("post", "/api/v1/rooms/{room}/messages"),
    ("get", "/api/v1/rooms/{room}/messages"),
    ("get", "/api/v1/rooms"),
    ("patch", "/api/v1/rooms/{room}/messages/{message_id}"),
    ("delete", "/api/v1/rooms/{room}/messages/{message_id}"),
}


@pytest.fixture
def alice(transactional_db):
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def api(alice):
    """A client that sends alice's token."""
    _, raw = tokens.create_token(alice, "tests")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    client.raw_token = raw
    return client


def post(client, room: str, body) -> tuple[int, dict]:
    response = client.post(
        f"/api/v1/rooms/{room}/messages", json.dumps(body), content_type="application/json"
    )
    return response.status_code, response.json()


def test_the_openapi_description_lists_the_three_operations_their_auth_and_errors():
    schema = Client().get("/api/v1/openapi.json").json()
    operations = {
        (method, path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert set(operations) == OPERATIONS
    assert schema["components"]["securitySchemes"]["TokenAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    for operation in operations.values():
        assert operation["security"] == [{"TokenAuth": []}]
        assert {"401", "429"} <= set(operation["responses"])
    posting = operations[("post", "/api/v1/rooms/{room}/messages")]
    assert {"200", "201", "400", "422", "503"} <= set(posting["responses"])
    assert "400" in operations[("get", "/api/v1/rooms/{room}/messages")]["responses"]


@pytest.mark.parametrize("path", ["/api/v1/docs", "/api/v1/"])
def test_the_api_docs_are_served_at_api_v1_docs_from_this_server(path):
    response = Client().get(path, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "/api/v1/openapi.json" in page
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', page)
    assert scripts and all(src.startswith("/static/ninja/") for src in scripts)
    for src in scripts:  # served here: the CSP allows no other origin
        assert Client().get(src).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer nonsense",
        "Basic YWxpY2U6eA==",
        "Bearer chat_000000000000_" + "x" * 43,
    ],
)
def test_a_call_without_a_valid_token_is_refused_with_401(alice, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for response in (
        Client(headers=headers).get("/api/v1/rooms"),
        Client(headers=headers).post(
            "/api/v1/rooms/lobby/messages", '{"message": "hi"}', content_type="application/json"
        ),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"
        assert response["WWW-Authenticate"] == "Bearer"
    assert not services.messages_after("lobby", 0)


def test_a_revoked_token_or_an_inactive_user_is_refused(api, alice):
    assert api.get("/api/v1/rooms").status_code == 200
    alice.is_active = False
    alice.save()
    assert api.get("/api/v1/rooms").status_code == 401
    alice.is_active = True
    alice.save()
    alice.api_tokens.all().delete()
    assert api.get("/api/v1/rooms").status_code == 401


def test_a_post_is_the_token_users_message_and_a_retry_is_stored_once(api):
    status, first = post(api, "lobby", {"message": " hi ", "client_id": "job-1"})
    assert status == 201
    assert (first["message"], first["id"], first["user"], first["guest"], first["bot"]) == (
        "hi",
        1,
        "alice",
        False,
        False,
    )
    status, again = post(api, "lobby", {"message": "hi", "client_id": "job-1"})
    assert (status, again) == (200, first)
    assert len(services.messages_after("lobby", 0)) == 1


@pytest.mark.parametrize(
    ("room", "body", "status", "code"),
    [
        ("lobby", {"message": "   "}, 400, "empty_message"),
        ("lobby", {"message": "x" * 5000}, 400, "message_too_long"),
        ("lobby", {"message": "hi", "client_id": "a b"}, 400, "invalid_client_id"),
        ("lobby", {"message": 42}, 422, "invalid_request"),
        ("lobby", {}, 422, "invalid_request"),
        ("a%20b", {"message": "hi"}, 400, "invalid_room_name"),
    ],
)
def test_a_post_the_rules_refuse_gets_its_code_and_stores_nothing(api, room, body, status, code):
    got_status, got = post(api, room, body)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert not services.messages_after("lobby", 0)


def test_posts_count_as_the_users_messages(api, settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "1/minute"
    assert post(api, "lobby", {"message": "one"})[0] == 201
    response = api.post(
        "/api/v1/rooms/lobby/messages", '{"message": "two"}', content_type="application/json"
    )
    assert (response.status_code, response.json()["error"]["code"]) == (429, "rate_limited")
    assert int(response["Retry-After"]) >= 1


def test_calls_past_the_limit_per_person_get_429_with_retry_after_whatever_the_token(
    api, alice, settings
):
    settings.CHAT_LIMIT_API_PER_PERSON = "2/minute"
    assert [api.get("/api/v1/rooms").status_code for _ in range(2)] == [200, 200]
    refused = api.get("/api/v1/rooms")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    _, another = tokens.create_token(alice, "another program")
    assert _with(another).get("/api/v1/rooms").status_code == 429
    _, bobs = tokens.create_token(User.objects.create_user("bob"), "bob's program")
    assert _with(bobs).get("/api/v1/rooms").status_code == 200


def _with(token: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {token}"})


def test_reading_messages_shares_the_messages_endpoints_query_and_pages(api):
    for number in range(5):
        services.store_message("lobby", Author(name="Zoë"), f"m{number}", None)
    for query in ("", "?after=2&limit=2", "?before=5&limit=2", "?limit=1"):
        mine = api.get(f"/api/v1/rooms/lobby/messages{query}")
        public = Client().get(f"/chat/lobby/messages/{query}")
        assert mine.status_code == 200
        assert mine.json() == public.json()
    for query in ("?after=x", "?limit=0", "?after=1&before=3", "?after=%2B1"):
        refused = api.get(f"/api/v1/rooms/lobby/messages{query}")
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_page")


def test_listing_rooms_shows_the_rooms_with_messages(api):
    services.store_message("lobby", Author(name="Zoë"), "hi", None)
    (room,) = api.get("/api/v1/rooms").json()["rooms"]
    assert (room["name"], room["last_id"]) == ("lobby", 1)


def test_listing_rooms_gives_what_the_pages_list_gives_a_private_rooms_title_too(api, alice):
    key = memberships.create_private_room(Author("alice", user_id=alice.pk), "Plans")
    services.store_message(key, Author("alice", user_id=alice.pk), "hi", None)
    services.store_message("lobby", Author(name="Zoë"), "hi", None)
    page = Client()
    page.force_login(alice)
    listed = api.get("/api/v1/rooms").json()
    assert listed == page.get("/api/rooms/").json()
    assert [room["title"] for room in listed["rooms"]] == ["lobby", "Plans"]


async def test_a_post_over_http_reaches_open_sockets_in_order_with_theirs(join, api):
    socket = await join("lobby")
    await socket.send_json_to({"message": "from the socket"})
    assert (await next_frame(socket))["id"] == 1
    status, _ = await database_sync_to_async(post)(api, "lobby", {"message": "from the API"})
    assert status == 201
    frame = await next_frame(socket)
    assert (frame["id"], frame["message"], frame["user"]) == (2, "from the API", "alice")


def test_api_posts_reach_sockets_on_two_processes_once_and_in_order(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    raw = token_made_on(first, "apiposter", "two processes")
    processes = SocketsOnProcesses((first, second), "apiposts")

    def api_post(text: str) -> int:
        request = urllib.request.Request(
            f"{first.url}/api/v1/rooms/apiposts/messages",
            data=json.dumps({"message": text, "client_id": "api-2"}).encode(),
            headers={"Authorization": f"Bearer {raw}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status

    processes.sockets[1].send(json.dumps({"message": "socket 1"}))
    processes.read_until(1)
    assert api_post("api 2") == 201
    assert api_post("api 2") == 200  # a retry: stored and broadcast once
    processes.read_until(2)
    processes.sockets[0].send(json.dumps({"message": "socket 3"}))
    processes.read_until(3)
    for frames in processes.seen:
        assert frames == [(1, "socket 1"), (2, "api 2"), (3, "socket 3")]
    processes.close()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{second.url}/api/v1/rooms", timeout=10)
    assert refused.value.code == 401


def test_a_private_room_answers_a_stranger_as_a_room_that_does_not_exist(api):
    owner = User.objects.create_user("owner", password="x")
    private = memberships.create_private_room(Author(name="owner", user_id=owner.pk), "plans")
    missing = "~" + "A" * 22  # a private address nobody made
    for address in (private, missing):
        assert post(api, address, {"message": "hi"}) == (404, NO_SUCH_ROOM)
        read = api.get(f"/api/v1/rooms/{address}/messages")
        assert (read.status_code, read.json()) == (404, NO_SUCH_ROOM)
    assert not services.messages_after(private, 0)


def test_a_member_posts_to_and_reads_a_private_room_through_the_api(api, alice):
    private = memberships.create_private_room(Author(name="alice", user_id=alice.pk), "plans")
    status, _ = post(api, private, {"message": "members only"})
    assert status == 201
    read = api.get(f"/api/v1/rooms/{private}/messages").json()
    assert read["room"] == private
    assert [message["message"] for message in read["messages"]] == ["members only"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ('{"message":', 400, "Cannot parse request body."),
        ('{"message": ["a list"]}', 422, "Invalid fields: message."),
    ],
)
def test_a_body_the_api_cannot_take_is_refused_in_its_one_error_shape(api, body, status, detail):
    response = api.post("/api/v1/rooms/lobby/messages", body, content_type="application/json")
    assert (response.status_code, response.json()) == (
        status,
        {"error": {"code": "invalid_request", "detail": detail}},
    )


def test_a_banned_or_muted_user_is_refused_with_403_and_the_ban_keeps_them_from_reading(api, alice):
    owner = User.objects.create_user("olive")
    services.store_message("garden", Author("olive", user_id=owner.pk), "my room", None)
    target = moderation.target_of_username("alice")
    moderation.mute(Author("olive", user_id=owner.pk), "garden", target, "1h")
    status, body = post(api, "garden", {"message": "hi"})
    assert (status, body["error"]["code"]) == (403, "muted")
    assert api.get("/api/v1/rooms/garden/messages").status_code == 200
    moderation.ban(Author("olive", user_id=owner.pk), "garden", target, "")
    status, body = post(api, "garden", {"message": "hi"})
    assert (status, body["error"]["code"]) == (403, "banned")
    read = api.get("/api/v1/rooms/garden/messages")
    assert (read.status_code, read.json()["error"]["code"]) == (403, "banned")


@pytest.mark.parametrize("lookalike", ["Lobby", "l%D0%BEbby", "Iobby"])
def test_reading_a_lookalike_of_a_room_is_sent_to_that_rooms_messages(api, lookalike):
    services.store_message("lobby", Author(name="Zoë"), "hi", None)
    response = api.get(f"/api/v1/rooms/{lookalike}/messages?after=0")
    assert (response.status_code, response["Location"]) == (
        302,
        "/api/v1/rooms/lobby/messages?after=0",
    )


# --- Editing and deleting ----------------------------------------------------------------


def _change(client, method: str, room: str, seq: int, body=None) -> tuple[int, dict]:
    call = getattr(client, method)
    path = f"/api/v1/rooms/{room}/messages/{seq}"
    response = call(path, json.dumps(body), content_type="application/json") if body else call(path)
    return response.status_code, response.json()


def test_a_program_edits_and_deletes_its_users_messages_through_the_same_service(api):
    post(api, "lobby", {"message": "helo"})
    post(api, "lobby", {"message": "oops"})
    status, edited = _change(api, "patch", "lobby", 1, {"message": " hello "})
    assert status == 200
    assert (edited["id"], edited["message"], edited["change"], edited["deleted"]) == (
        1,
        "hello",
        1,
        False,
    )
    assert edited["edited"] is not None
    status, deleted = _change(api, "delete", "lobby", 2)
    assert (status, deleted["message"], deleted["deleted"], deleted["change"]) == (200, "", True, 2)
    page = api.get("/api/v1/rooms/lobby/messages", {"changes_after": "1"}).json()
    assert [(m["id"], m["change"]) for m in page["messages"]] == [(2, 2)]


def test_a_program_may_not_change_another_users_message(api):
    services.store_message("lobby", Author("bob"), "bob's", None)
    assert _change(api, "patch", "lobby", 1, {"message": "mine"})[0] == 403
    status, refused = _change(api, "delete", "lobby", 1)
    assert (status, refused["error"]["code"]) == (403, "not_allowed")


@pytest.mark.parametrize(
    ("method", "room", "seq", "body", "status", "code"),
    [
        ("patch", "lobby", 9, {"message": "x"}, 404, "no_such_message"),
        ("delete", "nowhere", 1, None, 404, "no_such_message"),
        ("delete", "~" + "A" * 22, 1, None, 404, "no_such_room"),
        ("patch", "lobby", 1, {"message": "  "}, 400, "empty_message"),
        ("patch", "lobby", 1, {"text": "x"}, 422, "invalid_request"),
    ],
)
def test_a_bad_edit_or_deletion_is_refused_with_its_code(
    api, method, room, seq, body, status, code
):
    post(api, "lobby", {"message": "hi"})
    assert (lambda s, r: (s, r["error"]["code"]))(*_change(api, method, room, seq, body)) == (
        status,
        code,
    )


def test_deleting_a_deleted_message_is_a_conflict(api):
    post(api, "lobby", {"message": "hi"})
    _change(api, "delete", "lobby", 1)
    status, refused = _change(api, "delete", "lobby", 1)
    assert (status, refused["error"]["code"]) == (409, "message_deleted")


def test_edits_and_deletions_spend_the_per_person_message_limit_as_on_a_socket(api, settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "3/minute"
    post(api, "lobby", {"message": "one"})
    post(api, "lobby", {"message": "two"})
    assert _change(api, "patch", "lobby", 1, {"message": "uno"})[0] == 200
    status, refused = _change(api, "delete", "lobby", 2)
    assert (status, refused["error"]["code"]) == (429, "rate_limited")
    status, refused = _change(api, "patch", "lobby", 1, {"message": "eins"})
    assert (status, refused["error"]["code"]) == (429, "rate_limited")


@pytest.mark.parametrize(
    ("error", "status"),
    [(OperationalError("connection refused"), 503), (IntegrityError("duplicate key"), 500)],
)
def test_a_post_meeting_an_outage_is_a_503_and_one_meeting_a_bug_a_500(
    api, monkeypatch, error, status
):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(services, "store_message", failing)
    api.raise_request_exception = False
    response = api.post(
        "/api/v1/rooms/lobby/messages", '{"message": "hi"}', content_type="application/json"
    )
    assert response.status_code == status
