"""ChatConsumer through mysite.asgi.application, on the Redis channel layer of a real Redis."""

import asyncio
import json
import logging
import random

import pytest
import redis
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from chat import protocol, rooms
from chat.tests.conftest import communicator
from mysite.asgi import application

pytestmark = pytest.mark.usefixtures("redis_channel_layer")


async def assert_receives_message(socket, text: str):
    assert await socket.receive_json_from(timeout=2) == {"message": text}


async def assert_receives_error(socket, code: str):
    frame = await socket.receive_json_from(timeout=2)
    assert set(frame) == {"error"}
    assert set(frame["error"]) == {"code", "detail"}
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
    assert await other.receive_nothing(timeout=0.3)


async def test_disconnected_socket_receives_nothing_more(join, redis_server):
    staying, leaving = await join("lobby"), await join("lobby")
    group_key = f"asgi:group:{rooms.group_name('lobby')}"
    client = redis.Redis.from_url(redis_server.url)
    assert client.zcard(group_key) == 2
    await leaving.disconnect()
    assert client.zcard(group_key) == 1
    client.close()
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
    await channel_layer.send("test_channel", {"type": "hello"})
    assert await channel_layer.receive("test_channel") == {"type": "hello"}


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


async def test_case_matters_lobby_and_Lobby_are_two_rooms(join):
    lower, upper = await join("lobby"), await join("Lobby")
    await upper.send_json_to({"message": "upper"})
    await assert_receives_message(upper, "upper")
    assert await lower.receive_nothing(timeout=0.3)


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
    socket = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://127.0.0.1")])
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
]


@pytest.mark.parametrize(("frame", "code"), REFUSED_FRAMES)
async def test_refused_frame_gets_error_and_socket_keeps_chatting(join, caplog, frame, code):
    sender, bystander = await join("lobby"), await join("lobby")
    with caplog.at_level(logging.INFO, logger="chat"):
        await sender.send_to(**frame)
        await assert_receives_error(sender, code)
    assert await bystander.receive_nothing(timeout=0.2)

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
    assert await flooder.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": protocol.CLOSE_FLOODING,
    }
    assert await bystander.receive_nothing(timeout=0.3)


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
        frame = await sender.receive_json_from(timeout=2)
        assert set(frame) <= {"error", "message"}
    for socket in sockets:
        while not await socket.receive_nothing(timeout=0.2):
            await socket.receive_json_from()

    for number, sender in enumerate(sockets):
        await sender.send_json_to({"message": f"after fuzz {number}"})
        for socket in sockets:
            await assert_receives_message(socket, f"after fuzz {number}")
