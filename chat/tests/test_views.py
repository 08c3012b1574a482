"""The index and room pages."""

import pytest
from django.template.loader import render_to_string
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_root_redirects_to_chat_index(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/chat/"


def test_index_page_has_focused_room_box_and_button(client):
    response = client.get("/chat/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="room-name-input"' in html and "autofocus" in html
    assert 'id="room-name-submit"' in html


def test_index_redirects_a_valid_name_to_its_room(client):
    response = client.get("/chat/", {"room": "  café "})
    assert response.status_code == 302
    assert response["Location"] == "/chat/caf%C3%A9/"


def test_index_explains_an_invalid_name_instead_of_navigating(client):
    response = client.get("/chat/", {"room": "two words"})
    assert response.status_code == 200
    assert "Room names may contain letters" in response.content.decode()


def test_index_echoes_a_hostile_name_as_text(client):
    response = client.get("/chat/", {"room": '"><img src=x onerror=alert(1)>'})
    html = response.content.decode()
    assert "<img src=x" not in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_room_page_has_log_box_and_button(client):
    response = client.get("/chat/lobby/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<textarea id="chat-log"' in html and "readonly" in html
    assert 'id="chat-message-input"' in html and 'id="chat-message-submit"' in html
    assert '<script id="room-name" type="application/json">"lobby"</script>' in html


@pytest.mark.parametrize("room", ["café", "日本語", "a" * 100, "Lobby"])
def test_room_page_renders_for_valid_names(client, room):
    response = client.get(reverse("chat:room", kwargs={"room_name": room}))
    assert response.status_code == 200
    assert room in response.content.decode()


@pytest.mark.parametrize(
    "path", ["/chat/two%20words/", "/chat/%3Cscript%3E/", "/chat/" + "a" * 101 + "/", "/chat/../"]
)
def test_invalid_room_url_is_a_404(client, path):
    assert client.get(path).status_code == 404


def test_invalid_room_url_in_production_gets_the_chat_404_page(client, settings):
    settings.DEBUG = False
    response = client.get("/chat/%3Cb%3Ebold%3C%2Fb%3E/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Choose a room" in html
    assert "<b>bold" not in html


def test_room_name_with_markup_is_embedded_as_data_not_code():
    hostile = "</script><script>alert('x')</script>\"'"
    html = render_to_string("chat/room.html", {"room_name": hostile})
    assert "<script>alert(" not in html
    assert "\\u003C/script\\u003E\\u003Cscript\\u003Ealert" in html
