"""Display names and who speaks: the name rule, the Author of a user or session, labels."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore

from chat.identity import (
    DISPLAY_NAME_MAX_CHARS,
    GUEST_DEFAULT_NAME,
    SESSION_KEY,
    Author,
    InvalidDisplayName,
    author_for,
    clean_display_name,
    clean_guest_name,
    presence_label,
)


def test_clean_display_name_trims_surrounding_white_space():
    assert clean_display_name("  Zoë \t") == "Zoë"


def test_clean_display_name_normalizes_to_nfc():
    assert clean_display_name("Zoe\u0308") == "Zo\u00eb"


@pytest.mark.parametrize(
    "name",
    ["Zoë", "李雷", "O'Brien", "Mary Jane", "José", "Ђорђе", "Nguyễn Thị", "שָׁלוֹם", "Jean-Luc"],
)
def test_clean_display_name_accepts_ordinary_names(name):
    assert clean_display_name(name) == name


@pytest.mark.parametrize("raw", ["", "   ", "\t\n", "\u3000"])
def test_clean_display_name_refuses_an_empty_or_blank_name(raw):
    with pytest.raises(InvalidDisplayName, match="Enter a name"):
        clean_display_name(raw)


def test_clean_display_name_accepts_exactly_the_maximum_length():
    name = "a" * DISPLAY_NAME_MAX_CHARS
    assert clean_display_name(name) == name


def test_clean_display_name_refuses_a_name_over_the_maximum_length():
    with pytest.raises(InvalidDisplayName, match="at most 30 characters"):
        clean_display_name("a" * (DISPLAY_NAME_MAX_CHARS + 1))


def test_clean_display_name_counts_length_after_normalizing():
    decomposed = "e\u0301" * DISPLAY_NAME_MAX_CHARS
    assert clean_display_name(decomposed) == "\u00e9" * DISPLAY_NAME_MAX_CHARS


@pytest.mark.parametrize(
    "raw",
    ["a\x00b", "a\nb", "a\u200bb", "\u202eabc", "a\u2028b", "a\x7fb"],
    ids=["nul", "newline", "zero-width-space", "rtl-override", "line-separator", "delete"],
)
def test_clean_display_name_refuses_control_and_invisible_characters(raw):
    with pytest.raises(InvalidDisplayName, match="control or invisible"):
        clean_display_name(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "alice\u3164",
        "\u3164",
        "a\u115fb",
        "a\u1160b",
        "a\uffa0b",
        "\u2800",
        "a\u2800b",
        "a\u00a0b",
        "a\ufe0fb",
        "a\u034fb",
    ],
    ids=[
        "hangul-filler-after",
        "hangul-filler-alone",
        "choseong-filler",
        "jungseong-filler",
        "halfwidth-filler",
        "braille-blank-alone",
        "braille-blank",
        "no-break-space",
        "variation-selector",
        "grapheme-joiner",
    ],
)
def test_clean_display_name_refuses_blank_fillers(raw):
    with pytest.raises(InvalidDisplayName, match="control or invisible"):
        clean_display_name(raw)


@pytest.mark.parametrize(
    "raw",
    ["e\u0301\u0302\u0303", "\u00e9\u0302\u0303", "Z" + "\u0336\u0337\u0338" * 5],
    ids=["three-marks", "three-marks-one-composed", "zalgo"],
)
def test_clean_display_name_refuses_stacked_combining_marks(raw):
    with pytest.raises(InvalidDisplayName, match="more than 2 marks on one letter"):
        clean_display_name(raw)


def test_clean_display_name_accepts_two_marks_on_a_letter():
    assert clean_display_name("e\u0323\u0302") == "\u1ec7"  # Vietnamese ệ


def test_stacked_marks_limit_is_read_when_a_name_is_checked(settings):
    settings.CHAT_NAME_MAX_STACKED_MARKS = 1
    with pytest.raises(InvalidDisplayName, match="more than 1 marks on one letter"):
        clean_display_name("e\u0323\u0302")


@pytest.mark.parametrize("raw", ["alice, bob", "alice;bob", "alice/bob", "alice & bob", "a<b"])
def test_clean_display_name_refuses_separators_that_make_one_name_read_as_several(raw):
    with pytest.raises(InvalidDisplayName, match="only letters, digits, spaces and - _ . '"):
        clean_display_name(raw)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "lookalike",
    ["alice", "\u0430lice", "al\u0456ce", "alice.", "Alice"],
    ids=["same", "cyrillic-a", "ukrainian-i", "trailing-dot", "capital"],
)
def test_clean_guest_name_refuses_a_look_alike_of_a_username(lookalike):
    get_user_model().objects.create_user("alice")
    with pytest.raises(InvalidDisplayName, match='looks too much like the username "alice"'):
        clean_guest_name(lookalike)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["José", "Zoë", "李雷", "Ђорђе", "alicia"])
def test_clean_guest_name_accepts_names_unlike_any_username(name):
    get_user_model().objects.create_user("alice")
    get_user_model().objects.create_user("jose_r")
    assert clean_guest_name(name) == name


@pytest.mark.django_db
def test_clean_guest_name_looks_up_one_key_not_every_user(django_assert_num_queries):
    for number in range(20):
        get_user_model().objects.create_user(f"user{number}")
    with django_assert_num_queries(1):
        clean_guest_name("Zoë")


@pytest.mark.django_db
def test_a_renamed_user_is_looked_up_by_its_new_name():
    user = get_user_model().objects.create_user("alice")
    user.username = "bob"
    user.save()
    assert clean_guest_name("alice") == "alice"
    with pytest.raises(InvalidDisplayName, match='"bob"'):
        clean_guest_name("b\u043eb")


@pytest.mark.django_db
def test_saving_a_user_without_touching_its_username_writes_no_key(django_assert_num_queries):
    user = get_user_model().objects.create_user("alice")
    with django_assert_num_queries(1):
        user.save(update_fields=["last_login"])


@pytest.mark.django_db
def test_a_deleted_users_name_is_free_again():
    get_user_model().objects.create_user("alice").delete()
    assert clean_guest_name("alice") == "alice"


def test_invalid_display_name_is_a_value_error():
    assert issubclass(InvalidDisplayName, ValueError)


@pytest.mark.django_db
def test_author_for_a_logged_in_user_is_its_username_and_id():
    user = get_user_model().objects.create_user("alice", password="not-used-here-42")
    author = author_for(user, {SESSION_KEY: "Someone Else"})
    assert author == Author(name="alice", user_id=user.pk)
    assert not author.is_guest


def test_author_for_an_anonymous_visitor_is_the_guest_name_in_the_session():
    author = author_for(AnonymousUser(), {SESSION_KEY: "Zoë"})
    assert (author.name, author.is_guest) == ("Zoë", True)


def test_author_for_no_user_and_no_session_is_a_plain_guest():
    author = author_for(None, None)
    assert (author.name, author.is_guest) == (GUEST_DEFAULT_NAME, True)
    assert author_for(AnonymousUser(), {}).name == "Guest"


@pytest.mark.django_db
def test_guests_without_a_name_are_told_apart_by_a_tag_stable_for_their_session():
    first, second = SessionStore(), SessionStore()
    first.create()
    second.create()
    again = SessionStore(session_key=first.session_key)
    name = author_for(AnonymousUser(), first).name
    assert re.fullmatch(r"Guest [0-9a-f]{4}", name)
    assert author_for(AnonymousUser(), again).name == name
    assert author_for(AnonymousUser(), second).name != name  # two sessions: 1 in 65,536 meet


@pytest.mark.django_db
def test_a_guests_key_is_the_same_for_every_socket_of_its_session():
    session = SessionStore()
    session.create()
    again = SessionStore(session_key=session.session_key)
    assert author_for(AnonymousUser(), session).key == author_for(AnonymousUser(), again).key


@pytest.mark.django_db
def test_guests_of_two_sessions_have_different_keys():
    first, second = SessionStore(), SessionStore()
    first.create()
    second.create()
    assert author_for(None, first).guest_key != author_for(None, second).guest_key


@pytest.mark.django_db
def test_a_guests_key_does_not_reveal_its_session_key():
    session = SessionStore()
    session.create()
    key = author_for(None, session).guest_key
    assert len(key) == 32 and session.session_key[:8] not in key


def test_guests_without_a_session_never_share_a_key():
    assert author_for(None, {}).guest_key != author_for(None, {}).guest_key


@pytest.mark.django_db
def test_a_cookie_naming_no_stored_session_gets_no_key_from_it():
    forged = SessionStore(session_key="x" * 32)
    assert author_for(None, forged).guest_key != author_for(None, forged).guest_key


def test_presence_label_marks_a_guest():
    assert presence_label(Author(name="Zoë")) == "Zoë (guest)"


def test_presence_label_leaves_a_user_unmarked():
    assert presence_label(Author(name="alice", user_id=1)) == "alice"
