"""Moderation in real headless Chromium, on a phone and a desktop screen: a kicked reader's
page offers to rejoin, a banned one's stays closed, and a moderator acts from the menu on a
guest's message."""

import json
import os
import re
from datetime import UTC, datetime, timedelta

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from chat import protocol
from chat.tests import test_browser, test_browser_memberships
from chat.tests.test_browser import _navigate_by, _post_message, _rich_texts, _sign_up, _wait
from chat.tests.test_browser_memberships import PASSWORD, _connected, _fits, _Server
from chat.tests.test_memberships import _close_code, _open, _signed_up
from chat.tests.test_revocation import Browser
from conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("limits_count_from_zero")]
# test_browser's fixtures: one headless Chromium per module, cleared after each test.
driver = test_browser.driver
browser = test_browser.browser
screen = test_browser_memberships.screen  # 390x844 and 1280x800

SCREENSHOT = ROOT / "docs" / "screenshots" / "moderation.png"


def _owned_room(chat_server: str, owner_name: str, room: str) -> Browser:
    """A public room whose first message, so its owner, is a new user's: their browser."""
    owner = _signed_up(_Server(chat_server), owner_name)
    socket = _open(_Server(chat_server), owner, room)
    socket.send(json.dumps({"message": "welcome"}))
    while json.loads(socket.recv()).get("message") != "welcome":
        pass
    socket.close()
    return owner


def _reader_of_owned_room(browser, chat_server: str, owner_name: str, reader: str, room: str):
    """The owner's browser of a new public room that `browser`, signed up as `reader`, has open."""
    owner = _owned_room(chat_server, owner_name, room)
    _sign_up(browser, chat_server, reader, PASSWORD)
    browser.get(chat_server + f"/chat/{room}/")
    _connected(browser)
    return owner


def _status_element(driver):
    return driver.find_element(By.ID, "connection-status")


def test_a_kicked_readers_page_says_so_and_rejoins_only_when_asked(browser, chat_server, screen):
    width = screen["width"]
    room = f"kick-{width}"
    owner = _reader_of_owned_room(browser, chat_server, f"kicker{width}", f"kicked{width}", room)
    owner.post_form(chat_server, f"/rooms/{room}/kick/", {"username": f"kicked{width}"}, "/chat/")
    status = _status_element(browser)
    _wait(browser, lambda: status.text.startswith("A moderator removed you from this room."))
    assert status.get_attribute("data-code") == str(protocol.CLOSE_KICKED)
    assert "Reconnecting" not in status.text
    assert _fits(browser)
    browser.find_element(By.ID, "rejoin").click()
    _connected(browser)
    browser.find_element(By.ID, "chat-message-input").click()
    _post_message(browser, "I am back")
    _wait(browser, lambda: _rich_texts(browser)[-1:] == ["I am back"])


def test_a_banned_readers_page_says_so_and_stays_closed(browser, chat_server, screen):
    width = screen["width"]
    room = f"ban-{width}"
    owner = _reader_of_owned_room(browser, chat_server, f"banner{width}", f"banned{width}", room)
    fields = {"username": f"banned{width}", "duration": "1d"}
    owner.post_form(chat_server, f"/rooms/{room}/ban/", fields, "/chat/")
    status = _status_element(browser)
    _wait(browser, lambda: status.text == "You are banned from this room.")
    assert status.get_attribute("data-code") == str(protocol.CLOSE_BANNED)
    assert _fits(browser)
    browser.refresh()  # and a new page is turned away at once, with the same words
    status = _status_element(browser)
    _wait(browser, lambda: status.text == "You are banned from this room.")


def test_a_moderator_mutes_a_guest_from_the_menu_on_their_message(browser, chat_server, screen):
    width = screen["width"]
    room = f"mute-{width}"
    _sign_up(browser, chat_server, f"moderator{width}", PASSWORD)
    browser.get(chat_server + f"/chat/{room}/")
    _connected(browser)
    _post_message(browser, "my room, my rules")  # its first message: the reader owns it
    _wait(browser, lambda: _rich_texts(browser) == ["my room, my rules"])
    browser.refresh()  # the page of the room's owner now: it shows them the menus
    _connected(browser)
    guest = Browser()
    guest.opener.open(chat_server + f"/chat/{room}/").read()  # a guest session
    guest_socket = _open(_Server(chat_server), guest, room)
    guest_socket.send(json.dumps({"message": "BUY CHEAP WATCHES"}))
    _wait(browser, lambda: _rich_texts(browser)[-1:] == ["BUY CHEAP WATCHES"])
    message = browser.find_elements(By.CSS_SELECTOR, "#messages .message")[-1]
    assert not browser.find_elements(By.CSS_SELECTOR, ".message.mine .moderation-menu")
    summary = message.find_element(By.CSS_SELECTOR, ".moderation-menu > summary")
    guest_label = summary.get_attribute("aria-label").removeprefix("Actions for ")
    assert re.fullmatch(r"Guest [0-9a-f]{4} \(guest\)", guest_label)
    summary.click()
    mute = message.find_element(By.CSS_SELECTOR, "form.mute")
    Select(mute.find_element(By.NAME, "duration")).select_by_visible_text("1 hour")
    mute.find_element(By.NAME, "reason").send_keys("spam")
    assert _fits(browser)
    if os.environ.get("CHAT_SCREENSHOTS") and width == 1280:
        browser.save_screenshot(str(SCREENSHOT))
    _navigate_by(browser, mute.find_element(By.TAG_NAME, "button").click)
    _connected(browser)
    assert f"{guest_label} is muted." in browser.find_element(By.ID, "room-notices").text
    browser.find_element(By.CSS_SELECTOR, "#room-sanctions summary").click()
    listed = browser.find_element(By.CSS_SELECTOR, "#sanction-list .sanction")
    assert guest_label in listed.text and "muted until" in listed.text
    ends = listed.find_element(By.TAG_NAME, "time")
    assert ends.text == _in_readers_time(browser, ends.get_attribute("datetime"))
    guest_socket.send(json.dumps({"message": "still here?", "client_id": "after-mute"}))
    while "error" not in (frame := json.loads(guest_socket.recv())):
        pass
    assert frame["error"]["code"] == "muted"
    _navigate_by(browser, listed.find_element(By.CSS_SELECTOR, "button.lift").click)
    assert "The mute is lifted." in browser.find_element(By.ID, "room-notices").text
    guest_socket.close()


def _in_readers_time(driver, moment: str) -> str:
    """How the page says a moment (ISO 8601) in its reader's time, as dates.js does."""
    return driver.execute_script("return chatDates.full(new Date(arguments[0]))", moment)


def test_a_muted_readers_page_says_until_when_in_their_own_time(browser, chat_server, screen):
    width = screen["width"]
    room = f"muted-{width}"
    owner = _reader_of_owned_room(browser, chat_server, f"muter{width}", f"muted{width}", room)
    fields = {"username": f"muted{width}", "duration": "1h"}
    before = datetime.now(UTC) + timedelta(hours=1)
    owner.post_form(chat_server, f"/rooms/{room}/mute/", fields, "/chat/")
    after = datetime.now(UTC) + timedelta(hours=1)
    _post_message(browser, "am I muted?")
    error = browser.find_element(By.ID, "chat-error")
    _wait(browser, lambda: error.get_attribute("data-code") == "muted")
    said = {
        f"A moderator muted you in this room until {_in_readers_time(browser, end.isoformat())}."
        for end in (before, after)  # the same minute, but for a test at a minute's turn
    }
    assert error.text in said
    refused = browser.find_element(By.CSS_SELECTOR, "#messages .message.pending")
    assert f"Not sent: {error.text}" in refused.text
    assert _fits(browser)


def test_a_moderator_kicks_a_person_from_the_presence_list(browser, chat_server, screen):
    width = screen["width"]
    room, name = f"presence-kick-{width}", f"noisy{width}"
    _sign_up(browser, chat_server, f"keeper{width}", PASSWORD)
    browser.get(chat_server + f"/chat/{room}/")
    _connected(browser)
    _post_message(browser, "house rules apply")  # its first message: the reader owns it
    _wait(browser, lambda: _rich_texts(browser) == ["house rules apply"])
    browser.refresh()
    _connected(browser)
    person = _signed_up(_Server(chat_server), name)
    socket = _open(_Server(chat_server), person, room)
    socket.settimeout(5)
    menu = "#presence li .moderation-menu > summary"
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, menu), "no menu on the person")
    (summary,) = browser.find_elements(By.CSS_SELECTOR, menu)
    assert summary.get_attribute("aria-label") == f"Actions for {name}"
    summary.click()
    assert _fits(browser)
    kick = browser.find_element(By.CSS_SELECTOR, "#presence form.kick button")
    _navigate_by(browser, kick.click)
    assert _close_code(socket) == protocol.CLOSE_KICKED
    assert f"{name} was removed from the room." in browser.find_element(By.ID, "room-notices").text
    socket.shutdown()


def _menu_actions(driver) -> dict:
    """By message id: the actions of its "⋯" menu, or None without one."""
    return driver.execute_script(
        "const found = {};"
        "for (const m of document.querySelectorAll('#messages .message[data-id]')) {"
        "  const menu = m.querySelector(':scope > .moderation-menu');"
        "  found[m.dataset.id] = menu && Array.from("
        "    menu.querySelectorAll('form button'), (b) => b.textContent);"
        "}"
        "return found;"
    )


@pytest.mark.parametrize("moderates", [False, True], ids=["reader", "moderator"])
def test_a_deleted_message_offers_no_report_and_no_menu_to_a_reader(
    browser, chat_server, moderates
):
    room = f"deleted-menu-{moderates}".lower()
    if moderates:  # the room's owner: its first message is theirs
        _sign_up(browser, chat_server, "menuowner", PASSWORD)
        browser.get(chat_server + f"/chat/{room}/")
        _connected(browser)
        _post_message(browser, "my room")
        _wait(browser, lambda: _rich_texts(browser) == ["my room"])
    guest = Browser()
    guest.opener.open(chat_server + f"/chat/{room}/").read()  # a guest session
    guest_socket = _open(_Server(chat_server), guest, room)
    for text in ("kept", "taken back"):
        guest_socket.send(json.dumps({"message": text}))
    browser.get(chat_server + f"/chat/{room}/")
    _connected(browser)
    _wait(browser, lambda: _rich_texts(browser)[-2:] == ["kept", "taken back"])
    kept, taken_back = (str(seq) for seq in range(1 + moderates, 3 + moderates))
    everything = ["Report", "Mute", "Kick", "Ban"] if moderates else ["Report"]
    assert _menu_actions(browser)[taken_back] == everything

    guest_socket.send(json.dumps({"delete": {"id": int(taken_back)}}))  # live, on this page
    left = ["Mute", "Kick", "Ban"] if moderates else None
    _wait(browser, lambda: _menu_actions(browser)[taken_back] == left, "the menu stayed as it was")
    assert _menu_actions(browser)[kept] == everything
    browser.refresh()  # and from the history
    _connected(browser)
    _wait(browser, lambda: taken_back in _menu_actions(browser))
    assert _menu_actions(browser)[taken_back] == left
    guest_socket.close()
