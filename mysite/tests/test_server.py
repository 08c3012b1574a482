"""mysite.server: a client that stops reading is closed with 4408, and nobody else waits for it."""

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
import websockets

from conftest import ROOT
from mysite.server import CLOSE_TOO_SLOW, SHUTDOWN_DRAIN_SECONDS

BACKLOG_LIMIT_BYTES = 256 * 1024
SEEDED_MESSAGES = 1500
# 1,500 frames of about 4 KB: some 6 MB, more than the kernel's socket buffers on both
# ends (about 3 MB on loopback) plus the limit, so the server must hold the rest itself.
SEEDED_TEXT = "x" * 4000
# The whole room in one catch-up page: what is under test is the server's bound on unread
# bytes. (Paging bounds them too, but only for catch-ups; a busy room's live messages not.)
SERVER_ENV = {
    "CHAT_SEND_BACKLOG_LIMIT_BYTES": str(BACKLOG_LIMIT_BYTES),
    "CHAT_CATCH_UP_PAGE": str(SEEDED_MESSAGES),
}


def seed_room(server, room: str, count: int, text: str):
    """Store `count` messages in `room`, in the server's own database."""
    code = (
        "from chat import services\n"
        f"author = services.Author(name='seeder')\n"
        f"for _ in range({count}):\n"
        f"    services.store_message({room!r}, author, {text!r}, None)\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env, check=True
    )


@pytest.fixture
def slow_client_server(start_chat_server):
    return start_chat_server(**SERVER_ENV)


def room_url(server, room: str, after: int | None = None) -> str:
    query = "" if after is None else f"?after={after}"
    return f"{server.url.replace('http', 'ws', 1)}/ws/chat/{room}/{query}"


async def connect(server, room: str, after: int | None = None, **options):
    return await websockets.connect(
        room_url(server, room, after), origin=server.url, ping_interval=None, **options
    )


async def connect_without_reading(server, room: str, after: int):
    """A client that never reads: a tiny receive buffer, and one queued frame at most."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    return await connect(server, room, after, sock=sock, max_queue=1)


async def presence_count(client, timeout: float = 10.0) -> int:
    """The count of the next presence frame, skipping anything else."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await client.recv())
            if "presence" in frame:
                return frame["presence"]["count"]


async def read_until_closed(client) -> list[int]:
    """Every message id the client still gets, up to the close."""
    ids = []
    async with asyncio.timeout(30):
        try:
            while True:
                frame = json.loads(await client.recv())
                if "id" in frame:
                    ids.append(frame["id"])
        except websockets.ConnectionClosed:
            return ids


async def test_a_client_that_stops_reading_is_closed_with_4408_and_others_are_not_delayed(
    start_chat_server,
):
    # Refresh rounds every half second: the round's catch-up is what floods the room here.
    server = start_chat_server(**SERVER_ENV, CHAT_PRESENCE_REFRESH_SECONDS="0.5")
    room = f"stuck-{uuid.uuid4().hex[:8]}"
    watcher = await connect(server, room, max_queue=None)
    try:
        assert await presence_count(watcher) == 1
        stuck = await connect_without_reading(server, room, after=0)
        assert await presence_count(watcher) == 2
        # 6 MB stored behind the sockets' backs (never broadcast): each refresh round has
        # them catch up. The one that never reads takes it only up to the limit, and
        # then leaves the room at once, long before its grace for the close frame ends.
        await asyncio.to_thread(seed_room, server, room, SEEDED_MESSAGES, SEEDED_TEXT)
        assert await presence_count(watcher, timeout=30) == 1

        # Meanwhile the room goes on, undelayed.
        started = time.monotonic()
        await watcher.send(json.dumps({"message": "still here"}))
        async with asyncio.timeout(2):
            while json.loads(await watcher.recv()).get("message") != "still here":
                pass
        assert time.monotonic() - started < 2

        # The stuck client reads at last: what the server held back was dropped, not
        # queued, and the close says why.
        received = await read_until_closed(stuck)
        assert stuck.close_code == CLOSE_TOO_SLOW
        assert received == list(range(1, len(received) + 1))
        assert len(received) < SEEDED_MESSAGES
    finally:
        await watcher.close()


async def test_a_closed_slow_client_catches_up_in_one_reconnect_however_far_behind(
    slow_client_server,
):
    server = slow_client_server
    room = f"catch-up-{uuid.uuid4().hex[:8]}"
    seed_room(server, room, SEEDED_MESSAGES, SEEDED_TEXT)
    stuck = await connect_without_reading(server, room, after=0)
    await asyncio.sleep(1)
    received = await read_until_closed(stuck)
    assert stuck.close_code == CLOSE_TOO_SLOW
    # As the page does: reconnect with ?after= the last id. A client that reads takes a
    # catch-up far bigger than the limit in one go: only what it leaves unread counts.
    client = await connect(server, room, after=received[-1])
    try:
        async with asyncio.timeout(30):
            while len(received) < SEEDED_MESSAGES:
                frame = json.loads(await client.recv())
                if "id" in frame:
                    received.append(frame["id"])
    finally:
        await client.close()
    assert received == list(range(1, SEEDED_MESSAGES + 1))


def test_unsent_bytes_reads_twisteds_write_buffer():
    """The one private thing mysite.server reads: Twisted's buffers, by their names."""
    from twisted.internet.abstract import FileDescriptor

    from mysite.server import unsent_bytes

    descriptor = FileDescriptor()
    descriptor.connected = True
    descriptor.startWriting = lambda: None
    descriptor.write(b"a" * 10)
    descriptor.write(b"b" * 5)
    assert unsent_bytes(descriptor) == 15


async def test_sigterm_stops_the_server_promptly_with_handlers_in_flight(start_chat_server):
    server = start_chat_server()
    room = f"sigterm-{uuid.uuid4().hex[:8]}"
    # Unbounded queues: clients that stop reading would not notice the server going.
    clients = [await connect(server, room, max_queue=None) for _ in range(5)]
    # 100 messages to store and 500 deliveries: the one sync thread is busy for a while.
    for number in range(20):
        for client in clients:
            await client.send(json.dumps({"message": f"in flight {number}"}))
    server.process.terminate()
    # Daphne alone waits for ever here: a handler in flight waits for the stopped loop.
    # Well within SHUTDOWN_DRAIN_SECONDS: every application ended, none was left behind.
    exit_code = await asyncio.to_thread(server.process.wait, SHUTDOWN_DRAIN_SECONDS - 1)
    assert exit_code == 0
    for client in clients:
        await client.close()
