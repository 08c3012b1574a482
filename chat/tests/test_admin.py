"""The Django admin: messages listed, searchable, filterable; the moderation log and the
reports queue."""

import pytest

from chat import services
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
