"""ChatConsumer through mysite.asgi.application, on the Redis channel layer of a real Redis."""

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote

import dj_database_url
import hypothesis
import psycopg
import pytest
import redis
import websockets
from asgiref.sync import AsyncToSync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator, WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, OperationalError, connection
from django.test.utils import CaptureQueriesContext
from hypothesis import strategies as st

from chat import (
    commits,
    overload,
    pipeline,
    presence,
    protocol,
    rooms,
    services,
    sides,
    stalls,
    upkeep,
)
from chat.consumers import ChatConsumer
from chat.models import Message, Room
from chat.stalls import COOL_OFF_FACTOR
from chat.tests.conftest import (
    ALLOWED_HOST,
    ALLOWED_ORIGIN,
    SocketsOnProcesses,
    assert_no_chat,
    assert_receives_message,
    communicator,
    frames_within,
    next_frame,
    next_presence,
    page_as_read,
    session_cookie_for,
    until_listening,
)
from conftest import ROOT, WRITE_REFUSALS, redis_refusing_writes
from mysite.asgi import application
from mysite.channel_layers import LAYER_CALLS_IN_FLIGHT, layer_slot, redis_channel_layers

pytestmark = pytest.mark.usefixtures("redis_channel_layer", "transactional_db")
# What a busy 2-core machine may add to a bound: a round trip, a batch, a log line.
SLACK_SECONDS = 1.5
# The server's DATABASE_LOCK_TIMEOUT_SECONDS in the lock test.
LOCK_BOUND_SECONDS = 1.0
# How often the room page sends a refused message again (room.js, RATE_LIMITED_RETRY_MS).
RETRY_SECONDS = 1.0


async def assert_receives_error(socket, code: str):
    frame = await next_frame(socket)
    assert set(frame) == {"error"}
    assert set(frame["error"]) <= {"code", "detail", "client_id"}
    assert frame["error"]["code"] == code
    assert isinstance(frame["error"]["detail"], str) and frame["error"]["detail"]


async def test_connecting_to_lobby_is_accepted(join):
    await join("lobby")


async def test_message_reaches_sender_and_every_other_socket_in_room(join):
    sockets = [await join("lobby") for _ in range(3)]
    await sockets[1].send_json_to({"message": "hello"})
    for socket in sockets:
        await assert_receives_message(socket, "hello")


async def test_message_never_reaches_another_room(join):
    lobby, other = await join("lobby"), await join("other")
    await lobby.send_json_to({"message": "only for the lobby"})
    await assert_receives_message(lobby, "only for the lobby")
    await assert_no_chat(other)


def group_size(group: str) -> int:
    """How many channels the channel layer has in a group, by its own bookkeeping."""
    layer = get_channel_layer()
    if isinstance(layer, RedisPubSubChannelLayer):
        loop_layer = layer._get_layer()
        return len(loop_layer.groups.get(loop_layer._get_group_channel_name(group), ()))
    client = redis.Redis.from_url(layer.hosts[0]["address"])
    try:
        return client.zcard(f"{layer.prefix}:group:{group}")
    finally:
        client.close()


# Threads a connect hops to: its connect runs batched with the other sockets' (one hop),
# and so does AuthMiddleware's load of its user (chat.auth), which a handshake without a
# session key does not need; the handshake limit counts on the loop.
HOPS_PER_CONNECT = 1
HOPS_PER_CONNECT_WITH_A_SESSION = 2
# Sockets with sessions connecting at once, in the burst test.
BURST = 10


@contextlib.contextmanager
def counted_hops(monkeypatch) -> Iterator[tuple[list, list]]:
    """The hops to the sync thread made meanwhile, and the waits of the sync thread for
    the loop."""
    loop = asyncio.get_running_loop()
    hops, waits = [], []
    run_in_executor, to_sync = loop.run_in_executor, AsyncToSync.__call__

    def counted_hop(executor, function, *args):
        hops.append(function)
        return run_in_executor(executor, function, *args)

    def counted_wait(self, *args, **kwargs):
        waits.append(self.awaitable)
        return to_sync(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "run_in_executor", counted_hop)
        patch.setattr(AsyncToSync, "__call__", counted_wait)
        yield hops, waits


async def test_a_connect_makes_one_hop_to_the_sync_thread_and_never_waits_for_the_loop(
    join, monkeypatch
):
    with counted_hops(monkeypatch) as (hops, waits):
        await join("lobby")
    assert len(hops) == HOPS_PER_CONNECT
    assert waits == []  # the accept and every frame are handed to the loop


async def test_a_connect_with_a_session_makes_two_hops(join, monkeypatch):
    cookie = await session_cookie_for(guest_name="ann")
    with counted_hops(monkeypatch) as (hops, waits):
        await join("lobby", headers=[cookie])
    assert len(hops) == HOPS_PER_CONNECT_WITH_A_SESSION
    assert waits == []


async def test_sockets_with_sessions_connecting_at_once_load_their_users_in_few_hops(
    join, monkeypatch
):
    cookies = [await session_cookie_for(guest_name=f"guest-{n}") for n in range(BURST)]
    sockets = []
    try:
        with counted_hops(monkeypatch) as (hops, _):
            sockets = [communicator("lobby", headers=[cookie]) for cookie in cookies]
            connected = await asyncio.gather(*(socket.connect() for socket in sockets))
            assert all(ok for ok, _ in connected)
            await asyncio.gather(*(next_presence(socket) for socket in sockets))
    finally:
        await asyncio.gather(*(socket.disconnect() for socket in sockets))
    user_loads = [hop for hop in hops if "get_user" in repr(hop)]
    assert len(user_loads) <= BURST // 2  # channels' AuthMiddleware makes one each


def count_connect_queries(monkeypatch) -> list[int]:
    """How many queries each ChatConsumer.connect from now on makes, in order."""
    counts, connect = [], ChatConsumer.connect

    def counted(self):
        with CaptureQueriesContext(connection) as queries:  # the sockets' thread's
            connect(self)
        counts.append(len(queries))

    monkeypatch.setattr(ChatConsumer, "connect", counted)
    return counts


async def test_a_connect_to_a_room_with_no_message_makes_one_query(join, monkeypatch):
    await join("lobby")  # the room's sanctions (chat.sanctions) are cached from then on
    counts = count_connect_queries(monkeypatch)
    await join("lobby")
    assert counts == [1]


async def test_a_connect_to_a_room_with_messages_makes_two_queries(join, monkeypatch):
    await database_sync_to_async(store)("lobby", "one", "two")
    await join("lobby")
    counts = count_connect_queries(monkeypatch)
    assert [frame["message"] for frame in (await join("lobby")).backlog] == ["one", "two"]
    assert counts == [2]


def done_tasks_holding(event_type: str) -> list[asyncio.Task]:
    """The finished tasks still alive whose result is a room event of this type."""
    gc.collect()
    return [
        task
        for task in gc.get_objects()
        # type(), not isinstance(): a lazy object (a request's CSP nonce) left by an
        # earlier test raises when asked for its __class__.
        if issubclass(type(task), asyncio.Task)
        and task.done()
        and not task.cancelled()
        and task.exception() is None
        and isinstance(task.result(), dict)
        and task.result().get("type") == event_type
    ]


async def test_an_idle_socket_keeps_neither_its_last_room_event_nor_the_task_that_brought_it(
    join,
):
    await join("lobby")  # its last room event: its own presence update
    assert done_tasks_holding("chat.presence") == []


async def test_disconnected_socket_leaves_its_group(join):
    staying, leaving = await join("lobby"), await join("lobby")
    assert group_size(rooms.group_name("lobby")) == 2
    await leaving.disconnect()
    assert group_size(rooms.group_name("lobby")) == 1
    await staying.send_json_to({"message": "after you left"})
    await assert_receives_message(staying, "after you left")
    assert await leaving.receive_nothing(timeout=0.3)


async def test_idle_socket_still_receives_after_the_layers_blocking_read_times_out(join):
    # channels_redis blocks 5 s per read; redis-py 8 once killed idle consumers right there.
    first, second = await join("lobby"), await join("lobby")
    await asyncio.sleep(6)
    await first.send_json_to({"message": "still awake"})
    await assert_receives_message(second, "still awake")


async def test_channel_layer_round_trip_returns_hello():
    channel_layer = get_channel_layer()
    # Listening first: on the pubsub layer a message to a channel nobody listens on is gone.
    receiving = asyncio.ensure_future(channel_layer.receive("test_channel"))
    await until_listening(["test_channel"])
    await channel_layer.send("test_channel", {"type": "hello"})
    assert await asyncio.wait_for(receiving, 5) == {"type": "hello"}


async def test_extra_keys_are_ignored_and_message_is_trimmed(join):
    socket = await join("lobby")
    await socket.send_json_to({"message": "  hi there \n", "colour": "red"})
    await assert_receives_message(socket, "hi there")


@pytest.mark.parametrize("room", ["café", "caf\u0065\u0301", "Ελληνικά", "日本語", "a" * 100])
async def test_unicode_and_long_room_names_chat(join, room):
    first, second = await join(room), await join(room)
    await first.send_json_to({"message": "hi"})
    await assert_receives_message(second, "hi")


async def test_composed_and_decomposed_spellings_are_one_room(join):
    composed, decomposed = await join("caf\u00e9"), await join("cafe\u0301")
    await decomposed.send_json_to({"message": "same room"})
    await assert_receives_message(composed, "same room")


LOOKALIKES_OF_LOBBY = ["Lobby", "LOBBY", "l\u043ebby", "lobby.", "_lobby", "l0bby", "Iobby"]


@pytest.mark.parametrize("lookalike", LOOKALIKES_OF_LOBBY)
async def test_a_socket_to_a_new_room_that_looks_like_an_existing_one_is_told_where_it_is(
    join, lookalike
):
    original = await join("lobby")
    await original.send_json_to({"message": "the first lobby"})
    await assert_receives_message(original, "the first lobby")

    impostor = communicator(lookalike)
    assert (await impostor.connect())[0]
    error = (await next_frame(impostor))["error"]
    assert (error["code"], '"lobby"' in error["detail"]) == ("lookalike_room", True)
    closed = await impostor.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": protocol.CLOSE_LOOKALIKE_ROOM}
    await impostor.disconnect()
    await assert_no_chat(original)


async def test_a_message_to_a_room_that_came_to_look_like_another_is_refused_naming_it(join):
    impostor = await join("Lobby")  # before there was a lobby
    original = await join("lobby")
    await original.send_json_to({"message": "the first lobby"})
    await assert_receives_message(original, "the first lobby")

    await impostor.send_json_to({"message": "look at me", "client_id": "c1"})

    error = (await next_frame(impostor))["error"]
    assert (error["code"], error["client_id"]) == ("lookalike_room", "c1")
    assert '"lobby"' in error["detail"]
    await assert_no_chat(original)
    assert await database_sync_to_async(services.last_seq)("Lobby") == 0


async def test_frames_arriving_together_are_stored_together_and_each_gets_its_answer(
    join, monkeypatch
):
    first, second, retrier = await join("lobby"), await join("lobby"), await join("lobby")
    impostor = await join("l0bby")
    await retrier.send_json_to({"message": "sent once", "client_id": "r1"})
    await assert_receives_message(first, "sent once")
    await assert_receives_message(retrier, "sent once")
    batches = []
    commit = commits.commit
    monkeypatch.setattr(
        commits, "commit", lambda posts: batches.append(len(posts)) or commit(posts)
    )

    await first.send_json_to({"message": "one"})
    await impostor.send_json_to({"message": "look at me", "client_id": "i1"})
    await retrier.send_json_to({"message": "sent once", "client_id": "r1"})
    await second.send_json_to({"message": "two"})

    one, two = (
        await assert_receives_message(first, "one"),
        await assert_receives_message(first, "two"),
    )
    assert batches == [4]
    assert (one["id"], two["id"]) == (2, 3)
    assert (await next_frame(impostor))["error"]["code"] == "lookalike_room"
    acknowledged = [
        frame for frame in await frames_within(retrier) if frame.get("client_id") == "r1"
    ]
    assert [frame["id"] for frame in acknowledged] == [1]
    assert await database_sync_to_async(services.last_seq)("lobby") == 3


async def test_a_batchs_messages_of_one_room_are_one_broadcast_and_reach_every_socket_in_order(
    join, monkeypatch
):
    sockets = [await join("lobby") for _ in range(3)]
    layer = get_channel_layer()
    sent, group_send = [], layer.group_send
    monkeypatch.setattr(
        layer,
        "group_send",
        lambda group, event: sent.append(event["type"]) or group_send(group, event),
    )
    for number, socket in enumerate(sockets):
        await socket.send_json_to({"message": f"m{number}"})
    for socket in sockets:
        frames = [await assert_receives_message(socket, f"m{number}") for number in range(3)]
        assert [frame["id"] for frame in frames] == [1, 2, 3]
        await assert_no_chat(socket)
    assert sent == ["chat.messages"]


async def test_a_batchs_broadcast_meeting_an_outage_closes_each_of_its_senders_with_4503(
    join, monkeypatch
):
    first, second = await join("lobby"), await join("lobby")

    async def unreachable(group, event):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(get_channel_layer(), "group_send", unreachable)
    await first.send_json_to({"message": "one"})
    await second.send_json_to({"message": "two"})
    for socket in (first, second):
        assert await close_code(socket) == protocol.CLOSE_SERVICE_UNAVAILABLE


async def test_a_lookalike_room_from_before_the_rule_keeps_its_messages_coming(join):
    await database_sync_to_async(Room.objects.create)(name="lobby", key="lobby", last_seq=1)
    # From before the migration that keyed rooms: it kept its messages, and no key.
    await database_sync_to_async(Room.objects.create)(name="Lobby", key=None, last_seq=1)
    old = await join("Lobby")
    await old.send_json_to({"message": "still here"})
    assert (await assert_receives_message(old, "still here"))["id"] == 2


@pytest.mark.parametrize(
    "room", ["", "has space", "semi;colon", "<script>", "a" * 101, "..", "tab\t", "emoji😀"]
)
async def test_invalid_room_path_is_refused_at_handshake(room, caplog):
    socket = communicator(room)
    connected, _ = await socket.connect()
    assert not connected
    await socket.disconnect()
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize(
    "path", ["/ws/chat/", "/ws/chat/lobby", "/ws/nowhere/", "/ws/chat/lobby/extra/"]
)
async def test_unknown_websocket_path_is_refused_at_handshake(path):
    headers = [(b"host", ALLOWED_HOST), (b"origin", ALLOWED_ORIGIN)]
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect()
    assert not connected
    await socket.disconnect()


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", None])
async def test_handshake_from_foreign_or_missing_origin_is_refused(origin):
    socket = communicator("lobby", origin=origin)
    connected, _ = await socket.connect()
    assert not connected
    await socket.disconnect()


REFUSED_FRAMES = [
    ({"text_data": "not json"}, "invalid_json"),
    ({"text_data": '{"message": "unterminated'}, "invalid_json"),
    ({"text_data": '["message", "hi"]'}, "not_an_object"),
    ({"text_data": '"just a string"'}, "not_an_object"),
    ({"text_data": "null"}, "not_an_object"),
    ({"text_data": '{"text": "hi"}'}, "missing_message"),
    ({"text_data": '{"message": 42}'}, "message_not_string"),
    ({"text_data": '{"message": null}'}, "message_not_string"),
    ({"text_data": '{"message": ["hi"]}'}, "message_not_string"),
    ({"text_data": '{"message": "   \\n\\t "}'}, "empty_message"),
    ({"text_data": json.dumps({"message": "x" * 4097})}, "message_too_long"),
    ({"text_data": json.dumps({"message": "x" * 30000})}, "frame_too_large"),
    ({"bytes_data": b'{"message": "hi"}'}, "binary_frame"),
    ({"bytes_data": b"\x00\xff\xfe"}, "binary_frame"),
    # Valid JSON, but text no database or browser carries (protocol.unstorable_character).
    ({"text_data": json.dumps({"message": "look \ud83d"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "\ude00 low half"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "swapped \ude00\ud83d"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "nul \x00 inside"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "vertical \x0b tab"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "next \x85 line"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "escape \x1b[31m"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "nonchar \uffff"})}, "invalid_character"),
    ({"text_data": json.dumps({"message": "nonchar \U0010fffe"})}, "invalid_character"),
]


@pytest.mark.parametrize(("frame", "code"), REFUSED_FRAMES)
async def test_refused_frame_gets_error_and_socket_keeps_chatting(join, caplog, frame, code):
    sender, bystander = await join("lobby"), await join("lobby")
    with caplog.at_level(logging.INFO, logger="chat"):
        await sender.send_to(**frame)
        await assert_receives_error(sender, code)
    await assert_no_chat(bystander)

    refusals = [record for record in caplog.records if record.name == "chat.consumers"]
    assert len(refusals) == 1
    assert code in refusals[0].getMessage()
    assert not [record for record in caplog.records if record.exc_info]

    await sender.send_json_to({"message": "still here"})
    await assert_receives_message(sender, "still here")
    await assert_receives_message(bystander, "still here")


async def test_message_of_exactly_the_limit_is_accepted(join):
    socket = await join("lobby")
    await socket.send_json_to({"message": "x" * 4096})
    await assert_receives_message(socket, "x" * 4096)


async def test_flooding_is_rate_limited_then_closed_and_others_notice_nothing(join, settings):
    settings.CHAT_RATE_BURST = 3
    settings.CHAT_RATE_PER_SECOND = 0.001
    settings.CHAT_FLOOD_CLOSE_AFTER = 4
    flooder, bystander = await join("lobby"), await join("lobby")
    for number in range(3):
        await flooder.send_json_to({"message": f"m{number}"})
    for number in range(3):
        await assert_receives_message(flooder, f"m{number}")
        await assert_receives_message(bystander, f"m{number}")

    for _ in range(4):
        await flooder.send_json_to({"message": "too fast"})
        await assert_receives_error(flooder, "rate_limited")
    output = await flooder.receive_output(timeout=2)
    while output["type"] == "websocket.send":  # presence updates may come first
        assert "presence" in output["text"]
        output = await flooder.receive_output(timeout=2)
    assert output == {"type": "websocket.close", "code": protocol.CLOSE_FLOODING}
    await assert_no_chat(bystander)


async def test_rate_limit_allows_a_person_typing_normally(join):
    socket = await join("lobby")
    for number in range(20):
        await socket.send_json_to({"message": f"line {number}"})
    for number in range(20):
        await assert_receives_message(socket, f"line {number}")


def random_frame(rng: random.Random) -> dict:
    """One hostile frame: random bytes, random text, or JSON of the wrong shape."""
    size = rng.choice([0, 1, 10, 100, 5000, 40000])
    kind = rng.randrange(5)
    if kind == 0:
        return {"bytes_data": rng.randbytes(max(size, 1))}
    if kind == 1:
        return {"text_data": "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(max(size, 1)))}
    if kind == 2:
        value = rng.choice([None, 1, 1.5, True, [], {}, "x" * size, {"message": {"nested": 1}}])
        return {"text_data": json.dumps({"message": value})}
    if kind == 3:
        return {"text_data": "[" * size + "]" * rng.randrange(size + 1) or "["}
    return {"text_data": json.dumps(rng.choice([[], "s", 3, {"msg": "x"}]))}


async def test_fuzzed_frames_leave_every_socket_chatting(join, settings):
    settings.CHAT_RATE_BURST = 10_000
    rng = random.Random(20261127)
    sockets = [await join("fuzz") for _ in range(3)]
    for _ in range(300):
        sender = rng.choice(sockets)
        await sender.send_to(**random_frame(rng))
        frame = await next_frame(sender)
        assert "error" in frame or "message" in frame
    for socket in sockets:
        while not await socket.receive_nothing(timeout=0.2):
            await socket.receive_json_from()

    for number, sender in enumerate(sockets):
        await sender.send_json_to({"message": f"after fuzz {number}"})
        for socket in sockets:
            await assert_receives_message(socket, f"after fuzz {number}")


# --- History, identity, catch-up and presence ------------------------------------------

FRAME_FIELDS = {
    "message",
    "id",
    "user",
    "guest",
    "bot",
    "ts",
    "client_id",
    "edited",
    "deleted",
    "change",
}


def store(room: str, *texts: str, name: str = "earlier"):
    for text in texts:
        services.store_message(room, services.Author(name=name), text, None)


async def test_outbound_frame_carries_message_id_user_guest_and_iso_time(join):
    socket = await join("lobby")
    await socket.send_json_to({"message": "hi", "client_id": "c-1"})
    frame = await assert_receives_message(socket, "hi")
    assert set(frame) == FRAME_FIELDS
    assert (frame["id"], frame["user"], frame["guest"], frame["client_id"]) == (
        1,
        "Guest",
        True,
        "c-1",
    )
    assert datetime.fromisoformat(frame["ts"]).tzinfo is not None


async def test_message_is_stored_before_anyone_receives_it(join):
    socket = await join("lobby")
    await socket.send_json_to({"message": "kept"})
    frame = await assert_receives_message(socket, "kept")
    stored = await database_sync_to_async(Message.objects.get)(room_id="lobby", seq=frame["id"])
    assert stored.text == "kept"


async def test_store_failure_answers_sender_and_nobody_receives_it(join, monkeypatch):
    sender, bystander = await join("lobby"), await join("lobby")

    def broken_store(*args, **kwargs):
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(services, "store_messages", broken_store)
    await sender.send_json_to({"message": "lost?", "client_id": "c-9"})
    frame = await next_frame(sender)
    assert frame == {
        "error": {
            "code": "store_failed",
            "detail": frame["error"]["detail"],
            "client_id": "c-9",
        }
    }
    await assert_no_chat(bystander)
    await assert_no_chat(sender)


async def test_a_store_failing_on_a_bug_answers_store_failed_and_logs_its_traceback(
    join, monkeypatch, caplog
):
    sender = await join("lobby")

    def buggy_store(*args, **kwargs):
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(services, "store_messages", buggy_store)
    await sender.send_json_to({"message": "lost?", "client_id": "c-10"})
    frame = await next_frame(sender)
    assert frame["error"]["code"] == "store_failed"
    [record] = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is IntegrityError
    await sender.send_json_to({"message": "still open"})
    assert (await next_frame(sender))["error"]["code"] == "store_failed"


async def test_joining_sends_the_last_messages_oldest_first_marked_as_history(join, settings):
    settings.CHAT_HISTORY_LIMIT = 3
    await database_sync_to_async(store)("lobby", "one", "two", "three", "four", "five")
    socket = await join("lobby")
    assert [frame["message"] for frame in socket.backlog] == ["three", "four", "five"]
    assert [frame["id"] for frame in socket.backlog] == [3, 4, 5]
    assert all(frame["history"] is True for frame in socket.backlog)
    await socket.send_json_to({"message": "six"})
    live = await assert_receives_message(socket, "six")
    assert "history" not in live and live["id"] == 6


async def test_a_whole_emoji_and_tabs_and_line_breaks_are_stored_and_sent(join):
    socket = await join("lobby")
    await socket.send_to(text_data='{"message": "smile \\ud83d\\ude00\\tand\\r\\nbreak"}')
    assert (await next_frame(socket))["message"] == "smile \U0001f600\tand\r\nbreak"


@pytest.mark.parametrize(
    "after",
    ["9" * 4301, str(2**63), "-1", "+1", "1e3", "\u0661", ""],
    ids=["past-int-parsing", "past-bigint", "negative", "signed", "exponent", "arabic", "empty"],
)
async def test_an_unreadable_after_gets_an_error_then_the_history(join, after):
    await database_sync_to_async(store)("lobby", "m1", "m2")
    socket = await join("lobby", query=f"after={quote(after)}")
    error, *history = socket.backlog
    assert error["error"]["code"] == "invalid_after"
    assert [(frame["id"], frame.get("history")) for frame in history] == [(1, True), (2, True)]
    await socket.send_json_to({"message": "m3"})
    assert (await assert_receives_message(socket, "m3"))["id"] == 3


async def test_history_of_a_new_room_is_empty(join):
    assert (await join("empty-room")).backlog == []


async def test_reconnect_catches_up_exactly_the_missed_messages_in_order(join):
    await database_sync_to_async(store)("lobby", *(f"m{number}" for number in range(1, 8)))
    socket = await join("lobby", query="after=3")
    assert [frame.get("id") for frame in socket.backlog] == [4, 5, 6, 7, None]
    assert socket.backlog[-1] == {"catch_up": {"recovered": True, "after": 3, "until": 7}}
    assert not any("history" in frame for frame in socket.backlog)
    await socket.send_json_to({"message": "m8"})
    assert (await assert_receives_message(socket, "m8"))["id"] == 8


async def test_retried_client_id_is_stored_once_and_echoed_to_its_sender_only(join):
    sender, bystander = await join("lobby"), await join("lobby")
    await sender.send_json_to({"message": "once", "client_id": "retry-1"})
    first = await assert_receives_message(sender, "once")
    await assert_receives_message(bystander, "once")

    await sender.send_json_to({"message": "once", "client_id": "retry-1"})
    echo = await assert_receives_message(sender, "once")
    assert echo["id"] == first["id"]
    await assert_no_chat(bystander)
    count = await database_sync_to_async(Message.objects.filter(client_id="retry-1").count)()
    assert count == 1


async def test_a_message_the_layer_dropped_is_filled_in_before_the_next_one(join):
    sender, receiver = await join("lobby"), await join("lobby")
    # Stored but never broadcast: what a full channel or a crash between the two leaves.
    await database_sync_to_async(store)("lobby", "dropped by the layer")
    await sender.send_json_to({"message": "next"})
    for socket in (sender, receiver):
        assert (await assert_receives_message(socket, "dropped by the layer"))["id"] == 1
        assert (await assert_receives_message(socket, "next"))["id"] == 2


async def test_a_message_that_overtook_another_waits_for_it_without_a_query(join, monkeypatch):
    socket = await join("lobby")
    author = services.Author(name="earlier")
    first, second = [
        (await database_sync_to_async(services.store_message)("lobby", author, text, None))[0]
        for text in ("1st", "2nd")
    ]
    queries = []
    monkeypatch.setattr(services, "messages_after", lambda *args: queries.append(args) or [])
    layer, group = get_channel_layer(), rooms.group_name("lobby")
    # Two senders' broadcasts crossed on the way: the second arrives first.
    for message in (second, first):
        await layer.group_send(group, protocol.chat_message_event(message))
    assert (await assert_receives_message(socket, "1st"))["id"] == 1
    assert (await assert_receives_message(socket, "2nd"))["id"] == 2
    await assert_no_chat(socket)
    assert queries == []


async def test_a_gap_fill_that_cannot_reach_the_database_closes_the_socket_with_4503(
    join, monkeypatch
):
    socket = await join("lobby")
    await database_sync_to_async(store)("lobby", "dropped by the layer")

    def database_gone(*args):
        raise OperationalError("the database is gone")

    monkeypatch.setattr(services, "messages_after", database_gone)
    await socket.send_json_to({"message": "next"})
    assert await close_code(socket) == protocol.CLOSE_SERVICE_UNAVAILABLE


async def test_a_late_duplicate_event_is_not_delivered_twice(join):
    socket = await join("lobby")
    await socket.send_json_to({"message": "hi"})
    frame = await assert_receives_message(socket, "hi")
    layer = get_channel_layer()
    await layer.group_send(rooms.group_name("lobby"), {"type": "chat.message", **frame})
    await assert_no_chat(socket)


async def test_logged_in_user_speaks_under_their_username(join):
    user = await database_sync_to_async(User.objects.create_user)("alice", password="pw-123456")
    cookie = await session_cookie_for(
        _auth_user_id=str(user.pk),
        _auth_user_backend="django.contrib.auth.backends.ModelBackend",
        _auth_user_hash=user.get_session_auth_hash(),
    )
    socket = await join("lobby", headers=[cookie])
    await socket.send_json_to({"message": "hello"})
    frame = await assert_receives_message(socket, "hello")
    assert (frame["user"], frame["guest"]) == ("alice", False)


async def test_guest_speaks_under_the_display_name_in_their_session(join):
    socket = await join("lobby", headers=[await session_cookie_for(display_name="Zoë")])
    await socket.send_json_to({"message": "hello"})
    frame = await assert_receives_message(socket, "hello")
    assert (frame["user"], frame["guest"]) == ("Zoë", True)


async def test_presence_follows_joins_and_leaves(join):
    first = await join("lobby")
    named = await join("lobby", headers=[await session_cookie_for(display_name="Zoë")])
    assert await next_presence(first) == {"count": 2, "names": ["Guest (guest)", "Zoë (guest)"]}
    await named.disconnect()
    assert await next_presence(first) == {"count": 1, "names": ["Guest (guest)"]}


async def test_guests_without_a_name_are_told_apart_in_messages_and_presence(join):
    first = await join("lobby", headers=[await session_cookie_for()])
    second = await join("lobby", headers=[await session_cookie_for()])
    names = (await next_presence(first))["names"]
    while len(names) < 2:  # until the second's join is announced
        names = (await next_presence(first))["names"]
    said = []
    for socket, text in ((first, "one"), (second, "two")):
        await socket.send_json_to({"message": text})
        frames = [await assert_receives_message(reader, text) for reader in (first, second)]
        assert frames[0] == frames[1] and frames[0]["guest"] is True
        assert re.fullmatch(r"Guest [0-9a-f]{4}", frames[0]["user"])
        said.append(frames[0]["user"])
    assert said[0] != said[1]
    assert sorted(names) == sorted(f"{name} (guest)" for name in said)


async def test_a_burst_of_joins_makes_one_presence_announcement_not_one_each(join, settings):
    settings.CHAT_PRESENCE_COALESCE_SECONDS = 0.2  # as in production
    first = await join("lobby")
    burst = [communicator("lobby") for _ in range(6)]
    try:
        assert all(ok for ok, _ in await asyncio.gather(*(s.connect() for s in burst)))
        updates = [
            frame["presence"] for frame in await frames_within(first, 1.5) if "presence" in frame
        ]
        assert updates[-1]["count"] == 7
        assert len(updates) <= 2  # one per CHAT_PRESENCE_COALESCE_SECONDS, not six
    finally:
        await asyncio.gather(*(s.disconnect() for s in burst))


async def test_presence_of_one_room_is_not_sent_to_another(join):
    other = await join("other")
    await join("lobby")
    assert [frame for frame in await frames_within(other) if "presence" in frame] == []


async def test_a_dropped_last_message_arrives_within_two_refresh_rounds(join):
    socket = await join("last-word")
    await upkeep.run_round()
    # Stored, but its broadcast lost, and nothing follows it that would reveal the gap.
    await database_sync_to_async(store)("last-word", "the last word")
    await assert_no_chat(socket)
    # The round after it was stored gives it time to arrive live; the next one resyncs.
    assert await upkeep.run_round() == 0
    assert await upkeep.run_round() == 1
    assert (await assert_receives_message(socket, "the last word"))["id"] == 1
    assert await upkeep.run_round() == 0


def edit_as_earlier(room: str, seq: int):
    services.edit_message(room, seq, services.Author(name="earlier"), "fixed")


def delete_as_earlier(room: str, seq: int):
    services.delete_message(room, seq, services.Author(name="earlier"))


@pytest.mark.parametrize("kind, change", [("edit", edit_as_earlier), ("delete", delete_as_earlier)])
async def test_a_dropped_last_change_arrives_within_two_refresh_rounds(join, kind, change):
    await database_sync_to_async(store)("last-change", "the last word")
    socket = await join("last-change")
    await upkeep.run_round()
    # Changed, but its broadcast lost, and no change follows it that would reveal the gap.
    await database_sync_to_async(change)("last-change", 1)
    await assert_no_chat(socket)
    # The round after the change gives it time to arrive live; the next one reads it.
    assert await upkeep.run_round() == 0
    assert await upkeep.run_round() == 1
    frame = await next_frame(socket)
    assert set(frame) == {kind}
    assert (frame[kind]["id"], frame[kind]["change"]) == (1, 1)
    assert frame[kind].get("message", "fixed") == "fixed"
    assert await upkeep.run_round() == 0


# --- However a consumer ends, it leaves its room ------------------------------------------


def fail_for_the_victim(monkeypatch, handler: str):
    """Make ChatConsumer.<handler> raise for sockets opened with ?victim=1, as a bug would."""
    original = getattr(ChatConsumer, handler)

    def failing(self, *args, **kwargs):
        if b"victim=1" in self.scope["query_string"]:
            raise RuntimeError(f"injected failure in {handler}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChatConsumer, handler, failing)


async def close_code(socket: WebsocketCommunicator) -> int:
    """The code the server closes the socket with, skipping the frames before it."""
    while (output := await socket.receive_output(timeout=5))["type"] != "websocket.close":
        pass
    return output.get("code")


async def presence_count(room: str) -> int:
    """How many sockets the room's presence list in Redis holds now."""
    return (await database_sync_to_async(presence.snapshot)(rooms.group_name(room)))["count"]


async def wait_for_presence_count(socket: WebsocketCommunicator, count: int) -> dict:
    """The first presence update with `count` sockets (fails after the timeout)."""
    while (update := await next_presence(socket, timeout=5))["count"] != count:
        pass
    return update


@pytest.mark.parametrize("handler", ["receive", "chat_message", "chat_presence"])
async def test_a_consumer_whose_handler_fails_leaves_its_room(join, monkeypatch, caplog, handler):
    survivor = await join("crash")
    fail_for_the_victim(monkeypatch, handler)
    victim = communicator("crash", query="victim=1")
    assert (await victim.connect())[0]
    await survivor.send_json_to({"message": "trigger"})  # a room event for chat_message
    await victim.send_json_to({"message": "boom"})  # a frame for receive
    # Closed as an internal error, logged once with the traceback a bug deserves.
    assert await close_code(victim) == protocol.CLOSE_INTERNAL_ERROR
    await wait_for_presence_count(survivor, 1)
    fresh = await join("crash")
    assert await presence_count("crash") == 2
    failures = [record for record in caplog.records if record.exc_info]
    assert len(failures) == 1 and "injected failure" in str(failures[0].exc_info[1])
    # The room goes on for everyone else. Before the failure, the room's two messages may
    # still be on their way (their broadcasts race the victim's leaving); a victim that failed
    # in `receive` never stored its own.
    await fresh.send_json_to({"message": "still here"})
    earlier = []
    while (text := (await next_frame(survivor, timeout=5)).get("message")) != "still here":
        earlier.append(text)
    assert set(earlier) <= ({"trigger"} if handler == "receive" else {"trigger", "boom"})
    assert len(earlier) == len(set(earlier))


async def test_a_consumer_that_fails_while_connecting_leaves_no_ghost(join, monkeypatch):
    survivor = await join("crash")
    fail_for_the_victim(monkeypatch, "_send_backlog")  # after group_add and accept
    victim = communicator("crash", query="victim=1")
    await victim.connect()
    assert await close_code(victim) == protocol.CLOSE_INTERNAL_ERROR
    await wait_for_presence_count(survivor, 1)
    await join("crash")
    assert await presence_count("crash") == 2


async def test_a_cancelled_consumer_leaves_its_room(join):
    survivor = await join("crash")
    victim = communicator("crash")  # not join's: its teardown would disconnect it again
    assert (await victim.connect())[0]
    await wait_for_presence_count(survivor, 2)
    victim.future.cancel()  # as a server that stops does, with no websocket.disconnect
    await wait_for_presence_count(survivor, 1)
    await join("crash")
    assert await presence_count("crash") == 2


async def test_a_client_id_another_author_used_first_still_stores_and_broadcasts(join):
    squatter = await join("lobby", headers=[await session_cookie_for(display_name="Mallory")])
    sender = await join("lobby", headers=[await session_cookie_for(display_name="Zoë")])
    await squatter.send_json_to({"message": "squatting", "client_id": "1"})
    await assert_receives_message(squatter, "squatting")
    await assert_receives_message(sender, "squatting")
    await sender.send_json_to({"message": "mine", "client_id": "1"})
    mine = await assert_receives_message(sender, "mine")
    seen = await assert_receives_message(squatter, "mine")
    assert (mine["id"], mine["user"]) == (seen["id"], "Zoë") == (2, "Zoë")
    count = await database_sync_to_async(Message.objects.filter(client_id="1").count)()
    assert count == 2


async def test_a_guest_retrying_from_another_socket_of_its_session_is_deduplicated(join):
    # What a reconnect does: the same session's next socket sends the unacknowledged again.
    cookie = await session_cookie_for(display_name="Zoë")
    first_socket, bystander = await join("lobby", headers=[cookie]), await join("lobby")
    await first_socket.send_json_to({"message": "once", "client_id": "retry-2"})
    first = await assert_receives_message(first_socket, "once")
    await assert_receives_message(bystander, "once")
    second_socket = await join("lobby", headers=[cookie], query=f"after={first['id']}")
    await second_socket.send_json_to({"message": "once", "client_id": "retry-2"})
    assert (await assert_receives_message(second_socket, "once"))["id"] == first["id"]
    await assert_no_chat(bystander)


# A socket that leaves a busy room has the room's messages on their way to it as it goes
# (channels_redis#276): each of these says something, and leaves at once.
CHURN_ROOMS = 4
CHURN_SOCKETS_PER_ROOM = 5
CHURN_ROUNDS = 2
LAYER_SETTLE_SECONDS = 5.0


def layer_residue() -> dict:
    """What the channel layer holds for sockets: in Redis, and in this process."""
    layer = get_channel_layer()
    if isinstance(layer, RedisPubSubChannelLayer):
        loop_layer = layer._get_layer()
        client = redis.Redis.from_url(loop_layer._shards[0].host["address"])
        try:
            subscribed = [name.decode() for name in client.pubsub_channels(f"{loop_layer.prefix}*")]
            subscribers = sum(count for _, count in client.pubsub_numsub(*subscribed))
        finally:
            client.close()
        return {
            "subscribed": sorted(subscribed),  # PUBSUB CHANNELS
            "subscribers": subscribers,  # PUBSUB NUMSUB, added up
            "queues": sorted(loop_layer.channels),
            "groups": {group: sorted(members) for group, members in loop_layer.groups.items()},
        }
    client = redis.Redis.from_url(layer.hosts[0]["address"])
    try:
        groups = {
            key.decode(): sorted(member.decode() for member in client.zrange(key, 0, -1))
            for key in client.keys(f"{layer.prefix}:group:*")
        }
    finally:
        client.close()
    return {"groups": groups, "queues": sorted(layer.receive_buffer)}


def socket_channels(residue: dict) -> set[str]:
    """Every socket channel the layer still knows of, wherever it is kept."""
    members = {channel for group in residue["groups"].values() for channel in group}
    subscribed = {name for name in residue.get("subscribed", ()) if "__group__" not in name}
    return members | subscribed | set(residue["queues"])


async def settled_residue(settled) -> dict:
    """layer_residue() once settled(residue) holds, or as it is LAYER_SETTLE_SECONDS later.

    Redis answers an UNSUBSCRIBE on the layer's own connection: another one sees it a
    moment later.
    """
    deadline = asyncio.get_running_loop().time() + LAYER_SETTLE_SECONDS
    while not settled(residue := layer_residue()):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    return residue


async def test_sockets_that_leave_busy_rooms_leave_nothing_in_the_layer(join):
    stayers = [await join(f"busy-{number}") for number in range(CHURN_ROOMS)]
    for _ in range(CHURN_ROUNDS):
        leavers = [
            await join(f"busy-{number}")
            for number in range(CHURN_ROOMS)
            for _ in range(CHURN_SOCKETS_PER_ROOM)
        ]
        for socket in leavers:
            await socket.send_json_to({"message": "bye"})
        await asyncio.gather(*(socket.disconnect() for socket in leavers))

    residue = await settled_residue(lambda residue: len(socket_channels(residue)) == CHURN_ROOMS)
    assert len(socket_channels(residue)) == CHURN_ROOMS, residue  # the stayers'
    assert [len(members) for members in residue["groups"].values()] == [1] * CHURN_ROOMS
    if "subscribed" in residue:  # pubsub: a channel per stayer, one per room's group
        assert len(residue["subscribed"]) == residue["subscribers"] == 2 * CHURN_ROOMS

    await asyncio.gather(*(socket.disconnect() for socket in stayers))
    residue = await settled_residue(lambda residue: not any(residue.values()))
    assert not any(residue.values()), residue


# --- Recovery, bounded: the rest is read over HTTP --------------------------------------


def recovery_marker(recovered: bool, after: int, until: int) -> dict:
    return {"catch_up": {"recovered": recovered, "after": after, "until": until}}


async def test_a_reconnect_missing_the_bound_or_fewer_recovers_them_on_the_socket(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    await database_sync_to_async(store)("lobby", "m1", "m2", "m3")
    socket = await join("lobby", query="after=0")
    assert [frame.get("id") for frame in socket.backlog] == [1, 2, 3, None]
    assert socket.backlog[-1] == recovery_marker(True, 0, 3)


async def test_a_reconnect_missing_more_than_the_bound_is_told_to_fetch_them_over_http(
    join, settings
):
    settings.CHAT_RECOVERY_LIMIT = 3
    await database_sync_to_async(store)("lobby", *(f"m{number}" for number in range(1, 9)))
    socket = await join("lobby", query="after=2")
    assert socket.backlog == [recovery_marker(False, 2, 8)]  # not one of them on the socket
    await socket.send_json_to({"message": "m9"})
    assert (await assert_receives_message(socket, "m9"))["id"] == 9
    await assert_no_chat(socket)


async def test_what_the_marker_leaves_out_the_messages_endpoint_gives_exactly(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    await database_sync_to_async(store)("lobby", *(f"m{number}" for number in range(1, 9)))
    marker = (await join("lobby", query="after=2")).backlog[-1]["catch_up"]
    fetched, after = [], marker["after"]
    while after is not None:
        # Through the ASGI application, as a server runs it: each request in its own thread.
        path = f"/chat/lobby/messages/?after={after}&limit=2"
        request = HttpCommunicator(application, "GET", path, headers=[(b"host", ALLOWED_HOST)])
        page = json.loads((await request.get_response(timeout=5))["body"])
        fetched += [message["id"] for message in page["messages"]]
        after = page["next_after"]
    assert fetched == list(range(marker["after"] + 1, marker["until"] + 1))


async def test_an_after_beyond_the_room_counts_from_its_newest_message(join):
    await database_sync_to_async(store)("lobby", "m1", "m2")
    socket = await join("lobby", query="after=99")
    assert socket.backlog == [recovery_marker(True, 2, 2)]
    await socket.send_json_to({"message": "m3"})
    assert (await assert_receives_message(socket, "m3"))["id"] == 3


async def test_live_messages_after_an_unrecovered_reconnect_arrive_once_in_order(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    await database_sync_to_async(store)("lobby", *(f"m{number}" for number in range(1, 8)))
    behind, live = await join("lobby", query="after=0"), await join("lobby")
    assert behind.backlog == [recovery_marker(False, 0, 7)]
    for number in (8, 9):
        await live.send_json_to({"message": f"live {number}"})
        assert (await assert_receives_message(behind, f"live {number}"))["id"] == number
    await assert_no_chat(behind)


async def test_a_gap_fill_within_the_bound_stays_on_the_socket(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    socket = await join("lobby")
    # Stored but never broadcast: the next message reveals a gap of 3.
    await database_sync_to_async(store)("lobby", "m1", "m2", "m3")
    await socket.send_json_to({"message": "m4"})
    assert [(await next_frame(socket))["id"] for _ in range(4)] == [1, 2, 3, 4]
    await assert_no_chat(socket)


async def test_a_gap_fill_beyond_the_bound_is_left_to_the_client_with_a_marker(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    socket = await join("lobby")
    # Stored but never broadcast: the next message reveals a gap of 7.
    await database_sync_to_async(store)("lobby", *(f"m{number}" for number in range(1, 8)))
    await socket.send_json_to({"message": "m8", "client_id": "c-8"})
    # Its own message too is in the range: the client reads it, client_id and all, over HTTP.
    assert await next_frame(socket) == recovery_marker(False, 0, 8)
    await socket.send_json_to({"message": "m9"})
    assert (await assert_receives_message(socket, "m9"))["id"] == 9
    await assert_no_chat(socket)


async def test_a_resync_beyond_the_bound_is_left_to_the_client_with_a_marker(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 3
    socket = await join("resync-bound")
    await upkeep.run_round()
    await database_sync_to_async(store)("resync-bound", *(f"m{n}" for n in range(1, 6)))
    await upkeep.run_round()
    assert await upkeep.run_round() == 1
    assert await next_frame(socket) == recovery_marker(False, 0, 5)
    await assert_no_chat(socket)


@pytest.mark.parametrize("catch_up", [{"after": 1}, {"after": -1}, {}, 3, None])
async def test_a_catch_up_page_request_is_refused_with_where_history_is_read(join, catch_up):
    socket = await join("lobby")
    await socket.send_json_to({"catch_up": catch_up})
    await assert_receives_error(socket, "catch_up_over_http")
    await socket.send_json_to({"message": "still here", "catch_up": catch_up})
    await assert_receives_message(socket, "still here")


async def test_page_requests_spend_rate_limit_tokens_and_a_flood_of_them_is_closed(join, settings):
    settings.CHAT_RATE_BURST = 1
    settings.CHAT_RATE_PER_SECOND = 0.001
    settings.CHAT_FLOOD_CLOSE_AFTER = 2
    socket = await join("lobby")
    for _ in range(3):
        await socket.send_json_to({"catch_up": {"after": 0}})
    codes = [(await next_frame(socket))["error"]["code"] for _ in range(3)]
    assert codes == ["catch_up_over_http"] * 3
    assert await close_code(socket) == protocol.CLOSE_FLOODING


async def test_typing_reaches_the_others_in_the_room_but_not_the_typer(join):
    typer = await join("lobby", headers=[await session_cookie_for(display_name="Zoë")])
    other, elsewhere = await join("lobby"), await join("other")
    await typer.send_json_to({"typing": True})
    assert await next_frame(other) == {"typing": {"user": "Zoë", "guest": True}}
    await assert_no_chat(typer)
    await assert_no_chat(elsewhere)


async def test_typing_is_throttled_and_the_extra_signals_are_dropped_silently(join, settings):
    settings.CHAT_TYPING_THROTTLE_SECONDS = 60
    typer, other = await join("lobby"), await join("lobby")
    for _ in range(5):
        await typer.send_json_to({"typing": True})
    assert await next_frame(other) == {"typing": {"user": "Guest", "guest": True}}
    await assert_no_chat(other)
    await assert_no_chat(typer)  # no error for the dropped ones


async def test_typing_is_never_stored_and_spends_no_message_limit(join, settings):
    settings.CHAT_TYPING_THROTTLE_SECONDS = 0
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "1/minute"
    typer, other = await join("lobby"), await join("lobby")
    for _ in range(3):
        await typer.send_json_to({"typing": True})
        assert "typing" in await next_frame(other)
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(services.last_seq)("lobby") == 0
    await typer.send_json_to({"message": "the one message a minute"})
    await assert_receives_message(typer, "the one message a minute")


@pytest.mark.parametrize("typing", [False, "yes", 1, None, {}])
async def test_a_malformed_typing_signal_is_refused_and_not_as_missing_message(join, typing):
    socket = await join("lobby")
    await socket.send_json_to({"typing": typing})
    await assert_receives_error(socket, "invalid_typing")
    await socket.send_json_to({"message": "still here", "typing": typing})
    await assert_receives_message(socket, "still here")


# More sockets at once than channels_redis's connection pool has connections (100).
BURST_SOCKETS = 150


@pytest.mark.parametrize("layer", ["redis", "pubsub"])
async def test_a_burst_of_sockets_coming_and_going_at_once_is_served_whole(
    redis_channel_layer, transactional_db, settings, caplog, layer
):
    # A server restart: every page reconnects at once. The sockets' group calls run on
    # the loop, side by side; unbounded, they ran RedisChannelLayer's pool dry, and a
    # third of the sockets were closed with 4503 as they connected.
    settings.CHANNEL_LAYERS = redis_channel_layers(redis_channel_layer.url, layer)
    settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = f"{BURST_SOCKETS}/minute"  # all from one address
    settings.CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS = BURST_SOCKETS
    group = rooms.group_name("burst")
    sockets = [communicator("burst") for _ in range(BURST_SOCKETS)]
    try:
        handshakes = await asyncio.gather(*(socket.connect(timeout=30) for socket in sockets))
        assert [code for connected, code in handshakes if not connected] == []
        assert group_size(group) == BURST_SOCKETS
    finally:
        await asyncio.gather(*(socket.disconnect(timeout=30) for socket in sockets))
    assert group_size(group) == 0
    assert "failed" not in caplog.text


def test_every_consumer_test_here_checks_the_side_of_each_call():
    # chat.sides: a handler on the wrong side raises, and so fails the test that made it.
    assert sides.CHECKING


# --- A socket connect refuses gets no room traffic -----------------------------------------


@pytest.mark.parametrize("refusal", ["socket limit", "another sign-in"])
async def test_a_socket_connect_refuses_leaves_its_groups_and_handles_no_room_event(
    join, settings, caplog, refusal
):
    # Sockets join their room's group before connect runs; these are refused after that.
    query = "as=someone-else"
    if refusal == "socket limit":
        settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "1/minute"  # the witness has the one
        query = ""
    witness = await join("refusals")
    refused = communicator("refusals", query=query)
    try:
        connected, _ = await refused.connect()  # refused before accept: the close is read
        while connected and (await refused.receive_output(timeout=5))["type"] != "websocket.close":
            pass
        async with asyncio.timeout(5):  # the group is left as connect returns
            while group_size(rooms.group_name("refusals")) != 1:
                await asyncio.sleep(0.01)
        await witness.send_json_to({"message": "after the refusal"})
        await assert_receives_message(witness, "after the refusal")
        await witness.send_json_to({"typing": True})
        assert await refused.receive_nothing(timeout=0.3)
    finally:
        await refused.disconnect()
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []
    assert "failed" not in caplog.text


# --- A Redis refusing writes is an outage ---------------------------------------------------


@pytest.mark.parametrize("refusal", WRITE_REFUSALS)
async def test_a_redis_refusing_writes_closes_the_sender_with_4503_and_it_chats_once_well(
    join, redis_channel_layer, caplog, refusal
):
    # The per-person limit's script is the sender's first write: Redis refuses it.
    sender = await join("lobby")
    with redis_refusing_writes(redis_channel_layer.url, refusal):
        await sender.send_json_to({"message": "while Redis refuses", "client_id": "kept"})
        assert await close_code(sender) == protocol.CLOSE_SERVICE_UNAVAILABLE
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []
    again = await join("lobby")
    await again.send_json_to({"message": "while Redis refuses", "client_id": "kept"})
    await assert_receives_message(again, "while Redis refuses")


# --- A database lock holds the process for the lock bound at most ---------------------------


@contextlib.contextmanager
def room_locked_outside(database_url: str, room: str) -> Iterator[None]:
    """Hold a lock that stores in `room` wait for, from another connection, until the end.

    SQLite: the database's write lock (BEGIN IMMEDIATE), which every room's stores wait
    for. PostgreSQL: the room's row (SELECT ... FOR UPDATE), which only its stores wait for.
    """
    config = dj_database_url.parse(database_url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        holder = sqlite3.connect(config["NAME"], isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(database_url)
        holder.execute("SELECT 1 FROM chat_room WHERE name = %s FOR UPDATE", [room])
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


async def answer_within(client, seconds: float) -> dict:
    """The next frame that is not a presence update, within `seconds`."""
    async with asyncio.timeout(seconds):
        while "presence" in (frame := json.loads(await client.recv())):
            pass
    return frame


async def test_a_locked_room_holds_its_sender_and_other_rooms_for_the_lock_bound_at_most(
    start_chat_server, migrated_database
):
    server = start_chat_server(DATABASE_LOCK_TIMEOUT_SECONDS=str(LOCK_BOUND_SECONDS))
    base = server.url.replace("http", "ws", 1)
    locked, free = f"locked-{uuid.uuid4().hex[:8]}", f"free-{uuid.uuid4().hex[:8]}"
    sender = await websockets.connect(f"{base}/ws/chat/{locked}/", origin=server.url)
    other = await websockets.connect(f"{base}/ws/chat/{free}/", origin=server.url)
    try:
        await sender.send(json.dumps({"message": "makes the room"}))
        assert (await answer_within(sender, 5))["message"] == "makes the room"
        bound = LOCK_BOUND_SECONDS
        with room_locked_outside(migrated_database, locked):
            started = time.monotonic()
            await sender.send(json.dumps({"message": "held", "client_id": "held-1"}))
            await other.send(json.dumps({"message": "elsewhere", "client_id": "else-1"}))
            refused = await answer_within(sender, bound + SLACK_SECONDS)
            assert refused["error"]["code"] == "store_failed"
            assert refused["error"]["client_id"] == "held-1"
            # The page's retry, a second later: refused at once, holding nobody up again.
            await sender.send(json.dumps({"message": "held", "client_id": "held-1"}))
            retried_at = time.monotonic()
            assert (await answer_within(sender, bound))["error"]["code"] == "store_failed"
            assert time.monotonic() - retried_at < bound / 2
            # Behind the sender's wait on the one sync thread, then its own store: stored
            # on PostgreSQL (another row), refused on SQLite (the same lock).
            answer = await answer_within(other, bound + SLACK_SECONDS)
            assert time.monotonic() - started < 2 * bound + SLACK_SECONDS
            assert answer.get("message") == "elsewhere" or answer["error"]["code"] == (
                "store_failed"
            )
        # The page retries every second: stored once the room's cool-off is over.
        async with asyncio.timeout(COOL_OFF_FACTOR * bound + SLACK_SECONDS):
            while True:
                await sender.send(json.dumps({"message": "held", "client_id": "held-1"}))
                if "error" not in (answer := await answer_within(sender, 5)):
                    break
                await asyncio.sleep(RETRY_SECONDS)
        assert answer["message"] == "held"
    finally:
        await sender.close()
        await other.close()


async def test_a_ping_is_answered_with_a_pong_and_nothing_else(join):
    socket, bystander = await join("lobby"), await join("lobby")
    await socket.send_json_to({"ping": True})
    assert await next_frame(socket) == {"pong": True}
    await assert_no_chat(bystander)


async def test_a_redis_refusing_writes_closes_a_real_servers_socket_with_4503(
    start_chat_server, redis_server
):
    # Through daphne and autobahn, which sent no close at all for the 1011 used before.
    server = start_chat_server()
    base = server.url.replace("http", "ws", 1)
    sender = await websockets.connect(
        f"{base}/ws/chat/oom-{uuid.uuid4().hex[:8]}/", origin=server.url
    )
    try:
        with redis_refusing_writes(redis_server.url, "maxmemory"):
            await sender.send(json.dumps({"message": "while Redis refuses"}))
            await asyncio.wait_for(sender.wait_closed(), 10)
        assert sender.close_code == protocol.CLOSE_SERVICE_UNAVAILABLE
    finally:
        await sender.close()


# --- Edits and deletions -----------------------------------------------------------------


async def _guest(join, name: str = "Zoë", query: str = ""):
    """A guest's socket in the lobby with a session of its own (its author key)."""
    return await join("lobby", query=query, headers=[await session_cookie_for(display_name=name)])


async def _say(socket, *texts: str) -> list[int]:
    ids = []
    for text in texts:
        await socket.send_json_to({"message": text})
        ids.append((await assert_receives_message(socket, text))["id"])
    return ids


async def test_an_edit_reaches_every_socket_in_the_room_as_an_edit_frame(join):
    author, other = await _guest(join), await join("lobby")
    (seq,) = await _say(author, "helo")
    await next_frame(other)
    await author.send_json_to({"edit": {"id": seq, "message": " hello "}})
    for socket in (author, other):
        frame = await next_frame(socket)
        assert set(frame) == {"edit"}
        edit = frame["edit"]
        assert (edit["id"], edit["message"], edit["change"]) == (seq, "hello", 1)
        assert datetime.fromisoformat(edit["edited"]).tzinfo is not None


async def test_a_deletion_reaches_every_socket_and_the_history_shows_it_deleted(join):
    author, other = await _guest(join), await join("lobby")
    first, second = await _say(author, "oops", "fine")
    await author.send_json_to({"delete": {"id": first}})
    for socket, count in ((author, 1), (other, 3)):
        frames = [await next_frame(socket) for _ in range(count)]
        assert frames[-1] == {"delete": {"id": first, "change": 1}}
    late = await join("lobby")
    history = [(f["id"], f["message"], f["deleted"], f["room_change"]) for f in late.backlog]
    assert history == [(first, "", True, 1), (second, "fine", False, 1)]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"edit": {"id": 1, "message": "mine now"}}, "not_allowed"),
        ({"delete": {"id": 1}}, "not_allowed"),
        ({"edit": {"id": 9, "message": "x"}}, "no_such_message"),
        ({"delete": {"id": "1"}}, "invalid_id"),
        ({"edit": {"id": 1, "message": ""}}, "empty_message"),
    ],
)
async def test_a_refused_edit_or_deletion_is_an_error_and_nobody_hears_of_it(join, frame, code):
    author = await _guest(join, "alice")
    await _say(author, "alice's")
    stranger = await _guest(join, "alice")  # the same name is not the same session
    await stranger.send_json_to(frame)
    await assert_receives_error(stranger, code)
    await assert_no_chat(author)
    message = await database_sync_to_async(Message.objects.get)(room_id="lobby", seq=1)
    assert (message.text, message.change) == ("alice's", 0)


@pytest.fixture
def cool_offs_forgotten():
    """The test may cool a room off (chat.stalls); on SQLite that is every room's."""
    yield
    stalls.clear_for_testing()


@pytest.mark.usefixtures("cool_offs_forgotten")
async def test_an_edit_that_waits_out_the_lock_bound_cools_the_room_off_for_every_store(
    join, monkeypatch
):
    author = await _guest(join)
    (seq,) = await _say(author, "helo")

    def lock_wait_given_up(*args):
        raise OperationalError("lock timeout") from psycopg.errors.LockNotAvailable()

    monkeypatch.setattr(services, "edit_message", lock_wait_given_up)
    await author.send_json_to({"edit": {"id": seq, "message": "hello"}})
    await assert_receives_error(author, "store_failed")
    # Refused at once, as after a message's timed-out store: nobody waits on the lock again.
    await author.send_json_to({"delete": {"id": seq}})
    await assert_receives_error(author, "store_failed")
    await author.send_json_to({"message": "later", "client_id": "c-1"})
    refused = await next_frame(author)
    assert (refused["error"]["code"], refused["error"]["client_id"]) == ("store_failed", "c-1")
    stored = await database_sync_to_async(list)(Message.objects.values_list("text", "deleted"))
    assert stored == [("helo", False)]


async def test_a_reconnect_with_changes_gets_the_final_state_of_what_changed_meanwhile(join):
    author = await _guest(join)
    first, second, third = await _say(author, "one", "two", "three")
    # Applied: change 1. Then away, with messages up to `second`, while these happen:
    await author.send_json_to({"edit": {"id": first, "message": "one, fixed"}})
    await author.send_json_to({"edit": {"id": third, "message": "three, fixed"}})
    await author.send_json_to({"delete": {"id": first}})
    for _ in range(3):
        await next_frame(author)
    back = await join("lobby", query=f"after={second}&changes=1")
    assert back.backlog == [
        {**back.backlog[0], "id": third, "message": "three, fixed", "change": 2},
        {"edit": {**back.backlog[1]["edit"], "id": third, "message": "three, fixed", "change": 2}},
        {"delete": {"id": first, "change": 3}},
        {
            "catch_up": {
                "recovered": True,
                "after": second,
                "until": third,
                "changes": {"recovered": True, "after": 1, "until": 3},
            }
        },
    ]


async def test_a_reconnect_missing_more_changes_than_the_bound_reads_them_over_http(join, settings):
    settings.CHAT_RECOVERY_LIMIT = 2
    author = await _guest(join)
    ids = await _say(author, "a", "b", "c")
    for seq in ids:
        await author.send_json_to({"edit": {"id": seq, "message": f"{seq} fixed"}})
        await next_frame(author)
    back = await join("lobby", query=f"after={ids[-1]}&changes=0")
    assert back.backlog == [
        {
            "catch_up": {
                "recovered": True,
                "after": ids[-1],
                "until": ids[-1],
                "changes": {"recovered": False, "after": 0, "until": 3},
            }
        }
    ]


def _changes_seen(sockets, count: int) -> list[list[dict]]:
    """Read each socket until it has `count` edit or delete frames; those frames."""
    seen = []
    for socket in sockets:
        changes = []
        while len(changes) < count:
            frame = json.loads(socket.recv())
            if "edit" in frame or "delete" in frame:
                changes.append(frame)
        seen.append(changes)
    return seen


def test_edits_deletions_and_admin_deletions_reach_sockets_on_every_process(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    processes = SocketsOnProcesses((first, second), "changes")
    author = processes.sockets[0]
    for text in ("helo", "oops", "spam"):
        author.send(json.dumps({"message": text}))
    processes.read_until(3)
    author.send(json.dumps({"edit": {"id": 1, "message": "hello"}}))
    author.send(json.dumps({"delete": {"id": 2}}))
    # The admin's bulk action, in a third process: as staff, through the same service.
    admin_deletes = (
        "from django.contrib.admin import site\n"
        "from django.contrib.auth.models import User\n"
        "from django.test import RequestFactory\n"
        "from chat.models import Message\n"
        "request = RequestFactory().post('/admin/chat/message/')\n"
        "request.user = User.objects.create_superuser('root', password='pw-123456')\n"
        "messages = Message.objects.filter(room_id='changes', seq=3)\n"
        "site._registry[Message].delete_queryset(request, messages)\n"
    )
    manage = [sys.executable, "manage.py", "shell", "-c", admin_deletes]
    subprocess.run(manage, cwd=ROOT, env=first.env, check=True, stdout=subprocess.DEVNULL)
    for changes in _changes_seen(processes.sockets, 3):
        assert [changes[0]["edit"]["message"], changes[1], changes[2]] == [
            "hello",
            {"delete": {"id": 2, "change": 2}},
            {"delete": {"id": 3, "change": 3}},
        ]
    processes.close()


class _Reader:
    """A client as docs/protocol.md describes one (the room page's rules): it applies
    message and change frames, once each, newest change per message winning; reconnects
    with ?after=&changes=, and reads over HTTP (page_as_read) what a socket leaves
    to it."""

    def __init__(self, join, room: str, cookie):
        self.join, self.room, self.cookie = join, room, cookie
        self.socket = None
        self.shown: dict[int, tuple[str, bool, int]] = {}  # id -> (text, deleted, change)
        self.waiting: dict[int, tuple[str, bool, int]] = {}  # changes of messages not shown
        self.last_id, self.last_change = 0, 0
        self.mine: list[int] = []  # the ids of the messages it sent

    async def connect(self):
        query = f"after={self.last_id}&changes={self.last_change}" if self.shown else ""
        self.socket = await self.join(self.room, query=query, headers=[self.cookie])
        for frame in self.socket.backlog:
            await self.apply(frame)

    async def leave(self):
        await self.socket.disconnect()
        self.socket = None

    def _show(self, seq: int, text: str, deleted: bool, change: int):
        old = self.shown.get(seq) or self.waiting.get(seq)
        if old is not None and old[2] >= change:
            return
        (self.shown if seq in self.shown else self.waiting)[seq] = (text, deleted, change)

    async def apply(self, frame: dict):
        if "id" in frame and "message" in frame:
            seq = frame["id"]
            self.last_id = max(self.last_id, seq)
            self.last_change = max(self.last_change, frame.get("room_change") or 0)
            self.shown.setdefault(seq, ("", False, -1))
            self._show(seq, frame["message"], frame["deleted"], frame["change"])
            if seq in self.waiting:
                self._show(seq, *self.waiting.pop(seq))
        elif "edit" in frame or "delete" in frame:
            change = frame.get("edit") or frame["delete"]
            self.last_change = max(self.last_change, change["change"])
            text = change.get("message", "")
            self._show(change["id"], text, "delete" in frame, change["change"])
        elif "catch_up" in frame:
            catch_up = frame["catch_up"]
            if not catch_up["recovered"]:
                await self._read_http("after", catch_up["after"], "next_after")
            if changes := catch_up.get("changes"):
                self.last_change = max(self.last_change, changes["until"])
                if not changes["recovered"]:
                    await self._read_http("changes_after", changes["after"], "next_changes_after")

    async def _read_http(self, name: str, start: int, next_name: str):
        cursor = start
        while cursor is not None:
            page = await database_sync_to_async(page_as_read)(self.room, {name: str(cursor)})
            for fields in page["messages"]:
                await self.apply(fields)
            cursor = page[next_name]

    async def read_one(self):
        await self.apply(await next_frame(self.socket, timeout=5))


@database_sync_to_async
def _final_state(room: str) -> dict[int, tuple[str, bool]]:
    rows = Message.objects.filter(room_id=room).values_list("seq", "text", "deleted")
    return {seq: (text, deleted) for seq, text, deleted in rows}


_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 1), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("edit"), st.integers(0, 1), st.integers(1, 3), st.sampled_from("xy")),
        st.tuples(st.just("delete"), st.integers(0, 1), st.integers(1, 3)),
        # A client goes away, or comes back and catches up (?after=&changes=).
        st.tuples(st.just("away or back"), st.integers(0, 1)),
    ),
    min_size=4,
    max_size=16,
)


def _key(frame: dict) -> tuple:
    """What a broadcast frame is: a message's id, or a change's number."""
    if "edit" in frame or "delete" in frame:
        return ("change", (frame.get("edit") or frame["delete"])["change"])
    return ("message", frame.get("id"))


def _frame_of(operation: tuple, mine: list[int]) -> dict:
    """The operation's frame; an edit or deletion names the sender's k-th own message
    (most are allowed, then), or message k when it sent none."""
    kind, _, *args = operation
    if kind == "send":
        return {"message": args[0]}
    seq = mine[args[0] % len(mine)] if mine else args[0]
    if kind == "edit":
        return {"edit": {"id": seq, "message": args[1]}}
    return {"delete": {"id": seq}}


@hypothesis.settings(
    max_examples=50,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(operations=_OPERATIONS)
# Changed while one client was away, in its history and then in its recovery.
@hypothesis.example(
    operations=[("away or back", 0), ("send", 1, "a"), ("edit", 1, 0, "x"), ("away or back", 0)]
)
@hypothesis.example(
    operations=[
        ("send", 1, "a"),
        ("away or back", 0),
        ("edit", 1, 0, "x"),
        ("delete", 1, 0),
        ("away or back", 0),
    ]
)
async def test_sends_edits_deletes_and_reconnects_leave_every_client_with_the_databases_state(
    join, settings, operations
):
    settings.CHAT_RECOVERY_LIMIT = 2  # so that catch-ups are read over HTTP too
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "100000/minute"
    settings.CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS = "100000/minute"
    settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "100000/minute"
    room = f"prop-{uuid.uuid4().hex[:12]}"
    readers = [_Reader(join, room, await session_cookie_for(display_name=name)) for name in "PQ"]
    try:
        await _run(readers, operations, room)
    finally:  # a failing example leaves no socket open to count against the next
        for reader in readers:
            if reader.socket is not None:
                await reader.leave()


async def _run(readers: list[_Reader], operations: list[tuple], room: str):
    for reader in readers:
        await reader.connect()
    for operation in operations:
        kind, reader = operation[0], readers[operation[1]]
        if kind == "away or back":
            await (reader.leave() if reader.socket is not None else reader.connect())
        elif reader.socket is not None:
            await reader.socket.send_json_to(_frame_of(operation, reader.mine))
            response = await next_frame(reader.socket, timeout=5)
            await reader.apply(response)
            if "error" in response:
                continue
            if kind == "send":
                reader.mine.append(response["id"])
            # Everyone connected hears of it before the next step: what a client misses,
            # it misses while away.
            for other in readers:
                if other is not reader and other.socket is not None:
                    while _key(frame := await next_frame(other.socket, 5)) != _key(response):
                        await other.apply(frame)
                    await other.apply(frame)
    for reader in readers:
        if reader.socket is None:
            await reader.connect()
    expected = await _final_state(room)
    for reader in readers:
        # Wait on the state: read until the client shows what the database holds.
        while {seq: shown[:2] for seq, shown in reader.shown.items()} != expected:
            await reader.read_one()
        assert not reader.waiting or set(reader.waiting) <= set(expected)


# --- Overload: a bound in time on the queue in front of the store ---------------------------


# The bound the tests of a held sync thread set: a message sent behind the held call alone
# waits far less; one sent once the message queued behind it waited this long is refused.
HELD_BOUND_SECONDS = 0.2


@contextlib.asynccontextmanager
async def sync_thread_held():
    """Hold the sync thread (a call in a batch, as a slow store would) until the block ends."""
    release = threading.Event()
    holding = pipeline.submit_batched(release.wait, 30)
    try:
        yield
    finally:
        release.set()
        await holding


async def until_over_the_bound():
    """Wait until a message sent now would wait over HELD_BOUND_SECONDS: the queue grew."""
    async with asyncio.timeout(5):
        while overload.path_wait() <= HELD_BOUND_SECONDS:
            await asyncio.sleep(0.01)


async def send_as_a_client_retries(socket, text: str, client_id: str) -> dict:
    """Send a message, and again after each `overloaded` once its retry_after is over; the echo."""
    while True:
        await socket.send_json_to({"message": text, "client_id": client_id})
        frame = await next_frame(socket)
        if frame.get("error", {}).get("code") != "overloaded":
            assert frame.get("message") == text, frame
            return frame
        await asyncio.sleep(frame["error"]["retry_after"])  # as the protocol asks a client to


async def test_a_message_joining_a_queue_older_than_the_bound_is_refused_and_not_stored(
    join, settings
):
    settings.CHAT_STORE_QUEUE_SECONDS = HELD_BOUND_SECONDS
    sender, reader = await join("lobby"), await join("lobby")
    async with sync_thread_held():
        await sender.send_json_to({"message": "queued", "client_id": "first"})
        await until_over_the_bound()
        await sender.send_json_to({"message": "refused", "client_id": "second"})
        # At once, while the message before it still waits: refused on the loop.
        error = (await next_frame(sender))["error"]
    assert (error["code"], error["client_id"]) == ("overloaded", "second")
    assert error["retry_after"] > 0 and "busy" in error["detail"]
    # The accepted one is stored and delivered; the refused one is neither.
    assert (await assert_receives_message(reader, "queued"))["id"] == 1
    await assert_receives_message(sender, "queued")
    await assert_no_chat(reader)
    assert await database_sync_to_async(services.last_seq)("lobby") == 1


async def test_senders_refused_together_are_told_to_come_back_one_after_another(
    join, settings, monkeypatch
):
    settings.CHAT_STORE_QUEUE_SECONDS = HELD_BOUND_SECONDS
    per_message = 0.5  # what a message recently cost the process, as the test sets it
    monkeypatch.setattr(pipeline, "drain_seconds_per_call", lambda: per_message)
    overload.clear_for_testing()  # no slot given before: none is near the longest hint
    senders = [await join("lobby") for _ in range(4)]
    async with sync_thread_held():
        await senders[0].send_json_to({"message": "queued"})
        await until_over_the_bound()
        hints = []
        for number, sender in enumerate(senders):
            await sender.send_json_to({"message": "refused", "client_id": f"r{number}"})
            hints.append((await next_frame(sender))["error"]["retry_after"])
            # Its next message, sent before it heard: refused with the same slot.
            await sender.send_json_to({"message": "next", "client_id": f"n{number}"})
            assert (await next_frame(sender))["error"]["retry_after"] <= hints[-1] + 0.01
    for before, after in itertools.pairwise(hints):
        assert after > before + per_message / 2  # a slot each, a drained message apart
    overload.clear_for_testing()  # the next test's senders are not sent after these


async def refused_behind_a_queue(join, settings, texts: dict) -> tuple:
    """A sender and a reader in the lobby, the sender's messages ({client_id: text}) refused
    as `overloaded` behind a queued one over the bound, that one then delivered to both."""
    settings.CHAT_STORE_QUEUE_SECONDS = HELD_BOUND_SECONDS
    sender, reader = await join("lobby"), await join("lobby")
    async with sync_thread_held():
        await sender.send_json_to({"message": "queued"})
        await until_over_the_bound()
        for client_id, text in texts.items():
            await sender.send_json_to({"message": text, "client_id": client_id})
            assert (await next_frame(sender))["error"]["code"] == "overloaded"
    await assert_receives_message(reader, "queued")
    await assert_receives_message(sender, "queued")
    return sender, reader


async def test_a_message_sent_after_a_refused_one_is_refused_until_that_one_comes_back(
    join, settings
):
    sender, reader = await refused_behind_a_queue(join, settings, {"a": "refused"})
    settings.CHAT_STORE_QUEUE_SECONDS = 60  # the queue is no reason to refuse any more
    # Nothing waits now; but the client had not heard of its refusal when it sent this.
    await sender.send_json_to({"message": "sent next", "client_id": "b"})
    error = (await next_frame(sender))["error"]
    assert (error["code"], error["client_id"]) == ("overloaded", "b")
    # Once the refused one is back, in its place, both go through in the order typed.
    await sender.send_json_to({"message": "refused", "client_id": "a"})
    await sender.send_json_to({"message": "sent next", "client_id": "b"})
    assert [(await next_frame(reader))["message"] for _ in range(2)] == ["refused", "sent next"]


async def test_no_message_overtakes_one_refused_before_it_whose_refusal_was_read_late(
    join, settings
):
    # b sent before the client heard that a was refused.
    sender, reader = await refused_behind_a_queue(join, settings, {"a": "a", "b": "b"})
    # The client sends a again, then, not having read b's refusal yet, a new message c.
    for client_id in "ac":
        await sender.send_json_to({"message": client_id, "client_id": client_id})
    await assert_receives_message(reader, "a")
    frames = [await next_frame(sender, timeout=10) for _ in range(2)]  # a's echo, c's answer
    errors = [frame["error"] for frame in frames if "error" in frame]
    assert [(error["code"], error["client_id"]) for error in errors] == [("overloaded", "c")]
    for client_id in "bc":  # then both, in the order typed
        await sender.send_json_to({"message": client_id, "client_id": client_id})
    assert [(await next_frame(reader))["message"] for _ in range(2)] == ["b", "c"]


async def test_a_refused_message_sent_again_with_its_client_id_is_stored_once(join, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = HELD_BOUND_SECONDS
    sender, reader = await join("lobby"), await join("lobby")
    async with sync_thread_held():
        await sender.send_json_to({"message": "queued"})
        await until_over_the_bound()
        await sender.send_json_to({"message": "again", "client_id": "kept"})
        assert (await next_frame(sender))["error"]["code"] == "overloaded"
    await assert_receives_message(reader, "queued")
    await assert_receives_message(sender, "queued")
    for _ in range(2):  # the retry, and a retry of the retry whose echo was lost
        assert (await send_as_a_client_retries(sender, "again", "kept"))["id"] == 2
    await assert_receives_message(reader, "again")
    await assert_no_chat(reader)


async def test_under_overload_pings_are_answered_and_typing_is_dropped(join, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = HELD_BOUND_SECONDS
    typer, reader = await join("lobby"), await join("lobby")
    async with sync_thread_held():
        await typer.send_json_to({"message": "queued"})
        await until_over_the_bound()
        await typer.send_json_to({"typing": True})
        await typer.send_json_to({"ping": True})
    # The pong is sent as the ping is handled; the message goes round the room first.
    answers = [await next_frame(typer) for _ in range(2)]
    assert {"pong": True} in answers and "queued" in [a.get("message") for a in answers]
    await assert_receives_message(reader, "queued")
    await assert_no_chat(reader)  # no typing signal


@contextlib.asynccontextmanager
async def broadcasts_held():
    """Hold every channel-layer call of this loop (as a Redis slow to answer would) until
    the block ends: each waits for one of the slots taken here."""
    slots = layer_slot()
    for _ in range(LAYER_CALLS_IN_FLIGHT):
        await slots.acquire()
    try:
        yield
    finally:
        for _ in range(LAYER_CALLS_IN_FLIGHT):
            slots.release()


async def next_frame_if_any(socket, seconds: float = 5) -> dict:
    """The next frame that is not a presence update, or {} if none comes within seconds.

    Without cancelling the consumer as a read that times out does (receive_nothing waits).
    """
    deadline = time.monotonic() + seconds
    while not await socket.receive_nothing(timeout=max(deadline - time.monotonic(), 0.01)):
        frame = await socket.receive_json_from()
        if "presence" not in frame:
            return frame
    return {}


async def until_no_layer_call_waits():
    """Wait until this loop's channel-layer calls are all done (the broadcasts went)."""
    async with asyncio.timeout(5):
        while pipeline.layer_queue_seconds() > 0:
            await asyncio.sleep(0)


async def test_a_message_is_refused_while_a_broadcast_waits_over_the_bound_then_taken(
    join, settings
):
    settings.CHAT_STORE_QUEUE_SECONDS = 0  # any broadcast waiting is over the bound
    sender, reader = await join("lobby"), await join("lobby")
    await until_no_layer_call_waits()  # the joins' presence update went
    async with broadcasts_held():
        await sender.send_json_to({"message": "stored", "client_id": "first"})
        async with asyncio.timeout(5):  # stored, its broadcast waits for Redis
            while pipeline.layer_queue_seconds() == 0:
                await asyncio.sleep(0)
        await sender.send_json_to({"message": "refused", "client_id": "second"})
        error = (await next_frame_if_any(sender)).get("error", {})
        assert (error.get("code"), error.get("client_id")) == ("overloaded", "second")
        assert error["retry_after"] > 0
    # The delivery side caught up: the accepted message reaches everyone, the refused one
    # is taken when sent again, and nothing else was stored.
    await assert_receives_message(reader, "stored")
    await assert_receives_message(sender, "stored")
    await until_no_layer_call_waits()
    await sender.send_json_to({"message": "refused", "client_id": "second"})
    assert (await assert_receives_message(reader, "refused"))["id"] == 2
    await assert_no_chat(reader)
    assert await database_sync_to_async(services.last_seq)("lobby") == 2


async def test_every_message_accepted_while_broadcasts_wait_is_delivered_in_order(join, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 60  # the held broadcasts stay well under it
    sender, reader = await join("lobby"), await join("lobby")
    async with broadcasts_held():
        for number in range(10):
            await sender.send_json_to({"message": f"{number}"})
        async with asyncio.timeout(5):  # all stored, their broadcasts waiting
            while await database_sync_to_async(services.last_seq)("lobby") < 10:
                await asyncio.sleep(0)
    received = [(await next_frame(reader, timeout=10))["message"] for _ in range(10)]
    assert received == [f"{number}" for number in range(10)]


async def test_every_message_accepted_under_the_bound_is_stored_and_delivered_in_order(
    join, settings
):
    settings.CHAT_STORE_QUEUE_SECONDS = 60  # the held thread stays well under it
    senders = [await join("lobby") for _ in range(3)]
    reader = await join("lobby")
    async with sync_thread_held():
        for number in range(10):
            for index, sender in enumerate(senders):
                await sender.send_json_to({"message": f"{index}:{number}"})
    received = [(await next_frame(reader, timeout=10))["message"] for _ in range(30)]
    for index in range(3):
        mine = [text for text in received if text.startswith(f"{index}:")]
        assert mine == [f"{index}:{number}" for number in range(10)]
    assert await database_sync_to_async(services.last_seq)("lobby") == 30
