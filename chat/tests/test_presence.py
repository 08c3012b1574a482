"""Presence in Redis: join, leave, expiry of dead processes' entries, and Redis outages."""

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio
import websocket
from channels.db import database_sync_to_async

from chat import presence, protocol, rooms, services, upkeep
from chat.tests.conftest import communicator, frames_within
from mysite.channel_layers import redis_channel_layers
from serving.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.usefixtures("limits_count_from_zero")

GROUP = rooms.group_name("lobby")
# An entry whose time is up a moment after it is written: as if its process had died.
EXPIRED_AT_ONCE_SECONDS = 0.001


@pytest.fixture
async def loop_redis(redis_channel_layer):
    """An asyncio client of the session's Redis, as the upkeep's (flushed after the test)."""
    client = redis.asyncio.Redis.from_url(redis_channel_layer.url)
    yield client
    await client.aclose()


ALICE = "u:1"  # a person's key (identity.Author.key)


def _member(channel_name: str, person: str = ALICE, label: str = "alice") -> str:
    return presence.member(channel_name, person, label)


async def _joined(client, *entries: tuple[str, str]) -> dict:
    """Apply these (group, member) joins, and return GROUP's presence event."""
    return (await presence.apply(client, entries, (), [GROUP]))[GROUP]


async def test_people_are_counted_once_however_many_sockets_they_have(loop_redis):
    event = await _joined(
        loop_redis,
        (GROUP, _member("specific.a!1")),
        (GROUP, _member("specific.a!2")),  # alice's second tab
        (GROUP, _member("specific.a!3", "g:1f", "bob (guest)")),
    )
    assert event == {"type": "chat.presence", "count": 2, "names": ["alice", "bob (guest)"]}
    assert await asyncio.to_thread(presence.snapshot, GROUP) == event


async def test_two_guests_with_one_name_are_two_people(loop_redis):
    event = await _joined(
        loop_redis,
        (GROUP, _member("specific.a!1", "g:1f", "Anonymous (guest)")),
        (GROUP, _member("specific.a!2", "g:2e", "Anonymous (guest)")),
    )
    assert event == {"type": "chat.presence", "count": 2, "names": ["Anonymous (guest)"]}


async def test_a_join_and_a_leave_applied_together_leave_no_entry(loop_redis):
    entry = (GROUP, _member("specific.a!1"))
    events = await presence.apply(loop_redis, [entry], [entry], [GROUP])
    assert events[GROUP]["count"] == 0
    assert (await _joined(loop_redis))["count"] == 0


async def test_left_sockets_are_forgotten(loop_redis):
    entry = (GROUP, _member("specific.a!1"))
    assert (await _joined(loop_redis, entry))["count"] == 1
    assert (await presence.apply(loop_redis, (), [entry], [GROUP]))[GROUP]["count"] == 0


async def _wait_for_count(group: str, count: int):
    """Wait (5 s at most) until the group's presence, as the index reads it, counts `count`."""
    async with asyncio.timeout(5):
        while (await asyncio.to_thread(presence.snapshot, group))["count"] != count:
            await asyncio.sleep(0.02)


async def test_a_socket_counts_from_its_join_and_stops_at_its_leave_not_at_the_announcement(
    redis_channel_layer, transactional_db, settings
):
    # The announcements come a minute later: the index must not wait for them.
    settings.CHAT_PRESENCE_COALESCE_SECONDS = 60
    socket = communicator("lobby")
    assert (await socket.connect())[0]
    await _wait_for_count(GROUP, 1)
    await socket.disconnect()
    await _wait_for_count(GROUP, 0)


async def test_entries_nobody_refreshes_expire_and_their_room_is_reported(loop_redis, settings):
    settings.CHAT_PRESENCE_TTL_SECONDS = EXPIRED_AT_ONCE_SECONDS
    expired_at = time.time() + EXPIRED_AT_ONCE_SECONDS
    await presence.apply(loop_redis, [(GROUP, _member("specific.dead!1", "u:2", "ghost"))], (), ())
    settings.CHAT_PRESENCE_TTL_SECONDS = 30
    await presence.apply(loop_redis, [(GROUP, _member("specific.alive!1"))], (), ())
    await asyncio.sleep(max(expired_at - time.time(), 0))  # a moment, if that
    # Only the living socket's process refreshes: the ghost's process died.
    alive = [(GROUP, _member("specific.alive!1"))]
    assert await presence.refresh(loop_redis, alive) == {GROUP}
    assert (await _joined(loop_redis))["names"] == ["alice"]


async def test_a_refresh_extends_an_entry_past_its_ttl(loop_redis, settings):
    settings.CHAT_PRESENCE_TTL_SECONDS = EXPIRED_AT_ONCE_SECONDS
    expired_at = time.time() + EXPIRED_AT_ONCE_SECONDS
    await presence.apply(loop_redis, [(GROUP, _member("specific.alive!1"))], (), ())
    settings.CHAT_PRESENCE_TTL_SECONDS = 30
    await asyncio.sleep(max(expired_at - time.time(), 0))
    assert await presence.refresh(loop_redis, [(GROUP, _member("specific.alive!1"))]) == set()
    assert (await _joined(loop_redis))["count"] == 1


async def test_unreachable_redis_raises_on_the_loop_and_reads_as_empty_on_the_sync_thread(
    settings, caplog
):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    with pytest.raises(redis.ConnectionError):
        await presence.apply(client, [(GROUP, _member("specific.a!1"))], (), [GROUP])
    await client.aclose()
    assert (await asyncio.to_thread(presence.snapshot, GROUP))["count"] == 0
    assert "presence" in caplog.text


def _open(server_url: str, room: str = "lobby") -> websocket.WebSocket:
    ws_url = server_url.replace("http://", "ws://") + f"/ws/chat/{room}/"
    return websocket.create_connection(ws_url, origin=server_url, timeout=10)


def _wait_for_frame(socket: websocket.WebSocket, wanted, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = json.loads(socket.recv())
        if wanted(frame):
            return frame
    raise AssertionError("the frame never came")


def test_presence_and_messages_span_processes_and_a_killed_process_leaves_no_ghost(
    start_chat_server, redis_server
):
    fast_expiry = {"CHAT_PRESENCE_TTL_SECONDS": "1", "CHAT_PRESENCE_REFRESH_SECONDS": "0.25"}
    doomed, survivor = start_chat_server(**fast_expiry), start_chat_server(**fast_expiry)
    on_survivor = _open(survivor.url, "span")
    on_doomed = _open(doomed.url, "span")
    _wait_for_frame(on_survivor, lambda f: f.get("presence", {}).get("count") == 2)

    on_doomed.send(json.dumps({"message": "across processes"}))
    _wait_for_frame(on_survivor, lambda f: f.get("message") == "across processes")

    doomed.kill()
    started = time.monotonic()
    _wait_for_frame(on_survivor, lambda f: f.get("presence", {}).get("count") == 1)
    assert time.monotonic() - started < 5
    on_survivor.close()
    on_doomed.close()
    redis.Redis.from_url(redis_server.url).flushall()


# --- Group membership upkeep: Redis restarts and group_expiry --------------------------


@pytest.fixture
def own_redis(settings, transactional_db):
    """A Redis of this test's own, so that it can be stopped and restarted on its port."""
    server = EmbeddedRedis().start()
    settings.REDIS_URL = server.url
    settings.REDIS_URLS = [server.url]
    settings.CHANNEL_LAYERS = redis_channel_layers(server.url, settings.CHAT_CHANNEL_LAYER)
    yield server
    server.stop()


async def _texts_until_closed(socket, seconds: float) -> tuple[list[str], int | None]:
    """Chat texts received within `seconds`, and the close code if the socket was closed."""
    texts, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await socket.receive_nothing(timeout=min(left, 0.05)):
            continue
        output = await socket.receive_output()
        if output["type"] == "websocket.close":
            return texts, output["code"]
        texts.append(json.loads(output["text"]).get("message"))
    return texts, None


async def _chat_frames(socket, seconds: float) -> list[dict]:
    return [frame for frame in await frames_within(socket, seconds) if "message" in frame]


async def test_sockets_left_open_across_a_redis_restart_hear_again_and_catch_up(own_redis):
    first, second = communicator("lobby"), communicator("lobby")
    for socket in (first, second):
        assert (await socket.connect())[0]
    await frames_within(second, 0.3)
    await upkeep.run_round()  # it learns Redis's run_id

    own_redis.stop()
    # Stored while the broadcast could not go out.
    await database_sync_to_async(services.store_message)(
        "lobby", services.Author("alice"), "sent during the outage", None
    )
    own_redis.start()  # same port, empty: no group has any member now
    # This round sees the new run_id.
    await upkeep.run_round()

    # Someone joins after the recovery and speaks. Every socket still open must hear both
    # the catch-up and the new message; a socket may instead have been closed with the
    # documented code, for its page to reconnect and catch up.
    newcomer = communicator("lobby")
    assert (await newcomer.connect())[0]
    await newcomer.send_json_to({"message": "after the restart"})
    for socket in (first, second):
        texts, close_code = await _texts_until_closed(socket, seconds=3)
        if close_code is not None:
            assert close_code == protocol.CLOSE_SERVICE_UNAVAILABLE
        else:
            assert "sent during the outage" in texts and "after the restart" in texts, texts
    await asyncio.gather(first.disconnect(), second.disconnect(), newcomer.disconnect())


async def test_long_lived_sockets_keep_receiving_past_group_expiry(own_redis, settings):
    settings.CHANNEL_LAYERS = redis_channel_layers(own_redis.url, "redis", group_expiry=1)
    settings.CHAT_GROUP_EXPIRY_SECONDS = 1
    sender, listener = communicator("lobby"), communicator("lobby")
    for socket in (sender, listener):
        assert (await socket.connect())[0]
    await frames_within(listener, 0.3)

    await asyncio.sleep(1.5)  # both memberships expired in channels_redis's eyes
    await upkeep.run_round()
    await sender.send_json_to({"message": "still here"})
    assert "still here" in [frame["message"] for frame in await _chat_frames(listener, 1.0)]
    await asyncio.gather(sender.disconnect(), listener.disconnect())


async def test_without_the_refresh_an_expired_member_would_be_deaf(own_redis, settings):
    # No upkeep round runs here: their timer is off in-process (root conftest).
    settings.CHANNEL_LAYERS = redis_channel_layers(own_redis.url, "redis", group_expiry=1)
    sender, listener = communicator("lobby"), communicator("lobby")
    for socket in (sender, listener):
        assert (await socket.connect())[0]
    await frames_within(listener, 0.3)
    await asyncio.sleep(1.5)
    await sender.send_json_to({"message": "into the void"})
    assert await _chat_frames(listener, 1.0) == []
    await asyncio.gather(sender.disconnect(), listener.disconnect())


async def test_redis_going_away_closes_sockets_with_4503_and_no_traceback(own_redis, caplog):
    socket = communicator("lobby")
    assert (await socket.connect())[0]
    await frames_within(socket, 0.3)
    own_redis.stop()
    await socket.send_json_to({"message": "anyone?"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        output = await socket.receive_output(timeout=20)
        if output["type"] == "websocket.close":
            break
    assert output == {"type": "websocket.close", "code": protocol.CLOSE_SERVICE_UNAVAILABLE}
    assert not [record for record in caplog.records if record.exc_info]
    await socket.disconnect()


async def test_connecting_while_redis_is_down_is_refused_without_a_traceback(own_redis, caplog):
    own_redis.stop()
    socket = communicator("lobby")
    connected, _ = await socket.connect(timeout=20)
    assert not connected
    assert not [record for record in caplog.records if record.exc_info]
    await socket.disconnect()


async def test_a_socket_closed_while_redis_is_down_is_forgotten_by_its_process(own_redis):
    socket = communicator("lobby")
    assert (await socket.connect())[0]
    await frames_within(socket, 0.3)
    await upkeep.run_round()  # it learns Redis's run_id
    own_redis.stop()
    await socket.disconnect()
    own_redis.start()  # empty: each process re-adds the presence of the sockets it has
    await upkeep.run_round()
    assert (await database_sync_to_async(presence.snapshot)(GROUP))["count"] == 0
