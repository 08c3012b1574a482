"""API tokens (chat.tokens): stored as a hash, found by prefix, made and revoked on a page
and in the admin."""

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client

from chat import tokens
from chat.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="x")


def test_a_token_is_stored_only_as_its_hash_and_public_prefix(alice):
    token, raw = tokens.create_token(alice, "ci")
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    secret = raw.rsplit("_", 1)[1]
    assert all(secret not in str(value) for value in row.values())
    assert row["digest"] == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(f"chat_{row['prefix']}_")


def test_only_the_exact_token_finds_its_user(alice):
    token, raw = tokens.create_token(alice, "ci")
    assert tokens.token_for(raw) == token
    assert tokens.token_for(raw).user == alice
    other_secret = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    _, other = tokens.create_token(alice, "other")
    for wrong in (other_secret, raw + "x", raw.upper(), "", "Bearer " + raw, other[:18] + raw[18:]):
        assert tokens.token_for(wrong) is None


def test_an_inactive_users_token_authenticates_nobody(alice):
    _, raw = tokens.create_token(alice, "ci")
    alice.is_active = False
    alice.save()
    assert tokens.token_for(raw) is None


def test_a_revoked_token_authenticates_nobody(alice):
    token, raw = tokens.create_token(alice, "ci")
    token.delete()
    assert tokens.token_for(raw) is None


def test_last_use_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    token, raw = tokens.create_token(alice, "ci")
    with django_assert_num_queries(2):  # the lookup, and the first use's write
        tokens.token_for(raw)
    with django_assert_num_queries(1):
        tokens.token_for(raw)
    ApiToken.objects.filter(pk=token.pk).update(last_used=token.created - timedelta(minutes=2))
    with django_assert_num_queries(2):
        tokens.token_for(raw)


def test_a_token_needs_a_name_and_a_user_has_at_most_twenty(alice):
    with pytest.raises(tokens.InvalidToken):
        tokens.create_token(alice, "")
    for number in range(tokens.MAX_TOKENS_PER_USER):
        tokens.create_token(alice, f"t{number}")
    with pytest.raises(tokens.InvalidToken, match="revoke one"):
        tokens.create_token(alice, "one more")


# --- The page ------------------------------------------------------------------------------


def test_the_tokens_page_needs_a_login():
    response = Client().get("/accounts/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_token_made_on_the_page_is_shown_once_then_listed_by_prefix(alice):
    client = Client()
    client.force_login(alice)
    made = client.post("/accounts/tokens/", {"name": "deploy bot"})
    raw = made.context["new_token"]
    assert raw in made.content.decode()
    assert "no-store" in made["Cache-Control"] or "max-age=0" in made["Cache-Control"]
    listed = client.get("/accounts/tokens/").content.decode()
    assert raw not in listed
    assert "deploy bot" in listed and raw[:17] in listed


def test_a_nameless_token_is_refused_with_its_reason(alice):
    client = Client()
    client.force_login(alice)
    response = client.post("/accounts/tokens/", {"name": "  "})
    assert response.status_code == 400 and "Name the token" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_user_revokes_their_own_tokens_and_nobody_elses(alice):
    bob = User.objects.create_user("bob", password="x")
    mine, _ = tokens.create_token(alice, "mine")
    theirs, _ = tokens.create_token(bob, "theirs")
    client = Client()
    client.force_login(alice)
    for prefix in (theirs.prefix, mine.prefix):
        assert client.post("/accounts/tokens/", {"revoke": prefix}).status_code == 302
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["theirs"]


# --- The admin -----------------------------------------------------------------------------


def test_an_admin_makes_a_token_for_a_user_shown_once_and_revokes_it(alice):
    admin = User.objects.create_superuser("root", password="x")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/chat/apitoken/add/", {"user": alice.pk, "name": "from admin"}, follow=True
    )
    (shown,) = [str(m) for m in response.context["messages"] if "shown once" in str(m)]
    raw = shown.rsplit(" ", 1)[1]
    token = tokens.token_for(raw)
    assert (token.user, token.name) == (alice, "from admin")
    listing = client.get("/admin/chat/apitoken/").content.decode()
    assert token.prefix in listing and raw not in listing
    client.post(f"/admin/chat/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert tokens.token_for(raw) is None
