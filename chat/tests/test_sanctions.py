"""Mutes and bans in force (chat.sanctions): a cached lookup per message, forgotten on change."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from chat import sanctions, services
from chat.identity import Author
from chat.models import Sanction

ADDRESS = "192.0.2.7"


@pytest.fixture
def carol(transactional_db):
    user = User.objects.create_user("carol")
    services.store_message("garden", Author("carol", user_id=user.pk), "hello", None)
    return Author("carol", user_id=user.pk)


def _sanction(kind, **whom):
    return Sanction.objects.create(room_id="garden", kind=kind, label="someone", **whom)


def test_a_rooms_sanctions_cost_one_query_then_none(carol, django_assert_num_queries):
    _sanction(Sanction.Kind.MUTE, user_id=carol.user_id)
    with django_assert_num_queries(1):
        assert sanctions.in_force(carol, "garden", ADDRESS).kind == Sanction.Kind.MUTE
    with django_assert_num_queries(0):
        for _ in range(100):
            sanctions.in_force(carol, "garden", ADDRESS)


def test_a_change_is_seen_once_forgotten_or_after_the_cache_period(carol, monkeypatch):
    assert sanctions.in_force(carol, "garden", ADDRESS) is None
    _sanction(Sanction.Kind.BAN, user_id=carol.user_id)
    assert sanctions.in_force(carol, "garden", ADDRESS) is None  # cached
    sanctions.forget("garden")
    assert sanctions.in_force(carol, "garden", ADDRESS).kind == Sanction.Kind.BAN
    Sanction.objects.all().delete()
    monkeypatch.setattr(sanctions, "CACHE_SECONDS", 0.0)
    assert sanctions.in_force(carol, "garden", ADDRESS) is None


def test_a_ban_outranks_a_mute_and_an_ended_one_counts_for_nothing(carol):
    _sanction(Sanction.Kind.MUTE, user_id=carol.user_id)
    _sanction(Sanction.Kind.BAN, user_id=carol.user_id, until=timezone.now() - timedelta(1))
    assert sanctions.in_force(carol, "garden", ADDRESS).kind == Sanction.Kind.MUTE
    sanctions.forget("garden")
    _sanction(Sanction.Kind.BAN, user_id=carol.user_id)
    assert sanctions.in_force(carol, "garden", ADDRESS).kind == Sanction.Kind.BAN


def test_an_address_ban_holds_guests_and_no_account(carol):
    _sanction(Sanction.Kind.BAN, guest_key="a" * 32, network=ADDRESS)
    _sanction(Sanction.Kind.MUTE, guest_key="b" * 32, network="198.51.100.1")
    assert sanctions.in_force(Author("x", guest_key="c" * 32), "garden", ADDRESS).kind == "ban"
    assert sanctions.in_force(carol, "garden", ADDRESS) is None
    assert sanctions.in_force(Author("bot", is_bot=True), "garden", ADDRESS) is None
    # A mute holds the guest's session, never the address.
    assert sanctions.in_force(Author("y", guest_key="d" * 32), "garden", "198.51.100.1") is None
    assert sanctions.in_force(Author("z", guest_key="b" * 32), "garden", "203.0.113.1").kind == (
        "mute"
    )
