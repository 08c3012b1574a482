"""Confusable skeletons (UTS #39) and the look-alike key that names are compared by."""

import pytest

from chat.lookalikes import name_key, skeleton


def test_skeleton_maps_a_cyrillic_letter_to_its_latin_prototype():
    assert skeleton("\u0430lice") == "alice"


def test_skeleton_maps_one_character_to_a_longer_prototype():
    assert skeleton("m") == "rn"


def test_skeleton_leaves_a_prototype_as_it_is():
    assert skeleton("alice") == "alice"


@pytest.mark.parametrize(
    "lookalike",
    [
        "\u0430lice",
        "al\u0456ce",
        "alice.",
        "_alice",
        "Alice",
        "ALICE",
        "a1ice",
        "ａｌｉｃｅ",
        "aIice",
        "AIICE",
        "a|ice",
    ],
    ids=[
        "cyrillic-a",
        "ukrainian-i",
        "trailing-dot",
        "leading-underscore",
        "capital",
        "caps",
        "digit-one",
        "fullwidth",
        "capital-i-for-l",
        "caps-with-capital-i-for-l",
        "bar-for-l",
    ],
)
def test_look_alikes_of_a_name_share_its_key(lookalike):
    assert name_key(lookalike) == name_key("alice")


@pytest.mark.parametrize("other", ["alicia", "al ice", "alicé", "bob", "Ђорђе"])
def test_names_that_look_different_have_different_keys(other):
    assert name_key(other) != name_key("alice")


def test_a_name_of_punctuation_only_keeps_it_in_its_key():
    assert name_key("...") == "..."


@pytest.mark.parametrize(
    ("lookalike", "name"),
    [
        ("Iobby", "lobby"),
        ("1obby", "lobby"),
        ("l0bby", "lobby"),
        ("LOBBY", "lobby"),
        ("Mary", "rnary"),
        ("\u0392OB", "bob"),  # Greek capital beta: its lower case is no b
    ],
)
def test_a_capital_that_looks_like_another_letter_shares_that_letters_key(lookalike, name):
    assert name_key(lookalike) == name_key(name)


@pytest.mark.parametrize("letter", "abcdefghijklmnopqrstuvwxyz")
def test_case_never_tells_two_latin_names_apart(letter):
    assert name_key(f"x{letter.upper()}x") == name_key(f"x{letter}x")
