"""Data migrations: what they leave in the database."""

import importlib

from django.apps import apps

from chat.lookalikes import name_key
from chat.models import Room, UsernameKey

rooms_keyed = importlib.import_module("chat.migrations.0005_names_room_keys")
lookalikes_rekeyed = importlib.import_module("chat.migrations.0008_trust_lookalike_keys")


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
        "kitchen": name_key("kitchen"),
    }


def test_rekeying_gives_a_capital_i_lookalike_no_key_and_keeps_private_keys(db):
    Room.objects.create(name="lobby", key="lobby", last_seq=9)
    Room.objects.create(name="Iobby", key="iobby", last_seq=2)  # its key before I was l
    Room.objects.create(name="aIice", key="aiice", last_seq=1)
    private = Room.objects.create(name="~" + "a" * 22, key="~" + "a" * 22, last_seq=1)

    lookalikes_rekeyed.rekey_public_rooms(apps, None)

    keys = dict(Room.objects.values_list("name", "key"))
    assert keys == {"lobby": "lobby", "Iobby": None, "aIice": "allce", private.name: private.name}


def test_rekeying_gives_a_username_the_key_of_the_name_it_looks_like(django_user_model, db):
    alice = django_user_model.objects.create_user("alice")
    spoof = django_user_model.objects.create_user("aIice")
    UsernameKey.objects.filter(user=spoof).update(key="aiice")  # as keyed before

    lookalikes_rekeyed.rekey_usernames(apps, None)

    keys = dict(UsernameKey.objects.values_list("user_id", "key"))
    assert keys[spoof.pk] == keys[alice.pk] == name_key("alice")
