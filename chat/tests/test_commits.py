"""Group commit (chat.commits): a batch's messages checked and stored together."""

import json
import subprocess
import sys
import uuid

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import commits, limits, protocol, revocation, services
from chat.identity import Author
from chat.models import Message
from conftest import ROOT, server_environment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("limits_count_from_zero")]

ALICE = Author(name="Alice", guest_key="alice")
BOB = Author(name="Bob", guest_key="bob")
CAROL = Author(name="Carol", guest_key="carol")
# Two processes, each storing this many batches of BATCH_SIZE messages to each of two rooms.
BATCHES_PER_PROCESS = 40
BATCH_SIZE = 5


def _post(room: str, author: Author, text: str, client_id: str | None = None) -> commits.Post:
    check = limits.PostCheck(f"person:{author.key}", "198.51.100.1", room, False, client_id)
    return commits.Post(services.Draft(room, author, text, client_id), check)


def _seqs(room: str) -> list[int]:
    return list(Message.objects.filter(room_id=room).order_by("seq").values_list("seq", flat=True))


def test_a_batch_stores_exactly_its_good_messages_gaplessly_and_refuses_each_bad_one(settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "2/minute"
    services.store_message("lobby", ALICE, "before", "a-1")
    posts = [
        _post("lobby", BOB, "good 1"),
        _post("lobby", ALICE, "a retry", "a-1"),  # a duplicate client_id
        _post("l0bby", CAROL, "impostor"),  # a look-alike of "lobby", new
        _post("lobby", ALICE, "good 2"),
        _post("lobby", ALICE, "over the limit"),  # Alice's third within the minute
        _post("lobby", BOB, "good 3"),
    ]

    commits.commit(posts)

    message, created = posts[1].outcome
    assert (message.text, message.seq, created) == ("before", 1, False)
    assert isinstance(posts[2].outcome, services.LookalikeRoom)
    assert isinstance(posts[4].outcome, protocol.FrameRefused)
    assert (posts[4].outcome.code, posts[4].outcome.retry_after > 0) == ("rate_limited", True)
    good = [posts[0].outcome, posts[3].outcome, posts[5].outcome]
    assert [(m.text, m.seq, created) for m, created in good] == [
        ("good 1", 2, True),
        ("good 2", 3, True),
        ("good 3", 4, True),
    ]
    assert _seqs("lobby") == [1, 2, 3, 4]
    assert _seqs("l0bby") == []
    assert services.last_seq("lobby") == 4


def test_one_failing_draft_takes_back_only_its_own_seq():
    outcomes = services.store_messages(
        [
            services.Draft("lobby", ALICE, "first", "same"),
            services.Draft("lobby", ALICE, "again", "same"),
            services.Draft("lobby", ALICE, "second", None),
        ]
    )
    assert [(m.text, m.seq, created) for m, created in outcomes] == [
        ("first", 1, True),
        ("first", 1, False),
        ("second", 2, True),
    ]


def test_a_batch_takes_its_rooms_locks_in_name_order_and_answers_in_its_own(monkeypatch):
    locked = []
    next_seq = services._next_seq

    def locking(room, created, count=1):
        locked.append((room, count))
        return next_seq(room, created, count)

    monkeypatch.setattr(services, "_next_seq", locking)
    outcomes = services.store_messages(
        [services.Draft(room, ALICE, f"to {room} {n}", None) for n, room in enumerate("cabac")]
    )
    assert locked == [("a", 2), ("b", 1), ("c", 2)]
    assert [(m.text, m.seq) for m, _ in outcomes] == [
        ("to c 0", 1),
        ("to a 1", 1),
        ("to b 2", 1),
        ("to a 3", 2),
        ("to c 4", 2),
    ]


def test_a_batch_is_one_statement_per_room_and_one_insert_of_its_rows():
    services.store_message("a", ALICE, "a room with a message", None)
    drafts = [services.Draft(room, BOB, f"to {room}", None) for room in "abababab"]
    with CaptureQueriesContext(connection) as queries:
        services.store_messages(drafts)
    writes = [
        q["sql"].split()[0] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    assert writes == ["INSERT", "INSERT", "INSERT"]  # room a, room b, the eight rows
    assert _seqs("a") == [1, 2, 3, 4, 5] and _seqs("b") == [1, 2, 3, 4]


def test_a_batchs_new_messages_of_one_room_share_one_broadcast_in_seq_order():
    services.store_message("lobby", ALICE, "before", "a-1")
    posts = [
        _post("lobby", ALICE, "one"),
        _post("side", BOB, "elsewhere"),
        _post("lobby", ALICE, "before again", "a-1"),  # a retry: the room has it already
        _post("lobby", CAROL, "two"),
    ]
    commits.commit(posts)
    lobby, side = posts[0].broadcast, posts[1].broadcast
    assert posts[3].broadcast is lobby and side is not lobby
    assert posts[2].broadcast is None
    assert [(event["id"], event["message"]) for event in lobby.events] == [(2, "one"), (3, "two")]
    assert lobby.events[0] == protocol.chat_message_event(posts[0].outcome[0])
    assert [event["message"] for event in side.events] == ["elsewhere"]
    assert [lobby.take("first"), lobby.take("second")] == [True, False]
    assert lobby.senders == ["first", "second"]


def test_a_post_whose_session_no_longer_speaks_as_its_author_alone_is_refused(monkeypatch):
    gone = object()
    monkeypatch.setattr(
        revocation,
        "speak_as_now",
        lambda speakers: [session is not gone for _, session in speakers],
    )
    posts = [
        _post("lobby", ALICE, "logged out meanwhile"),
        _post("lobby", BOB, "still bob"),
        _post("lobby", CAROL, "checked by its socket"),
    ]
    posts[0].speaker, posts[1].speaker = (ALICE, gone), (BOB, None)
    commits.commit(posts)
    assert isinstance(posts[0].outcome, revocation.NoLongerSpeaks)
    assert [post.outcome[0].seq for post in posts[1:]] == [1, 2]
    assert _seqs("lobby") == [1, 2]


def test_a_failure_of_the_whole_commit_is_every_posts_outcome_and_stores_nothing(monkeypatch):
    def unreachable(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(limits.PendingChecks, "refusals", unreachable)
    posts = [_post("lobby", ALICE, "one"), _post("lobby", BOB, "two")]
    commits.commit(posts)
    assert all(isinstance(post.outcome, redis.exceptions.ConnectionError) for post in posts)
    assert _seqs("lobby") == []


def test_a_batchs_limit_checks_take_one_round_trip_to_redis(monkeypatch):
    sent = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(connection, command, *args, **kwargs):
        sent.append(command)
        return send(connection, command, *args, **kwargs)

    limits.retries_after(limits.MESSAGES, ["warm-up"])  # the client connects, the script loads
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    checks = [
        limits.PostCheck(f"person:{n}", "198.51.100.1", "lobby", False, None) for n in range(8)
    ]
    assert limits.check_posts(checks) == [None] * 8
    assert len(sent) == 1


def test_a_batchs_sessions_are_read_while_redis_counts_its_limits_and_stored_after(monkeypatch):
    happened = []
    send = redis.connection.AbstractConnection.send_packed_command
    read = redis.connection.AbstractConnection.read_response
    speak_as_now = revocation.speak_as_now

    def sent(connection, *args, **kwargs):
        happened.append("send")
        return send(connection, *args, **kwargs)

    def answered(connection, *args, **kwargs):
        happened.append("answer")
        return read(connection, *args, **kwargs)

    def sessions_read(speakers):
        happened.append("sessions")
        return speak_as_now(speakers)

    def executed(execute, sql, params, many, context):
        happened.append(sql.split()[0])
        return execute(sql, params, many, context)

    limits.retries_after(limits.MESSAGES, ["warm-up"])  # the client connects, the script loads
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", sent)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", answered)
    monkeypatch.setattr(revocation, "speak_as_now", sessions_read)
    with connection.execute_wrapper(executed):
        commits.commit([_post("lobby", ALICE, "one"), _post("lobby", BOB, "two")])
    steps = [step for step in happened if step in ("send", "sessions", "answer", "INSERT")]
    # The room's counter, then the rows: both after Redis answered.
    assert steps == ["send", "sessions", "answer", "answer", "INSERT", "INSERT"]
    assert _seqs("lobby") == [1, 2]


def test_hits_sent_on_a_connection_redis_then_closed_are_counted_on_a_new_one(redis_server):
    checks = [limits.PostCheck(f"person:{n}", "198.51.100.1", "lobby", False, None) for n in "ab"]
    limits.check_posts(checks)  # the client connects, the script loads
    pending = limits.start_checks(checks)
    redis.Redis.from_url(redis_server.url).client_kill_filter(_type="normal", skipme=True)
    assert pending.refusals() == [None, None]


def test_hits_in_one_round_trip_count_as_hits_one_after_another(settings):
    settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "3/minute"
    waits = limits.retries_after(limits.MESSAGES, ["alice", "bob", "alice", "alice", "alice"])
    assert [wait is None for wait in waits] == [True, True, True, True, False]
    assert limits.retry_after(limits.MESSAGES, "alice") is not None
    assert limits.retry_after(limits.MESSAGES, "bob") is None


def test_the_hits_survive_a_redis_that_forgot_the_limits_script(redis_server):
    redis.Redis.from_url(redis_server.url).script_flush()
    assert limits.retries_after(limits.MESSAGES, ["alice", "bob"]) == [None, None]


def test_a_room_new_to_several_messages_of_a_batch_counts_once_against_its_creator(settings):
    settings.CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS = "1/minute"
    checks = [
        limits.PostCheck(f"person:{n}", "198.51.100.1", "fresh", True, None) for n in range(3)
    ]
    assert limits.check_posts(checks) == [None, None, None]
    refused = limits.check_posts([checks[0]._replace(room_name="another")])
    assert refused[0].code == "too_many_rooms"


_STORING_PROCESS = """
import django, sys
django.setup()
from chat import services
from chat.identity import Author
rooms, name, batches, size = sys.argv[1].split(), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
author = Author(name=name, guest_key=name)
for batch in range(batches):
    services.store_messages([
        services.Draft(room, author, f"{name} {batch * size + n}", None)
        for n in range(size) for room in rooms
    ])
"""
_READING_PROCESS = """
import django, json, sys
django.setup()
from chat.models import Message
rows = Message.objects.filter(room_id=sys.argv[1]).order_by("seq").values_list("seq", "text")
print(json.dumps(list(rows)))
"""


def test_two_processes_storing_batches_into_two_rooms_stay_gapless_and_never_deadlock(
    redis_server, migrated_database
):
    rooms = [f"race-{uuid.uuid4().hex[:8]}-{side}" for side in "ab"]
    env = server_environment(redis_server.url, migrated_database)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _STORING_PROCESS,
                " ".join(order),
                name,
                str(BATCHES_PER_PROCESS),
                str(BATCH_SIZE),
            ],
            cwd=ROOT,
            env=env,
        )  # fmt: skip
        # Each batch goes room by room in the opposite order of the other process's.
        for name, order in (("left", rooms), ("right", rooms[::-1]))
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    for room in rooms:
        rows = json.loads(
            subprocess.run(
                [sys.executable, "-c", _READING_PROCESS, room],
                cwd=ROOT, env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        assert [seq for seq, _ in rows] == list(range(1, 2 * BATCHES_PER_PROCESS * BATCH_SIZE + 1))
        for name in ("left", "right"):  # each process's messages in the order it stored them
            mine = [int(text.split()[1]) for _, text in rows if text.startswith(name)]
            assert mine == list(range(BATCHES_PER_PROCESS * BATCH_SIZE))
