"""The Django admin: messages listed, searchable, filterable; the moderation log and the
reports queue."""

import asyncio

import pytest

from chat import posting, services
from chat.models import Message, ModerationAction, Report, Room

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("limits_count_from_zero")]


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", password="pw-123456"))
    services.store_message("lobby", services.Author(name="alice"), "needle in the lobby", None)
    services.store_message("kitchen", services.Author(name="bob"), "hay in the kitchen", None)
    return client


def test_message_list_shows_stored_messages(staff_client):
    html = staff_client.get("/admin/chat/message/").content.decode()
    assert "needle in the lobby" in html and "hay in the kitchen" in html


def test_message_search_finds_by_text(staff_client):
    html = staff_client.get("/admin/chat/message/", {"q": "needle"}).content.decode()
    assert "needle in the lobby" in html and "hay in the kitchen" not in html


def test_message_list_filters_by_room(staff_client):
    html = staff_client.get("/admin/chat/message/", {"room__name__exact": "kitchen"})
    html = html.content.decode()
    assert "hay in the kitchen" in html and "needle in the lobby" not in html


def test_room_list_shows_last_seq(staff_client):
    assert staff_client.get("/admin/chat/room/").status_code == 200


def test_message_list_does_not_list_every_room(staff_client):
    for number in range(20):
        services.store_message(f"quiet-{number}", services.Author(name="carol"), "hi", None)
    html = staff_client.get("/admin/chat/message/", {"q": "needle"}).content.decode()
    assert "needle in the lobby" in html
    assert "quiet-" not in html  # no filter naming every room


def test_a_rooms_retention_is_set_in_the_admin_and_what_is_gone_is_shown(staff_client):
    page = staff_client.get("/admin/chat/room/lobby/change/").content.decode()
    assert 'name="retention_days"' in page and 'name="gone_until"' not in page
    form = {"name": "lobby", "title": "", "last_seq": "1", "retention_days": "7"}
    form.update({f"memberships-{field}": value for field, value in _empty_inline().items()})
    response = staff_client.post("/admin/chat/room/lobby/change/", form)
    assert response.status_code == 302
    assert Room.objects.get(name="lobby").retention_days == 7
    listed = staff_client.get("/admin/chat/room/").content.decode()
    assert "column-retention_days" in listed and "column-gone_until" in listed


def _empty_inline() -> dict:
    return {"TOTAL_FORMS": "0", "INITIAL_FORMS": "0", "MIN_NUM_FORMS": "0", "MAX_NUM_FORMS": "1000"}


def test_the_moderation_log_is_read_only_and_filters_by_room_and_action(staff_client):
    for room, action in (("lobby", "ban"), ("kitchen", "mute"), ("lobby", "kick")):
        ModerationAction.objects.create(
            room_name=room, action=action, moderator_name="admin", target=f"{action}-{room}"
        )
    html = staff_client.get("/admin/chat/moderationaction/", {"room_name": "lobby"}).content
    assert b"ban-lobby" in html and b"kick-lobby" in html and b"mute-kitchen" not in html
    html = staff_client.get("/admin/chat/moderationaction/", {"action__exact": "kick"}).content
    assert b"kick-lobby" in html and b"ban-lobby" not in html
    entry = ModerationAction.objects.get(action="ban")
    assert staff_client.get("/admin/chat/moderationaction/add/").status_code == 403
    change = staff_client.post(
        f"/admin/chat/moderationaction/{entry.pk}/change/", {"target": "someone else"}
    )
    assert change.status_code == 403
    assert staff_client.get(f"/admin/chat/moderationaction/{entry.pk}/delete/").status_code == 403


def test_reports_are_queued_and_resolved_from_the_admin(staff_client):
    message = Message.objects.get(text="needle in the lobby")
    report = Report.objects.create(message=message, reporter_name="bob", reason="rude")
    html = staff_client.get("/admin/chat/report/", {"resolved__exact": "0"}).content.decode()
    assert "alice: needle in the lobby" in html and "rude" in html
    staff_client.post(
        "/admin/chat/report/", {"action": "mark_resolved", "_selected_action": [report.pk]}
    )
    report.refresh_from_db()
    assert report.resolved


# --- Deleting messages: a soft delete that reaches open pages ----------------------------


def _lobby_message(text: str):
    return services.Message.objects.get(room_id="lobby", text=text)


def test_deleting_a_message_in_the_admin_keeps_its_row_and_blanks_its_text(staff_client):
    needle = _lobby_message("needle in the lobby")
    response = staff_client.post(f"/admin/chat/message/{needle.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    needle.refresh_from_db()
    assert (needle.seq, needle.text, needle.deleted, needle.change) == (1, "", True, 1)
    assert list(needle.revisions.values_list("kind", "text", "by_name")) == [
        ("original", "needle in the lobby", "alice"),
        ("delete", "needle in the lobby", "admin"),
    ]


def test_the_bulk_delete_action_deletes_each_message_softly(staff_client):
    ids = list(services.Message.objects.values_list("pk", flat=True))
    response = staff_client.post(
        "/admin/chat/message/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert response.status_code == 302
    rows = services.Message.objects.values_list("room_id", "text", "deleted", "change")
    assert sorted(rows) == [("kitchen", "", True, 1), ("lobby", "", True, 1)]


def test_a_messages_page_shows_its_revisions_read_only(staff_client):
    needle = _lobby_message("needle in the lobby")
    services.edit_message("lobby", 1, services.Author(name="alice"), "needle, sharpened")
    html = staff_client.get(f"/admin/chat/message/{needle.pk}/change/").content.decode()
    assert "needle in the lobby" in html and "needle, sharpened" in html
    assert 'name="revisions-0-text"' not in html  # shown, not a field to edit
    assert 'name="text"' not in html


@pytest.mark.django_db(transaction=True)  # the broadcast waits for the commit
@pytest.mark.usefixtures("redis_channel_layer")
async def test_an_admin_deletion_reaches_an_open_socket_in_the_room(join, django_user_model):
    from channels.db import database_sync_to_async
    from django.test import Client

    from chat.tests.conftest import next_frame

    @database_sync_to_async
    def delete_in_the_admin() -> int:
        admin = django_user_model.objects.create_superuser("root", password="pw-123456")
        message = posting.post_message("lobby", "spam", as_bot="spammer").message
        client = Client()
        client.force_login(admin)
        client.post(f"/admin/chat/message/{message.pk}/delete/", {"post": "yes"})
        return message.seq

    socket = await join("lobby")
    seq = await delete_in_the_admin()
    assert (await next_frame(socket))["message"] == "spam"
    assert await next_frame(socket, timeout=5) == {"delete": {"id": seq, "change": 1}}


# --- Lifting sanctions: as the room page lifts them, heard at once --------------------------


@pytest.mark.django_db(transaction=True)  # the event waits for the commit
@pytest.mark.usefixtures("redis_channel_layer")
@pytest.mark.parametrize("bulk", [False, True], ids=["delete", "bulk-delete"])
async def test_a_sanction_deleted_in_the_admin_is_lifted_for_the_room_at_once(
    join, django_user_model, monkeypatch, bulk
):
    from channels.db import database_sync_to_async
    from channels.layers import get_channel_layer
    from django.test import Client

    from chat import identity, moderation, rooms, sanctions
    from chat.models import Sanction
    from chat.tests.conftest import assert_receives_message, next_frame

    monkeypatch.setattr(sanctions, "CACHE_SECONDS", 3600.0)  # only being told refreshes it
    admin = await database_sync_to_async(django_user_model.objects.create_superuser)(
        "root", password="pw-123456"
    )
    socket = await join("lobby")
    await socket.send_json_to({"message": "rude"})
    seq = (await assert_receives_message(socket, "rude"))["id"]

    @database_sync_to_async
    def mute(seq: int) -> int:
        target = moderation.target_of_message("lobby", str(seq))
        moderation.mute(identity.author_for(admin, None), "lobby", target, "1h")
        return Sanction.objects.get().pk

    sanction = await mute(seq)
    await socket.send_json_to({"message": "muted?"})
    assert (await next_frame(socket))["error"]["code"] == "muted"
    layer = get_channel_layer()  # another process's socket in the room, as its layer sees it
    elsewhere = await layer.new_channel()
    await layer.group_add(rooms.group_name("lobby"), elsewhere)

    @database_sync_to_async
    def delete_in_the_admin():
        client = Client()
        client.force_login(admin)
        if bulk:
            form = {"action": "delete_selected", "_selected_action": [sanction], "post": "yes"}
            return client.post("/admin/chat/sanction/", form)
        return client.post(f"/admin/chat/sanction/{sanction}/delete/", {"post": "yes"})

    assert (await delete_in_the_admin()).status_code == 302
    async with asyncio.timeout(5):
        while (event := await layer.receive(elsewhere))["type"] != "chat.moderated":
            pass  # the room's other events (presence)
    assert event["action"] == "unmute"
    await socket.send_json_to({"message": "sorry"})
    await assert_receives_message(socket, "sorry")
    logged = ModerationAction.objects.values_list("action", "moderator_name")
    assert await database_sync_to_async(list)(logged.order_by("pk")) == [
        ("mute", "root"),
        ("unmute", "root"),
    ]


@pytest.mark.parametrize("model", ["message", "room"])
def test_the_admin_adds_no_message_or_room_past_the_chats_rules(staff_client, model):
    assert staff_client.get(f"/admin/chat/{model}/add/").status_code == 403
    listed = staff_client.get(f"/admin/chat/{model}/").content.decode()
    assert f'href="/admin/chat/{model}/add/"' not in listed


def test_a_rooms_name_is_not_changed_in_the_admin(staff_client):
    form = {"name": "lobby2", "title": "", "retention_days": "7"}
    form.update({f"memberships-{field}": value for field, value in _empty_inline().items()})
    assert staff_client.post("/admin/chat/room/lobby/change/", form).status_code == 302
    assert list(Room.objects.filter(name__startswith="lobby").values_list("name", flat=True)) == [
        "lobby"
    ]
    assert Room.objects.get(name="lobby").retention_days == 7
