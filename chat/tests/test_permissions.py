"""Who may do what in a room (chat.permissions), and every way in asking it: the room page,
the messages endpoint, read positions, the room list, the index, the socket and the admin."""

import json
import re

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from chat import identity, memberships, permissions, posting, rooms, services, tokens
from chat.identity import Author
from chat.models import Membership, Message
from chat.tests.conftest import communicator, logged_in_session_values, new_session

Role = Membership.Role
GUEST = Author("someone")


def _author(user) -> Author:
    return identity.author_for(user, None)


@pytest.fixture
def people(transactional_db):
    """alice owns a private room with bob in it; carol is a stranger to it."""
    alice, bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    return alice, bob, carol, key


# --- The rules -------------------------------------------------------------------------


def test_anyone_guests_too_may_read_and_post_in_a_public_room(people):
    alice, *_ = people
    for author in (GUEST, _author(alice)):
        assert permissions.may_read(author, "lobby") and permissions.may_post(author, "lobby")
        assert permissions.room_for(author, "lobby") == "lobby"


def test_a_private_room_is_its_members_only(people):
    alice, bob, carol, key = people
    assert permissions.may_read(_author(alice), key) and permissions.may_read(_author(bob), key)
    assert permissions.may_post(_author(bob), key)
    assert not permissions.may_read(_author(carol), key)
    assert not permissions.may_post(_author(carol), key)
    assert not permissions.may_read(GUEST, key)


def test_a_stranger_gets_the_same_answer_for_a_private_room_as_for_a_missing_one(people):
    _, _, carol, key = people
    missing = rooms.new_private_key()
    assert permissions.room_for(_author(carol), key) is None
    assert permissions.room_for(_author(carol), missing) is None
    assert permissions.room_for(GUEST, key) is None


def test_at_username_is_one_room_for_both_users_and_theirs_only(people):
    alice, bob, carol, _ = people
    alices = permissions.room_for(_author(alice), "@bob")
    assert (
        alices == permissions.room_for(_author(bob), "@alice") == rooms.direct_key(bob.pk, alice.pk)
    )
    assert permissions.may_read(_author(bob), alices)
    assert not permissions.may_read(_author(carol), alices)
    assert permissions.room_for(_author(alice), "@alice") is None  # not with oneself
    assert permissions.room_for(_author(alice), "@nobody") is None
    assert permissions.room_for(GUEST, "@bob") is None
    assert permissions.must_log_in(GUEST, "@bob") and not permissions.must_log_in(GUEST, "lobby")


def test_an_inactive_user_has_no_direct_messages_address(people):
    alice, bob, _, _ = people
    bob.is_active = False
    bob.save()
    assert permissions.room_for(_author(alice), "@bob") is None


def test_only_the_owner_invites_removes_and_appoints(people):
    alice, bob, carol, key = people
    assert permissions.may_invite(_author(alice), key)
    assert permissions.may_appoint_moderators(_author(alice), key)
    assert permissions.may_remove_member(_author(alice), key, Role.MEMBER)
    assert not permissions.may_remove_member(_author(alice), key, Role.OWNER)
    for other in (bob, carol):
        assert not permissions.may_invite(_author(other), key)
        assert not permissions.may_appoint_moderators(_author(other), key)
        assert not permissions.may_remove_member(_author(other), key, Role.MEMBER)
    memberships.set_role(_author(alice), key, "bob", Role.MODERATOR)
    assert permissions.role_of(_author(bob), key) == Role.MODERATOR
    assert not permissions.may_invite(_author(bob), key)  # moderators do not invite


def test_members_and_moderators_may_leave_and_the_owner_may_not(people):
    alice, bob, carol, key = people
    assert permissions.may_leave(_author(bob), key)
    assert not permissions.may_leave(_author(alice), key)
    assert not permissions.may_leave(_author(carol), key)
    direct = rooms.direct_key(alice.pk, bob.pk)
    assert not permissions.may_leave(_author(alice), direct)
    assert not permissions.may_appoint_moderators(_author(alice), direct)


def test_a_moderator_may_resign_in_a_public_or_private_room_and_the_owner_may_not(people):
    alice, bob, carol, key = people
    services.store_message("garden", _author(alice), "first", None)
    memberships.set_role(_author(alice), "garden", "carol", Role.MODERATOR)
    memberships.set_role(_author(alice), key, "bob", Role.MODERATOR)
    assert permissions.may_resign(_author(carol), "garden")
    assert permissions.may_resign(_author(bob), key)
    assert not permissions.may_resign(_author(alice), "garden")
    assert not permissions.may_resign(_author(alice), key)
    assert not permissions.may_resign(_author(bob), "garden")  # a stranger to its roles
    assert not permissions.may_resign(_author(alice), rooms.direct_key(alice.pk, bob.pk))


def test_a_logged_in_users_first_message_makes_them_the_public_rooms_owner(people):
    alice, bob, _, _ = people
    services.store_message("garden", _author(alice), "first", None)
    services.store_message("garden", _author(bob), "second", None)
    services.store_message("shed", GUEST, "a guest's room", None)
    assert permissions.role_of(_author(alice), "garden") == Role.OWNER
    assert permissions.role_of(_author(bob), "garden") is None
    assert not Membership.objects.filter(room_id="shed").exists()  # ownerless, as ever
    assert permissions.may_appoint_moderators(_author(alice), "garden")
    memberships.set_role(_author(alice), "garden", "bob", Role.MODERATOR)
    assert permissions.role_of(_author(bob), "garden") == Role.MODERATOR
    assert permissions.may_read(GUEST, "garden")  # still public


def test_a_direct_conversations_first_message_makes_both_users_members(people):
    alice, bob, _, _ = people
    key = rooms.direct_key(alice.pk, bob.pk)
    services.store_message(key, _author(alice), "hi bob", None)
    assert permissions.role_of(_author(bob), key) == Role.MEMBER


def test_listed_rooms_keeps_what_the_reader_may_see(people):
    alice, bob, carol, key = people
    direct = rooms.direct_key(alice.pk, bob.pk)
    every = ["lobby", key, direct]
    assert permissions.listed_rooms(_author(alice), every) == every
    assert permissions.listed_rooms(_author(carol), every) == ["lobby"]
    assert permissions.listed_rooms(GUEST, every) == ["lobby"]


def test_private_and_direct_group_names_are_valid_channel_layer_names(people):
    *_, key = people
    valid = re.compile(r"[a-zA-Z0-9_.-]{1,99}")
    direct = rooms.direct_key(2**63 - 2, 2**63 - 1)
    for room_key in (key, direct):
        assert valid.fullmatch(rooms.group_name(room_key)), room_key
    assert rooms.group_name(key) != rooms.group_name(rooms.new_private_key())


# --- Every way in: a stranger meets exactly what a missing room gives -----------------------


def _client(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _answers(client: Client, address: str) -> list[tuple[int, bytes]]:
    """What each HTTP way into a room answers: status and body, byte for byte."""
    answers = [
        client.get(f"/chat/{address}/"),
        client.get(f"/chat/{address}/messages/"),
        client.post(f"/api/rooms/{address}/read/", {"up_to": "1"}),
        client.post(f"/rooms/{address}/invite/", {"username": "carol"}),
        client.post(f"/rooms/{address}/leave/"),
    ]
    return [(response.status_code, response.content) for response in answers]


def test_every_http_way_in_answers_a_stranger_as_for_a_missing_room(people):
    alice, _, carol, key = people
    services.store_message(key, _author(alice), "secret plans", None)
    missing = rooms.new_private_key()
    stranger = _client(carol)
    assert _answers(stranger, key) == _answers(stranger, missing)
    assert [status for status, _ in _answers(stranger, key)] == [404] * 5
    guest = _client()
    assert _answers(guest, key)[:2] == _answers(guest, missing)[:2]
    assert all(b"secret plans" not in body for _, body in _answers(stranger, key))
    page = _answers(stranger, key)[0][1].decode()
    assert "Not found" in page and "tilde" not in page  # a valid address, not a bad name


def test_members_read_a_private_room_over_http(people):
    alice, bob, _, key = people
    services.store_message(key, _author(alice), "secret plans", None)
    member = _client(bob)
    page = member.get(f"/chat/{key}/")
    assert page.status_code == 200 and b"Plans" in page.content
    messages = member.get(f"/chat/{key}/messages/").json()
    assert [m["message"] for m in messages["messages"]] == ["secret plans"]
    assert member.post(f"/api/rooms/{key}/read/", {"up_to": "1"}).json()["read_up_to"] == 1


def test_a_guest_opening_direct_messages_is_sent_to_log_in(people):
    response = _client().get("/chat/@bob/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/chat/%40bob/"


def test_direct_messages_are_one_room_over_http_for_both_users(people):
    alice, bob, carol, _ = people
    services.store_message(rooms.direct_key(alice.pk, bob.pk), _author(alice), "hi bob", None)
    for reader, address in ((alice, "@bob"), (bob, "@alice")):
        listed = _client(reader).get(f"/chat/{address}/messages/").json()["messages"]
        assert [m["message"] for m in listed] == ["hi bob"]
    assert _client(carol).get("/chat/@alice/messages/").json()["messages"] == []


def test_the_room_list_and_the_index_show_private_rooms_to_their_members_only(
    people, redis_channel_layer
):
    alice, bob, carol, key = people
    services.store_message(key, _author(alice), "secret plans", None)
    services.store_message("lobby", GUEST, "hello", None)
    services.store_message(rooms.direct_key(alice.pk, bob.pk), _author(alice), "hi bob", None)

    def listed(user, *named):
        response = _client(user).get("/api/rooms/", {"room": list(named)})
        return {room["name"]: room["title"] for room in response.json()["rooms"]}

    assert listed(bob) == {key: "Plans", "lobby": "lobby", "@alice": "@alice"}
    assert listed(alice, "@bob") == {key: "Plans", "lobby": "lobby", "@bob": "@bob"}
    assert listed(carol, key) == listed(carol, rooms.new_private_key()) == {"lobby": "lobby"}
    assert listed(None, key) == {"lobby": "lobby"}
    index = _client(carol).get("/chat/").content
    assert b"lobby" in index and key.encode() not in index and b"Plans" not in index
    assert b"Plans" in _client(bob).get("/chat/").content


def test_the_sidebar_list_changes_when_a_membership_does(people, redis_channel_layer):
    alice, _, carol, key = people
    sidebar = _client(carol)
    first = sidebar.get("/api/rooms/", {"online": "0"})
    memberships.invite(_author(alice), key, "carol")
    again = sidebar.get("/api/rooms/", {"online": "0"}, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 200
    assert key in [room["name"] for room in again.json()["rooms"]]


def test_the_api_answers_a_strangers_token_as_for_a_missing_room(people, redis_channel_layer):
    alice, bob, carol, key = people
    services.store_message(key, _author(alice), "secret plans", None)
    missing = rooms.new_private_key()
    raw = {user.pk: tokens.create_token(user, "permissions")[1] for user in (alice, bob, carol)}

    def answers(user, address):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {raw[user.pk]}"}
        client = Client()
        read = client.get(f"/api/v1/rooms/{address}/messages", **headers)
        body = json.dumps({"message": "let me in"})
        post = client.post(
            f"/api/v1/rooms/{address}/messages", body, content_type="application/json", **headers
        )
        return [(response.status_code, response.content) for response in (read, post)]

    assert answers(carol, key) == answers(carol, missing)
    assert [status for status, _ in answers(carol, key)] == [404, 404]
    assert answers(alice, "@carol")[0][0] == 200
    assert all(b"secret plans" not in body for _, body in answers(carol, key))
    assert [m["message"] for m in json.loads(answers(bob, key)[0][1])["messages"]] == [
        "secret plans"
    ]
    assert not Message.objects.filter(text="let me in", room_id=missing).exists()


@pytest.mark.parametrize("path", ["/admin/chat/room/", "/admin/chat/message/"])
def test_the_admin_shows_no_room_or_message_to_anyone_but_staff(people, path):
    alice, bob, carol, key = people
    services.store_message(key, _author(alice), "secret plans", None)
    for user in (None, bob, carol):
        response = _client(user).get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    carol.is_staff = True  # staff, but granted no permission on the chat's models
    carol.save()
    assert _client(carol).get(path).status_code == 403


def test_the_admin_is_no_way_into_a_private_room_for_a_member(people):
    _, bob, _, key = people
    response = _client(bob).get(f"/admin/chat/room/{key}/change/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- The socket ----------------------------------------------------------------------------


async def _handshake(room: str, user=None) -> tuple[bool, int | None]:
    headers = []
    if user is not None:
        key = await new_session(**logged_in_session_values(user))
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode()))
    socket = communicator(room, headers=headers)
    connected, code = await socket.connect()
    await socket.disconnect()
    return connected, code


async def test_a_strangers_socket_is_refused_as_for_a_missing_room(people, redis_channel_layer):
    alice, bob, carol, key = people
    missing = rooms.new_private_key()
    refused = await _handshake(missing, carol)
    assert refused[0] is False
    assert await _handshake(key, carol) == refused
    assert await _handshake(key) == await _handshake(missing)  # a guest
    assert await _handshake(f"@{alice.username}") == refused
    assert (await _handshake(key, bob))[0] is True
    assert (await _handshake("@bob", alice))[0] is True


async def test_a_member_who_is_removed_is_refused_when_posting(join, people):
    alice, bob, _, key = people
    session = await new_session(**logged_in_session_values(bob))
    cookie = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())
    socket = await join(key, headers=[cookie])
    # Removed without the closing event (as when Redis lost it): the next post is refused.
    await database_sync_to_async(Membership.objects.filter(room_id=key, user=bob).delete)()
    await socket.send_json_to({"message": "still here?"})
    while (output := await socket.receive_output(timeout=2))["type"] != "websocket.close":
        pass
    assert output["code"] == 4403
    assert await database_sync_to_async(services.messages_after)(key, 0) == []


def test_a_direct_conversation_with_a_deleted_user_is_no_longer_listed(people, redis_channel_layer):
    alice, bob, _, _ = people
    services.store_message(rooms.direct_key(alice.pk, bob.pk), _author(alice), "hi bob", None)
    bob.delete()
    listed = _client(alice).get("/api/rooms/").json()["rooms"]
    assert not [room for room in listed if room["name"].startswith("@")]


def test_direct_messages_have_unread_counts_in_the_sidebar_like_any_room(
    people, redis_channel_layer
):
    alice, bob, _, _ = people
    key = rooms.direct_key(alice.pk, bob.pk)
    for text in ("hi bob", "are you there?"):
        services.store_message(key, _author(alice), text, None)
    reader = _client(bob)

    def dm():
        listed = reader.get("/api/rooms/", {"online": "0"}).json()["rooms"]
        return next(room for room in listed if room["name"] == "@alice")

    assert (dm()["last_id"], dm()["read_up_to"]) == (2, None)
    assert reader.post("/api/rooms/@alice/read/", {"up_to": "1"}).json() == {
        "room": "@alice",
        "read_up_to": 1,
    }
    assert (dm()["last_id"], dm()["read_up_to"]) == (2, 1)


def test_a_members_rooms_with_messages_are_listed_before_empty_ones(
    people, redis_channel_layer, settings
):
    alice, bob, _, key = people
    settings.CHAT_ROOM_LIST_SIZE = 3
    for n in range(3):
        memberships.create_private_room(_author(bob), f"empty {n}")
    services.store_message(key, _author(alice), "the busy one", None)
    listed = _client(bob).get("/api/rooms/", {"online": "0"}).json()["rooms"]
    assert key in [room["name"] for room in listed]


# --- Moderation (chat.moderation) -----------------------------------------------------


@pytest.fixture
def public_room_people(transactional_db):
    """alice owns the public room "garden", bob and dave moderate it, carol and erin are
    members of the public, sam is site staff."""
    alice, bob, carol, dave, erin = (
        User.objects.create_user(name) for name in ("alice", "bob", "carol", "dave", "erin")
    )
    sam = User.objects.create_user("sam", is_staff=True)
    services.store_message("garden", _author(alice), "my room", None)
    for moderator in ("bob", "dave"):
        memberships.set_role(_author(alice), "garden", moderator, Role.MODERATOR)
    return {user.username: _author(user) for user in (alice, bob, carol, dave, erin, sam)}


def test_the_owner_moderators_and_staff_moderate_people_and_guests(public_room_people):
    people = public_room_people
    for moderator in ("alice", "bob", "sam"):
        assert permissions.may_moderate_room(people[moderator], "garden")
        assert permissions.may_moderate(people[moderator], "garden", people["carol"])
        assert permissions.may_moderate(people[moderator], "garden", GUEST)
    for nobody in (people["carol"], GUEST):
        assert not permissions.may_moderate_room(nobody, "garden")
        assert not permissions.may_moderate(nobody, "garden", people["erin"])


def test_nobody_moderates_the_owner_or_staff_and_moderators_not_each_other(public_room_people):
    people = public_room_people
    for moderator in ("bob", "sam", "alice"):
        assert not permissions.may_moderate(people[moderator], "garden", people["alice"])
        assert not permissions.may_moderate(people[moderator], "garden", people["sam"])
        assert not permissions.may_moderate(people[moderator], "garden", people[moderator])
    assert not permissions.may_moderate(people["bob"], "garden", people["dave"])
    assert permissions.may_moderate(people["alice"], "garden", people["dave"])
    assert permissions.may_moderate(people["sam"], "garden", people["dave"])
    assert not permissions.may_moderate(people["alice"], "garden", Author("bot", is_bot=True))


def test_staff_moderate_every_room_but_direct_conversations(public_room_people):
    people = public_room_people
    assert permissions.may_moderate(people["sam"], "lobby", people["carol"])
    direct = rooms.direct_key(people["carol"].user_id, people["erin"].user_id)
    assert not permissions.may_moderate(people["sam"], direct, people["carol"])
    assert not permissions.may_moderate(people["carol"], direct, people["erin"])


def test_staff_status_comes_with_the_author_and_costs_no_query(
    public_room_people, django_assert_num_queries
):
    people = public_room_people
    assert people["sam"].is_staff and not people["carol"].is_staff
    with django_assert_num_queries(1):  # dave's role: a moderator, whom staff moderate
        assert permissions.may_delete_others(people["sam"], "garden")
        assert permissions.may_moderate_room(people["sam"], "garden")
        assert permissions.may_moderate(people["sam"], "garden", people["dave"])


# --- A direct conversation with a deactivated user -------------------------------------


def _deactivate(user):
    user.is_active = False
    user.save()


def test_a_conversation_with_a_deactivated_user_stays_readable_with_a_notice(
    people, redis_channel_layer
):
    alice, bob, _, _ = people
    services.store_message(rooms.direct_key(alice.pk, bob.pk), _author(alice), "hi bob", None)
    _deactivate(bob)
    page = _client(alice).get("/chat/@bob/")
    assert page.status_code == 200
    notice = re.search(r'<p id="room-read-only"[^>]*>([^<]*)</p>', page.content.decode())
    assert notice[1] == "bob&#x27;s account is deactivated: this conversation is read-only."
    listed = _client(alice).get("/chat/@bob/messages/").json()["messages"]
    assert [message["message"] for message in listed] == ["hi bob"]
    assert not permissions.may_post(_author(alice), rooms.direct_key(alice.pk, bob.pk))


def test_a_post_to_a_deactivated_user_through_the_api_is_refused_with_its_reason(people):
    alice, bob, _, _ = people
    services.store_message(rooms.direct_key(alice.pk, bob.pk), _author(alice), "hi bob", None)
    _deactivate(bob)
    with pytest.raises(posting.PostRefused) as refused:
        posting.post_message("@bob", "are you there?", as_user=alice)
    assert refused.value.code == "recipient_deactivated"
    assert services.last_seq(rooms.direct_key(alice.pk, bob.pk)) == 1


async def test_a_socket_posting_to_a_deactivated_user_is_refused_and_stays_open(join, people):
    alice, bob, _, _ = people
    key = rooms.direct_key(alice.pk, bob.pk)
    await database_sync_to_async(services.store_message)(key, _author(alice), "hi bob", None)
    session = await new_session(**logged_in_session_values(alice))
    socket = await join(
        "@bob", headers=[(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())]
    )
    await database_sync_to_async(_deactivate)(bob)
    await socket.send_json_to({"message": "are you there?", "client_id": "c1"})
    error = (await socket.receive_json_from(timeout=2))["error"]
    assert (error["code"], error["client_id"]) == ("recipient_deactivated", "c1")
    await socket.send_json_to({"ping": True})
    assert await socket.receive_json_from(timeout=2) == {"pong": True}
    assert await database_sync_to_async(services.last_seq)(key) == 1


# --- Editing and deleting messages -----------------------------------------------------


@pytest.fixture
def lobby(transactional_db):
    """alice owns the lobby (its first message), dave moderates it; bob and a guest post."""
    alice, bob, dave = (User.objects.create_user(name) for name in ("alice", "bob", "dave"))
    first, _ = services.store_message("lobby", _author(alice), "first", None)
    Membership.objects.create(room_id="lobby", user=dave, role=Role.MODERATOR)
    by_bob, _ = services.store_message("lobby", _author(bob), "bob's", None)
    guest = Author("Zoë", guest_key="session-1")
    by_guest, _ = services.store_message("lobby", guest, "the guest's", None)
    return alice, bob, dave, guest, first, by_bob, by_guest


def test_nobody_edits_another_persons_message(lobby):
    alice, bob, dave, guest, first, by_bob, by_guest = lobby
    for author in (_author(alice), _author(dave), guest, GUEST):
        assert not permissions.may_edit(author, by_bob)
    assert permissions.may_edit(_author(bob), by_bob)


def test_a_member_deletes_only_their_own_messages(lobby):
    alice, bob, dave, guest, first, by_bob, by_guest = lobby
    assert permissions.may_delete(_author(bob), by_bob)
    assert not permissions.may_delete(_author(bob), first)
    assert not permissions.may_delete(_author(bob), by_guest)


def test_a_moderator_or_owner_deletes_anyones_message_in_their_room_only(lobby):
    alice, bob, dave, guest, first, by_bob, by_guest = lobby
    for keeper in (_author(alice), _author(dave)):
        assert permissions.may_delete(keeper, by_bob) and permissions.may_delete(keeper, by_guest)
    elsewhere, _ = services.store_message("kitchen", _author(bob), "hi", None)
    assert not permissions.may_delete(_author(dave), elsewhere)


def test_a_moderator_deletes_no_message_of_the_owner_staff_or_another_moderator(lobby):
    alice, bob, dave, guest, first, by_bob, by_guest = lobby
    erin = User.objects.create_user("erin")
    Membership.objects.create(room_id="lobby", user=erin, role=Role.MODERATOR)
    by_erin, _ = services.store_message("lobby", _author(erin), "erin's", None)
    sam = User.objects.create_user("sam", is_staff=True)
    by_sam, _ = services.store_message("lobby", _author(sam), "sam's", None)
    for above in (first, by_erin, by_sam):
        assert not permissions.may_delete(_author(dave), above)
    assert permissions.may_delete(_author(alice), by_erin)
    assert not permissions.may_delete(_author(alice), by_sam)
    with pytest.raises(services.ChangeRefused) as refused:
        services.delete_message("lobby", first.seq, _author(dave))
    assert refused.value.code == "not_allowed"
    assert Message.objects.get(pk=first.pk).text == "first"


def test_site_staff_delete_anyones_message(lobby):
    *_, by_bob, _by_guest = lobby
    staff = User.objects.create_user("erin", is_staff=True)
    assert permissions.may_delete(_author(staff), by_bob)
    assert not permissions.may_edit(_author(staff), by_bob)


def test_a_guest_edits_and_deletes_their_own_only_from_the_session_that_sent_it(lobby):
    *_, guest, _first, _by_bob, by_guest = lobby
    assert permissions.may_edit(guest, by_guest) and permissions.may_delete(guest, by_guest)
    same_name_other_session = Author("Zoë", guest_key="session-2")
    assert not permissions.may_edit(same_name_other_session, by_guest)
    assert not permissions.may_delete(same_name_other_session, by_guest)


def test_a_deleted_message_is_neither_edited_nor_deleted_again(lobby):
    alice, bob, *_, by_bob, _by_guest = lobby
    deleted = services.delete_message("lobby", by_bob.seq, _author(bob))
    assert not permissions.may_edit(_author(bob), deleted)
    assert not permissions.may_delete(_author(alice), deleted)
