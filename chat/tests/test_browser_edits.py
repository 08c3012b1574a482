"""Editing and deleting messages in real headless Chromium, as people see them: the controls,
inline editing by keyboard, "(edited)" and "message deleted" in another tab, on a phone and
a desktop screen."""

import os

import pytest
from axe_selenium_python import Axe
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from chat.tests import test_browser
from chat.tests.test_browser import (
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    SERIOUS,
    _chat_log_value,
    _enter_chat_room,
    _open_new_window,
    _post_message,
    _rich_texts,
    _status,
    _switch_to_window,
    _wait,
)

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("limits_count_from_zero")]
# test_browser's fixtures: one headless Chromium per module, cleared after each test.
driver = test_browser.driver
browser = test_browser.browser


@pytest.fixture(params=[PHONE, DESKTOP], ids=["phone", "desktop"])
def screen(request, browser):
    """The browser at 390x844 (a phone) or 1280x800."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", request.param)
    yield request.param
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _message(driver, seq: int):
    return driver.find_element(By.CSS_SELECTOR, f'#messages .message[data-id="{seq}"]')


def _control(driver, seq: int, name: str):
    """A control of message seq, pointed at first: controls show under the pointer."""
    ActionChains(driver).move_to_element(_message(driver, seq)).perform()
    return _message(driver, seq).find_element(By.CSS_SELECTOR, f".{name}")


def _shown(driver, seq: int) -> dict:
    return driver.execute_script(
        "const m = document.querySelector(`#messages .message[data-id='${arguments[0]}']`);"
        "const edited = m.querySelector('.edited');"
        "return {text: m.querySelector('.text').textContent,"
        " edited: edited && edited.textContent, editedTitle: edited && edited.title,"
        " deleted: m.classList.contains('deleted'),"
        " controls: Array.from(m.querySelectorAll('.actions button'), (b) => b.textContent)};",
        seq,
    )


def _fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_an_edit_and_a_deletion_reach_another_tab_as_people_see_them(browser, chat_server, screen):
    room = f"edits-{screen['width']}"
    _enter_chat_room(browser, chat_server, room)
    _post_message(browser, "helo wrld")
    _post_message(browser, "a second thought")
    _wait(browser, lambda: _rich_texts(browser) == ["helo wrld", "a second thought"])
    assert _shown(browser, 1)["controls"] == ["Edit", "Delete"]
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, room)
    _wait(browser, lambda: len(_rich_texts(browser)) == 2)
    _switch_to_window(browser, 0)

    _control(browser, 1, "edit-message").click()
    editor = browser.switch_to.active_element
    assert editor.get_attribute("class") == "edit-input"
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys("hello world", Keys.ENTER)
    _wait(browser, lambda: _shown(browser, 1)["text"] == "hello world")
    assert _shown(browser, 1)["edited"] == "(edited)"
    assert _shown(browser, 1)["editedTitle"].startswith("Edited ")
    assert browser.find_elements(By.CSS_SELECTOR, ".edit-box") == []

    _control(browser, 2, "delete-message").click()
    assert browser.switch_to.active_element.get_attribute("class") == "confirm-delete"
    browser.switch_to.active_element.click()
    _wait(browser, lambda: _shown(browser, 2)["deleted"])
    assert assert_fits_and_shows_final_state(browser)

    _switch_to_window(browser, 1)
    _wait(browser, lambda: _shown(browser, 2)["deleted"])
    assert _shown(browser, 1)["text"] == "hello world"
    assert assert_fits_and_shows_final_state(browser)


def assert_fits_and_shows_final_state(driver) -> bool:
    deleted = _shown(driver, 2)
    assert (deleted["text"], deleted["controls"]) == ("message deleted", [])
    log = _chat_log_value(driver).splitlines()
    assert [line.split(": ", 1)[1] for line in log] == ["hello world (edited)", "(message deleted)"]
    assert _fits(driver)
    return True


def test_a_page_away_meanwhile_shows_the_edit_and_the_deletion_once_back(
    browser, start_chat_server, session_chat_server
):
    doomed, survivor = start_chat_server(), session_chat_server  # only the doomed one is killed
    _enter_chat_room(browser, doomed.url, "away-edits")
    _open_new_window(browser)
    _enter_chat_room(browser, survivor.url, "away-edits")
    _post_message(browser, "one")
    _post_message(browser, "two")
    _wait(browser, lambda: _rich_texts(browser) == ["one", "two"])
    _switch_to_window(browser, 0)
    _wait(browser, lambda: _rich_texts(browser) == ["one", "two"])

    doomed.kill()
    _wait(browser, lambda: "Reconnecting" in _status(browser), "no reconnecting notice")
    _switch_to_window(browser, 1)
    _control(browser, 1, "edit-message").click()
    browser.switch_to.active_element.send_keys(Keys.CONTROL, "a")
    browser.switch_to.active_element.send_keys("uno", Keys.ENTER)
    _control(browser, 2, "delete-message").click()
    browser.switch_to.active_element.click()
    _wait(browser, lambda: _shown(browser, 2)["deleted"] and _shown(browser, 1)["text"] == "uno")

    doomed.start()
    _switch_to_window(browser, 0)
    _wait(browser, lambda: _status(browser) == "Connected", "never reconnected")
    _wait(browser, lambda: _shown(browser, 2)["deleted"], "the deletion never arrived")
    assert (_shown(browser, 1)["text"], _shown(browser, 1)["edited"]) == ("uno", "(edited)")
    log = _chat_log_value(browser).splitlines()
    assert [line.split(": ", 1)[1] for line in log] == ["uno (edited)", "(message deleted)"]


def test_escape_cancels_an_edit_and_the_text_stays_as_it_was(browser, chat_server, screen):
    _enter_chat_room(browser, chat_server, f"cancel-{screen['width']}")
    _post_message(browser, "keep me")
    _wait(browser, lambda: _rich_texts(browser) == ["keep me"])
    _control(browser, 1, "edit-message").click()
    editor = browser.switch_to.active_element
    editor.send_keys(" changed", Keys.ESCAPE)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".edit-box") == [])
    assert _shown(browser, 1) == {
        "text": "keep me",
        "edited": None,
        "editedTitle": None,
        "deleted": False,
        "controls": ["Edit", "Delete"],
    }
    assert browser.switch_to.active_element.get_attribute("class") == "edit-message"
    assert _fits(browser)


@pytest.mark.skipif(
    not os.environ.get("CHAT_SCREENSHOTS"), reason="retakes docs/screenshots/: CHAT_SCREENSHOTS=1"
)
def test_take_the_screenshot_of_the_edit_and_delete_controls(browser, chat_server):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)
    try:
        _enter_chat_room(browser, chat_server, "edit-screenshot")
        for text in ("See you at 10", "Wrong room, sorry", "Agenda: release notes"):
            _post_message(browser, text)
        _wait(browser, lambda: len(_rich_texts(browser)) == 3)
        _control(browser, 1, "edit-message").click()
        browser.switch_to.active_element.send_keys(Keys.CONTROL, "a")
        browser.switch_to.active_element.send_keys("See you at 10:30", Keys.ENTER)
        _wait(browser, lambda: _shown(browser, 1)["edited"] == "(edited)")
        _control(browser, 2, "delete-message").click()
        browser.switch_to.active_element.click()
        _wait(browser, lambda: _shown(browser, 2)["deleted"])
        _control(browser, 3, "edit-message").click()
        browser.switch_to.active_element.send_keys(", and the changelog")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "edit-delete.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_keyboard_reaches_a_messages_controls_from_the_message_and_the_log_stays_one_stop(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "edit-keys")
    _post_message(browser, "by keyboard")
    _wait(browser, lambda: _rich_texts(browser) == ["by keyboard"])
    for _ in range(2):  # past the transcript, to the log: no message control on the way
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "messages"
    ActionChains(browser).send_keys(Keys.ARROW_UP, Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("class") == "edit-message"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    ActionChains(browser).send_keys(" again", Keys.ENTER).perform()
    _wait(browser, lambda: _shown(browser, 1)["text"] == "by keyboard again")


def test_axe_finds_no_serious_violation_with_an_edit_open_and_a_deletion_asked(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "edit-axe")
    _post_message(browser, "first")
    _post_message(browser, "second")
    _wait(browser, lambda: len(_rich_texts(browser)) == 2)
    _control(browser, 1, "edit-message").click()
    _control(browser, 2, "delete-message").click()
    axe = Axe(browser)
    axe.inject()
    serious = [v for v in axe.run()["violations"] if v["impact"] in SERIOUS]
    assert serious == [], axe.report(serious)
