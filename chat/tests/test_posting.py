"""Posting from Python (chat.posting) and manage.py chat_post: the socket's rules and path."""

import json
import subprocess
import sys
import threading

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from chat import posting
from chat.models import Message
from chat.tests.conftest import (
    SocketsOnProcesses,
    logged_in_session_values,
    new_session,
    next_frame,
)
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("redis_channel_layer")

POSTS_FROM_A_WORKER = 20


@database_sync_to_async
def post(*args, **kwargs) -> posting.Posted:
    """post_message on the sync thread, as a view or a consumer's handler calls it."""
    return posting.post_message(*args, **kwargs)


async def test_a_post_reaches_every_socket_in_order_with_socket_messages(join):
    first, second = await join("lobby"), await join("lobby")
    seen = {first: [], second: []}

    async def everyone_sees(count: int):
        for socket, frames in seen.items():
            while len(frames) < count:
                frames.append(await next_frame(socket))

    await first.send_json_to({"message": "from a socket"})
    await everyone_sees(1)
    await post("lobby", "from a view", as_bot="notifier")
    await everyone_sees(2)
    await second.send_json_to({"message": "socket again"})
    await everyone_sees(3)
    for frames in seen.values():
        assert [(f["id"], f["message"]) for f in frames] == [
            (1, "from a socket"),
            (2, "from a view"),
            (3, "socket again"),
        ]
        assert (frames[1]["user"], frames[1]["guest"], frames[1]["bot"]) == (
            "notifier",
            False,
            True,
        )


async def test_a_post_as_a_user_is_that_users_message(join):
    alice = await database_sync_to_async(User.objects.create_user)("alice", password="x")
    socket = await join("lobby")
    await post("lobby", "hi", as_user=alice)
    frame = await next_frame(socket)
    assert (frame["user"], frame["guest"], frame["bot"]) == ("alice", False, False)


async def test_a_retried_client_id_is_stored_and_broadcast_once(join):
    socket = await join("lobby")
    first = await post("lobby", "once", as_bot="cron", client_id="job-1")
    again = await post("lobby", "once", as_bot="cron", client_id="job-1")
    assert (first.created, again.created, again.message.pk) == (True, False, first.message.pk)
    await post("lobby", "next", as_bot="cron")
    assert [(await next_frame(socket))["message"] for _ in range(2)] == ["once", "next"]


async def test_a_post_in_a_transaction_is_broadcast_after_commit_and_never_on_rollback(join):
    socket = await join("lobby")

    @database_sync_to_async
    def in_a_signal_handler(commit: bool) -> bool:
        """Post inside a transaction; whether the broadcast waited for the commit."""
        try:
            with transaction.atomic():
                posting.post_message("lobby", f"commit={commit}", as_bot="signals")
                waiting = len(connection.run_on_commit) == 1
                if not commit:
                    raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        return waiting

    assert await in_a_signal_handler(commit=False)
    assert await in_a_signal_handler(commit=True)
    frame = await next_frame(socket)
    assert (frame["id"], frame["message"]) == (1, "commit=True")
    texts = await database_sync_to_async(lambda: list(Message.objects.values_list("text")))()
    assert texts == [("commit=True",)]


def _connections_received(redis_server) -> int:
    client = redis.Redis.from_url(redis_server.url)
    try:
        return client.info("stats")["total_connections_received"]
    finally:
        client.close()


async def test_posts_from_a_worker_thread_share_one_redis_connection(join, redis_server):
    socket = await join("lobby")

    def worker():
        try:
            for number in range(POSTS_FROM_A_WORKER):
                posting.post_message("lobby", f"job {number}", as_bot="worker")
        finally:
            connection.close()

    await database_sync_to_async(posting.post_message)("lobby", "warm-up", as_bot="worker")
    before = _connections_received(redis_server)
    thread = threading.Thread(target=worker)
    thread.start()
    frames = [await next_frame(socket, timeout=10) for _ in range(POSTS_FROM_A_WORKER + 1)]
    await database_sync_to_async(thread.join)()
    assert [f["message"] for f in frames[1:]] == [f"job {n}" for n in range(20)]
    # The warm-up opened the posting loop's connection: the worker's posts open none.
    assert _connections_received(redis_server) - before <= 1


@pytest.mark.parametrize(
    ("room", "text", "kwargs", "code"),
    [
        ("no spaces", "hi", {"as_bot": "cron"}, "invalid_room_name"),
        ("lobby", "   ", {"as_bot": "cron"}, "empty_message"),
        ("lobby", "x" * 5000, {"as_bot": "cron"}, "message_too_long"),
        ("lobby", "nul \x00", {"as_bot": "cron"}, "invalid_character"),
        ("lobby", 42, {"as_bot": "cron"}, "message_not_string"),
        ("lobby", "hi", {"as_bot": "cron", "client_id": "no spaces"}, "invalid_client_id"),
        ("lobby", "hi", {"as_bot": "alice"}, "invalid_bot_name"),
        ("lobby", "hi", {"as_bot": "a, b"}, "invalid_bot_name"),
    ],
)
def test_a_post_the_rules_refuse_stores_nothing(transactional_db, room, text, kwargs, code):
    User.objects.create_user("alice", password="x")
    with pytest.raises(posting.PostRefused) as refused:
        posting.post_message(room, text, **kwargs)
    assert refused.value.code == code
    assert not Message.objects.exists()


def test_an_inactive_user_cannot_post(transactional_db):
    bob = User.objects.create_user("bob", password="x", is_active=False)
    with pytest.raises(posting.PostRefused) as refused:
        posting.post_message("lobby", "hi", as_user=bob)
    assert refused.value.code == "inactive_user"


def test_posts_count_against_the_per_person_limit(transactional_db, settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "2/minute"
    for text in ("one", "two"):
        posting.post_message("lobby", text, as_bot="chatty")
    with pytest.raises(posting.PostRefused) as refused:
        posting.post_message("lobby", "three", as_bot="chatty")
    assert refused.value.code == "rate_limited"
    posting.post_message("lobby", "another bot's", as_bot="quiet")


def test_a_post_names_exactly_one_author(transactional_db):
    with pytest.raises(TypeError):
        posting.post_message("lobby", "hi")


async def test_apost_message_stores_and_broadcasts_from_async_code(join):
    socket = await join("lobby")
    posted = await posting.apost_message("lobby", "async", as_bot="loop")
    assert posted.created
    assert (await next_frame(socket))["message"] == "async"


async def test_the_chat_post_command_posts_as_a_bot_or_a_user(join):
    socket = await join("lobby")
    await database_sync_to_async(call_command)("chat_post", "lobby", "from cron", "--as", "cron")
    frame = await next_frame(socket)
    assert (frame["message"], frame["user"], frame["bot"]) == ("from cron", "cron", True)
    with pytest.raises(CommandError, match="no user 'nobody'"):
        await database_sync_to_async(call_command)("chat_post", "lobby", "x", "--user", "nobody")
    with pytest.raises(CommandError, match="invalid_room_name"):
        await database_sync_to_async(call_command)("chat_post", "a b", "x", "--as", "cron")


def test_posts_from_a_command_reach_sockets_on_two_processes_once_in_order(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    processes = SocketsOnProcesses((first, second), "posts")

    processes.sockets[0].send(json.dumps({"message": "socket 1"}))
    processes.read_until(1)
    manage = [sys.executable, "manage.py", "chat_post", "posts", "command 2", "--as", "cron"]
    subprocess.run(manage, cwd=ROOT, env=first.env, check=True, stdout=subprocess.DEVNULL)
    processes.read_until(2)
    processes.sockets[1].send(json.dumps({"message": "socket 3"}))
    processes.read_until(3)
    for frames in processes.seen:
        assert frames == [(1, "socket 1"), (2, "command 2"), (3, "socket 3")]
    processes.close()


async def test_edits_through_the_api_and_the_socket_spend_one_per_person_budget(join, settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "3/minute"
    alice = await database_sync_to_async(User.objects.create_user)("alice")
    session = await new_session(**logged_in_session_values(alice))
    cookie = (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session}".encode())
    socket = await join("lobby", headers=[cookie])
    await socket.send_json_to({"message": "helo"})
    assert (await next_frame(socket))["message"] == "helo"
    await database_sync_to_async(posting.edit_message)("lobby", 1, "hello", as_user=alice)
    await next_frame(socket)  # the edit, broadcast
    await socket.send_json_to({"edit": {"id": 1, "message": "hello!"}})
    assert (await next_frame(socket))["edit"]["message"] == "hello!"
    await socket.send_json_to({"edit": {"id": 1, "message": "again"}})
    assert (await next_frame(socket))["error"]["code"] == "rate_limited"
    with pytest.raises(posting.PostRefused) as refused:
        await database_sync_to_async(posting.delete_message)("lobby", 1, as_user=alice)
    assert refused.value.code == "rate_limited"
