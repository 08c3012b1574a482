"""Fixtures and helpers for the chat tests: sockets opened on the real ASGI application."""

import asyncio
import json
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
import websocket
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from chat import protocol, services
from chat.redis_clients import PING_TIMEOUT_SECONDS, redis_client
from conftest import ROOT
from mysite.asgi import application

# The handshake a browser on http://127.0.0.1/ sends: its Origin is the Host it names.
ALLOWED_HOST = b"127.0.0.1"
ALLOWED_ORIGIN = b"http://" + ALLOWED_HOST
QUIET_SECONDS = 0.3


def communicator(
    room: str,
    origin: bytes | None = ALLOWED_ORIGIN,
    query: str = "",
    headers=(),
    host: bytes | None = ALLOWED_HOST,
) -> WebsocketCommunicator:
    """A not-yet-connected socket on /ws/chat/<room>/ of mysite.asgi.application."""
    all_headers = [(b"host", host)] if host is not None else []
    all_headers += [(b"origin", origin)] if origin is not None else []
    all_headers.extend(headers)
    path = f"/ws/chat/{quote(room)}/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=all_headers)


@pytest.fixture
async def join(redis_channel_layer, transactional_db):
    """Open sockets in rooms (`await join("lobby")`); every one is disconnected afterwards.

    The socket's backlog (history, or with ?after= the first catch-up page up to its
    catch_up frame) is read and kept as `socket.backlog`.
    """
    opened = []

    async def _join(room: str = "lobby", query: str = "", headers=()) -> WebsocketCommunicator:
        socket = communicator(room, query=query, headers=headers)
        connected, code = await socket.connect()
        assert connected, f"handshake refused with {code}"
        opened.append(socket)
        socket.backlog = []
        # History comes first, then this socket's own presence update; a catch-up page
        # comes in its turn, before or after that update, and ends with a catch_up frame.
        presence_seen, page_seen = False, "after=" not in query
        while not (presence_seen and page_seen):
            frame = await socket.receive_json_from(timeout=2)
            if "presence" in frame:
                presence_seen = True
                continue
            socket.backlog.append(frame)
            # An unreadable after= gets the history instead, with no catch_up frame.
            invalid_after = frame.get("error", {}).get("code") == "invalid_after"
            page_seen = page_seen or "catch_up" in frame or invalid_after
        return socket

    yield _join
    # Concurrently: a consumer may take up to the communicator's timeout to stop while
    # channels_redis finishes its blocking read, and those waits need not add up.
    await asyncio.gather(*(socket.disconnect() for socket in opened))


async def next_frame(socket: WebsocketCommunicator, timeout: float = 2) -> dict:
    """The next frame that is not a presence update."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await socket.receive_json_from(timeout=max(deadline - time.monotonic(), 0.01))
        if "presence" not in frame:
            return frame


async def next_presence(socket: WebsocketCommunicator, timeout: float = 2) -> dict:
    """The next presence update, skipping anything else."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await socket.receive_json_from(timeout=max(deadline - time.monotonic(), 0.01))
        if "presence" in frame:
            return frame["presence"]


async def frames_within(socket: WebsocketCommunicator, seconds: float = QUIET_SECONDS) -> list:
    """Every frame that arrives within `seconds`."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await socket.receive_nothing(timeout=min(left, 0.05)):
            continue
        frames.append(await socket.receive_json_from())
    return frames


async def assert_no_chat(socket: WebsocketCommunicator, seconds: float = QUIET_SECONDS):
    """Nothing but presence updates arrives within `seconds`."""
    assert [
        frame for frame in await frames_within(socket, seconds) if "presence" not in frame
    ] == []


def page_as_read(room_name: str, query: dict) -> dict:
    """services.read_page_rows with each message as its public fields: the page a client
    reads from the messages endpoint, decoded."""
    page = services.read_page_rows(room_name, query)
    return page | {"messages": [protocol.message_fields(message) for message in page["messages"]]}


async def assert_receives_message(socket: WebsocketCommunicator, text: str) -> dict:
    """The next chat frame carries `text`; returns it."""
    frame = await next_frame(socket)
    assert frame.get("message") == text, frame
    return frame


async def session_cookie_for(**session_values) -> tuple[bytes, bytes]:
    """A Cookie header for a fresh session holding session_values."""
    return (
        b"cookie",
        f"{settings.SESSION_COOKIE_NAME}={await new_session(**session_values)}".encode(),
    )


@database_sync_to_async
def new_session(**session_values) -> str:
    """Store a fresh session holding session_values; return its key."""
    session = SessionStore()
    session.update(session_values)
    session.create()
    return session.session_key


def logged_in_session_values(user) -> dict:
    """What django.contrib.auth.login stores in the session of `user`."""
    return {
        "_auth_user_id": str(user.pk),
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": user.get_session_auth_hash(),
    }


async def until_listening(channels: list[str], layer=None, timeout: float = 5):
    """Return once a receive awaits each channel: the pubsub layer drops what none awaits.

    The state Redis itself reports (PUBSUB NUMSUB, on every server of the layer); on the
    redis layer at once, since its queues keep a message until it is received.
    """
    layer = layer or get_channel_layer()
    if not isinstance(layer, RedisPubSubChannelLayer):
        return
    clients = [
        redis_client(host["address"], PING_TIMEOUT_SECONDS) for host in layer._kwargs["hosts"]
    ]
    async with asyncio.timeout(timeout):
        for channel in channels:
            while not any(client.pubsub_numsub(channel)[0][1] for client in clients):
                await asyncio.sleep(0.01)  # polling Redis's count, not guessing a delay


class SocketsOnProcesses:
    """One plain (websocket-client) socket in `room` on each server process given, and
    the chat messages each has read, as (id, text): to check that messages from anywhere
    reach every process exactly once and in order."""

    def __init__(self, servers, room: str, cookie: str | None = None):
        self.sockets = [
            websocket.create_connection(
                server.url.replace("http://", "ws://") + f"/ws/chat/{room}/",
                origin=server.url,
                cookie=cookie,
                timeout=10,
            )
            for server in servers
        ]
        self.seen: list[list[tuple[int, str]]] = [[] for _ in self.sockets]

    def read_until(self, count: int):
        """Read every socket's frames until each has `count` chat messages."""
        for socket, frames in zip(self.sockets, self.seen, strict=True):
            while len(frames) < count:
                frame = json.loads(socket.recv())
                if "id" in frame:
                    frames.append((frame["id"], frame["message"]))

    def close(self):
        for socket in self.sockets:
            socket.close()


def token_made_on(server, username: str, name: str) -> str:
    """An API token of `username` (made if need be), made in the server's own database by
    its manage.py: the raw token, as the user would be shown it once."""
    make_token = (
        "from django.contrib.auth.models import User; from chat import tokens; "
        f"user, _ = User.objects.get_or_create(username={username!r}); "
        f"print(tokens.create_token(user, {name!r})[1])"
    )
    manage = [sys.executable, "manage.py", "shell", "-c", make_token]
    output = subprocess.run(manage, cwd=ROOT, env=server.env, check=True, capture_output=True)
    return output.stdout.decode().split()[-1]
