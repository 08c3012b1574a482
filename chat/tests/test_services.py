"""Storing and reading messages: seq numbering, idempotent client ids, authors, history."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.db.models.sql.compiler import SQLCompiler
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol, services
from chat.identity import Author
from chat.models import Message, Room

pytestmark = pytest.mark.django_db

GUEST = Author(name="Zoë")


def _store(room: str, count: int, client_id_prefix: str | None = None) -> list[Message]:
    return [
        services.store_message(
            room,
            GUEST,
            f"message {n}",
            None if client_id_prefix is None else f"{client_id_prefix}{n}",
        )[0]
        for n in range(1, count + 1)
    ]


def test_store_message_numbers_a_rooms_messages_1_2_3_without_gaps():
    messages = _store("lobby", 3)
    assert [message.seq for message in messages] == [1, 2, 3]
    assert list(Message.objects.filter(room_id="lobby").values_list("seq", flat=True)) == [1, 2, 3]


def test_each_room_numbers_its_own_messages_from_1():
    services.store_message("lobby", GUEST, "a", None)
    services.store_message("lobby", GUEST, "b", None)
    first_elsewhere, _ = services.store_message("kitchen", GUEST, "c", None)
    next_in_lobby, _ = services.store_message("lobby", GUEST, "d", None)
    assert first_elsewhere.seq == 1
    assert next_in_lobby.seq == 3


def test_store_message_creates_the_room_row_and_advances_its_last_seq():
    _store("lobby", 2)
    assert Room.objects.get(name="lobby").last_seq == 2


def test_store_message_stores_the_text_it_was_given():
    message, _ = services.store_message("lobby", GUEST, "hello there", None)
    message.refresh_from_db()
    assert message.text == "hello there"
    assert message.room_id == "lobby"


def test_a_retried_client_id_returns_the_stored_message_and_stores_once():
    first, first_created = services.store_message("lobby", GUEST, "hi", "abc-1")
    again, again_created = services.store_message("lobby", GUEST, "hi", "abc-1")
    assert first_created is True
    assert again_created is False
    assert again.pk == first.pk
    assert Message.objects.count() == 1


def test_a_retried_client_id_does_not_burn_a_seq():
    services.store_message("lobby", GUEST, "hi", "abc-1")
    services.store_message("lobby", GUEST, "hi", "abc-1")
    after, _ = services.store_message("lobby", GUEST, "next", "abc-2")
    assert after.seq == 2


def test_a_retry_returns_the_first_text_not_the_retried_one():
    services.store_message("lobby", GUEST, "original", "abc-1")
    again, _ = services.store_message("lobby", GUEST, "edited", "abc-1")
    assert again.text == "original"


def test_the_same_client_id_in_two_rooms_is_two_messages():
    in_lobby, lobby_created = services.store_message("lobby", GUEST, "hi", "abc-1")
    in_kitchen, kitchen_created = services.store_message("kitchen", GUEST, "hi", "abc-1")
    assert lobby_created and kitchen_created
    assert in_lobby.pk != in_kitchen.pk
    assert Message.objects.count() == 2


def test_messages_without_a_client_id_are_never_deduplicated():
    _store("lobby", 2)
    assert Message.objects.count() == 2


def test_a_guest_is_stored_with_no_author_and_its_display_name():
    message, _ = services.store_message("lobby", Author(name="Zoë"), "hi", None)
    message.refresh_from_db()
    assert message.author is None
    assert message.display_name == "Zoë"


def test_a_logged_in_author_is_stored_with_its_user():
    user = get_user_model().objects.create_user("alice", password="not-used-here-42")
    message, _ = services.store_message("lobby", Author(name="alice", user_id=user.pk), "hi", None)
    message.refresh_from_db()
    assert message.author_id == user.pk
    assert message.display_name == "alice"


def test_recent_messages_gives_the_newest_n_oldest_first():
    _store("lobby", 5)
    assert [message.seq for message in services.recent_messages("lobby", 3)] == [3, 4, 5]


def test_recent_messages_gives_everything_when_the_room_has_fewer():
    _store("lobby", 2)
    assert [message.seq for message in services.recent_messages("lobby", 50)] == [1, 2]


def test_recent_messages_reads_only_its_room():
    _store("lobby", 2)
    _store("kitchen", 3)
    assert {message.room_id for message in services.recent_messages("lobby", 50)} == {"lobby"}


def test_recent_messages_of_an_unknown_room_is_empty():
    assert services.recent_messages("nowhere", 50) == []


def test_messages_after_gives_the_later_messages_oldest_first():
    _store("lobby", 5)
    assert [message.seq for message in services.messages_after("lobby", 2)] == [3, 4, 5]


def test_messages_after_honours_its_limit():
    _store("lobby", 5)
    assert [message.seq for message in services.messages_after("lobby", 1, limit=2)] == [2, 3]


def test_messages_after_the_newest_is_empty():
    _store("lobby", 3)
    assert services.messages_after("lobby", 3) == []


def test_messages_after_reads_only_its_room():
    _store("lobby", 2)
    _store("kitchen", 3)
    assert [message.seq for message in services.messages_after("lobby", 0)] == [1, 2]


def test_messages_after_frames_exactly_as_the_models_do():
    """The shared read skips the models; its frames must not differ by a byte (both databases)."""
    user = get_user_model().objects.create_user("alice", password="not-used-here-42")
    services.store_message("lobby", GUEST, "a guest's \U0001f600 <b>", "c-1")
    services.store_message("lobby", Author(name="alice", user_id=user.pk), "a user's", None)
    _store("lobby", 3)
    _store("kitchen", 2)
    for after, limit in [(0, 50), (1, 2), (4, 50), (5, 50), (0, None)]:
        models = Message.objects.filter(room_id="lobby", seq__gt=after).order_by("seq")
        rows = services.messages_after("lobby", after, limit)
        assert [protocol.message_frame(protocol.chat_message_event(row)) for row in rows] == [
            protocol.message_frame(protocol.chat_message_event(message))
            for message in (models if limit is None else models[:limit])
        ]
    assert services.messages_after("nowhere", 0, 50) == []


def test_last_seq_of_an_unknown_room_is_0():
    assert services.last_seq("nowhere") == 0


def test_last_seq_is_the_newest_messages_seq():
    _store("lobby", 4)
    _store("kitchen", 1)
    assert services.last_seq("lobby") == 4


def test_last_seq_compiles_no_query_once_it_read_a_room(monkeypatch):
    services.last_seq("lobby")
    compiled = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(
        SQLCompiler, "as_sql", lambda *a, **k: compiled.append(1) or as_sql(*a, **k)
    )
    _store("lobby", 2)
    compiled.clear()
    assert [services.last_seq("lobby"), services.last_seq("hall")] == [2, 0]
    assert compiled == []


def test_author_is_a_guest_exactly_when_it_has_no_user_id():
    assert Author(name="Zoë").is_guest
    assert not Author(name="alice", user_id=7).is_guest


# Every code point, lone surrogates and controls included (st.text() leaves surrogates out).
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=()), min_size=1, max_size=40))
def test_any_message_the_parser_accepts_is_stored_and_read_back_unchanged(text):
    frame = json.dumps({"message": text})
    try:
        accepted = protocol.parse_chat_frame(frame, None, max_chars=4096, max_frame_chars=30000)
    except protocol.FrameRefused:
        return
    stored, _ = services.store_message("fuzz", GUEST, accepted.message, None)
    read_back = Message.objects.get(room_id="fuzz", seq=stored.seq)
    assert read_back.text == accepted.message
    outbound = json.loads(protocol.message_frame(protocol.chat_message_event(read_back)))
    assert outbound["message"] == accepted.message


def test_two_authors_with_the_same_client_id_each_get_their_own_message():
    squatter, _ = services.store_message("lobby", Author(name="Mallory", guest_key="m"), "x", "1")
    mine, created = services.store_message("lobby", Author(name="Zoë", guest_key="z"), "hi", "1")
    assert created is True
    assert mine.pk != squatter.pk and mine.text == "hi"
    assert Message.objects.filter(room_id="lobby", client_id="1").count() == 2


def test_a_user_and_a_guest_with_the_same_client_id_each_get_their_own_message():
    user = get_user_model().objects.create_user("alice", password="not-used-here-42")
    services.store_message("lobby", GUEST, "guest's", "1")
    mine, created = services.store_message("lobby", Author("alice", user_id=user.pk), "hi", "1")
    assert created is True and mine.text == "hi"


def test_a_retry_is_recognised_per_author_among_others_using_the_same_client_id():
    zoe, mallory = Author(name="Zoë", guest_key="z"), Author(name="Mallory", guest_key="m")
    first, _ = services.store_message("lobby", zoe, "mine", "1")
    services.store_message("lobby", mallory, "theirs", "1")
    again, created = services.store_message("lobby", zoe, "mine", "1")
    assert created is False and again.pk == first.pk
    assert Message.objects.count() == 2


def test_the_author_key_is_stored_but_not_among_the_public_fields():
    message, _ = services.store_message("lobby", Author(name="Zoë", guest_key="z1"), "hi", "1")
    message.refresh_from_db()
    assert message.author_key == "g:z1"
    assert "z1" not in str(protocol.message_fields(message))


def test_an_authors_key_says_user_or_guest_so_the_two_never_meet():
    assert Author(name="alice", user_id=7).key == "u:7"
    assert Author(name="Zoë", guest_key="7").key == "g:7"
