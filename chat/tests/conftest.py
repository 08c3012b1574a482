"""Fixtures for the chat tests: sockets opened on the real ASGI application."""

import asyncio
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator

from mysite.asgi import application

ALLOWED_ORIGIN = b"http://127.0.0.1"


def communicator(room: str, origin: bytes | None = ALLOWED_ORIGIN) -> WebsocketCommunicator:
    """A not-yet-connected socket on /ws/chat/<room>/ of mysite.asgi.application."""
    headers = [(b"origin", origin)] if origin is not None else []
    return WebsocketCommunicator(application, f"/ws/chat/{quote(room)}/", headers=headers)


@pytest.fixture
async def join(redis_channel_layer):
    """Open sockets in rooms (`await join("lobby")`); every one is disconnected afterwards."""
    opened = []

    async def _join(room: str = "lobby") -> WebsocketCommunicator:
        socket = communicator(room)
        connected, code = await socket.connect()
        assert connected, f"handshake refused with {code}"
        opened.append(socket)
        return socket

    yield _join
    # Concurrently: a consumer may take up to the communicator's timeout to stop while
    # channels_redis finishes its blocking read, and those waits need not add up.
    await asyncio.gather(*(socket.disconnect() for socket in opened))
