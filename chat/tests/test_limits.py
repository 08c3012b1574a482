"""Limits per person, shared by all processes (chat.limits), and failed logins (django-axes)."""

import asyncio
import json
import logging
import re
import time
import urllib.request
from http.cookiejar import CookieJar

import pytest
import redis.asyncio
import websocket
import websockets
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.test import Client, RequestFactory
from django.urls import reverse

from chat import limits
from chat.consumers import ChatConsumer
from chat.identity import Author
from chat.protocol import CLOSE_TOO_MANY_SOCKETS
from chat.tests.conftest import (
    communicator,
    frames_within,
    logged_in_session_values,
    next_frame,
    session_cookie_for,
)

pytestmark = pytest.mark.usefixtures("limits_count_from_zero")

ADDRESS = "203.0.113.7"
OTHER_ADDRESS = "198.51.100.9"


def _from(address: str, room: str = "lobby", headers=()):
    """A not-yet-connected socket whose client address is `address`."""
    socket = communicator(room, headers=headers)
    socket.scope["client"] = [address, 50000]  # as daphne puts it; read before the first await
    return socket


async def _joined(address: str, room: str = "lobby", headers=()):
    socket = _from(address, room, headers)
    connected, code = await socket.connect()
    assert connected, f"handshake refused with {code}"
    return socket


async def _send(socket, text: str) -> dict:
    """Send a message; the next frame that answers it (its broadcast or an error)."""
    client_id = re.sub(r"[^A-Za-z0-9]", "-", text)
    await socket.send_json_to({"message": text, "client_id": client_id})
    while True:
        frame = await next_frame(socket)
        if frame.get("message") == text or "error" in frame:
            return frame


def _refusal_lines(caplog, address: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "chat.limits" and address in record.getMessage()
    ]


# --- The client address ------------------------------------------------------------------


def test_the_client_address_is_remote_addr_or_the_scopes_client():
    request = RequestFactory().get("/", REMOTE_ADDR=ADDRESS)
    assert limits.client_address(request) == ADDRESS
    assert limits.client_address({"client": [ADDRESS, 1234]}) == ADDRESS
    assert limits.client_address({"client": None}) == limits.UNKNOWN_ADDRESS


@pytest.mark.parametrize(
    ("address", "prefix", "network"),
    [
        ("203.0.113.7", 64, "203.0.113.7"),
        ("::ffff:203.0.113.7", 64, "203.0.113.7"),  # an IPv4 client of a dual-stack socket
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 128, "2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
        (None, 64, limits.UNKNOWN_ADDRESS),
    ],
)
def test_the_client_network_is_an_ipv4_address_or_an_ipv6_network(
    settings, address, prefix, network
):
    settings.CHAT_IPV6_PREFIX_LENGTH = prefix
    assert limits.client_network({"client": [address, 1234] if address else None}) == network
    assert limits.client_network(RequestFactory().get("/", REMOTE_ADDR=address or "")) == network


# Five addresses of one IPv6 /64, and one of the /64 next to it.
SAME_64 = [f"2001:db8:1:2::{n:x}" for n in range(1, 6)]
NEXT_64 = "2001:db8:1:3::1"


async def test_sockets_from_addresses_of_one_ipv6_64_share_its_socket_limit(
    redis_channel_layer, transactional_db, settings
):
    settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "2/minute"
    opened = [await _joined(SAME_64[0]), await _joined(SAME_64[1])]
    refused = _from(SAME_64[2])
    assert (await refused.connect())[0] is False
    opened.append(await _joined(NEXT_64))
    for socket in (*opened, refused):
        await socket.disconnect()


@pytest.mark.django_db
def test_requests_from_addresses_of_one_ipv6_64_share_its_http_limits(settings):
    settings.CHAT_LIMIT_API_PER_ADDRESS = "3/minute"
    settings.CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS = "1/hour"
    for address in SAME_64[:3]:
        assert Client(REMOTE_ADDR=address).get("/chat/lobby/messages/").status_code == 200
    _assert_too_many_requests(Client(REMOTE_ADDR=SAME_64[3]).get("/chat/lobby/messages/"))
    assert Client(REMOTE_ADDR=SAME_64[0]).get("/chat/lobby/").status_code == 200
    _assert_too_many_requests(Client(REMOTE_ADDR=SAME_64[4]).get("/chat/lobby/"))
    assert Client(REMOTE_ADDR=NEXT_64).get("/chat/lobby/messages/").status_code == 200


@pytest.mark.django_db
def test_failed_logins_from_addresses_of_one_ipv6_64_lock_it_out(settings, django_user_model):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("bob", password=PASSWORD)
    for number, username in enumerate(("x1", "x2")):
        assert _log_in("/accounts/login/", username, "wrong", SAME_64[number])[0].status_code == 200
    _assert_too_many_requests(_log_in("/accounts/login/", "x3", "wrong", SAME_64[2])[0])
    _assert_too_many_requests(_log_in("/accounts/login/", "bob", PASSWORD, SAME_64[3])[0])
    assert _log_in("/accounts/login/", "bob", PASSWORD, NEXT_64)[0].status_code == 302


# --- WebSocket ---------------------------------------------------------------------------


async def test_sockets_past_the_limit_per_address_are_refused_at_the_handshake(
    redis_channel_layer, transactional_db, settings, caplog, monkeypatch
):
    settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "2/minute"
    built, build = [], ChatConsumer.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        build(self, *args, **kwargs)

    monkeypatch.setattr(ChatConsumer, "__init__", counted)
    opened = [await _joined(ADDRESS), await _joined(ADDRESS)]
    refused = [_from(ADDRESS) for _ in range(5)]
    for socket in refused:
        connected, _ = await socket.connect()
        assert not connected  # closed before accept: daphne answers the handshake with 403
    assert len(built) == 2  # no consumer for a refused handshake
    assert len(_refusal_lines(caplog, ADDRESS)) == 1  # one line for the burst
    opened.append(await _joined(OTHER_ADDRESS))
    for socket in opened:
        await socket.disconnect()


async def test_guests_of_one_address_share_its_message_budget_whatever_their_sessions(
    redis_channel_layer, transactional_db, settings, django_user_model
):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "3/minute"
    guests = [
        await _joined(ADDRESS, headers=[await session_cookie_for(display_name=f"guest{n}")])
        for n in range(3)
    ]
    alice = await database_sync_to_async(django_user_model.objects.create_user)("alice")
    user = await _joined(
        ADDRESS, headers=[await session_cookie_for(**logged_in_session_values(alice))]
    )
    for number, guest in enumerate(guests):
        assert "error" not in await _send(guest, f"guest {number}")
    refused = await _send(guests[0], "a fourth guest message")
    assert refused["error"]["code"] == "rate_limited"
    assert refused["error"]["client_id"] == "a-fourth-guest-message"  # the send it refuses
    assert "Try again in" in refused["error"]["detail"]
    fresh = await _joined(ADDRESS, headers=[await session_cookie_for(display_name="fresh")])
    assert (await _send(fresh, "a new session"))["error"]["code"] == "rate_limited"
    assert "error" not in await _send(user, "a user counts per account")
    assert "error" not in await _send(await _joined(OTHER_ADDRESS), "another address")
    for socket in (*guests, user, fresh):
        await socket.disconnect()


async def test_sockets_without_a_session_share_their_addresss_message_limit(
    redis_channel_layer, transactional_db, settings
):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "2/minute"
    first, second = await _joined(ADDRESS), await _joined(ADDRESS)
    elsewhere = await _joined(OTHER_ADDRESS)
    assert "error" not in await _send(first, "one")
    assert "error" not in await _send(second, "two")
    assert (await _send(first, "three"))["error"]["code"] == "rate_limited"
    assert "error" not in await _send(elsewhere, "from elsewhere")
    for socket in (first, second, elsewhere):
        await socket.disconnect()


async def test_new_rooms_past_the_limit_per_address_are_refused_and_old_rooms_still_chat(
    redis_channel_layer, transactional_db, settings
):
    settings.CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS = "2/hour"
    sockets = [await _joined(ADDRESS, room) for room in ("new-1", "new-2", "new-3")]
    assert "error" not in await _send(sockets[0], "first in new-1")
    assert "error" not in await _send(sockets[1], "first in new-2")
    refused = await _send(sockets[2], "first in new-3")
    assert refused["error"]["code"] == "too_many_rooms"
    assert "Try again in" in refused["error"]["detail"]
    assert "error" not in await _send(sockets[0], "again in new-1")
    again = await _joined(ADDRESS, "new-1")  # a socket that joins a room with messages
    assert "error" not in await _send(again, "a newcomer in new-1")
    elsewhere = await _joined(OTHER_ADDRESS, "new-3")
    assert "error" not in await _send(elsewhere, "first in new-3")
    for socket in (*sockets, again, elsewhere):
        await socket.disconnect()


async def test_typing_counts_per_person_over_all_their_sockets(
    redis_channel_layer, transactional_db, settings, django_user_model
):
    settings.CHAT_TYPING_THROTTLE_SECONDS = 60
    alice = await database_sync_to_async(django_user_model.objects.create_user)("alice")
    cookie = await session_cookie_for(**logged_in_session_values(alice))
    users = [await _joined(OTHER_ADDRESS, headers=[cookie]) for _ in range(3)]
    guests = [
        await _joined(ADDRESS, headers=[await session_cookie_for(display_name=f"guest{n}")])
        for n in range(3)
    ]
    watcher = await _joined("192.0.2.1")
    for socket in (*users, *guests):
        await socket.send_json_to({"typing": True})
    typers = sorted([(await next_frame(watcher))["typing"]["user"] for _ in range(2)])
    assert typers[0] == "alice" and typers[1].startswith("guest")  # one guest of three
    assert [frame for frame in await frames_within(watcher) if "typing" in frame] == []
    for socket in (*users, *guests, watcher):
        await socket.disconnect()


async def _refused_for_open_sockets(socket) -> str:
    """The socket is accepted, then closed with 4430 at once: the close's reason."""
    assert (await socket.connect())[0]  # accepted, so that the code and reason reach it
    close = await socket.receive_output(timeout=2)
    assert close["type"] == "websocket.close" and close["code"] == CLOSE_TOO_MANY_SOCKETS
    return close["reason"]


async def _joined_once_a_slot_frees(address: str, headers=()):
    """A socket opened as soon as a slot is free: closing one frees its slot shortly after."""
    for _ in range(SLOT_FREED_TRIES):
        socket = _from(address, headers=headers)
        assert (await socket.connect())[0]
        if await socket.receive_nothing(timeout=0.05) or "text" in await socket.receive_output():
            return socket
        await socket.disconnect()
    pytest.fail(f"no slot freed after {SLOT_FREED_TRIES} tries")


SLOT_FREED_TRIES = 100


async def test_open_sockets_past_the_cap_per_person_are_closed_with_4430_till_one_closes(
    redis_channel_layer, transactional_db, settings, django_user_model
):
    settings.CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON = 2
    alice = await database_sync_to_async(django_user_model.objects.create_user)("alice")
    bob = await database_sync_to_async(django_user_model.objects.create_user)("bob")
    alices = [await session_cookie_for(**logged_in_session_values(alice)) for _ in range(3)]
    opened = [
        await _joined(ADDRESS, headers=[alices[0]]),
        await _joined(ADDRESS, headers=[alices[1]]),
    ]
    refused = _from(ADDRESS, headers=[alices[2]])  # another session of alice's, as well
    assert "at most 2" in await _refused_for_open_sockets(refused)
    opened.append(
        await _joined(ADDRESS, headers=[await session_cookie_for(**logged_in_session_values(bob))])
    )
    await opened.pop(0).disconnect()
    opened.append(await _joined_once_a_slot_frees(ADDRESS, headers=[alices[2]]))
    for socket in (*opened, refused):
        await socket.disconnect()


async def test_open_sockets_past_the_cap_per_address_network_are_closed_with_4430(
    redis_channel_layer, transactional_db, settings
):
    settings.CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS = 2
    opened = [await _joined(SAME_64[0]), await _joined(SAME_64[1])]  # two guests, no session
    refused = _from(SAME_64[2])
    assert "from your address" in await _refused_for_open_sockets(refused)
    opened.append(await _joined(NEXT_64))
    for socket in (*opened, refused):
        await socket.disconnect()


async def test_open_sockets_are_capped_across_processes_and_a_killed_ones_stop_counting(
    start_chat_server,
):
    env = {
        "CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS": "3",
        "CHAT_LIMIT_SOCKETS_PER_ADDRESS": "100000/minute",  # the tries below are many
        "CHAT_PRESENCE_TTL_SECONDS": str(KILLED_SOCKETS_TTL_SECONDS),
        "CHAT_PRESENCE_REFRESH_SECONDS": "0.5",
    }
    first, second = start_chat_server(**env), start_chat_server(**env)

    async def open_socket(server):
        url = server.url.replace("http://", "ws://") + "/ws/chat/lobby/"
        return await websockets.connect(url, origin=server.url, ping_interval=None)

    async def refused(socket) -> bool:
        try:
            async with asyncio.timeout(5):
                while "presence" not in json.loads(await socket.recv()):
                    pass  # the history, then its own presence: it is in
            return False
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == CLOSE_TOO_MANY_SOCKETS
            return True

    async def open_once_counted_out(server):
        deadline = time.monotonic() + KILLED_SOCKETS_TTL_SECONDS + 10
        while time.monotonic() < deadline:
            socket = await open_socket(server)
            if not await refused(socket):
                return socket
            await asyncio.sleep(RETRY_PAUSE_SECONDS)  # a poll for the state, not a guess
        pytest.fail("the closed or killed sockets still count")

    sockets = [await open_socket(server) for server in (first, first, second)]
    assert [await refused(socket) for socket in sockets] == [False] * 3
    assert await refused(await open_socket(second))  # three open already, over two processes
    await sockets.pop(0).close()
    sockets.append(await open_once_counted_out(second))  # its slot freed on close
    first.kill()  # its socket is never released: it stops counting once unrefreshed
    assert await refused(await open_socket(second))
    sockets.append(await open_once_counted_out(second))
    for socket in sockets:
        await socket.close()


# Short, so that a killed process's sockets stop counting within the test.
KILLED_SOCKETS_TTL_SECONDS = 4
RETRY_PAUSE_SECONDS = 0.1


def test_a_persons_message_limit_is_shared_by_sockets_on_different_processes(
    start_chat_server,
):
    env = {"CHAT_LIMIT_MESSAGES_PER_PERSON": "4/minute"}
    first, second = start_chat_server(**env), start_chat_server(**env)
    cookies = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    browser.open(first.url + "/chat/lobby/").read()  # the room page gives the guest a session
    [session] = [cookie for cookie in cookies if cookie.name == django_settings.SESSION_COOKIE_NAME]
    sockets = [
        websocket.create_connection(
            server.url.replace("http://", "ws://") + "/ws/chat/lobby/",
            origin=server.url,
            cookie=f"{session.name}={session.value}",
            timeout=10,
        )
        for server in (first, second)
    ]
    answers = []
    for number in range(6):
        socket = sockets[number % 2]
        socket.send(json.dumps({"message": f"m{number}", "client_id": f"m{number}"}))
        while True:
            frame = json.loads(socket.recv())
            if frame.get("message") == f"m{number}" or "error" in frame:
                answers.append(frame.get("error", {}).get("code", "stored"))
                break
    assert answers == ["stored"] * 4 + ["rate_limited"] * 2
    for socket in sockets:
        socket.close()


# --- HTTP --------------------------------------------------------------------------------


def _assert_too_many_requests(response):
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Try again in" in response.content.decode()


@pytest.mark.django_db
def test_guest_sessions_past_the_limit_per_address_get_429_and_kept_sessions_go_on(
    settings, caplog
):
    settings.CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS = "2/hour"
    caplog.set_level(logging.WARNING, logger="chat.limits")
    kept = Client(REMOTE_ADDR=ADDRESS)
    assert kept.get("/chat/lobby/").status_code == 200
    assert Client(REMOTE_ADDR=ADDRESS).get("/chat/lobby/").status_code == 200
    _assert_too_many_requests(Client(REMOTE_ADDR=ADDRESS).get("/chat/lobby/"))
    named = Client(REMOTE_ADDR=ADDRESS).post(reverse("set_display_name"), {"display_name": "Eve"})
    _assert_too_many_requests(named)
    assert len(_refusal_lines(caplog, ADDRESS)) == 2  # one line per refusal, and only that:
    assert [record for record in caplog.records if record.name == "django.request"] == []
    assert kept.get("/chat/lobby/").status_code == 200  # its session exists: nothing new
    assert kept.post(reverse("set_display_name"), {"display_name": "Ann"}).status_code == 302
    assert Client(REMOTE_ADDR=OTHER_ADDRESS).get("/chat/lobby/").status_code == 200


@pytest.mark.django_db
def test_signups_past_the_limit_per_address_get_429_and_create_no_account(
    settings, django_user_model
):
    settings.CHAT_LIMIT_SIGNUPS_PER_ADDRESS = "2/hour"
    password = "correct horse battery staple"

    def sign_up(username: str, address: str = ADDRESS):
        fields = {"username": username, "password1": password, "password2": password}
        return Client(REMOTE_ADDR=address).post(reverse("signup"), fields)

    assert sign_up("user1").status_code == 302
    assert sign_up("user2").status_code == 302
    _assert_too_many_requests(sign_up("user3"))
    assert not django_user_model.objects.filter(username="user3").exists()
    assert sign_up("user4", OTHER_ADDRESS).status_code == 302


@pytest.mark.django_db
def test_message_api_requests_past_the_limit_per_address_get_429(settings):
    settings.CHAT_LIMIT_API_PER_ADDRESS = "3/minute"
    scraper = Client(REMOTE_ADDR=ADDRESS)
    for _ in range(3):
        assert scraper.get("/chat/lobby/messages/").status_code == 200
    _assert_too_many_requests(scraper.get("/chat/lobby/messages/"))
    assert Client(REMOTE_ADDR=OTHER_ADDRESS).get("/chat/lobby/messages/").status_code == 200


def test_an_unreachable_redis_lets_requests_through_and_says_so(settings, caplog, db):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert Client().get("/chat/lobby/messages/").status_code == 200
    assert "Redis unreachable" in caplog.text


# --- Failed logins (django-axes) ---------------------------------------------------------

PASSWORD = "correct-horse-battery-42"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def _log_in(path: str, username: str, password: str, address: str = ADDRESS):
    client = Client(REMOTE_ADDR=address)
    response = client.post(path, {"username": username, "password": password})
    return response, client


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_failed_logins_per_account_lock_it_even_from_new_addresses(settings, alice, path):
    settings.AXES_FAILURE_LIMIT = 3
    for number in range(2):
        response, _ = _log_in(path, "alice", "wrong", f"192.0.2.{number}")
        assert response.status_code == 200  # the form again, with its error
    _assert_too_many_requests(_log_in(path, "alice", "wrong", "192.0.2.2")[0])
    response, client = _log_in(path, "alice", PASSWORD, "192.0.2.3")
    _assert_too_many_requests(response)
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_failed_logins_per_address_lock_it_out_for_every_account(
    settings, django_user_model, caplog
):
    settings.AXES_FAILURE_LIMIT = 3
    caplog.set_level(logging.INFO)
    django_user_model.objects.create_user("bob", password=PASSWORD)
    for username in ("x1", "x2"):
        assert _log_in("/accounts/login/", username, "wrong")[0].status_code == 200
    _assert_too_many_requests(_log_in("/accounts/login/", "x3", "wrong")[0])
    _assert_too_many_requests(_log_in("/accounts/login/", "bob", PASSWORD)[0])
    assert len(_refusal_lines(caplog, ADDRESS)) == 2  # each refusal, once, with the address
    assert [record for record in caplog.records if record.name.startswith("axes")] == []
    response, _ = _log_in("/accounts/login/", "bob", PASSWORD, OTHER_ADDRESS)
    assert response.status_code == 302


@pytest.mark.django_db
def test_a_mistyped_password_then_the_right_one_logs_in(settings, alice):
    settings.AXES_FAILURE_LIMIT = 3
    assert _log_in("/accounts/login/", "alice", "wrong")[0].status_code == 200
    response, client = _log_in("/accounts/login/", "alice", PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


@pytest.mark.django_db
def test_logging_in_to_ones_own_account_does_not_reset_the_failures_against_another(
    settings, alice, django_user_model
):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("mallory", password=PASSWORD)
    for _ in range(2):
        assert _log_in("/accounts/login/", "alice", "wrong")[0].status_code == 200
        assert _log_in("/accounts/login/", "mallory", PASSWORD)[0].status_code == 302
    _assert_too_many_requests(_log_in("/accounts/login/", "alice", "wrong", OTHER_ADDRESS)[0])


# Sockets of one address, each a guest of its own, in the open-slot tests below.
ONE_ADDRESS_SOCKETS = 50


async def test_refreshing_and_releasing_open_sockets_writes_each_set_once(redis_server):
    client = redis.asyncio.Redis.from_url(redis_server.url)
    address_set = f"{limits.KEY_PREFIX}:open:a:198.51.100.7"
    held = [
        ((f"{limits.KEY_PREFIX}:open:g:guest-{n}", address_set), f"channel-{n}")
        for n in range(ONE_ADDRESS_SOCKETS)
    ]
    try:
        for keys, member in held:
            for key in keys:
                await client.zadd(key, {member: 0})
        await client.config_resetstat()
        await limits.refresh_open_slots(client, held)
        stats = await client.info("commandstats")
        sets = ONE_ADDRESS_SOCKETS + 1  # a set for each guest, and one for their address
        assert (stats["cmdstat_zadd"]["calls"], stats["cmdstat_expire"]["calls"]) == (sets, sets)
        assert await client.zcard(address_set) == ONE_ADDRESS_SOCKETS
        scores = await client.zrange(address_set, 0, -1, withscores=True)
        assert min(score for _, score in scores) > 0  # every socket's entry was refreshed
        await limits.release_open_slots(client, held)
        assert (await client.info("commandstats"))["cmdstat_zrem"]["calls"] == sets
        assert await client.exists(address_set, *(keys[0] for keys, _ in held)) == 0
    finally:
        await client.aclose()


async def _round_trips_of(calls, monkeypatch) -> tuple[list, int]:
    """What the calls return, run together on this loop, and the writes to Redis they made."""
    writes, send = [], redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counted(connection, command, *args, **kwargs):
        writes.append(command)
        return await send(connection, command, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counted)
    try:
        return await asyncio.gather(*calls), len(writes)
    finally:
        monkeypatch.undo()


def _guest(number: int) -> Author:
    return Author(name=f"guest{number}", guest_key=f"guest-{number}")


async def test_connects_checked_together_share_one_round_trip_for_their_limits(
    redis_server, monkeypatch
):
    scopes = [{"client": [f"198.51.100.{number}", 50000]} for number in range(ONE_ADDRESS_SOCKETS)]
    # Connected, and the scripts loaded: what follows is the checks' own traffic.
    await limits.refuse_socket(scopes[0])
    await limits.take_open_slots(scopes[0], _guest(0), "warm-up")
    refusals, writes = await _round_trips_of(
        [limits.refuse_socket(scope) for scope in scopes]
        + [
            limits.take_open_slots(scope, _guest(number), f"channel-{number}")
            for number, scope in enumerate(scopes)
        ],
        monkeypatch,
    )
    assert writes == 1
    assert not any(refusals[:ONE_ADDRESS_SOCKETS])  # within the new-socket limit
    assert all(len(sets) == 2 for sets in refusals[ONE_ADDRESS_SOCKETS:])  # person, address


async def test_the_handshake_limit_and_the_open_caps_count_on_after_redis_lost_its_scripts(
    redis_server, settings
):
    settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "2/minute"
    settings.CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS = 1
    scope = {"client": [ADDRESS, 50000]}
    assert await limits.refuse_socket(scope) is False
    redis.Redis.from_url(redis_server.url).script_flush()  # as a restarted Redis has none
    assert await asyncio.gather(limits.refuse_socket(scope), limits.refuse_socket(scope)) == [
        False,
        True,
    ]
    await limits.take_open_slots(scope, _guest(1), "first")
    redis.Redis.from_url(redis_server.url).script_flush()
    with pytest.raises(limits.TooManySockets):
        await limits.take_open_slots(scope, _guest(2), "second")
