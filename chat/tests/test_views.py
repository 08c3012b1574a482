"""The pages (index, room, names, accounts) and the messages JSON endpoint."""

import functools
import json
import re
import socket
import time
from html.parser import HTMLParser

import pytest
import redis
import redis.asyncio
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.template.loader import render_to_string
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat import activity, identity, memberships, password_reset, presence, rooms, services
from chat.identity import Author
from chat.models import Membership, Message, ReadPosition, Room
from conftest import WRITE_REFUSALS, redis_refusing_writes
from serving.embedded_redis import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("limits_count_from_zero")]


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


def test_room_page_hands_its_script_the_servers_message_limits_and_heartbeat(client, settings):
    settings.CHAT_MESSAGE_MAX_CHARS = 123
    settings.CHAT_HEARTBEAT_SECONDS = 7.0
    html = client.get("/chat/lobby/").content.decode()
    limits = html.split('<script id="chat-limits" type="application/json">')[1].split("<")[0]
    assert json.loads(limits) == {
        "message_max_chars": 123,
        "frame_max_chars": settings.CHAT_FRAME_MAX_CHARS,
        "heartbeat_seconds": 7.0,
        "heartbeat_timeout_seconds": settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS,
        "retention_days": settings.CHAT_RETENTION_DAYS,
    }


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


def test_invalid_room_url_in_debug_gets_the_chat_404_page_too(client, settings):
    settings.DEBUG = True
    response = client.get("/chat/two%20words/")
    assert response.status_code == 404
    assert "Choose a room" in response.content.decode()


def test_invalid_room_messages_url_in_debug_gets_the_endpoints_json_404(client, settings):
    settings.DEBUG = True
    response = client.get("/chat/two%20words/messages/")
    assert (response.status_code, response["Content-Type"]) == (404, "application/json")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/chat/two%20words/", "not a space."),
        ("/chat/two%20words/messages/", "not a space."),
        ("/chat/tab%09here/", "not a tab."),
        ("/chat/what%3F/", "not a question mark (?)."),
    ],
)
def test_an_invalid_room_url_says_what_the_name_breaks(client, path, reason):
    response = client.get(path)
    assert response.status_code == 404
    assert reason in response.content.decode()


def test_a_room_url_without_its_slash_still_redirects_to_the_room(client):
    response = client.get("/chat/lobby")
    assert (response.status_code, response["Location"]) == (301, "/chat/lobby/")


def test_favicon_ico_leads_to_the_static_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("chat/favicon.svg")
    assert '<link rel="icon"' in client.get("/chat/").content.decode()


def test_room_page_tells_its_script_who_reads_it(client, django_user_model):
    def reader(html):
        return json.loads(
            html.split('<script id="chat-reader" type="application/json">')[1].split("<")[0]
        )

    guest = reader(client.get("/chat/lobby/").content.decode())
    session = client.session  # the page made it: the sign-in is of the guest it names
    assert guest == {
        "name": identity.author_for(None, session).name,
        "guest": True,
        "sign_in": identity.sign_in_of(identity.author_for(None, session)),
        "moderates": False,
    }
    user = django_user_model.objects.create_user("alice", password="x")
    client.force_login(user)
    assert reader(client.get("/chat/lobby/").content.decode()) == {
        "name": "alice",
        "guest": False,
        "sign_in": identity.sign_in_of(services.Author("alice", user_id=user.pk)),
        "moderates": False,
    }


def test_room_name_with_markup_is_embedded_as_data_not_code():
    hostile = "</script><script>alert('x')</script>\"'"
    html = render_to_string("chat/room.html", {"room_name": hostile})
    assert "<script>alert(" not in html
    assert "\\u003C/script\\u003E\\u003Cscript\\u003Ealert" in html


def _identity_name(html: str) -> str:
    match = re.search(r'<strong id="identity-name">(.*?)</strong>', html)
    assert match, "the page has no #identity-name"
    return match.group(1)


def _display_name_error(html: str) -> str:
    match = re.search(r'<p id="display-name-error"[^>]*>(.*?)</p>', html, re.DOTALL)
    assert match, "the page has no #display-name-error"
    return match.group(1)


def test_a_valid_display_name_is_kept_in_the_session_and_redirects_to_the_index(client):
    response = client.post("/accounts/name/", {"display_name": "  Zoë  "})
    assert response.status_code == 302
    assert response["Location"] == "/chat/"
    assert client.session[identity.SESSION_KEY] == "Zoë"


def test_the_index_shows_the_chosen_display_name(client):
    client.post("/accounts/name/", {"display_name": "Zoë"})
    assert _identity_name(client.get("/chat/").content.decode()) == "Zoë"


def test_an_invalid_display_name_rerenders_the_index_with_its_reason(client):
    response = client.post("/accounts/name/", {"display_name": "a" * 31})
    assert response.status_code == 400
    html = response.content.decode()
    assert _display_name_error(html) == "Names are at most 30 characters."
    assert 'aria-invalid="true"' in html
    assert identity.SESSION_KEY not in client.session


def test_an_invalid_hostile_display_name_is_echoed_as_text(client):
    hostile = "<script>alert('pwned')</script>!"
    response = client.post("/accounts/name/", {"display_name": hostile})
    assert response.status_code == 400
    html = response.content.decode()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;!" in html
    assert "at most 30 characters" in _display_name_error(html)


def test_an_invalid_display_name_keeps_the_previous_one(client):
    client.post("/accounts/name/", {"display_name": "Zoë"})
    client.post("/accounts/name/", {"display_name": "a\u200bb"})
    assert client.session[identity.SESSION_KEY] == "Zoë"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("\u0430lice", "That name looks too much like the username &quot;alice&quot;."),
        ("al\u0456ce", "That name looks too much like the username &quot;alice&quot;."),
        ("alice.", "That name looks too much like the username &quot;alice&quot;."),
        ("alice\u3164", "Names may not contain control or invisible characters."),
        ("\u2800", "Names may not contain control or invisible characters."),
        ("e\u0301\u0302\u0303", "Names may not stack more than 2 marks on one letter."),
        ("alice, bob", "Names may contain only letters, digits, spaces and - _ . &#x27;"),
    ],
    ids=[
        "cyrillic-a",
        "ukrainian-i",
        "trailing-dot",
        "hangul-filler",
        "braille-blank",
        "stacked-marks",
        "comma",
    ],
)
def test_an_unsafe_guest_name_is_refused_with_its_reason(client, django_user_model, raw, reason):
    django_user_model.objects.create_user("alice")
    response = client.post("/accounts/name/", {"display_name": raw})
    assert response.status_code == 400
    assert _display_name_error(response.content.decode()) == reason
    assert identity.SESSION_KEY not in client.session


@pytest.mark.parametrize("name", ["José", "Zoë", "李雷", "Ђорђе"])
def test_a_guest_name_in_any_script_is_kept(client, django_user_model, name):
    django_user_model.objects.create_user("alice")
    assert client.post("/accounts/name/", {"display_name": name}).status_code == 302
    assert client.session[identity.SESSION_KEY] == name


def test_get_on_the_display_name_endpoint_is_405(client):
    assert client.get("/accounts/name/").status_code == 405


def test_room_page_gives_a_guest_a_stored_session_for_its_sockets(client):
    client.get("/chat/lobby/")
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert SessionStore().exists(session_key)
    client.get("/chat/lobby/")
    assert client.cookies[settings.SESSION_COOKIE_NAME].value == session_key


def test_room_page_replaces_a_cookie_naming_no_stored_session(client):
    client.cookies[settings.SESSION_COOKIE_NAME] = "x" * 32
    client.get("/chat/lobby/")
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert session_key != "x" * 32 and SessionStore().exists(session_key)


def test_room_page_marks_an_anonymous_visitor_as_a_guest_with_login_and_signup_links(client):
    html = client.get("/chat/lobby/").content.decode()
    assert re.fullmatch(r"Guest [0-9a-f]{4}", _identity_name(html))  # the page made a session
    assert "(guest)" in html
    assert '<a href="/accounts/login/?next=/chat/lobby/">Log in</a>' in html
    assert '<a href="/accounts/signup/">Sign up</a>' in html
    assert 'id="logout-button"' not in html


def test_room_page_shows_a_logged_in_users_name_and_a_logout_form(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("alice"))
    html = client.get("/chat/lobby/").content.decode()
    assert _identity_name(html) == "alice"
    assert '<form class="inline" method="post" action="/accounts/logout/">' in html
    assert 'id="logout-button"' in html
    assert "(guest)" not in html
    assert ">Log in</a>" not in html


def test_signup_creates_a_user_logs_it_in_and_redirects_to_the_chat(client, django_user_model):
    password = "correct-horse-battery-42"
    response = client.post(
        "/accounts/signup/",
        {"username": "alice", "password1": password, "password2": password},
    )
    assert response.status_code == 302
    assert response["Location"] == "/chat/"
    user = django_user_model.objects.get(username="alice")
    assert client.session["_auth_user_id"] == str(user.pk)
    assert _identity_name(client.get("/chat/").content.decode()) == "alice"


def test_signup_with_mismatched_passwords_creates_no_user(client, django_user_model):
    response = client.post(
        "/accounts/signup/",
        {"username": "alice", "password1": "correct-horse-42", "password2": "other-horse-42"},
    )
    assert response.status_code == 200
    assert not django_user_model.objects.filter(username="alice").exists()


def _sign_up(client, username: str):
    password = "correct-horse-battery-42"
    return client.post(
        "/accounts/signup/",
        {"username": username, "password1": password, "password2": password},
    )


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("\u0430lice", "That name looks too much like the username &quot;alice&quot;."),
        ("al\u0456ce", "That name looks too much like the username &quot;alice&quot;."),
        ("alice.", "That name looks too much like the username &quot;alice&quot;."),
        ("_alice", "That name looks too much like the username &quot;alice&quot;."),
        ("a1ice", "That name looks too much like the username &quot;alice&quot;."),
        ("alice\u3164", "Names may not contain control or invisible characters."),
    ],
    ids=[
        "cyrillic-a",
        "ukrainian-i",
        "trailing-dot",
        "leading-underscore",
        "digit-one",
        "hangul-filler",
    ],
)
def test_signup_refuses_an_unsafe_username_with_its_reason(
    client, django_user_model, username, reason
):
    django_user_model.objects.create_user("alice")
    response = _sign_up(client, username)
    assert response.status_code == 200
    assert reason in response.content.decode()
    assert django_user_model.objects.count() == 1
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("username", ["José", "Zoë", "李雷", "Ђорђе"])
def test_signup_accepts_a_username_in_any_script(client, django_user_model, username):
    django_user_model.objects.create_user("alice")
    assert _sign_up(client, username).status_code == 302
    assert django_user_model.objects.filter(username=username).exists()


def test_a_new_users_look_alikes_are_refused_at_once(client):
    assert _sign_up(client, "bob").status_code == 302
    client.post("/accounts/logout/")
    response = client.post("/accounts/name/", {"display_name": "b\u043eb"})
    assert response.status_code == 400


def test_login_page_renders(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="login-submit"' in html and 'name="password"' in html


def test_logging_in_with_a_valid_password_works(client, django_user_model):
    django_user_model.objects.create_user("alice", password="correct-horse-battery-42")
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "correct-horse-battery-42"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/chat/"
    assert _identity_name(client.get("/chat/lobby/").content.decode()) == "alice"


def test_logging_in_with_a_wrong_password_is_refused(client, django_user_model):
    django_user_model.objects.create_user("alice", password="correct-horse-battery-42")
    response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_wrong_password_is_refused_in_one_message(client, django_user_model):
    django_user_model.objects.create_user("alice", password="correct-horse-battery-42")
    html = client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).content
    alerts = re.findall(r'<[^>]+(?:role="alert"|class="errorlist)[^>]*>', html.decode())
    assert len(alerts) == 1, alerts


def _store_messages(room: str, count: int) -> None:
    for n in range(1, count + 1):
        services.store_message(room, services.Author(name="Zoë"), f"message {n}", None)


def test_messages_of_an_empty_room_are_an_empty_page(client):
    response = client.get("/chat/lobby/messages/")
    assert response.status_code == 200
    assert response.json() == {"room": "lobby", "messages": [], "next_after": None, "gone_until": 0}


def test_messages_page_after_an_id_gives_the_next_ids_and_where_to_continue(client):
    _store_messages("lobby", 5)
    body = client.get("/chat/lobby/messages/", {"after": 1, "limit": 2}).json()
    assert [message["id"] for message in body["messages"]] == [2, 3]
    assert body["next_after"] == 3


def test_messages_last_page_has_no_next_after(client):
    _store_messages("lobby", 5)
    body = client.get("/chat/lobby/messages/", {"after": 3, "limit": 2}).json()
    assert [message["id"] for message in body["messages"]] == [4, 5]
    assert body["next_after"] is None


def test_messages_pages_read_through_the_query_a_socket_recovers_with(client, monkeypatch):
    """One read path: what a socket leaves to the client (recovered: false) comes from the
    same services.messages_after as the socket's own recovery and gap fills."""
    _store_messages("lobby", 5)
    reads, read = [], services.messages_after
    monkeypatch.setattr(services, "messages_after", lambda *args: reads.append(args) or read(*args))
    body = client.get("/chat/lobby/messages/", {"after": 1, "limit": 3}).json()
    assert [message["id"] for message in body["messages"]] == [2, 3, 4]
    assert reads == [("lobby", 1, 4)]  # a page, and one more to know whether there is more


def test_a_guests_page_of_messages_costs_three_queries_room_sanctions_messages(
    client, django_assert_num_queries
):
    """The page's work on the sockets' thread: the room's look-alike and retention mark in
    one query (services.room_on_join), the reader's sanctions, its messages."""
    _store_messages("lobby", 3)
    with django_assert_num_queries(3):
        body = client.get("/chat/lobby/messages/", {"after": 1}).json()
    assert [message["id"] for message in body["messages"]] == [2, 3]


def test_messages_default_to_the_whole_room_from_the_first(client):
    _store_messages("lobby", 3)
    body = client.get("/chat/lobby/messages/").json()
    assert [message["id"] for message in body["messages"]] == [1, 2, 3]
    assert body["next_after"] is None


def test_each_message_in_the_api_has_exactly_the_public_fields(client):
    services.store_message("lobby", services.Author(name="Zoë"), "hi", "abc-1")
    (message,) = client.get("/chat/lobby/messages/").json()["messages"]
    assert set(message) == {
        "message",
        "id",
        "user",
        "guest",
        "bot",
        "ts",
        "client_id",
        "edited",
        "deleted",
        "change",
    }
    assert (message["message"], message["id"], message["user"]) == ("hi", 1, "Zoë")
    assert message["guest"] is True
    assert message["client_id"] == "abc-1"


def test_messages_before_an_id_give_the_newest_older_ones_and_where_to_go_on(client):
    _store_messages("lobby", 5)
    body = client.get("/chat/lobby/messages/", {"before": 5, "limit": 2}).json()
    assert [message["id"] for message in body["messages"]] == [3, 4]
    assert body["next_before"] == 3


def test_messages_before_the_first_page_have_no_next_before(client):
    _store_messages("lobby", 5)
    body = client.get("/chat/lobby/messages/", {"before": 3, "limit": 2}).json()
    assert [message["id"] for message in body["messages"]] == [1, 2]
    assert body["next_before"] is None
    assert client.get("/chat/lobby/messages/", {"before": 1}).json()["messages"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"before": -1},
        {"before": "x"},
        {"before": "+1"},
        {"before": "\u0661"},
        {"before": 2**63},
        {"before": 3, "after": 1},
        {"after": -1},
        {"after": "x"},
        {"after": "9" * 4301},
        {"after": 2**63},
        {"after": "+1"},
        {"after": "\u0661"},
        {"limit": 0},
        {"limit": 501},
        {"limit": "2.5"},
        {"limit": "9" * 4301},
    ],
    ids=[
        "negative-before",
        "word-before",
        "signed-before",
        "arabic-indic-digit-before",
        "before-past-bigint",
        "before-and-after",
        "negative-after",
        "word-after",
        "after-past-int-parsing-limit",
        "after-past-bigint",
        "signed-after",
        "arabic-indic-digit-after",
        "zero-limit",
        "limit-over-max",
        "fractional-limit",
        "limit-past-int-parsing-limit",
    ],
)
def test_messages_with_bad_params_are_a_400(client, params):
    assert client.get("/chat/lobby/messages/", params).status_code == 400


def test_messages_of_an_invalid_room_url_are_a_404(client):
    assert client.get("/chat/two%20words/messages/").status_code == 404


def test_messages_of_a_unicode_room_are_served(client):
    _store_messages("café", 1)
    response = client.get(reverse("chat:room_messages", kwargs={"room_name": "café"}))
    assert response.status_code == 200
    body = response.json()
    assert body["room"] == "café"
    assert [message["id"] for message in body["messages"]] == [1]


def test_messages_of_a_decomposed_room_name_are_the_composed_rooms(client):
    _store_messages("café", 1)
    url = reverse("chat:room_messages", kwargs={"room_name": "cafe\u0301"})
    body = client.get(url).json()
    assert body["room"] == "café"
    assert [message["id"] for message in body["messages"]] == [1]


def test_messages_endpoint_refuses_post(client):
    assert client.post("/chat/lobby/messages/").status_code == 405


def test_a_room_called_name_is_a_room_like_any_other(client):
    response = client.get("/chat/name/")
    assert response.status_code == 200
    assert '<script id="room-name" type="application/json">"name"</script>' in (
        response.content.decode()
    )


PAGES = ["/chat/", "/chat/lobby/", "/accounts/login/", "/accounts/signup/"]
PAGES += ["/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_a_strict_csp_and_a_permissions_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200
    directives = response["Content-Security-Policy"].split(";")
    policy = dict(directive.strip().split(" ", 1) for directive in directives)
    assert policy["script-src"] == policy["style-src"] == policy["default-src"] == "'self'"
    assert policy["object-src"] == policy["base-uri"] == "'none'"
    assert "camera=()" in response["Permissions-Policy"]
    assert "microphone=()" in response["Permissions-Policy"]


class _InlineCode(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles and event handlers."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and "src" not in attributes:
            if attributes.get("type") != "application/json":
                self.found.append(f"inline <script> at {self.getpos()}")
        if tag == "style":
            self.found.append(f"<style> at {self.getpos()}")
        self.found += [f"{name}= on <{tag}>" for name in attributes if name.startswith("on")]
        if "style" in attributes:
            self.found.append(f"style= on <{tag}>")


@pytest.mark.parametrize("path", [*PAGES, "/chat/two%20words/", "/chat/?room=two+words"])
def test_pages_hold_no_inline_script_style_or_event_handler(client, path):
    parser = _InlineCode()
    parser.feed(client.get(path).content.decode())
    assert parser.found == []


def _reset_link(message) -> str:
    return re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)


def test_password_reset_mails_a_link_that_sets_a_new_password(
    client, django_user_model, mailoutbox
):
    django_user_model.objects.create_user("alice", "alice@example.com", "old-Secret-42")
    assert client.get(reverse("password_reset")).status_code == 200
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("password_reset_done")
    password_reset.wait_for_sent_mails()  # sent after the response (chat.password_reset)
    [message] = mailoutbox
    assert message.to == ["alice@example.com"]

    set_password_page = client.get(_reset_link(message), follow=True)
    assert set_password_page.context["validlink"]
    new = "brand-New-secret-77"
    done = client.post(
        set_password_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
    )
    assert done["Location"] == reverse("password_reset_complete")
    logged_in = client.post(reverse("login"), {"username": "alice", "password": new})
    assert logged_in.status_code == 302 and logged_in["Location"] == "/chat/"


def test_password_reset_for_an_unknown_address_says_the_same_and_mails_nothing(client, mailoutbox):
    response = client.post(reverse("password_reset"), {"email": "nobody@example.com"})
    assert response["Location"] == reverse("password_reset_done")
    password_reset.wait_for_sent_mails()
    assert mailoutbox == []


def test_password_reset_with_the_mail_server_down_answers_and_logs_one_error(
    client, django_user_model, settings, caplog
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens
    django_user_model.objects.create_user("alice", "alice@example.com", "old-Secret-42")
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302
    password_reset.wait_for_sent_mails()
    [error] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "password reset email" in error.getMessage().lower()


def test_login_page_links_to_password_reset(client):
    assert reverse("password_reset") in client.get(reverse("login")).content.decode()


def _chat(room_name: str, *texts: str, author: str = "seeder"):
    for text in texts:
        services.store_message(room_name, services.Author(author), text, None)


def _present(room_name: str, *people: tuple[str, str]) -> list[tuple[str, str]]:
    """Put one socket per (person key, label) in a room's presence list in Redis."""
    group = rooms.group_name(room_name)
    entries = [
        (group, presence.member(f"test.channel!{room_name}{n}", person, label))
        for n, (person, label) in enumerate(people)
    ]
    _apply_presence(entries, ())
    return entries


def _apply_presence(joins, leaves):
    async def apply():
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        await presence.apply(client, joins, leaves, ())
        await client.aclose()

    async_to_sync(apply)()


@pytest.fixture
def rooms_with_activity(redis_channel_layer):
    """Three rooms, "old" the least recently active, "new" the most; people in two."""
    _chat("old", "one")
    _chat("mid", "one", "two")
    _chat("new", "one", "two", "three")
    alice = ("u:1", "alice")
    # alice has two tabs open: she counts once.
    entries = _present("new", alice, ("g:1f", "Zoë (guest)"), alice)
    entries += _present("old", ("u:2", "bob"))
    yield
    _apply_presence((), entries)


def test_index_lists_rooms_with_recent_activity_newest_first_with_people_online(
    client, rooms_with_activity
):
    html = client.get("/chat/").content.decode()
    listed = re.findall(r'<li class="room-entry" data-room="([^"]+)">', html)
    assert listed == ["new", "mid", "old"]
    assert 'href="/chat/new/"' in html and "2 online" in html and "1 online" in html
    last_at = Room.objects.get(name="new").last_message_at.isoformat()
    assert f'<time class="local" datetime="{last_at}">' in html
    # The tutorial's room chooser is still there.
    assert 'id="room-name-input"' in html and 'id="room-name-submit"' in html


@pytest.mark.parametrize("lookalike", ["Lobby", "l\u043ebby", "lobby."])
def test_the_page_of_a_new_room_that_looks_like_an_existing_one_sends_you_there(client, lookalike):
    _chat("lobby", "hello")
    response = client.get(reverse("chat:room", kwargs={"room_name": lookalike}))
    assert (response.status_code, response["Location"]) == (302, "/chat/lobby/")
    assert client.get("/chat/lobby/").status_code == 200


def test_a_lookalike_room_from_before_the_rule_keeps_its_page_and_is_not_listed(
    client, redis_channel_layer
):
    _chat("lobby", "the first")
    # From before the rule: the migration left it its messages and no key.
    Room.objects.create(name="l\u043ebby", key=None, last_seq=1, last_message_at=timezone.now())
    assert client.get(reverse("chat:room", kwargs={"room_name": "l\u043ebby"})).status_code == 200
    html = client.get("/chat/").content.decode()
    assert re.findall(r'<li class="room-entry" data-room="([^"]+)">', html) == ["lobby"]
    listed = client.get("/api/rooms/", {"room": "l\u043ebby"}).json()["rooms"]
    assert [room["name"] for room in listed] == ["lobby"]


def test_a_room_is_dated_by_its_newest_message(db):
    _chat("lobby", "one", "two")
    newest = Message.objects.get(room_id="lobby", seq=2)
    assert Room.objects.get(name="lobby").last_message_at == newest.created


def test_room_list_gives_each_rooms_last_id_last_time_and_people_online(
    client, rooms_with_activity
):
    response = client.get("/api/rooms/")
    assert response.status_code == 200
    listed = response.json()["rooms"]
    assert [room["name"] for room in listed] == ["new", "mid", "old"]
    newest = Message.objects.get(room_id="new", seq=3)
    assert listed[0] == {
        "name": "new",
        "title": "new",
        "last_id": 3,
        "last_at": newest.created.isoformat(),
        "online": 2,
        "read_up_to": None,
    }
    assert [(room["last_id"], room["online"]) for room in listed[1:]] == [(2, 0), (1, 1)]


def test_room_list_reads_who_is_online_in_one_redis_round_trip(
    client, rooms_with_activity, monkeypatch
):
    round_trips = []
    send = redis.connection.Connection.send_packed_command

    def counted(connection, command, check_health=True):
        round_trips.append(command)
        return send(connection, command, check_health)

    # Once before counting: a fresh connection's handshake (CLIENT SETINFO, run alone this
    # test is the first to connect) is the connection's, not the list's.
    client.get("/api/rooms/")
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    assert len(client.get("/api/rooms/").json()["rooms"]) == 3
    assert len(round_trips) == 2  # the per-address limit's, and presence's


def test_room_list_adds_the_rooms_the_page_names_beyond_the_most_active(
    client, rooms_with_activity, settings
):
    settings.CHAT_ROOM_LIST_SIZE = 1
    listed = client.get("/api/rooms/", {"room": "old"}).json()["rooms"]
    assert [room["name"] for room in listed] == ["new", "old"]


@pytest.mark.parametrize("query", [{"room": "two words"}, {"room": [f"r{n}" for n in range(31)]}])
def test_room_list_refuses_bad_room_names_with_a_clear_400(client, query):
    response = client.get("/api/rooms/", query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid_room_name", "too_many_rooms"}


def test_the_sidebars_room_list_is_a_304_until_a_message_or_a_read_changes_it(
    client, django_user_model, redis_channel_layer, django_assert_max_num_queries, monkeypatch
):
    client.force_login(django_user_model.objects.create_user("alice"))
    _chat("lobby", "one", "two")
    sidebar = functools.partial(client.get, "/api/rooms/", {"online": "0", "room": "lobby"})
    first = sidebar()
    assert first.status_code == 200 and first["Cache-Control"] == "private, no-cache"
    assert first.json()["rooms"] == [
        {"name": "lobby", "title": "lobby", "last_id": 2,
         "last_at": first.json()["rooms"][0]["last_at"], "read_up_to": None}
    ]  # fmt: skip
    etag = first["ETag"]

    monkeypatch.setattr(presence, "snapshots", None)  # the sidebar's list reads no presence
    # The session, its user, and the list's 5 lookups (the member's rooms among them).
    with django_assert_max_num_queries(7):
        unchanged = sidebar(HTTP_IF_NONE_MATCH=etag)
    assert (unchanged.status_code, unchanged["ETag"], unchanged.content) == (304, etag, b"")
    monkeypatch.undo()

    _chat("lobby", "three")
    after_a_message = sidebar(HTTP_IF_NONE_MATCH=etag)
    assert after_a_message.status_code == 200 and after_a_message["ETag"] != etag
    assert after_a_message.json()["rooms"][0]["last_id"] == 3
    etag = after_a_message["ETag"]
    client.post("/api/rooms/lobby/read/", {"up_to": "3"})
    after_a_read = sidebar(HTTP_IF_NONE_MATCH=etag)
    assert after_a_read.status_code == 200
    assert after_a_read.json()["rooms"][0]["read_up_to"] == 3
    assert sidebar(HTTP_IF_NONE_MATCH=after_a_read["ETag"]).status_code == 304


# A full scan of a table in SQLite's query plan: "SCAN chat_room", with no index named.
FULL_SCAN = re.compile(r"SCAN (chat_\w+)$")


def test_the_sidebars_room_list_and_its_304_read_no_table_whole(
    client, django_user_model, redis_channel_layer
):
    if connection.vendor != "sqlite":
        pytest.skip("reads SQLite's query plans (EXPLAIN QUERY PLAN)")
    alice = django_user_model.objects.create_user("alice")
    client.force_login(alice)
    _chat("lobby", "one", "two")
    ReadPosition.objects.create(user=alice, room_name="lobby", last_read_id=1)
    sidebar = functools.partial(client.get, "/api/rooms/", {"online": "0", "room": "lobby"})
    with CaptureQueriesContext(connection) as queries:
        etag = sidebar()["ETag"]
        assert sidebar(HTTP_IF_NONE_MATCH=etag).status_code == 304
    with connection.cursor() as cursor:
        plans = [
            (query["sql"], detail)
            for query in queries
            for *_, detail in cursor.execute(f"EXPLAIN QUERY PLAN {query['sql']}").fetchall()
        ]
    assert [(sql, detail) for sql, detail in plans if FULL_SCAN.search(detail)] == []


def test_the_room_list_with_presence_answers_304_to_the_etag_of_the_same_body(
    client, rooms_with_activity
):
    first = client.get("/api/rooms/")
    assert first.status_code == 200 and first["ETag"]
    again = client.get("/api/rooms/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    entries = _present("mid", ("g:2b", "Zed (guest)"))  # someone comes: the body changes
    try:
        assert client.get("/api/rooms/", HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200
    finally:
        _apply_presence((), entries)


def test_a_users_read_position_moves_forward_only_and_never_past_the_last_message(
    client, django_user_model, redis_channel_layer
):
    client.force_login(django_user_model.objects.create_user("alice"))
    _chat("lobby", "one", "two", "three")
    read = functools.partial(client.post, "/api/rooms/lobby/read/")
    assert read({"up_to": "2"}).json() == {"room": "lobby", "read_up_to": 2}
    assert read({"up_to": "1"}).json()["read_up_to"] == 2  # a stale tab does not go back
    assert read({"up_to": "99"}).json()["read_up_to"] == 3
    listed = client.get("/api/rooms/").json()["rooms"]
    assert [(room["name"], room["read_up_to"]) for room in listed] == [("lobby", 3)]


def test_the_rooms_a_user_has_read_are_listed_for_them_on_every_device(
    client, django_user_model, redis_channel_layer, settings
):
    settings.CHAT_ROOM_LIST_SIZE = 1
    alice = django_user_model.objects.create_user("alice")
    _chat("read-by-alice", "one")
    _chat("busier", "one")
    ReadPosition.objects.create(user=alice, room_name="read-by-alice", last_read_id=1)
    client.force_login(alice)
    listed = client.get("/api/rooms/").json()["rooms"]
    assert [(room["name"], room["read_up_to"]) for room in listed] == [
        ("busier", None),
        ("read-by-alice", 1),
    ]


def test_a_read_position_in_a_room_that_does_not_exist_is_refused_with_404_and_no_row(
    client, django_user_model
):
    client.force_login(django_user_model.objects.create_user("alice"))
    response = client.post("/api/rooms/no-such-room/read/", {"up_to": "5"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_such_room"
    assert not ReadPosition.objects.exists()


def test_read_positions_past_the_limit_per_account_get_429_from_any_address(
    django_user_model, settings
):
    settings.CHAT_LIMIT_READ_REPORTS_PER_PERSON = "2/minute"
    alice = django_user_model.objects.create_user("alice")
    _chat("lobby", "one", "two", "three")

    def report(up_to: int, address: str, user=alice):
        client = Client(REMOTE_ADDR=address)
        client.force_login(user)
        return client.post("/api/rooms/lobby/read/", {"up_to": str(up_to)})

    assert report(1, "203.0.113.1").status_code == 200
    assert report(2, "203.0.113.2").status_code == 200
    refused = report(3, "203.0.113.3")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert ReadPosition.objects.get(user=alice).last_read_id == 2
    bob = django_user_model.objects.create_user("bob")
    assert report(3, "203.0.113.3", bob).status_code == 200


def test_room_list_requests_past_the_limit_per_address_get_429(settings, redis_channel_layer):
    settings.CHAT_LIMIT_ROOM_LIST_PER_ADDRESS = "2/minute"
    tab = Client(REMOTE_ADDR="203.0.113.1")
    assert tab.get("/api/rooms/").status_code == 200
    assert tab.get("/api/rooms/", {"online": "0"}).status_code == 200
    refused = tab.get("/api/rooms/", {"online": "0"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert Client(REMOTE_ADDR="203.0.113.2").get("/api/rooms/").status_code == 200


def test_a_guests_read_position_is_not_kept_on_the_server(client):
    response = client.post("/api/rooms/lobby/read/", {"up_to": "1"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_logged_in"
    assert not ReadPosition.objects.exists()


@pytest.mark.parametrize("up_to", ["", "-1", "1.5", "x", str(2**63)])
def test_an_unreadable_read_position_is_refused_with_a_clear_400(client, django_user_model, up_to):
    client.force_login(django_user_model.objects.create_user("alice"))
    response = client.post("/api/rooms/lobby/read/", {"up_to": up_to})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_up_to"


def test_a_read_position_from_a_page_of_another_sign_in_is_refused_with_409(
    client, django_user_model
):
    alice = django_user_model.objects.create_user("alice")
    client.force_login(alice)
    _chat("lobby", "one", "two")
    alices_page = client.get("/chat/lobby/").context["chat_reader"]["sign_in"]
    read = functools.partial(client.post, "/api/rooms/lobby/read/")
    assert read({"up_to": "1", "as": alices_page}).json()["read_up_to"] == 1
    # Bob logs in in another tab: Alice's page is still open, and reports as it leaves.
    client.force_login(django_user_model.objects.create_user("bob"))
    refused = read({"up_to": "2", "as": alices_page})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "sign_in_changed"
    assert not ReadPosition.objects.filter(user__username="bob").exists()
    assert ReadPosition.objects.get(user=alice).last_read_id == 1
    # Alice again, in a new session: her page's sign-in is hers again.
    client.force_login(alice)
    assert read({"up_to": "2", "as": alices_page}).json()["read_up_to"] == 2


def test_marking_read_needs_the_csrf_token(django_user_model):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("alice"))
    _chat("lobby", "one")
    assert client.post("/api/rooms/lobby/read/", {"up_to": "1"}).status_code == 403
    client.get("/chat/lobby/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post("/api/rooms/lobby/read/", {"up_to": "0"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200


def test_signing_up_with_a_taken_username_is_answered_with_the_form_not_a_500(
    client, django_user_model
):
    django_user_model.objects.create_user("carol", password="correct horse battery staple")
    password = "another horse battery staple"
    response = client.post(
        "/accounts/signup/", {"username": "carol", "password1": password, "password2": password}
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()


@pytest.mark.parametrize("refusal", WRITE_REFUSALS)
@pytest.mark.parametrize("path", ["/chat/lobby/", "/chat/lobby/messages/"])
def test_a_redis_refusing_writes_gets_a_clear_503_not_a_500(
    client, redis_channel_layer, refusal, path
):
    with redis_refusing_writes(redis_channel_layer.url, refusal):
        response = client.get(path, HTTP_ACCEPT="text/html" if path == "/chat/lobby/" else "*/*")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"having trouble" in response.content
    assert client.get(path).status_code == 200  # and served again once it takes writes


# --- Every refusal of an endpoint, in the endpoint's own content type ---------------------


def _twice(path: str, setting: str):
    """The second GET of path, where `setting` allows one a minute."""

    def ask(client, settings):
        setattr(settings, setting, "1/minute")
        client.get(path)
        return client.get(path)

    return ask


def _read_report(path: str = "/api/rooms/lobby/read/", data=None, csrf: bool = False):
    """A logged-in user's read report, with CSRF checks when `csrf`."""

    def report(client, settings):
        client = Client(enforce_csrf_checks=csrf)
        client.force_login(get_user_model().objects.get_or_create(username="ann")[0])
        return client.post(path, {"up_to": "1"} if data is None else data)

    return report


def _read_reports_past_the_limit(client, settings):
    settings.CHAT_LIMIT_READ_REPORTS_PER_PERSON = "1/minute"
    _read_report()(client, settings)
    return _read_report()(client, settings)


JSON_REFUSALS = {
    "bad-after": (lambda c, s: c.get("/chat/lobby/messages/?after=x"), 400, "invalid_page"),
    "after-and-before": (
        lambda c, s: c.get("/chat/lobby/messages/?after=1&before=2"),
        400,
        "invalid_page",
    ),
    "messages-of-an-invalid-name": (
        lambda c, s: c.get("/chat/a%20b/messages/"),
        404,
        "invalid_room_name",
    ),
    "messages-of-a-bad-private-address": (
        lambda c, s: c.get("/chat/~x/messages/"),
        404,
        "invalid_room_name",
    ),
    "messages-of-an-unknown-private-room": (
        lambda c, s: c.get("/chat/~" + "A" * 22 + "/messages/"),
        404,
        "no_such_room",
    ),
    "messages-past-the-limit": (
        _twice("/chat/lobby/messages/", "CHAT_LIMIT_API_PER_ADDRESS"),
        429,
        "rate_limited",
    ),
    "room-list-invalid-name": (
        lambda c, s: c.get("/api/rooms/?room=a%20b"),
        400,
        "invalid_room_name",
    ),
    "room-list-past-the-limit": (
        _twice("/api/rooms/", "CHAT_LIMIT_ROOM_LIST_PER_ADDRESS"),
        429,
        "rate_limited",
    ),
    "read-by-a-guest": (
        lambda c, s: c.post("/api/rooms/lobby/read/", {"up_to": "1"}),
        403,
        "not_logged_in",
    ),
    "read-without-csrf": (_read_report(csrf=True), 403, "csrf_failed"),
    "read-bad-up-to": (_read_report(data={"up_to": "x"}), 400, "invalid_up_to"),
    "read-room-without-messages": (_read_report("/api/rooms/empty/read/"), 404, "no_such_room"),
    "read-invalid-name": (_read_report("/api/rooms/a%20b/read/"), 404, "invalid_room_name"),
    "read-past-the-limit": (_read_reports_past_the_limit, 429, "rate_limited"),
}


@pytest.mark.parametrize(("ask", "status", "code"), JSON_REFUSALS.values(), ids=JSON_REFUSALS)
def test_every_refusal_of_a_json_endpoint_is_json_with_its_code(
    ask, status, code, client, settings
):
    _chat("lobby", "hi")
    response = ask(client, settings)
    assert (response.status_code, response["Content-Type"]) == (status, "application/json")
    assert response.json()["error"]["code"] == code


def test_a_csrf_refusal_of_a_page_is_still_djangos_page():
    response = Client(enforce_csrf_checks=True).post("/accounts/name/", {"display_name": "Zoë"})
    assert (response.status_code, response["Content-Type"]) == (403, "text/html; charset=utf-8")


# --- The index and the room list while Redis hangs or is gone ----------------------------

# What a person waits at most for the index or the sidebar, whatever Redis does.
PAGE_BOUND_SECONDS = 1.0


@pytest.fixture(params=["hanging", "stopped"])
def unanswering_redis(request, settings):
    """REDIS_URL naming a Redis that accepts connections and never answers, or none at all."""
    if request.param == "stopped":
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
        yield
        return
    server = socket.create_server(("127.0.0.1", 0), backlog=128)  # accepted, never read
    settings.REDIS_URL = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    yield
    server.close()


def _timed_get(client, path: str):
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_the_index_answers_within_a_second_without_online_counts_when_redis_does_not(
    client, unanswering_redis
):
    _chat("lobby", "hi")
    response, took = _timed_get(client, "/chat/")
    assert (response.status_code, took < PAGE_BOUND_SECONDS) == (200, True), took
    entry = re.search(r'<li class="room-entry" data-room="lobby">.*?</li>', response.text, re.S)
    assert entry is not None and "online" not in entry.group()


@pytest.mark.parametrize("query", ["", "?online=0"])
def test_the_room_list_answers_within_a_second_without_online_counts_when_redis_does_not(
    client, unanswering_redis, query
):
    _chat("lobby", "hi")
    response, took = _timed_get(client, "/api/rooms/" + query)
    assert (response.status_code, took < PAGE_BOUND_SECONDS) == (200, True), took
    [lobby] = response.json()["rooms"]
    assert (lobby["name"], "online" in lobby) == ("lobby", False)


@pytest.mark.parametrize("lookalike", ["Lobby", "l%D0%BEbby", "Iobby", "lobby."])
def test_the_messages_endpoint_of_a_lookalike_sends_you_to_the_existing_rooms(client, lookalike):
    _chat("lobby", "hello")
    response = client.get(f"/chat/{lookalike}/messages/?after=0&limit=5")
    assert (response.status_code, response["Location"]) == (
        302,
        "/chat/lobby/messages/?after=0&limit=5",
    )
    assert client.get(response["Location"]).json()["messages"][0]["message"] == "hello"


# --- The sidebar's 304 ----------------------------------------------------------------------


def _sidebar(client, etag=None):
    headers = {} if etag is None else {"HTTP_IF_NONE_MATCH": etag}
    return client.get("/api/rooms/", {"online": "0", "room": "lobby"}, **headers)


def test_an_unchanged_sidebar_list_is_a_304_that_builds_no_list(client, monkeypatch):
    _chat("lobby", "one")
    etag = _sidebar(client)["ETag"]

    def never(*args, **kwargs):
        raise AssertionError("the list was built for a 304")

    monkeypatch.setattr(activity, "recent_rooms", never)
    assert _sidebar(client, etag).status_code == 304


def _post_in_another_room(alice):
    _chat("kitchen", "elsewhere")


def _read_further(alice):
    ReadPosition.objects.update_or_create(
        user=alice, room_name="lobby", defaults={"last_read_id": 2}
    )


def _be_removed(alice):
    Membership.objects.filter(user=alice, role=Membership.Role.MEMBER).delete()


def _be_invited(alice, owner_name: str = "owner"):
    owner = get_user_model().objects.create_user(owner_name)
    key = memberships.create_private_room(Author(owner_name, user_id=owner.pk), "Plans")
    memberships.invite(Author(owner_name, user_id=owner.pk), key, "alice")


def _post_in_her_private_room(alice):
    [key] = Membership.objects.filter(user=alice, room__name__startswith=rooms.PRIVATE_MARK)
    _chat(key.room_id, "inside", author="first-owner")


@pytest.mark.parametrize(
    "change",
    [_post_in_another_room, _read_further, _be_removed, _be_invited, _post_in_her_private_room],
)
def test_the_sidebars_etag_changes_with_anything_its_list_is_made_of(client, change):
    alice = get_user_model().objects.create_user("alice")
    client.force_login(alice)
    _chat("lobby", "one", "two")
    _be_invited(alice, "first-owner")  # to a private room, listed to alice alone
    ReadPosition.objects.create(user=alice, room_name="lobby", last_read_id=1)
    first = _sidebar(client)
    assert _sidebar(client, first["ETag"]).status_code == 304
    change(alice)
    again = _sidebar(client, first["ETag"])
    assert (again.status_code, again["ETag"] != first["ETag"]) == (200, True)


@pytest.mark.parametrize("reader", ["guest", "stranger"])
def test_the_sidebars_etag_says_nothing_of_rooms_its_reader_may_not_see(client, reader):
    users = get_user_model().objects
    bob, carol = users.create_user("bob"), users.create_user("carol")
    if reader == "stranger":
        client.force_login(users.create_user("dave"))
    _chat("lobby", "one")
    private = memberships.create_private_room(Author("bob", user_id=bob.pk), "Plans")
    first = _sidebar(client)["ETag"]
    _chat(private, "secret", author="bob")
    services.store_message(
        rooms.direct_key(bob.pk, carol.pk), Author("bob", user_id=bob.pk), "psst", None
    )
    assert _sidebar(client, first).status_code == 304


def test_the_page_tells_a_rooms_moderator_and_staff_they_may_delete_anyones_message(
    client, django_user_model
):
    def reader(html: str) -> dict:
        return json.loads(
            html.split('<script id="chat-reader" type="application/json">')[1].split("<")[0]
        )

    owner = django_user_model.objects.create_user("owner", password="x")
    services.store_message("lobby", services.Author("owner", user_id=owner.pk), "mine", None)
    for user, moderates in (
        (owner, True),
        (django_user_model.objects.create_user("staff", password="x", is_staff=True), True),
        (django_user_model.objects.create_user("member", password="x"), False),
    ):
        client.force_login(user)
        assert reader(client.get("/chat/lobby/").content.decode())["moderates"] is moderates


def test_index_says_a_room_without_messages_has_none_yet(client):
    alice = get_user_model().objects.create_user("alice")
    client.force_login(alice)
    key = memberships.create_private_room(Author("alice", user_id=alice.pk), "Plans")
    html = client.get("/chat/").content.decode()
    entry = re.search(rf'<li class="room-entry" data-room="{key}">(.*?)</li>', html, re.S)
    assert "no messages yet" in entry.group(1)
    assert "None" not in entry.group(1) and "<time" not in entry.group(1)


def test_a_private_room_left_says_so_as_one_that_never_was_not_the_name_rule(client):
    alice = get_user_model().objects.create_user("alice")
    bob = get_user_model().objects.create_user("bob")
    key = memberships.create_private_room(Author("alice", user_id=alice.pk), "Plans")
    memberships.invite(Author("alice", user_id=alice.pk), key, "bob")
    memberships.leave(Author("bob", user_id=bob.pk), key)
    client.force_login(bob)
    left = client.get(f"/chat/{key}/")
    never = client.get(f"/chat/{key[:-1]}{'B' if key.endswith('A') else 'A'}/")
    assert (left.status_code, never.status_code) == (404, 404)
    page = left.content.decode()
    assert page == never.content.decode().replace(
        never.request["PATH_INFO"], left.request["PATH_INFO"]
    )
    assert "private and you are not one of its members" in page and "Room names may" not in page
