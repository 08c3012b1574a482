"""Storing and reading messages: seq numbering, idempotent client ids, authors, history."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.db.models.sql.compiler import SQLCompiler, SQLInsertCompiler
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol, services
from chat.identity import Author
from chat.models import Message, Room
from chat.tests.conftest import page_as_read

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


def test_a_stored_message_holds_each_value_in_its_own_field():
    user = get_user_model().objects.create_user("alice", password="not-used-here-42")
    author = Author(name="alice", user_id=user.pk)
    message, _ = services.store_message("lobby", author, "the text", "c-1")
    expected = {
        "room_id": "lobby",
        "seq": 1,
        "author_id": user.pk,
        "display_name": "alice",
        "text": "the text",
        "client_id": "c-1",
        "author_key": author.key,
        "bot": False,
        "created": message.created,
        "edited": None,
        "deleted": False,
        "change": 0,
    }
    stored = Message.objects.get(pk=message.pk)
    assert {name: getattr(message, name) for name in expected} == expected
    assert {name: getattr(stored, name) for name in expected} == expected


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
@settings(max_examples=300)
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


# --- Edits and deletions -----------------------------------------------------------------

ALICE = Author(name="alice", guest_key="alice-session")
MALLORY = Author(name="mallory", guest_key="mallory-session")


def test_an_edit_takes_the_rooms_next_change_number_and_keeps_message_ids():
    first, second = _store_as(ALICE, "one", "two")
    edited = services.edit_message("lobby", first.seq, ALICE, "one, fixed")
    deleted = services.delete_message("lobby", second.seq, ALICE)
    third, _ = services.store_message("lobby", ALICE, "three", None)
    assert (edited.change, deleted.change) == (1, 2)
    assert third.seq == 3
    assert Room.objects.get(name="lobby").last_change == 2


def test_an_edit_keeps_the_original_and_every_edit_with_who_and_when():
    (message,) = _store_as(ALICE, "one")
    services.edit_message("lobby", message.seq, ALICE, "two")
    services.edit_message("lobby", message.seq, ALICE, "three")
    revisions = list(message.revisions.values_list("kind", "text", "by_name", "change"))
    assert revisions == [
        ("original", "one", "alice", 0),
        ("edit", "two", "alice", 1),
        ("edit", "three", "alice", 2),
    ]
    message.refresh_from_db()
    assert (message.text, message.change) == ("three", 2)
    assert message.edited is not None


def test_a_deleted_messages_text_is_gone_from_the_message_and_kept_in_its_revisions():
    (message,) = _store_as(ALICE, "secret")
    services.delete_message("lobby", message.seq, ALICE)
    message.refresh_from_db()
    assert (message.text, message.deleted) == ("", True)
    assert list(message.revisions.values_list("kind", "text")) == [
        ("original", "secret"),
        ("delete", "secret"),
    ]
    (read,) = services.messages_after("lobby", 0)
    assert protocol.message_fields(read)["message"] == ""
    assert protocol.message_fields(read)["deleted"] is True


@pytest.mark.parametrize(
    ("seq", "author", "code"),
    [(9, ALICE, "no_such_message"), (1, MALLORY, "not_allowed")],
)
def test_a_refused_change_takes_no_change_number_and_changes_nothing(seq, author, code):
    (message,) = _store_as(ALICE, "one")
    with pytest.raises(services.ChangeRefused) as refused:
        services.edit_message("lobby", seq, author, "two")
    assert refused.value.code == code
    message.refresh_from_db()
    assert (message.text, message.change, message.revisions.count()) == ("one", 0, 0)
    assert Room.objects.get(name="lobby").last_change == 0


def test_a_change_in_a_room_that_does_not_exist_is_no_such_message():
    with pytest.raises(services.ChangeRefused) as refused:
        services.delete_message("nowhere", 1, ALICE)
    assert refused.value.code == "no_such_message"
    assert not Room.objects.filter(name="nowhere").exists()


def test_a_deleted_message_cannot_be_edited_or_deleted_again():
    (message,) = _store_as(ALICE, "one")
    services.delete_message("lobby", message.seq, ALICE)
    for change in (services.delete_message, services.edit_message):
        args = () if change is services.delete_message else ("two",)
        with pytest.raises(services.ChangeRefused) as refused:
            change("lobby", message.seq, ALICE, *args)
        assert refused.value.code == "message_deleted"


def test_changes_after_gives_each_changed_messages_final_state_in_change_order():
    first, second, third = _store_as(ALICE, "one", "two", "three")
    services.edit_message("lobby", second.seq, ALICE, "two, fixed")
    services.edit_message("lobby", first.seq, ALICE, "one, fixed")
    services.delete_message("lobby", second.seq, ALICE)
    changed = services.changes_after("lobby", 0)
    assert [(m.seq, m.change, m.text) for m in changed] == [(1, 2, "one, fixed"), (2, 3, "")]
    assert [m.seq for m in services.changes_after("lobby", 2)] == [2]
    assert services.last_change("lobby") == 3


def _store_as(author: Author, *texts: str) -> list[Message]:
    return [services.store_message("lobby", author, text, None)[0] for text in texts]


def test_read_page_with_changes_after_pages_through_final_states_in_change_order():
    first, second, third = _store_as(ALICE, "one", "two", "three")
    services.edit_message("lobby", third.seq, ALICE, "three, fixed")
    services.delete_message("lobby", first.seq, ALICE)
    services.edit_message("lobby", second.seq, ALICE, "two, fixed")
    page = page_as_read("lobby", {"changes_after": "0", "limit": "2"})
    assert [(m["id"], m["message"], m["change"]) for m in page["messages"]] == [
        (3, "three, fixed", 1),
        (1, "", 2),
    ]
    assert page["messages"][1]["deleted"] is True
    rest = page_as_read("lobby", {"changes_after": str(page["next_changes_after"])})
    assert [(m["id"], m["change"]) for m in rest["messages"]] == [(2, 3)]
    assert rest["next_changes_after"] is None


@pytest.mark.parametrize(
    "query", [{"changes_after": "-1"}, {"changes_after": "1", "after": "2"}, {"changes_after": "x"}]
)
def test_read_page_refuses_a_bad_changes_after_or_one_beside_after(query):
    with pytest.raises(services.InvalidPage):
        page_as_read("lobby", query)


def test_a_batchs_rows_get_their_keys_and_its_insert_is_compiled_once_per_size(monkeypatch):
    compiled = []
    as_sql = SQLInsertCompiler.as_sql
    monkeypatch.setattr(
        SQLInsertCompiler, "as_sql", lambda self, *args: compiled.append(1) or as_sql(self, *args)
    )
    batches = [
        [services.Draft(room, GUEST, f"{room} {n}", None) for room in ("a", "b") for n in range(3)]
        for _ in range(3)
    ]
    stored = [message for batch in batches for message, _ in services.store_messages(batch)]
    assert len(compiled) <= 1  # the same six rows' statement, built once if ever
    rows = dict(Message.objects.values_list("pk", "text"))
    assert {message.pk: message.text for message in stored} == rows and len(rows) == 18
    assert not any(message._state.adding for message in stored)
