"""mysite.nul_characters: a NUL anywhere a view reads text is a 400 before any view runs."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from chat import identity, memberships, services, tokens
from chat.models import Membership, Room

NUL = "\x00"


@pytest.fixture
def alice(transactional_db, redis_channel_layer):
    """alice, logged in, owns the lobby and a private room; bob is another user."""
    user = User.objects.create_user("alice")
    User.objects.create_user("bob")
    services.store_message("lobby", identity.author_for(user, None), "hi", None)
    key = memberships.create_private_room(identity.author_for(user, None), "Plans")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client, key


# What views read straight from request.POST, each with a NUL in one field.
FORMS = [
    ("/rooms/{key}/invite/", {"username": f"bo{NUL}b"}),
    ("/rooms/{key}/remove/", {"username": f"bo{NUL}b"}),
    ("/rooms/lobby/role/", {"username": f"bo{NUL}b", "role": "moderator"}),
    ("/rooms/new/", {"title": f"a{NUL}b"}),
    ("/rooms/lobby/ban/", {"username": "bob", "reason": f"x{NUL}"}),
    ("/rooms/lobby/report/", {"message": "1", "reason": f"x{NUL}"}),
    ("/accounts/tokens/", {"name": f"t{NUL}"}),
    ("/accounts/tokens/", {"revoke": f"t{NUL}"}),
    ("/api/rooms/lobby/read/", {"up_to": "1", f"a{NUL}s": "x"}),
]


@pytest.mark.parametrize(("path", "data"), FORMS)
def test_a_nul_in_any_form_field_is_refused_with_400_and_changes_nothing(alice, path, data):
    client, key = alice
    rooms_before = Room.objects.count()
    response = client.post(path.format(key=key), data)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "nul_character"
    assert Room.objects.count() == rooms_before
    assert not Membership.objects.filter(user__username="bob").exists()


@pytest.mark.parametrize(
    "path", [f"/chat/lobby/messages/?after=1{NUL}", f"/api/rooms/?room=lob{NUL}by", "/chat/a%00/"]
)
def test_a_nul_in_the_query_or_the_path_is_refused_with_400(alice, path):
    client, _ = alice
    response = client.get(path, headers={"accept": "text/html"})
    assert response.status_code == 400
    assert "NUL" in response.content.decode()


def test_text_without_nul_still_reaches_the_view(alice):
    client, key = alice
    response = client.post(f"/rooms/{key}/invite/", {"username": "bob"})
    assert response.status_code == 302
    assert Membership.objects.filter(user__username="bob", room_id=key).exists()


def test_a_multipart_body_checked_for_nul_is_still_readable_by_the_api(transactional_db):
    user = User.objects.create_user("alice")
    _, token = tokens.create_token(user, "a program")
    client = Client(headers={"Authorization": f"Bearer {token}"}, raise_request_exception=False)
    response = client.post("/api/v1/rooms/lobby/messages", {"message": "hi"})  # multipart
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
