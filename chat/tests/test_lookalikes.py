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
    ["\u0430lice", "al\u0456ce", "alice.", "_alice", "Alice", "ALICE", "a1ice", "ａｌｉｃｅ"],
    ids=[
        "cyrillic-a",
        "ukrainian-i",
        "trailing-dot",
        "leading-underscore",
        "capital",
        "caps",
        "digit-one",
        "fullwidth",
    ],
)
def test_look_alikes_of_a_name_share_its_key(lookalike):
    assert name_key(lookalike) == name_key("alice")


@pytest.mark.parametrize("other", ["alicia", "al ice", "alicé", "bob", "Ђорђе"])
def test_names_that_look_different_have_different_keys(other):
    assert name_key(other) != name_key("alice")


def test_a_name_of_punctuation_only_keeps_it_in_its_key():
    assert name_key("...") == "..."
