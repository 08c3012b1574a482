"""Data migrations: what they leave in the database."""

import importlib

from django.apps import apps

from chat.lookalikes import name_key
from chat.models import Room

rooms_keyed = importlib.import_module("chat.migrations.0005_names_room_keys")


def test_each_lookalike_key_goes_to_the_existing_room_with_the_most_messages(db):
    Room.objects.create(name="lobby", last_seq=2)
    Room.objects.create(name="Lobby", last_seq=9)
    Room.objects.create(name="l\u043ebby", last_seq=1)
    Room.objects.create(name="\u3164", last_seq=5)  # blank: the room-name rule refuses it
    Room.objects.create(name="kitchen", last_seq=1)

    rooms_keyed.key_existing_rooms(apps, None)

    keys = dict(Room.objects.values_list("name", "key"))
    assert keys == {
        "Lobby": name_key("lobby"),
        "lobby": None,
        "l\u043ebby": None,
        "\u3164": None,
        "kitchen": "kitchen",
    }
