"""Private rooms and direct messages in real headless Chromium: made, shared, left, and a
conversation opened from a person's name, on a phone and a desktop screen."""

import json

import pytest
from axe_selenium_python import Axe
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from chat import protocol
from chat.tests import test_browser
from chat.tests.test_browser import (
    DESKTOP,
    PHONE,
    SERIOUS,
    _navigate_by,
    _post_message,
    _rich_texts,
    _sidebar_lists,
    _sign_up,
    _status,
    _wait,
)
from chat.tests.test_memberships import _follow, _open, _signed_up

# As test_browser's: each test's sign-ups (at most 10 an hour from one address) start from zero.
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("limits_count_from_zero")]
# test_browser's fixtures: one headless Chromium per module, cleared after each test.
driver = test_browser.driver
browser = test_browser.browser

PASSWORD = "private-Rooms-42"


class _Server:
    """chat_server's URL in the shape test_memberships' helpers take."""

    def __init__(self, url: str):
        self.url = url


@pytest.fixture(params=[PHONE, DESKTOP], ids=["phone", "desktop"])
def screen(request, browser):
    """The browser at 390x844 (a phone) or 1280x800."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", request.param)
    yield request.param
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def _connected(driver):
    _wait(driver, lambda: _status(driver) == "Connected", "socket never opened")


def _receive_until(socket, text: str):
    while json.loads(socket.recv()).get("message") != text:
        pass


def test_a_private_room_is_made_and_shared_from_its_page(browser, chat_server, screen):
    width = screen["width"]
    guest_list = _signed_up(_Server(chat_server), f"invitee{width}")
    _sign_up(browser, chat_server, f"owner{width}", PASSWORD)
    browser.get(chat_server + "/chat/")
    browser.find_element(By.ID, "private-room-title").send_keys("Weekend plans")
    _navigate_by(browser, browser.find_element(By.ID, "private-room-submit").click)
    _connected(browser)
    room = browser.current_url.split("/")[-2]
    assert room.startswith("~")
    assert browser.find_element(By.ID, "room-title").text == "Weekend plans"
    assert _fits(browser)

    browser.find_element(By.CSS_SELECTOR, "#room-members summary").click()
    browser.find_element(By.ID, "invite-username").send_keys(f"invitee{width}")
    _navigate_by(browser, browser.find_element(By.ID, "invite-submit").click)
    _connected(browser)
    assert f"invitee{width} is now a member." in browser.find_element(By.ID, "room-notices").text
    assert _shown_as_notices(browser, "#room-notices")
    browser.find_element(By.CSS_SELECTOR, "#room-members summary").click()
    listed = browser.find_elements(By.CSS_SELECTOR, "#member-list .member .name")
    assert [item.text for item in listed] == [f"owner{width}", f"invitee{width}"]
    assert _fits(browser)

    socket = _open(_Server(chat_server), guest_list, room)
    socket.send(json.dumps({"message": "count me in"}))
    _wait(browser, lambda: _rich_texts(browser) == ["count me in"], "the member's post")
    _wait(browser, lambda: _sidebar_lists(browser, room), "the room is not in the sidebar")
    socket.close()


def _shown_as_notices(driver, selector: str) -> bool:
    """Whether the list's notices (Django's messages) are boxes, as the page's other
    notices are, and not bare bullet points."""
    return driver.execute_script(
        """const list = document.querySelector(arguments[0]);
           return getComputedStyle(list).listStyleType === 'none' &&
               [...list.querySelectorAll('.notice')].every((notice) =>
                   getComputedStyle(notice).backgroundColor !== 'rgba(0, 0, 0, 0)');""",
        selector,
    )


def _member_of_private_room(browser, chat_server: str, owner_name: str, member: str):
    """(the owner's browser, the room) of a new private room that `browser`, signed up as
    `member` and invited, has open."""
    owner = _signed_up(_Server(chat_server), owner_name)
    _sign_up(browser, chat_server, member, PASSWORD)
    room = _create_and_invite(owner, chat_server, member)
    browser.get(chat_server + f"/chat/{room}/")
    _connected(browser)
    return owner, room


def test_a_member_who_leaves_is_told_so_on_the_index_in_a_notice(browser, chat_server):
    _, room = _member_of_private_room(browser, chat_server, "leaving-owner", "departing")
    browser.find_element(By.CSS_SELECTOR, "#room-members summary").click()
    browser.find_element(By.ID, "leave-room").click()
    _navigate_by(browser, browser.switch_to.active_element.click)  # the confirm step's Leave
    assert browser.find_element(By.ID, "index-notices").text == "You left the room."
    assert _shown_as_notices(browser, "#index-notices")


def test_leaving_a_room_asks_first_and_cancel_or_escape_keeps_you_there(browser, chat_server):
    _, room = _member_of_private_room(browser, chat_server, "asking-owner", "hesitant")
    browser.find_element(By.CSS_SELECTOR, "#room-members summary").click()
    leave = browser.find_element(By.ID, "leave-room")
    for answer in ("cancel", "escape"):
        leave.click()  # nothing is sent yet: the button gives way to the question
        confirm = browser.switch_to.active_element
        assert (confirm.text, leave.is_displayed()) == ("Leave", False)
        question = browser.find_element(By.ID, confirm.get_attribute("aria-describedby"))
        assert question.text == "Leave this room? Only a new invitation brings you back."
        axe = Axe(browser)
        axe.inject()
        serious = [v for v in axe.run()["violations"] if v["impact"] in SERIOUS]
        assert serious == [], axe.report(serious)
        if answer == "cancel":
            browser.find_element(By.CSS_SELECTOR, "#leave-form .confirm-no").click()
        else:
            confirm.send_keys(Keys.ESCAPE)
        assert browser.switch_to.active_element == leave and leave.is_displayed()
        assert not browser.find_elements(By.CSS_SELECTOR, "#leave-form .confirm")
    browser.refresh()  # still a member
    _connected(browser)
    assert browser.find_element(By.ID, "leave-room")


def test_a_removed_members_page_says_so_and_stays_closed(browser, chat_server):
    owner, room = _member_of_private_room(browser, chat_server, "remover", "removed")
    owner.post_form(chat_server, f"/rooms/{room}/remove/", {"username": "removed"}, "/chat/")
    status = browser.find_element(By.ID, "connection-status")
    _wait(browser, lambda: status.text == "You are no longer a member of this room.")
    assert status.get_attribute("data-code") == str(protocol.CLOSE_NOT_A_MEMBER)
    browser.refresh()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"


def _create_and_invite(owner, base_url: str, username: str) -> str:
    room = _follow(owner, base_url, "/rooms/new/", {"title": "Plans"}, "/chat/").split("/")[2]
    owner.post_form(base_url, f"/rooms/{room}/invite/", {"username": username}, "/chat/")
    return room


def test_a_direct_conversation_opens_from_a_name_in_the_presence_list(browser, chat_server, screen):
    width = screen["width"]
    bob_name, alice_name, lobby = f"bob{width}", f"alice{width}", f"meet-{width}"
    bob = _signed_up(_Server(chat_server), bob_name)
    bobs_lobby = _open(_Server(chat_server), bob, lobby)
    _sign_up(browser, chat_server, alice_name, PASSWORD)
    browser.get(chat_server + f"/chat/{lobby}/")
    _connected(browser)
    link = f'#presence a.dm-link[href="/chat/%40{bob_name}/"]'
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, link), "no link to bob")
    assert _fits(browser)
    _navigate_by(browser, browser.find_element(By.CSS_SELECTOR, link).click)
    _connected(browser)
    assert browser.find_element(By.ID, "room-title").text == f"@{bob_name}"
    _post_message(browser, "hi bob")
    _wait(browser, lambda: _rich_texts(browser) == ["hi bob"])
    bobs_dm = _open(_Server(chat_server), bob, f"@{alice_name}")  # the same room, from bob's side
    _receive_until(bobs_dm, "hi bob")
    bobs_dm.send(json.dumps({"message": "hi alice"}))
    _wait(browser, lambda: _rich_texts(browser) == ["hi bob", "hi alice"])
    _wait(browser, lambda: _sidebar_lists(browser, f"@{bob_name}"), "no DM in the sidebar")
    assert _fits(browser)
    bobs_lobby.close()
    bobs_dm.close()


def _recent_rooms(driver) -> list[str]:
    return [link.text for link in driver.find_elements(By.CSS_SELECTOR, "#recent-rooms-list a")]


def test_the_index_names_a_recent_private_room_by_title_and_drops_it_once_gone(
    browser, chat_server
):
    owner = _signed_up(_Server(chat_server), "keeper")
    _sign_up(browser, chat_server, "visitor", PASSWORD)
    room = _create_and_invite(owner, chat_server, "visitor")
    for visited in ("lobby", room):  # each remembered as a recent room by its page
        browser.get(chat_server + f"/chat/{visited}/")
        _connected(browser)
    browser.get(chat_server + "/chat/")
    _wait(browser, lambda: _recent_rooms(browser) == ["Plans", "lobby"], "title, not ~key")

    owner.post_form(chat_server, f"/rooms/{room}/remove/", {"username": "visitor"}, "/chat/")
    browser.get(chat_server + "/chat/")
    _wait(browser, lambda: _recent_rooms(browser) == ["lobby"], "a room it may not open")
