"""Changing who is in a room (chat.memberships): making private rooms, inviting, removing,
leaving, roles; and their effect on open sockets, in one process and across two."""

import json
import re
import time
import urllib.parse
import urllib.request

import pytest
import websocket
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from chat import memberships, permissions, protocol, services, upkeep
from chat.identity import Author
from chat.models import Membership, Room
from chat.tests.conftest import logged_in_session_values, new_session
from chat.tests.test_revocation import SECONDS_TO_CLOSE, Browser, close_code_within

Role = Membership.Role


def _author(user) -> Author:
    return Author(user.username, user_id=user.pk)


@pytest.fixture
def owner_and_guest_list(transactional_db):
    alice, bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))
    return alice, bob, carol


def test_a_private_room_gets_an_unguessable_key_its_title_and_its_owner(owner_and_guest_list):
    alice, *_ = owner_and_guest_list
    first = memberships.create_private_room(_author(alice), "  Weekend   plans ")
    second = memberships.create_private_room(_author(alice), "Weekend plans")
    assert first != second and first.startswith("~") and len(first) == 23
    assert Room.objects.get(name=first).title == "Weekend plans"
    assert permissions.role_of(_author(alice), first) == Role.OWNER


@pytest.mark.parametrize("title", ["", "   ", "x" * 101])
def test_a_private_room_needs_a_title(owner_and_guest_list, title):
    alice, *_ = owner_and_guest_list
    with pytest.raises(memberships.MembershipRefused) as refused:
        memberships.create_private_room(_author(alice), title)
    assert refused.value.code == "invalid_title"


def test_a_guest_cannot_make_a_private_room(transactional_db):
    with pytest.raises(memberships.MembershipRefused) as refused:
        memberships.create_private_room(Author("guest"), "mine")
    assert refused.value.code == "not_logged_in"


def test_inviting_adds_a_member_once_and_only_by_the_owner(owner_and_guest_list):
    alice, bob, carol = owner_and_guest_list
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    assert [m["username"] for m in memberships.members(key)] == ["alice", "bob"]
    for author, username, code in (
        (_author(alice), "bob", "already_member"),
        (_author(alice), "nobody", "unknown_user"),
        (_author(bob), "carol", "not_allowed"),
    ):
        with pytest.raises(memberships.MembershipRefused) as refused:
            memberships.invite(author, key, username)
        assert refused.value.code == code


def test_the_owner_removes_a_member_but_nobody_removes_the_owner(owner_and_guest_list):
    alice, bob, _ = owner_and_guest_list
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    with pytest.raises(memberships.MembershipRefused):
        memberships.remove(_author(bob), key, "alice")
    with pytest.raises(memberships.MembershipRefused):
        memberships.remove(_author(alice), key, "alice")
    memberships.remove(_author(alice), key, "bob")
    assert not permissions.may_read(_author(bob), key)


def test_a_member_leaves_and_the_owner_cannot(owner_and_guest_list):
    alice, bob, _ = owner_and_guest_list
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    memberships.leave(_author(bob), key)
    assert not permissions.may_read(_author(bob), key)
    with pytest.raises(memberships.MembershipRefused):
        memberships.leave(_author(alice), key)


def test_the_owner_appoints_and_removes_moderators(owner_and_guest_list):
    alice, bob, carol = owner_and_guest_list
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    memberships.set_role(_author(alice), key, "bob", Role.MODERATOR)
    assert [m["role"] for m in memberships.members(key)] == ["owner", "moderator"]
    memberships.set_role(_author(alice), key, "bob", Role.MEMBER)
    assert permissions.role_of(_author(bob), key) == Role.MEMBER
    with pytest.raises(memberships.MembershipRefused):
        memberships.set_role(_author(bob), key, "alice", Role.MEMBER)
    with pytest.raises(memberships.MembershipRefused):
        memberships.set_role(_author(alice), key, "carol", Role.MODERATOR)  # not a member


def test_a_moderator_resigns_a_public_rooms_role_and_a_private_rooms_keeping_membership(
    owner_and_guest_list,
):
    alice, bob, carol = owner_and_guest_list
    services.store_message("garden", _author(alice), "first", None)
    memberships.set_role(_author(alice), "garden", "carol", Role.MODERATOR)
    memberships.resign(_author(carol), "garden")
    assert permissions.role_of(_author(carol), "garden") is None
    assert not permissions.may_moderate_room(_author(carol), "garden")
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    memberships.set_role(_author(alice), key, "bob", Role.MODERATOR)
    memberships.resign(_author(bob), key)
    assert permissions.role_of(_author(bob), key) == Role.MEMBER
    for author, room in ((alice, "garden"), (alice, key), (carol, "garden")):
        with pytest.raises(memberships.MembershipRefused):
            memberships.resign(_author(author), room)
    assert permissions.role_of(_author(alice), "garden") == Role.OWNER


def test_a_public_rooms_moderator_resigns_from_the_room_page(owner_and_guest_list):
    alice, _, carol = owner_and_guest_list
    services.store_message("garden", _author(alice), "first", None)
    memberships.set_role(_author(alice), "garden", "carol", Role.MODERATOR)
    moderator = Client()
    moderator.force_login(carol)
    page = moderator.get("/chat/garden/").content.decode()
    assert 'id="resign-moderator"' in page
    resign_form = re.search(r'<form id="resign-form"[^>]*>', page).group(0)
    assert 'data-confirm="Stop moderating this room?' in resign_form  # the page asks first
    assert moderator.post("/rooms/garden/resign/")["Location"] == "/chat/garden/"
    assert permissions.role_of(_author(carol), "garden") is None
    assert 'id="resign-moderator"' not in moderator.get("/chat/garden/").content.decode()


def test_the_room_pages_forms_invite_remove_and_leave(owner_and_guest_list):
    alice, bob, _ = owner_and_guest_list
    owner, member = Client(), Client()
    owner.force_login(alice)
    member.force_login(bob)
    created = owner.post("/rooms/new/", {"title": "Plans"})
    key = created["Location"].split("/")[2]
    assert created.status_code == 302 and created["Location"] == f"/chat/{key}/"
    assert owner.post(f"/rooms/{key}/invite/", {"username": "bob"}).status_code == 302
    page = member.get(f"/chat/{key}/").content.decode()
    assert 'id="leave-room"' in page and 'id="invite-form"' not in page
    assert 'id="invite-form"' in owner.get(f"/chat/{key}/").content.decode()
    assert member.post(f"/rooms/{key}/leave/")["Location"] == "/chat/"
    assert member.get(f"/chat/{key}/").status_code == 404


# --- Open sockets ----------------------------------------------------------------------------


async def _socket_of(join, user, room: str):
    session = await new_session(**logged_in_session_values(user))
    return await join(
        room, headers=[(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())]
    )


async def test_removing_a_member_closes_their_sockets_in_the_room_only(join, owner_and_guest_list):
    alice, bob, _ = owner_and_guest_list
    key = await database_sync_to_async(memberships.create_private_room)(_author(alice), "Plans")
    await database_sync_to_async(memberships.invite)(_author(alice), key, "bob")
    bobs = await _socket_of(join, bob, key)
    bobs_lobby = await _socket_of(join, bob, "lobby")
    alices = await _socket_of(join, alice, key)
    await database_sync_to_async(memberships.remove)(_author(alice), key, "bob")
    assert await close_code_within(bobs) == protocol.CLOSE_NOT_A_MEMBER
    assert await close_code_within(bobs_lobby, 0.3) is None
    assert await close_code_within(alices, 0.3) is None


# --- Across processes ------------------------------------------------------------------------


def _follow(browser: Browser, url: str, page: str, fields: dict, form_page: str) -> str:
    """Post a form as browser.post_form does; return the path it was redirected to."""
    browser.opener.open(url + form_page).read()
    form = {**fields, "csrfmiddlewaretoken": browser.cookie(settings.CSRF_COOKIE_NAME)}
    request = urllib.request.Request(
        url + page, urllib.parse.urlencode(form).encode(), headers={"Referer": url + page}
    )
    with browser.opener.open(request) as response:
        return urllib.parse.urlsplit(response.geturl()).path


def _signed_up(server, username: str) -> Browser:
    browser = Browser()
    password = "correct horse battery staple"
    fields = {"username": username, "password1": password, "password2": password}
    browser.post_form(server.url, "/accounts/signup/", fields)
    return browser


def _open(server, browser: Browser, room: str):
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookie(settings.SESSION_COOKIE_NAME)}"
    return websocket.create_connection(
        server.url.replace("http://", "ws://") + f"/ws/chat/{room}/",
        origin=server.url,
        cookie=cookie,
        timeout=10,
    )


def _close_code(socket) -> int:
    started = time.monotonic()
    while (frame := socket.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:
        pass
    assert time.monotonic() - started < SECONDS_TO_CLOSE
    return int.from_bytes(frame.data[:2], "big")


def test_an_invite_on_one_process_lets_the_member_in_on_another(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    owner, member = _signed_up(first, "inviter"), _signed_up(second, "invitee")
    room = _follow(owner, first.url, "/rooms/new/", {"title": "Plans"}, "/chat/").split("/")[2]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        _open(second, member, room)
    assert refused.value.status_code == 403
    owner.post_form(first.url, f"/rooms/{room}/invite/", {"username": "invitee"}, f"/chat/{room}/")
    socket = _open(second, member, room)
    socket.send(json.dumps({"message": "thanks for the invite"}))
    while json.loads(socket.recv()).get("message") != "thanks for the invite":
        pass
    socket.close()


@pytest.mark.parametrize("how", ["removed", "left"])
def test_removing_a_member_on_one_process_closes_their_socket_on_another(start_chat_server, how):
    first, second = start_chat_server(), start_chat_server()
    owner, member = _signed_up(first, f"owner-{how}"), _signed_up(first, f"member-{how}")
    room = _follow(owner, first.url, "/rooms/new/", {"title": "Plans"}, "/chat/").split("/")[2]
    invite = {"username": f"member-{how}"}
    owner.post_form(first.url, f"/rooms/{room}/invite/", invite, f"/chat/{room}/")
    socket = _open(second, member, room)
    socket.settimeout(5)
    if how == "removed":
        owner.post_form(first.url, f"/rooms/{room}/remove/", invite, f"/chat/{room}/")
    else:
        member.post_form(first.url, f"/rooms/{room}/leave/", {}, f"/chat/{room}/")
    assert _close_code(socket) == protocol.CLOSE_NOT_A_MEMBER
    socket.shutdown()


def test_a_public_rooms_owner_appoints_moderators_from_its_page(owner_and_guest_list):
    alice, bob, carol = owner_and_guest_list
    services.store_message("garden", _author(alice), "my room", None)
    owner, other = Client(), Client()
    owner.force_login(alice)
    other.force_login(carol)
    assert 'id="appoint-form"' in owner.get("/chat/garden/").content.decode()
    assert 'id="room-members"' not in other.get("/chat/garden/").content.decode()
    owner.post("/rooms/garden/role/", {"username": "bob", "role": "moderator"})
    assert permissions.role_of(_author(bob), "garden") == Role.MODERATOR
    other.post("/rooms/garden/role/", {"username": "bob", "role": "member"})  # not the owner
    assert permissions.role_of(_author(bob), "garden") == Role.MODERATOR
    owner.post("/rooms/garden/role/", {"username": "bob", "role": "owner"})  # no such choice
    assert permissions.role_of(_author(bob), "garden") == Role.MODERATOR
    owner.post("/rooms/garden/role/", {"username": "bob", "role": "member"})
    assert permissions.role_of(_author(bob), "garden") is None


async def test_a_removal_whose_event_was_lost_closes_the_socket_within_an_upkeep_round(
    join, owner_and_guest_list
):
    alice, bob, _ = owner_and_guest_list
    key = await database_sync_to_async(memberships.create_private_room)(_author(alice), "Plans")
    await database_sync_to_async(memberships.invite)(_author(alice), key, "bob")
    bobs = await _socket_of(join, bob, key)
    alices = await _socket_of(join, alice, key)
    bobs_lobby = await _socket_of(join, bob, "lobby")
    # Removed behind the sockets' back: no event reaches them (as when Redis lost it).
    await database_sync_to_async(Membership.objects.filter(room_id=key, user=bob).delete)()
    await upkeep.run_round()
    assert await close_code_within(bobs) == protocol.CLOSE_NOT_A_MEMBER
    assert await close_code_within(alices, 0.3) is None
    assert await close_code_within(bobs_lobby, 0.3) is None
