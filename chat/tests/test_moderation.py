"""Moderators acting in a room (chat.moderation): mute, kick and ban reaching sockets, the
messages endpoint and posting, in one process and across two; the log; reports."""

import contextlib
import json
import time

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from chat import memberships, moderation, permissions, posting, protocol, sanctions, services
from chat.identity import Author
from chat.models import Membership, Message, ModerationAction, Report, Sanction
from chat.tests.conftest import communicator, logged_in_session_values, new_session, next_frame
from chat.tests.test_memberships import _close_code, _open, _signed_up
from chat.tests.test_revocation import SECONDS_TO_CLOSE, Browser, close_code_within

pytestmark = pytest.mark.usefixtures("limits_count_from_zero")

Role = Membership.Role
# Two addresses of one IPv6 host's /64 (chat.limits counts them as one), and another's.
HOST_ADDRESS, SAME_HOST_ADDRESS, OTHER_ADDRESS = (
    "2001:db8:1:2::5",
    "2001:db8:1:2::9",
    "2001:db8:9::1",
)


def _author(user) -> Author:
    return Author(user.username, user_id=user.pk)


@pytest.fixture
def garden(transactional_db):
    """alice owns the public room "garden"; carol is one of its public."""
    alice, carol = (User.objects.create_user(name) for name in ("alice", "carol"))
    services.store_message("garden", _author(alice), "my room", None)
    return alice, carol


@contextlib.asynccontextmanager
async def _sockets():
    """Open sockets in a room as a session, from an address; all disconnected afterwards."""
    opened = []

    async def open_socket(room: str, session_key: str, address: str = HOST_ADDRESS):
        cookie = (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())
        socket = communicator(room, headers=[cookie])
        socket.scope["client"] = [address, 50000]
        connected, code = await socket.connect()
        assert connected, f"handshake refused with {code}"
        opened.append(socket)
        return socket

    try:
        yield open_socket
    finally:
        for socket in opened:
            await socket.disconnect()


_target = database_sync_to_async(moderation.target_of_username)


async def _post(socket, text: str, client_id: str) -> dict:
    """Send a message; the answer to it (its echo or its refusal), skipping the rest."""
    await socket.send_json_to({"message": text, "client_id": client_id})
    while True:
        frame = await next_frame(socket)
        if frame.get("client_id") == client_id or frame.get("error", {}).get("client_id"):
            return frame


async def test_a_muted_author_is_refused_saying_until_when_until_it_is_lifted(
    redis_channel_layer, garden
):
    alice, carol = garden
    async with _sockets() as open_socket:
        socket = await open_socket("garden", await new_session(**logged_in_session_values(carol)))
        assert (await _post(socket, "before", "m1"))["message"] == "before"
        await database_sync_to_async(moderation.mute)(
            _author(alice), "garden", await _target("carol"), "1h", "shouting"
        )
        refused = await _post(socket, "during", "m2")
        assert refused["error"]["code"] == "muted" and refused["error"]["client_id"] == "m2"
        assert "until 20" in refused["error"]["detail"]
        with pytest.raises(posting.PostRefused) as by_program:
            await database_sync_to_async(posting.post_message)("garden", "again", as_user=carol)
        assert by_program.value.code == "muted"
        sanction = await Sanction.objects.aget(room_id="garden")
        await database_sync_to_async(moderation.lift)(
            _author(alice), "garden", str(sanction.pk), Sanction.Kind.MUTE
        )
        assert (await _post(socket, "after", "m3"))["message"] == "after"
    texts = [text async for text in Message.objects.values_list("text", flat=True)]
    assert texts == ["my room", "before", "after"]


def test_a_mute_ends_by_itself(garden):
    alice, carol = garden
    moderation.mute(_author(alice), "garden", moderation.target_of_username("carol"), "5m")
    assert permissions.sanction_refusal(_author(carol), "garden", HOST_ADDRESS).code == "muted"
    Sanction.objects.update(until=timezone.now())
    sanctions.clear_for_testing()  # an end reached is no change: nobody is told
    assert permissions.sanction_refusal(_author(carol), "garden", HOST_ADDRESS) is None


async def test_a_ban_follows_the_account_into_every_way_in(redis_channel_layer, garden):
    alice, carol = garden
    session_key = await new_session(**logged_in_session_values(carol))
    async with _sockets() as open_socket:
        socket = await open_socket("garden", session_key)
        await database_sync_to_async(moderation.ban)(
            _author(alice), "garden", await _target("carol"), ""
        )
        assert await close_code_within(socket) == protocol.CLOSE_BANNED
        # From another address and another session alike: the ban is the account's.
        other_session = await new_session(**logged_in_session_values(carol))
        again = await open_socket("garden", other_session, OTHER_ADDRESS)
        assert await close_code_within(again) == protocol.CLOSE_BANNED


def test_a_banned_account_is_refused_by_the_messages_endpoint_and_by_posting(garden):
    alice, carol = garden
    moderation.ban(_author(alice), "garden", moderation.target_of_username("carol"), "")
    reader = Client()
    reader.force_login(carol)
    answer = reader.get("/chat/garden/messages/")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "banned"
    with pytest.raises(posting.PostRefused) as by_program:
        posting.post_message("garden", "let me in", as_user=carol)
    assert by_program.value.code == "banned"
    assert reader.get("/chat/lobby/messages/").status_code == 200  # that room only


async def test_a_banned_guest_stays_out_by_session_and_by_address(redis_channel_layer, garden):
    alice, carol = garden
    async with _sockets() as open_socket:
        guest = await open_socket("garden", await new_session(display_name="Spammer"))
        echo = await _post(guest, "buy now", "g1")
        target = await database_sync_to_async(moderation.target_of_message)(
            "garden", str(echo["id"])
        )
        assert target.network == "2001:db8:1:2::/64" and target.user_id is None
        await database_sync_to_async(moderation.ban)(_author(alice), "garden", target, "1d")
        assert await close_code_within(guest) == protocol.CLOSE_BANNED
        new_guest = await open_socket("garden", await new_session(), SAME_HOST_ADDRESS)
        assert await close_code_within(new_guest) == protocol.CLOSE_BANNED
        elsewhere = await open_socket("garden", await new_session(), OTHER_ADDRESS)
        user_there = await open_socket(
            "garden", await new_session(**logged_in_session_values(carol)), SAME_HOST_ADDRESS
        )
        assert await close_code_within(elsewhere) is None
        assert await close_code_within(user_there) is None


async def test_a_ban_whose_event_was_lost_closes_the_socket_at_its_next_post(
    redis_channel_layer, garden
):
    alice, carol = garden
    async with _sockets() as open_socket:
        socket = await open_socket("garden", await new_session(**logged_in_session_values(carol)))
        await Sanction.objects.acreate(
            room_id="garden", kind=Sanction.Kind.BAN, user_id=carol.pk, label="carol"
        )
        sanctions.forget("garden")  # what the cache's own period does, unasked
        refused = await _post(socket, "still here", "lost1")
        assert refused["error"]["code"] == "banned"
        assert await close_code_within(socket) == protocol.CLOSE_BANNED
    assert not await Message.objects.filter(text="still here").aexists()


async def test_a_kicked_socket_closes_and_may_rejoin(redis_channel_layer, garden):
    alice, carol = garden
    session_key = await new_session(**logged_in_session_values(carol))
    async with _sockets() as open_socket:
        socket = await open_socket("garden", session_key)
        bystander = await open_socket("garden", await new_session())
        await database_sync_to_async(moderation.kick)(
            _author(alice), "garden", await _target("carol"), "cool off"
        )
        assert await close_code_within(socket) == protocol.CLOSE_KICKED
        assert await close_code_within(bystander) is None
        rejoined = await open_socket("garden", session_key)
        assert (await _post(rejoined, "back", "k1"))["message"] == "back"


def test_banning_a_private_rooms_member_ends_their_membership(transactional_db):
    alice, bob = (User.objects.create_user(name) for name in ("alice", "bob"))
    key = memberships.create_private_room(_author(alice), "Plans")
    memberships.invite(_author(alice), key, "bob")
    moderation.ban(_author(alice), key, moderation.target_of_username("bob"), "")
    assert permissions.role_of(_author(bob), key) is None
    assert permissions.room_for(_author(bob), key) is None


def test_every_action_is_logged_with_who_what_whom_until_and_why(garden):
    alice, carol = garden
    target = moderation.target_of_username("carol")
    moderation.mute(_author(alice), "garden", target, "5m", "  too   loud ")
    moderation.kick(_author(alice), "garden", target)
    moderation.ban(_author(alice), "garden", target, "")
    ban = Sanction.objects.get(kind=Sanction.Kind.BAN)
    moderation.lift(_author(alice), "garden", str(ban.pk), Sanction.Kind.BAN)
    log = list(
        ModerationAction.objects.order_by("created").values_list(
            "room_name", "action", "moderator_name", "target", "reason"
        )
    )
    assert log == [
        ("garden", "mute", "alice", "carol", "too loud"),
        ("garden", "kick", "alice", "carol", ""),
        ("garden", "ban", "alice", "carol", ""),
        ("garden", "unban", "alice", "carol", ""),
    ]
    mute = ModerationAction.objects.get(action="mute")
    assert 299 <= (mute.until - mute.created).total_seconds() <= 301


def test_who_may_not_moderate_is_refused_and_nothing_is_done(garden):
    alice, carol = garden
    for moderator, target in ((carol, "alice"), (alice, "alice"), (carol, "carol")):
        with pytest.raises(moderation.ModerationRefused) as refused:
            moderation.ban(_author(moderator), "garden", moderation.target_of_username(target), "")
        assert refused.value.code == "not_allowed"
    assert not Sanction.objects.exists() and not ModerationAction.objects.exists()


def test_nobody_lifts_a_sanction_they_could_not_have_imposed(garden):
    alice, carol = garden
    bob, dave = (User.objects.create_user(name) for name in ("bob", "dave"))
    for moderator in ("bob", "dave"):
        memberships.set_role(_author(alice), "garden", moderator, Role.MODERATOR)
    for muted in ("bob", "dave"):
        moderation.mute(_author(alice), "garden", moderation.target_of_username(muted), "")
    for lifter, muted in ((bob, bob), (bob, dave)):
        sanction = Sanction.objects.get(user__username=muted.username)
        with pytest.raises(moderation.ModerationRefused) as refused:
            moderation.lift(_author(lifter), "garden", str(sanction.pk), Sanction.Kind.MUTE)
        assert refused.value.code == "not_allowed"
    assert Sanction.objects.count() == 2
    moderation.mute(_author(bob), "garden", moderation.target_of_username("carol"), "")
    for sanction in Sanction.objects.order_by("pk"):
        moderation.lift(_author(alice), "garden", str(sanction.pk), Sanction.Kind.MUTE)
    assert not Sanction.objects.exists()


def test_the_room_pages_forms_mute_by_message_and_lift(garden):
    alice, carol = garden
    message, _ = services.store_message("garden", _author(carol), "hello", None)
    owner, other = Client(), Client()
    owner.force_login(alice)
    other.force_login(carol)
    other.post("/rooms/garden/kick/", {"username": "alice"})
    assert not ModerationAction.objects.exists()
    owner.post("/rooms/garden/mute/", {"message": str(message.seq), "duration": "1d"})
    page = owner.get("/chat/garden/").content.decode()
    assert 'id="sanction-list"' in page and "carol" in page
    assert 'id="room-sanctions"' not in other.get("/chat/garden/").content.decode()
    sanction = Sanction.objects.get()
    owner.post("/rooms/garden/unban/", {"sanction": str(sanction.pk)})  # a mute, not a ban
    assert Sanction.objects.exists()
    owner.post("/rooms/garden/unmute/", {"sanction": str(sanction.pk)})
    assert not Sanction.objects.exists()


def test_a_report_goes_into_the_queue_and_is_limited_per_person(garden, settings):
    settings.CHAT_LIMIT_MESSAGE_REPORTS_PER_PERSON = "2/hour"
    alice, carol = garden
    message, _ = services.store_message("garden", _author(alice), "rude", None)
    reader, guest = Client(), Client()
    reader.force_login(carol)
    for reason in ("rude", "still rude"):
        answer = reader.post("/rooms/garden/report/", {"message": message.seq, "reason": reason})
        assert answer.status_code == 302
    assert reader.post("/rooms/garden/report/", {"message": message.seq}).status_code == 429
    assert guest.post("/rooms/garden/report/", {"message": message.seq}).status_code == 302
    reports = Report.objects.order_by("created").values_list("reporter_name", "reason")
    assert list(reports) == [
        ("carol", "rude"),
        ("carol", "still rude"),
        ("Guest (guest)", ""),
    ]
    assert not Report.objects.filter(resolved=True).exists()


# --- Across server processes -----------------------------------------------------------


def _owner_and_target(server_a, server_b, room: str, target_is_guest: bool):
    """The owner of a new public room (signed up on server_a), and a socket of the target on
    server_b, with the id of the message it sent."""
    owner = _signed_up(server_a, f"owner-{room}")
    owner_socket = _open(server_a, owner, room)
    owner_socket.send(json.dumps({"message": "my room"}))
    while json.loads(owner_socket.recv()).get("message") != "my room":
        pass
    owner_socket.close()
    if target_is_guest:
        target = Browser()
        target.opener.open(server_b.url + f"/chat/{room}/").read()  # a guest session
    else:
        target = _signed_up(server_b, f"target-{room}")
    socket = _open(server_b, target, room)
    socket.send(json.dumps({"message": "hi all"}))
    while (frame := json.loads(socket.recv())).get("message") != "hi all":
        pass
    return owner, target, socket, frame["id"]


@pytest.mark.parametrize(
    ("action", "guest", "code"),
    [("kick", False, protocol.CLOSE_KICKED), ("ban", True, protocol.CLOSE_BANNED)],
)
def test_a_kick_or_ban_on_one_process_closes_the_socket_on_another(
    start_chat_server, action, guest, code
):
    first, second = start_chat_server(), start_chat_server()
    room = f"mod-{action}"
    owner, target, socket, message_id = _owner_and_target(first, second, room, guest)
    socket.settimeout(5)
    fields = {"message": message_id, "duration": "1h"}
    owner.post_form(first.url, f"/rooms/{room}/{action}/", fields, f"/chat/{room}/")
    assert _close_code(socket) == code
    socket.shutdown()
    again = _open(second, target, room)
    again.settimeout(5)
    if action == "ban":
        assert _close_code(again) == protocol.CLOSE_BANNED
    else:
        again.send(json.dumps({"message": "back again"}))
        while json.loads(again.recv()).get("message") != "back again":
            pass
    again.close()


def test_a_mute_on_one_process_refuses_the_next_message_on_another(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    owner, target, socket, message_id = _owner_and_target(first, second, "mod-mute", False)
    fields = {"message": message_id, "duration": "5m"}
    owner.post_form(first.url, "/rooms/mod-mute/mute/", fields, "/chat/mod-mute/")
    # Within a second, well inside the cache's own period: the event, not time, refreshed it.
    deadline, sent = time.monotonic() + SECONDS_TO_CLOSE, 0
    refused = None
    while refused is None and time.monotonic() < deadline:
        sent += 1
        socket.send(json.dumps({"message": f"try {sent}", "client_id": f"t{sent}"}))
        while True:
            frame = json.loads(socket.recv())
            if frame.get("client_id") == f"t{sent}":
                break
            if frame.get("error", {}).get("client_id") == f"t{sent}":
                refused = frame["error"]
                break
    assert refused is not None and refused["code"] == "muted"
    socket.close()


def test_a_moderator_appointed_on_one_process_acts_at_once_from_another(start_chat_server):
    first, second = start_chat_server(), start_chat_server()
    owner, target, socket, _ = _owner_and_target(first, first, "mod-role", False)
    moderator = _signed_up(second, "appointed")
    appoint = {"username": "appointed", "role": "moderator"}
    owner.post_form(first.url, "/rooms/mod-role/role/", appoint, "/chat/mod-role/")
    socket.settimeout(5)
    kick = {"username": "target-mod-role"}
    moderator.post_form(second.url, "/rooms/mod-role/kick/", kick, "/chat/mod-role/")
    assert _close_code(socket) == protocol.CLOSE_KICKED
    socket.shutdown()
    owner.post_form(second.url, "/rooms/mod-role/role/", {**appoint, "role": "member"}, "/chat/")
    page = moderator.post_form(first.url, "/rooms/mod-role/kick/", kick, "/chat/mod-role/")
    assert "You may not moderate target-mod-role here." in page.decode()


def test_a_target_by_message_must_be_a_person_with_a_message_there(garden):
    alice, carol = garden
    bot_message, _ = services.store_message("garden", Author("Feeds", is_bot=True), "news", None)
    gone, _ = services.store_message("garden", _author(carol), "bye", None)
    carol.delete()
    for message_id, code in (
        (str(bot_message.seq), "not_allowed"),
        (str(gone.seq), "unknown_user"),
        ("999", "no_such_message"),
        ("1e3", "no_such_message"),
    ):
        with pytest.raises(moderation.ModerationRefused) as refused:
            moderation.target_of_message("garden", message_id)
        assert refused.value.code == code


def test_a_staff_account_is_staff_as_a_target_only_while_active(garden):
    alice, _ = garden
    sam = User.objects.create_user("sam", is_staff=True)
    said, _ = services.store_message("garden", _author(sam), "hello", None)
    with pytest.raises(moderation.ModerationRefused) as refused:  # a room's owner: not staff
        moderation.mute(
            _author(alice), "garden", moderation.target_of_message("garden", str(said.seq)), ""
        )
    assert refused.value.code == "not_allowed"
    sam.is_active = False
    sam.save()
    target = moderation.target_of_message("garden", str(said.seq))
    assert (target.label, target.is_staff) == ("sam", False)
    moderation.mute(_author(alice), "garden", target, "")
    assert Sanction.objects.filter(user=sam).exists()


def test_a_deleted_message_is_not_reported(garden):
    alice, carol = garden
    message, _ = services.store_message("garden", _author(alice), "rude", None)
    services.delete_message("garden", message.seq, _author(alice))
    with pytest.raises(moderation.ModerationRefused) as refused:
        moderation.report(_author(carol), "garden", str(message.seq), "rude")
    assert refused.value.code == "message_deleted"
    assert not Report.objects.exists()
