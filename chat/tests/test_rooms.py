"""The room-name rule and the room-to-group mapping."""

import re

import pytest
from channels.layers import BaseChannelLayer
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import identity, rooms

LAYER = BaseChannelLayer()

# Thousands of random inputs per property, as a fuzzer would send.
THOUSANDS = 2000


def accepted(name: str) -> bool:
    try:
        rooms.normalize_room_name(name)
    except rooms.InvalidRoomName:
        return False
    return True


def assert_valid_group(name: str):
    assert LAYER.require_valid_group_name(name)


@pytest.mark.parametrize(
    "name", ["lobby", "Lobby", "café", "日本語", "रसोई", "a-b_c.d", "2026", "a" * 100, ".hidden"]
)
def test_valid_names_are_accepted(name):
    assert rooms.normalize_room_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "Enter a room name"),
        ("a" * 101, "at most 100"),
        ("two words", "not a space."),
        ("<script>", "'<'"),
        ('say"hi"', 'not a double quote (")'),
        ("semi;colon", "not a semicolon (;)"),
        ("slash/room", "not a slash (/)."),
        ("emoji😀", "'😀'"),
        ("tab\there", "not a tab."),
        ("nul\x00", "not a control character (U+0000)."),
        ("zero\u200bwidth", "not U+200B (ZERO WIDTH SPACE)."),
        ("..", "at least one letter"),
        (".", "at least one letter"),
        ("\u3164", "invisible"),  # Hangul filler: a letter (Lo) that draws nothing
        ("\u115f\u1160", "invisible"),
        ("lobby\ufe0f", "invisible"),  # a variation selector (Mn)
        ("lo\u034fbby", "invisible"),  # combining grapheme joiner (Mn)
        ("e\u0301\u0302\u0303", "stack more than 2 marks"),
        ("z" + "\u0336" * 40, "stack more than 2 marks"),  # a tower over the page
    ],
)
def test_invalid_names_are_refused_with_a_reason(name, reason):
    with pytest.raises(rooms.InvalidRoomName, match=re.escape(reason)):
        rooms.normalize_room_name(name)


@pytest.mark.parametrize(
    ("char", "words"),
    [
        (" ", "a space"),
        ("/", "a slash (/)"),
        ("\t", "a tab"),
        ("\n", "a line break"),
        ("\u00a0", "a non-breaking space"),
        ("\\", "a backslash (\\)"),
        ("?", "a question mark (?)"),
        ("#", "a hash sign (#)"),
        ("<", "'<'"),
        ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("\x7f", "a control character (U+007F)"),
    ],
)
def test_a_refused_character_is_named_in_words_people_read(char, words):
    assert rooms.describe(char) == words
    with pytest.raises(rooms.InvalidRoomName) as refusal:
        rooms.normalize_room_name(f"a{char}b")
    assert str(refusal.value).endswith(f", not {words}.")


def test_composed_and_decomposed_spellings_normalize_to_one_name():
    assert rooms.normalize_room_name("cafe\u0301") == rooms.normalize_room_name("caf\u00e9")
    assert rooms.group_name("cafe\u0301") == rooms.group_name("caf\u00e9")


def test_short_ascii_rooms_keep_readable_group_names():
    assert rooms.group_name("lobby") == "chat_lobby"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("café", "cafe"),
        ("Lobby", "lobby"),
        ("a" * 99 + "x", "a" * 99 + "y"),
        ("ü" * 99 + "1", "ü" * 99 + "2"),
        ("a" * 80, "a" * 81),
    ],
)
def test_different_rooms_never_share_a_group(first, second):
    assert rooms.group_name(first) != rooms.group_name(second)
    assert_valid_group(rooms.group_name(first))
    assert_valid_group(rooms.group_name(second))


def test_group_name_refuses_an_invalid_room():
    with pytest.raises(rooms.InvalidRoomName):
        rooms.group_name("no spaces")


def test_converter_turns_refusal_into_no_match():
    converter = rooms.RoomNameConverter()
    assert converter.to_python("cafe\u0301") == "caf\u00e9"
    with pytest.raises(ValueError):
        converter.to_python("bad name")


@settings(max_examples=THOUSANDS)
@given(st.text(max_size=150))
def test_any_string_is_accepted_or_refused_and_never_crashes(name):
    try:
        canonical = rooms.normalize_room_name(name)
    except rooms.InvalidRoomName as refusal:
        assert str(refusal)
    else:
        assert rooms.normalize_room_name(canonical) == canonical
        assert_valid_group(rooms.group_name(name))


@settings(max_examples=THOUSANDS)
@given(
    st.text(
        alphabet=st.characters(categories=["Ll", "Lo", "Mn", "Me", "Cf"], include_characters="-_."),
        max_size=30,
    )
)
def test_an_accepted_room_name_passes_the_rule_of_every_other_name(name):
    # One rule for names people see (identity.hidden_characters): what a guest name or a
    # username may not hide or overdraw, a room name may not either.
    if accepted(name):
        assert identity.hidden_characters(rooms.normalize_room_name(name)) is None


room_names = st.text(
    alphabet=st.characters(categories=["Lu", "Ll", "Lo", "Mn", "Nd"], include_characters="-_."),
    min_size=1,
    max_size=100,
).filter(accepted)


@settings(max_examples=THOUSANDS)
@given(room_names, room_names)
def test_accepted_rooms_map_to_valid_distinct_groups(first, second):
    first_group, second_group = rooms.group_name(first), rooms.group_name(second)
    assert_valid_group(first_group)
    same_room = rooms.normalize_room_name(first) == rooms.normalize_room_name(second)
    assert (first_group == second_group) == same_room


@pytest.mark.parametrize("address", ["@bo\x00b", "@bob\n", "@bo b", "@bob;", "@b\u200bob", "@"])
def test_a_direct_address_naming_no_possible_username_is_refused(address):
    with pytest.raises(rooms.InvalidRoomName):
        rooms.normalize_address(address)


@settings(max_examples=THOUSANDS)
@given(st.text(max_size=152))
def test_every_accepted_direct_address_names_a_possible_username(username):
    try:
        address = rooms.normalize_address("@" + username)
    except rooms.InvalidRoomName as refusal:
        assert str(refusal)
        return
    try:
        UnicodeUsernameValidator()(address[1:])
    except ValidationError:
        pytest.fail(f"{address!r} names no possible username")
