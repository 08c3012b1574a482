"""Tests for chat/paced.py: bulk views served whole on the sockets' thread, in turn."""

import asyncio
import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator, HttpCommunicator
from django.contrib.auth.models import User

from chat import limits, loops, paced, pipeline, protocol, services, tokens
from chat.identity import Author
from chat.tests.conftest import ALLOWED_HOST, page_as_read
from mysite.asgi import application

pytestmark = pytest.mark.usefixtures("limits_count_from_zero", "transactional_db")

MESSAGES_PATH = "/chat/lobby/messages/"
API_MESSAGES_PATH = "/api/v1/rooms/lobby/messages"


@pytest.fixture
async def held_lane():
    """A bulk job holding the lane until `release` is set; the lane is free afterwards."""
    release = asyncio.Event()
    holding = asyncio.ensure_future(pipeline.run_in_turn(release.wait))
    yield release
    release.set()
    await asyncio.wait_for(holding, 5)


async def until_waiting_in_lane(count: int, timeout: float = 5):
    """Wait until `count` bulk jobs wait for their turn behind the one running."""
    async with asyncio.timeout(timeout):
        while len(loops.of_loop().lane.waiting) < count:
            await asyncio.sleep(0.001)


def recording(monkeypatch, module, name: str, seen: list):
    """Wrap module.name so that each call notes (name, its thread) in `seen`."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append((name, threading.current_thread()))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_only_the_paths_of_paced_views_are_paced():
    assert paced.is_paced({"path": MESSAGES_PATH})
    assert paced.is_paced({"path": "/prefix" + MESSAGES_PATH, "root_path": "/prefix"})
    assert not paced.is_paced({"path": "/chat/lobby/"})
    assert not paced.is_paced({"path": "/no/such/page/"})


def test_only_the_page_reads_of_the_api_are_paced():
    assert paced.is_paced({"path": API_MESSAGES_PATH, "method": "GET"})
    assert not paced.is_paced({"path": API_MESSAGES_PATH, "method": "POST"})
    assert not paced.is_paced({"path": API_MESSAGES_PATH + "/1", "method": "PATCH"})
    assert not paced.is_paced({"path": "/api/v1/rooms", "method": "GET"})


async def answered_in_its_turn(request: HttpCommunicator, seen: list, held_lane) -> dict:
    """The request's 200 response, once the held lane lets its turn come; nothing of it
    (recorded in `seen`) having run before."""
    answer = asyncio.ensure_future(request.get_response(timeout=5))
    await until_waiting_in_lane(1)
    assert seen == []  # nothing of it runs before its turn
    held_lane.set()
    response = await answer
    assert response["status"] == 200
    return response


def new_token() -> str:
    _, raw = tokens.create_token(User.objects.create_user("alice", password="x"), "tests")
    return raw


def store_in_lobby(*texts: str):
    for text in texts:
        services.store_message("lobby", Author(name="Zoë"), text, None)


async def test_an_api_page_is_read_on_the_sockets_thread_in_its_turn_and_encoded_on_the_loop(
    monkeypatch, held_lane
):
    sockets_thread = await pipeline.call_batched(threading.current_thread)
    token = await database_sync_to_async(new_token)()
    await database_sync_to_async(store_in_lobby)("one", "two")
    seen = []
    # The token's limit (the API's auth), the page's read and its messages' encoding.
    recording(monkeypatch, limits, "retry_after", seen)
    recording(monkeypatch, services, "read_page_rows", seen)
    recording(monkeypatch, protocol, "message_fields", seen)
    request = HttpCommunicator(
        application,
        "GET",
        API_MESSAGES_PATH,
        headers=[(b"host", ALLOWED_HOST), (b"authorization", f"Bearer {token}".encode())],
    )
    response = await answered_in_its_turn(request, seen, held_lane)
    assert [message["message"] for message in json.loads(response["body"])["messages"]] == [
        "one",
        "two",
    ]
    loop_thread = threading.current_thread()
    assert seen == [
        ("retry_after", sockets_thread),
        ("read_page_rows", sockets_thread),
        ("message_fields", loop_thread),
        ("message_fields", loop_thread),
    ]


async def test_a_messages_page_is_read_on_the_sockets_thread_in_its_turn_and_encoded_on_the_loop(
    monkeypatch, held_lane
):
    sockets_thread = await pipeline.call_batched(threading.current_thread)
    await database_sync_to_async(store_in_lobby)("one", 'two "quoted" ✓')
    expected = await database_sync_to_async(page_as_read)("lobby", {})
    seen = []
    # The per-address limit (a request's middleware-side work), the page's read and its
    # messages' encoding.
    recording(monkeypatch, limits, "http_refusal", seen)
    recording(monkeypatch, services, "read_page_rows", seen)
    recording(monkeypatch, protocol, "message_fields", seen)
    request = HttpCommunicator(application, "GET", MESSAGES_PATH, headers=[(b"host", ALLOWED_HOST)])
    response = await answered_in_its_turn(request, seen, held_lane)
    # Byte for byte what json.dumps of the whole page wrote when it was encoded whole.
    assert response["body"] == json.dumps(expected).encode()
    loop_thread = threading.current_thread()
    assert seen == [
        ("http_refusal", sockets_thread),
        ("read_page_rows", sockets_thread),
        ("message_fields", loop_thread),
        ("message_fields", loop_thread),
    ]
    # Through the same middleware as every other request.
    assert (b"X-Content-Type-Options", b"nosniff") in response["headers"]
    assert (b"Content-Type", b"application/json") in response["headers"]
    assert (b"Content-Length", str(len(response["body"])).encode()) in response["headers"]


async def test_a_request_whose_client_left_before_its_turn_is_never_handled(monkeypatch, held_lane):
    seen = []
    recording(monkeypatch, limits, "http_refusal", seen)
    scope = {
        "type": "http",
        "method": "GET",
        "path": MESSAGES_PATH,
        "query_string": b"",
        "headers": [(b"host", ALLOWED_HOST)],
    }
    request = ApplicationCommunicator(application, scope)
    await request.send_input({"type": "http.request", "body": b""})
    await until_waiting_in_lane(1)
    await request.send_input({"type": "http.disconnect"})
    await request.wait(timeout=5)  # the application returns without waiting for its turn
    held_lane.set()
    await pipeline.run_in_turn(asyncio.sleep, 0)  # every job queued before this one is done
    assert seen == []
    assert await request.receive_nothing()
