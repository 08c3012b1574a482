"""Presence in Redis: join, leave, expiry of dead processes' entries, and Redis outages."""

import json
import time

import pytest
import redis
import websocket

from chat import presence, rooms
from mysite.embedded_redis import free_port

GROUP = rooms.group_name("lobby")
GHOST_SECONDS = 0.5


@pytest.fixture
def clean_presence(redis_channel_layer):
    yield redis_channel_layer
    for group, channel_name in list(presence._local_members):
        presence.leave(group, channel_name)


def test_joined_sockets_are_counted_and_named_once(clean_presence):
    presence.join(GROUP, "specific.a!1", "alice")
    presence.join(GROUP, "specific.a!2", "alice")
    presence.join(GROUP, "specific.a!3", "bob (guest)")
    assert presence.snapshot(GROUP) == {
        "type": "chat.presence",
        "count": 3,
        "names": ["alice", "bob (guest)"],
    }


def test_left_sockets_are_forgotten(clean_presence):
    presence.join(GROUP, "specific.a!1", "alice")
    presence.leave(GROUP, "specific.a!1")
    assert presence.snapshot(GROUP)["count"] == 0


def test_entries_nobody_refreshes_expire_and_their_room_is_reported(clean_presence, settings):
    settings.CHAT_PRESENCE_TTL_SECONDS = GHOST_SECONDS
    presence.join(GROUP, "specific.dead!1", "ghost")
    presence._local_members.clear()  # as if its process had died: nobody refreshes it
    presence.join(GROUP, "specific.alive!1", "alice")
    time.sleep(GHOST_SECONDS + 0.1)
    assert presence.refresh_local_members() == {GROUP}
    assert presence.snapshot(GROUP)["names"] == ["alice"]


def test_refreshed_entries_outlive_their_ttl(clean_presence, settings):
    settings.CHAT_PRESENCE_TTL_SECONDS = GHOST_SECONDS
    presence.join(GROUP, "specific.alive!1", "alice")
    for _ in range(3):
        time.sleep(GHOST_SECONDS / 2)
        assert presence.refresh_local_members() == set()
    assert presence.snapshot(GROUP)["count"] == 1


def test_unreachable_redis_leaves_presence_empty_and_does_not_raise(settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    presence.join(GROUP, "specific.a!1", "alice")
    assert presence.snapshot(GROUP)["count"] == 0
    presence.leave(GROUP, "specific.a!1")
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
