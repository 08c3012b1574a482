"""Retention (chat.retention, manage.py chat_retention): old messages go, ids stay, and
every reader of history says which ids are gone."""

import io
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import timedelta

import pytest
import websocket
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from chat import retention, services
from chat.identity import Author
from chat.models import Message, Room
from chat.tests.conftest import assert_receives_message, next_frame
from conftest import ROOT

GUEST = Author("someone", guest_key="k")
DAYS = 30


def _post(room: str, count: int, *, age_days: float = 0) -> list[int]:
    """Store `count` messages in the room, dated `age_days` ago; their ids."""
    seqs = [services.store_message(room, GUEST, f"m{n}", None)[0].seq for n in range(count)]
    when = timezone.now() - timedelta(days=age_days)
    Message.objects.filter(room_id=room, seq__in=seqs).update(created=when)
    return seqs


def _kept(room: str) -> list[int]:
    return list(Message.objects.filter(room_id=room).values_list("seq", flat=True))


def _retention(*args) -> str:
    out = io.StringIO()
    call_command("chat_retention", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def default_period(settings, db):
    settings.CHAT_RETENTION_DAYS = DAYS


def test_messages_older_than_the_default_go_and_ids_and_last_seq_stay(default_period):
    _post("lobby", 5, age_days=DAYS + 1)
    _post("lobby", 2)
    assert "lobby: deleted 5 messages older than 30 days (ids up to 5)" in _retention()
    assert _kept("lobby") == [6, 7]
    room = Room.objects.get(name="lobby")
    assert (room.last_seq, room.gone_until) == (7, 5)
    assert services.store_message("lobby", GUEST, "next", None)[0].seq == 8


def test_running_again_deletes_nothing_more(default_period):
    _post("lobby", 3, age_days=DAYS + 1)
    _retention()
    assert _retention().strip() == "deleted 0 messages in all"
    assert Room.objects.get(name="lobby").gone_until == 3


def test_a_dry_run_says_what_it_would_delete_and_deletes_nothing(default_period):
    _post("lobby", 4, age_days=DAYS + 1)
    assert "lobby: would delete 4 messages" in _retention("--dry-run")
    assert _kept("lobby") == [1, 2, 3, 4]
    assert Room.objects.get(name="lobby").gone_until == 0


def test_small_batches_delete_the_same_as_one(default_period):
    _post("lobby", 7, age_days=DAYS + 1)
    _post("lobby", 1)
    assert "deleted 7 messages in all" in _retention("--batch-size", "2")
    assert _kept("lobby") == [8]
    assert Room.objects.get(name="lobby").gone_until == 7


def test_a_rooms_own_period_overrides_the_default(settings, db):
    settings.CHAT_RETENTION_DAYS = 0  # keep for ever, unless a room says otherwise
    for room in ("short", "default"):
        _post(room, 2, age_days=3)
    Room.objects.filter(name="short").update(retention_days=2)
    _retention()
    assert (_kept("short"), _kept("default")) == ([], [1, 2])
    settings.CHAT_RETENTION_DAYS = 1
    Room.objects.filter(name="default").update(retention_days=0)  # for ever, this one
    _retention()
    assert _kept("default") == [1, 2]


def test_only_a_prefix_of_ids_goes_so_an_old_message_after_a_newer_one_stays(default_period):
    _post("lobby", 1, age_days=DAYS + 1)
    _post("lobby", 1)
    _post("lobby", 1, age_days=DAYS + 1)  # dated older than its neighbour (a clock skew)
    _retention()
    assert _kept("lobby") == [2, 3]
    assert retention.gone_until("lobby") == 1


# --- What readers are told --------------------------------------------------------------


def test_the_messages_endpoint_says_which_ids_are_gone(default_period, client):
    _post("lobby", 5, age_days=DAYS + 1)
    _post("lobby", 2)
    _retention()
    after = client.get("/chat/lobby/messages/?after=2").json()
    assert ([m["id"] for m in after["messages"]], after["gone_until"]) == ([6, 7], 5)
    before = client.get("/chat/lobby/messages/?before=7").json()
    assert ([m["id"] for m in before["messages"]], before["next_before"]) == ([6], None)
    assert before["gone_until"] == 5
    assert client.get("/chat/other/messages/").json()["gone_until"] == 0


def test_the_room_page_tells_the_page_the_rooms_period(default_period, client):
    _post("lobby", 1)
    Room.objects.filter(name="lobby").update(retention_days=7)
    limits = client.get("/chat/lobby/").context["chat_limits"]
    assert limits["retention_days"] == 7
    assert client.get("/chat/new-room/").context["chat_limits"]["retention_days"] == DAYS


def test_the_owner_sets_the_rooms_period_on_its_page_and_nobody_else_does(default_period):
    alice, bob = (User.objects.create_user(name) for name in ("alice", "bob"))
    services.store_message("garden", Author("alice", user_id=alice.pk), "first", None)
    owner, other = Client(), Client()
    owner.force_login(alice)
    other.force_login(bob)

    def period_after(client, days: str):
        response = client.post("/rooms/garden/retention/", {"days": days}, follow=True)
        notices = [str(notice) for notice in response.context["messages"]]
        return Room.objects.get(name="garden").retention_days, notices

    assert 'id="retention-form"' in owner.get("/chat/garden/").content.decode()
    assert 'id="retention-form"' not in other.get("/chat/garden/").content.decode()
    assert period_after(owner, "7") == (7, ["Messages here are now kept for 7 days."])
    assert period_after(owner, "0") == (0, ["Messages here are now kept for ever."])
    assert period_after(owner, "") == (None, [f"Messages here are now kept for {DAYS} days."])
    assert period_after(owner, "-1")[0] is None
    assert "Enter a number of days" in period_after(owner, "seven")[1][0]
    assert period_after(other, "1") == (
        None,
        ["Only the room's owner sets how long it keeps messages."],
    )


@pytest.fixture
def purged_room(settings, transactional_db):
    """A room whose messages 1-5 retention deleted; 6 and 7 are kept."""
    settings.CHAT_RETENTION_DAYS = DAYS
    _post("lobby", 5, age_days=DAYS + 1)
    _post("lobby", 2)
    _retention()


async def test_a_join_gets_the_history_then_where_it_ends(join, purged_room):
    socket = await join("lobby")
    assert [frame.get("id") for frame in socket.backlog] == [6, 7, None]
    assert socket.backlog[-1] == {"gone": {"until": 5}}


async def test_a_reconnect_across_the_gone_ids_is_told_and_waits_for_none(join, purged_room):
    socket = await join("lobby", query="after=2")
    assert socket.backlog[0] == {"gone": {"until": 5}}
    assert [frame.get("id") for frame in socket.backlog[1:3]] == [6, 7]
    assert socket.backlog[3] == {"catch_up": {"recovered": True, "after": 2, "until": 7}}
    await socket.send_json_to({"message": "live"})
    assert (await assert_receives_message(socket, "live"))["id"] == 8


async def test_a_reconnect_past_the_gone_ids_is_not_told_again(join, purged_room):
    socket = await join("lobby", query="after=6")
    assert [frame.get("id") for frame in socket.backlog] == [7, None]
    assert "gone" not in json.dumps(socket.backlog)
    await socket.send_json_to({"message": "live"})
    assert (await next_frame(socket))["id"] == 8


# --- While the chat runs ----------------------------------------------------------------


def _manage(server, *args) -> str:
    command = [sys.executable, "manage.py", *args]
    done = subprocess.run(command, cwd=ROOT, env=server.env, check=True, capture_output=True)
    return done.stdout.decode()


def _read_all(server, room: str) -> tuple[list[tuple[int, str]], int]:
    """Every stored message of the room, as (id, text), through the endpoint; gone_until."""
    seen, after, gone = [], 0, 0
    while after is not None:
        url = f"{server.url}/chat/{room}/messages/?after={after}&limit=500"
        page = json.loads(urllib.request.urlopen(url).read())
        seen += [(m["id"], m["message"]) for m in page["messages"]]
        after, gone = page["next_after"], page["gone_until"]
    return seen, gone


class Poster(threading.Thread):
    """A socket posting a numbered message every POST_EVERY_SECONDS until told to stop, then
    reading until the server echoed each one: what it sent, in order."""

    def __init__(self, server, room: str, name: str, stop: threading.Event):
        super().__init__()
        url = server.url.replace("http://", "ws://") + f"/ws/chat/{room}/"
        self.socket = websocket.create_connection(url, origin=server.url, timeout=10)
        self.name, self.stop, self.sent = name, stop, []
        self.failure = None  # the refusal that ended run, if one did

    def run(self):
        while not self.stop.is_set():
            text = f"{self.name}-{len(self.sent)}"
            self.socket.send(json.dumps({"message": text, "client_id": text}))
            self.sent.append(text)
            self.stop.wait(POST_EVERY_SECONDS)  # a steady rate, within the socket's bucket
        echoed = set()
        while len(echoed) < len(self.sent):
            frame = json.loads(self.socket.recv())
            if "error" in frame:
                self.resend_as_the_page_does(frame["error"])
            elif frame.get("client_id") in self.sent:
                echoed.add(frame["client_id"])
        self.socket.close()

    def resend_as_the_page_does(self, error: dict):
        """A message refused for a while (a busy server, a lock) is sent again, as the room
        page does; any other refusal is the test's failure."""
        if error.get("code") not in RETRIED_ERRORS or error.get("client_id") not in self.sent:
            self.failure = error
            raise AssertionError(error)
        time.sleep(error.get("retry_after", 1))
        text = error["client_id"]
        self.socket.send(json.dumps({"message": text, "client_id": text}))


# Refusals the room page answers by sending the message again (docs/protocol.md).
RETRIED_ERRORS = ("overloaded", "store_failed")
# Under the socket's 10 messages a second, so that no post is refused.
POST_EVERY_SECONDS = 0.15
OLD_MESSAGES = 18  # under the socket's burst of 20


def test_the_command_running_while_messages_are_posted_loses_and_renumbers_none(
    start_chat_server,
):
    server = start_chat_server(
        CHAT_RETENTION_DAYS=str(DAYS), CHAT_LIMIT_MESSAGES_PER_PERSON="100000/10seconds"
    )
    room = f"retained-{uuid.uuid4().hex[:8]}"
    old = Poster(server, room, "old", threading.Event())
    old.stop.set()
    old.sent = [f"old-{n}" for n in range(OLD_MESSAGES)]
    for text in old.sent:
        old.socket.send(json.dumps({"message": text, "client_id": text}))
    old.run()  # reads the echoes
    age = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from chat.models import Message; "
        f"Message.objects.filter(room_id={room!r}).update("
        f"created=timezone.now() - timedelta(days={DAYS + 1}))"
    )
    _manage(server, "shell", "-c", age)

    stop = threading.Event()
    posters = [Poster(server, room, f"new{n}", stop) for n in range(3)]
    for poster in posters:
        poster.start()
    outputs = [_manage(server, "chat_retention", "--batch-size", "3") for _ in range(3)]
    stop.set()
    for poster in posters:
        poster.join(timeout=30)
        assert poster.failure is None

    assert f"{room}: deleted {OLD_MESSAGES} messages" in "".join(outputs)
    stored, gone = _read_all(server, room)
    assert gone == OLD_MESSAGES
    sent = sum(len(poster.sent) for poster in posters)
    assert [seq for seq, _ in stored] == list(range(OLD_MESSAGES + 1, OLD_MESSAGES + 1 + sent))
    for poster in posters:  # every message of each, in the order it sent them
        assert [text for _, text in stored if text.startswith(poster.name + "-")] == poster.sent
