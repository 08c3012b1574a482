"""The tutorial's Part 4 checks, in real headless Chromium against a real daphne process."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 10


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium; skipped where it is not installed, except in CI, where that fails."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        reason = f"browser tests need Debian's chromium and chromium-driver ({missing} missing)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="chat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(argument)
    # Console messages, CSP violations among them, for driver.get_log("browser").
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(driver, chat_server):
    """The driver with one tab left open, on about:blank, after each test."""
    yield driver
    for handle in driver.window_handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(driver.window_handles[0])
    driver.get("about:blank")


# While a page is being replaced, Chromium may answer a lookup with a stale element, no
# element, or "Node with given id does not belong to the document": look again.
NAVIGATION_ERRORS = (StaleElementReferenceException, NoSuchElementException, WebDriverException)


def _wait(driver, condition, message=""):
    waiting = WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=NAVIGATION_ERRORS)
    return waiting.until(lambda _: condition(), message)


def _navigate_by(driver, action):
    """Run an action that loads a new page, and wait until the new page has loaded."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    action()

    def new_page_loaded():
        try:
            old_page.is_enabled()  # raises once the old page is gone
            return False
        except NAVIGATION_ERRORS:
            return driver.execute_script("return document.readyState") == "complete"

    _wait(driver, new_page_loaded, "the page never changed")


def _enter_chat_room(driver, base_url, room_name):
    driver.get(base_url + "/chat/")
    _navigate_by(driver, ActionChains(driver).send_keys(room_name, Keys.ENTER).perform)
    _wait(driver, lambda: _status(driver) == "Connected", "socket never opened")


def _open_new_window(driver):
    driver.switch_to.new_window("tab")


def _switch_to_window(driver, index):
    driver.switch_to.window(driver.window_handles[index])


def _post_message(driver, message):
    ActionChains(driver).send_keys(message, Keys.ENTER).perform()


def _chat_log_value(driver):
    return driver.find_element(By.CSS_SELECTOR, "#chat-log").get_property("value")


def _status(driver):
    return driver.find_element(By.CSS_SELECTOR, "#connection-status").text


def test_typing_a_room_name_and_enter_lands_on_the_room(browser, chat_server):
    browser.get(chat_server + "/chat/")
    ActionChains(browser).send_keys("lobby", Keys.ENTER).perform()
    _wait(browser, lambda: browser.current_url == chat_server + "/chat/lobby/")
    focused = browser.switch_to.active_element.get_attribute("id")
    assert focused == "chat-message-input"


def test_message_posted_is_seen_by_everyone_in_same_room(browser, chat_server):
    _enter_chat_room(browser, chat_server, "room_1")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "room_1")

    _switch_to_window(browser, 0)
    _post_message(browser, "hello")
    _wait(browser, lambda: "hello" in _chat_log_value(browser), "not seen by the first tab")
    assert browser.find_element(By.CSS_SELECTOR, "#chat-message-input").get_property("value") == ""

    _switch_to_window(browser, 1)
    _wait(browser, lambda: "hello" in _chat_log_value(browser), "not seen by the second tab")


def test_message_posted_in_second_tab_appears_in_both(browser, chat_server):
    _enter_chat_room(browser, chat_server, "room_2")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "room_2")
    _post_message(browser, "hello")
    _wait(browser, lambda: "hello" in _chat_log_value(browser), "not seen by the second tab")
    _switch_to_window(browser, 0)
    _wait(browser, lambda: "hello" in _chat_log_value(browser), "not seen by the first tab")


def test_message_posted_is_not_seen_by_anyone_in_different_room(browser, chat_server):
    _enter_chat_room(browser, chat_server, "room_3")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "room_4")

    _switch_to_window(browser, 0)
    _post_message(browser, "hello")
    _wait(browser, lambda: "hello" in _chat_log_value(browser), "not seen by the sender")

    _switch_to_window(browser, 1)
    _post_message(browser, "world")
    _wait(browser, lambda: "world" in _chat_log_value(browser), "not seen by the second room")
    assert "hello" not in _chat_log_value(browser)


def test_message_typed_before_the_socket_opens_is_not_lost(browser, chat_server):
    browser.get(chat_server + "/chat/early/")
    _post_message(browser, "typed at once")
    _wait(browser, lambda: "typed at once" in _chat_log_value(browser), "early message lost")


def test_hostile_message_is_shown_literally_and_runs_nothing(browser, chat_server):
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    _enter_chat_room(browser, chat_server, "xss")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "xss")
    _post_message(browser, hostile)
    for index in (1, 0):
        _switch_to_window(browser, index)
        _wait(browser, lambda: hostile in _chat_log_value(browser), "message not shown")
        assert browser.title != "pwned"
        assert not browser.find_elements(By.CSS_SELECTOR, "img")


def test_invalid_room_name_is_explained_on_the_index_page(browser, chat_server):
    hostile = "<b onmouseover=\"document.title='pwned'\">x</b>"
    browser.get(chat_server + "/chat/")
    _navigate_by(browser, ActionChains(browser).send_keys(hostile, Keys.ENTER).perform)
    assert "?room=" in browser.current_url
    error = _wait(browser, lambda: browser.find_element(By.ID, "room-name-error").text)
    assert "Room names may contain letters" in error
    assert browser.find_element(By.ID, "room-name-input").get_property("value") == hostile
    assert not browser.find_elements(By.CSS_SELECTOR, "b")
    assert browser.title != "pwned"


def test_room_url_with_markup_is_a_404_that_runs_nothing(browser, chat_server):
    browser.get(chat_server + "/chat/%3Cimg%20src=x%20onerror=%22document.title='pwned'%22%3E/")
    _wait(browser, lambda: "not found" in browser.page_source.lower())
    assert browser.title != "pwned"
    assert not browser.find_elements(By.CSS_SELECTOR, "img")


def test_unicode_room_name_is_shown_and_chats(browser, chat_server):
    _enter_chat_room(browser, chat_server, "café")
    assert browser.find_element(By.ID, "room-title").text == "café"
    _post_message(browser, "un café, s'il vous plaît")
    _wait(browser, lambda: "un café" in _chat_log_value(browser), "not seen in a Unicode room")


def test_closed_socket_shows_a_notice_then_reconnects(browser, chat_server):
    _enter_chat_room(browser, chat_server, "closing")
    browser.execute_script("chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser), "no notice on close")
    _wait(browser, lambda: _status(browser) == "Connected", "never reconnected")


def _log_lines(driver):
    return _chat_log_value(driver).splitlines()


def test_reloading_the_room_shows_the_same_conversation(browser, chat_server):
    _enter_chat_room(browser, chat_server, "reload")
    for text in ("first", "second"):
        _post_message(browser, text)
        _wait(browser, lambda text=text: any(line.endswith(text) for line in _log_lines(browser)))
    before = _log_lines(browser)
    browser.refresh()
    _wait(browser, lambda: _status(browser) == "Connected")
    _wait(browser, lambda: _log_lines(browser) == before, "history differs after reload")


def test_chosen_display_name_appears_on_messages_and_in_presence(browser, chat_server):
    browser.get(chat_server + "/chat/")
    name_box = browser.find_element(By.ID, "display-name-input")
    name_box.clear()
    _navigate_by(browser, lambda: name_box.send_keys("Zoë", Keys.ENTER))
    _wait(browser, lambda: browser.find_element(By.ID, "identity-name").text == "Zoë")
    _enter_chat_room(browser, chat_server, "names")
    _post_message(browser, "bonjour")
    _wait(browser, lambda: "Zoë (guest): bonjour" in _log_lines(browser), "name not shown")
    presence = browser.find_element(By.ID, "presence")
    _wait(browser, lambda: "Zoë (guest)" in presence.text, "name not in presence")


def test_killed_and_restarted_server_loses_nothing_and_duplicates_nothing(
    browser, start_chat_server
):
    doomed, survivor = start_chat_server(), start_chat_server()
    _enter_chat_room(browser, doomed.url, "outage")
    _open_new_window(browser)
    _enter_chat_room(browser, survivor.url, "outage")

    doomed.kill()
    _switch_to_window(browser, 0)
    _wait(browser, lambda: "Reconnecting" in _status(browser), "no reconnecting notice")
    _post_message(browser, "typed while offline")
    _switch_to_window(browser, 1)
    sent_meanwhile = [f"meanwhile {number}" for number in range(3)]
    for text in sent_meanwhile:
        _post_message(browser, text)
        _wait(browser, lambda text=text: any(line.endswith(text) for line in _log_lines(browser)))

    doomed.start()
    _switch_to_window(browser, 0)
    _wait(browser, lambda: _status(browser) == "Connected", "never reconnected")
    expected = [*sent_meanwhile, "typed while offline"]
    _wait(
        browser,
        lambda: all(any(line.endswith(t) for line in _log_lines(browser)) for t in expected),
    )
    _switch_to_window(browser, 1)
    _wait(
        browser, lambda: any(line.endswith("typed while offline") for line in _log_lines(browser))
    )
    for index in (0, 1):
        _switch_to_window(browser, index)
        lines = _log_lines(browser)
        for text in expected:
            assert sum(line.endswith(text) for line in lines) == 1, (text, lines)


FOREIGN_PAGE = """<!DOCTYPE html>
<title>waiting</title>
<script>
    const socket = new WebSocket("{ws_url}");
    socket.onopen = () => {{
        document.title = "open";
        socket.send(JSON.stringify({{message: "posted from another origin"}}));
    }};
    socket.onclose = () => {{ if (document.title !== "open") document.title = "refused"; }};
</script>
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def foreign_site(tmp_path):
    """A page server on another port of 127.0.0.1: another origin with the chat's host name."""
    handler = functools.partial(_QuietHandler, directory=tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_page_from_another_port_cannot_open_the_chat_socket(browser, chat_server, foreign_site):
    folder, foreign_url = foreign_site
    ws_url = chat_server.replace("http://", "ws://") + "/ws/chat/origins/"
    (folder / "index.html").write_text(FOREIGN_PAGE.format(ws_url=ws_url))
    browser.get(foreign_url + "/index.html")
    _wait(browser, lambda: browser.title in {"open", "refused"}, "the socket never settled")
    assert browser.title == "refused"

    _enter_chat_room(browser, chat_server, "origins")
    _post_message(browser, "from the chat's own page")
    _wait(browser, lambda: "from the chat's own page" in _chat_log_value(browser))
    assert "posted from another origin" not in _chat_log_value(browser)


def _csp_violations(driver) -> list[str]:
    """Console lines since the last call that report a Content-Security-Policy violation."""
    lines = [entry["message"] for entry in driver.get_log("browser")]
    return [line for line in lines if "Content Security Policy" in line]


def test_pages_chat_under_the_csp_without_a_single_violation(browser, chat_server):
    _csp_violations(browser)
    for path in ("/chat/", "/accounts/login/", "/accounts/signup/"):
        browser.get(chat_server + path)
        _wait(browser, lambda: browser.execute_script("return document.readyState") == "complete")
    _enter_chat_room(browser, chat_server, "csp")
    _post_message(browser, "still chatting")
    _wait(browser, lambda: "still chatting" in _chat_log_value(browser), "room page broken")
    assert _csp_violations(browser) == []

    # The policy is enforced, and its violations do reach the log this test reads.
    browser.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = \"document.title = 'inline ran'\";"
        "document.body.append(s);"
    )
    _wait(browser, lambda: _csp_violations(browser), "no violation reported")
    assert browser.title != "inline ran"


def _error_text(driver):
    return driver.find_element(By.CSS_SELECTOR, "#chat-error").text


def _stored_texts(base_url, room_name):
    with urllib.request.urlopen(f"{base_url}/chat/{room_name}/messages/") as response:
        return [message["message"] for message in json.load(response)["messages"]]


@pytest.mark.parametrize("length", [4097, 1024 * 1024 + 1])
def test_an_over_long_paste_is_refused_with_its_reason_and_kept_in_the_input(
    browser, chat_server, length
):
    room = f"paste-{length}"
    _enter_chat_room(browser, chat_server, room)
    browser.execute_script("window.firstSocket = chatClient.socket()")
    paste = "  " + "x" * length + "  "  # over the limit after trimming, too
    message_input = browser.find_element(By.CSS_SELECTOR, "#chat-message-input")
    browser.execute_script("arguments[0].value = arguments[1]", message_input, paste)
    browser.find_element(By.CSS_SELECTOR, "#chat-message-submit").click()
    _wait(browser, lambda: "at most 4096 characters" in _error_text(browser), "no reason shown")
    assert message_input.get_property("value") == paste
    assert browser.execute_script("return chatClient.pending()") == 0

    message_input.clear()
    message_input.send_keys("short enough", Keys.ENTER)
    _wait(browser, lambda: any(line.endswith("short enough") for line in _log_lines(browser)))
    assert browser.execute_script("return chatClient.socket() === window.firstSocket")
    assert browser.execute_script("return chatClient.connections()") == 1
    assert _status(browser) == "Connected"
    assert _stored_texts(chat_server, room) == ["short enough"]


def test_a_connection_that_drops_as_soon_as_it_opens_backs_off(browser, chat_server):
    _enter_chat_room(browser, chat_server, "drops-at-once")
    # From now on every socket is dropped as soon as it opens, as a server does with a
    # frame it cannot take; each one opening must not start the backoff over.
    browser.execute_script(
        """
        window.socketsOpenedAt = [];
        const RealWebSocket = window.WebSocket;
        window.WebSocket = class extends RealWebSocket {
            constructor(url) {
                super(url);
                window.socketsOpenedAt.push(performance.now());
                this.addEventListener('open', () => this.close());
            }
        };
        chatClient.socket().close();
        """
    )
    # Backoff ceilings 0.5, 1, 2 s with jitter down to half: the third wait is over 1 s.
    _wait(browser, lambda: browser.execute_script("return window.socketsOpenedAt.length") >= 3)
    opened = browser.execute_script("return window.socketsOpenedAt")
    assert opened[2] - opened[1] >= 1000, opened


# The line ends a message may hold; NEL, vertical tab and form feed are control characters,
# refused by the server as invalid_character (test_consumers' REFUSED_FRAMES).
LINE_SEPARATORS = ["\n", "\r\n", "\r", "\u2028", "\u2029"]


def test_line_breaks_in_a_message_cannot_forge_lines_in_the_log(browser, chat_server):
    _enter_chat_room(browser, chat_server, "forged")
    for separator in LINE_SEPARATORS:
        browser.execute_script(
            "chatClient.socket().send(JSON.stringify({message: arguments[0]}))",
            f"ok{separator}alice: yes, go ahead",
        )
    _wait(browser, lambda: _chat_log_value(browser).count("go ahead") == len(LINE_SEPARATORS))
    lines = _log_lines(browser)  # str.splitlines splits at every separator above
    assert len(lines) == len(LINE_SEPARATORS), lines
    # Each line is "<sender>: ok ↵ alice: ...": the sender's name comes first.
    assert all(line.index(": ok") < line.index("alice: yes") for line in lines), lines


def _log_texts(driver):
    """The log's messages without their senders' names."""
    return [line.split(": ", 1)[1] for line in _log_lines(driver)]


def _store_behind_the_sockets_back(server, room_name, texts):
    """Store messages in the server's database without broadcasting them."""
    code = (
        "from chat import services\n"
        f"for text in {texts!r}:\n"
        "    services.store_message("
        + repr(room_name)
        + ", services.Author('seeder'), text, None)\n"
    )
    manage = [sys.executable, "manage.py", "shell", "-c", code]
    subprocess.run(manage, cwd=ROOT, env=server.env, check=True)


def test_the_page_catches_up_page_by_page_after_a_reconnect(browser, start_chat_server):
    server = start_chat_server(CHAT_CATCH_UP_PAGE="5")
    _enter_chat_room(browser, server.url, "paging")
    _post_message(browser, "before")
    _wait(browser, lambda: any(line.endswith("before") for line in _log_lines(browser)))
    missed = [f"missed {number}" for number in range(1, 24)]
    _store_behind_the_sockets_back(server, "paging", missed)
    browser.execute_script("chatClient.socket().close()")  # reconnects with ?after=1
    expected = ["before", *missed]  # once each, in order
    _wait(browser, lambda: _log_texts(browser) == expected, "not every page arrived")


# Rooms, unread counts, read positions, typing and mentions (sidebar.js, typing.js,
# mentions.js), through the page's events.


def _post_from_elsewhere(driver, base_url, room_name, text):
    """Post a message from a socket of another page (an index page in a new tab), as
    someone else would: no room page of this browser sees it being sent."""
    _open_new_window(driver)
    driver.get(base_url + "/chat/")
    driver.execute_async_script(
        """
        const [url, text, done] = arguments;
        const socket = new WebSocket(url);
        socket.onopen = () => socket.send(JSON.stringify({message: text}));
        socket.onmessage = (event) => {
            if (JSON.parse(event.data).message === text) { socket.close(); done(); }
        };
        """,
        base_url.replace("http://", "ws://") + "/ws/chat/" + room_name + "/",
        text,
    )
    driver.close()
    _switch_to_window(driver, len(driver.window_handles) - 1)


def _unread(driver, room_name):
    """The unread count the sidebar shows for a room; 0 when it shows none."""
    item = driver.find_element(By.CSS_SELECTOR, f'#rooms-sidebar li[data-room="{room_name}"]')
    badges = item.find_elements(By.CSS_SELECTOR, ".unread")
    return int(badges[0].text.split()[0]) if badges else 0  # "2 unread"


def _sidebar_lists(driver, room_name):
    return bool(
        driver.find_elements(By.CSS_SELECTOR, f'#rooms-sidebar li[data-room="{room_name}"]')
    )


def test_the_index_lists_rooms_with_recent_activity_and_your_recent_rooms(browser, chat_server):
    _enter_chat_room(browser, chat_server, "index-listed")
    _post_message(browser, "some activity")
    _wait(browser, lambda: "some activity" in _chat_log_value(browser))
    browser.get(chat_server + "/chat/")
    active = browser.find_element(By.CSS_SELECTOR, '#active-rooms li[data-room="index-listed"]')
    assert (
        active.find_element(By.TAG_NAME, "a").get_attribute("href").endswith("/chat/index-listed/")
    )
    assert active.find_element(By.TAG_NAME, "time").get_attribute("datetime")
    assert "online" in active.text
    recent = browser.find_element(By.ID, "recent-rooms")
    assert recent.is_displayed() and "index-listed" in recent.text
    assert browser.switch_to.active_element.get_attribute("id") == "room-name-input"


def test_unread_counts_show_in_the_sidebar_and_the_title_for_another_room(browser, chat_server):
    _enter_chat_room(browser, chat_server, "unread-b")  # read once, at its start
    _post_message(browser, "before")
    _wait(browser, lambda: "before" in _chat_log_value(browser))
    _enter_chat_room(browser, chat_server, "unread-a")
    _wait(browser, lambda: _sidebar_lists(browser, "unread-b"), "room not in the sidebar")
    assert _unread(browser, "unread-b") == 0
    assert browser.title == "unread-a · Chat"

    for text in ("one", "two"):
        _post_from_elsewhere(browser, chat_server, "unread-b", text)
    _wait(browser, lambda: _unread(browser, "unread-b") == 2, "no unread count")
    _wait(browser, lambda: browser.title == "(2) unread-a · Chat", "no count in the title")

    _enter_chat_room(browser, chat_server, "unread-b")  # read them
    _wait(browser, lambda: _sidebar_lists(browser, "unread-b"))
    _wait(browser, lambda: _unread(browser, "unread-b") == 0 and browser.title == "unread-b · Chat")


def _sign_up(driver, base_url, username, password):
    driver.get(base_url + "/accounts/signup/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password1").send_keys(password)
    driver.find_element(By.ID, "id_password2").send_keys(password)
    _navigate_by(driver, driver.find_element(By.ID, "signup-submit").click)


def _log_in(driver, base_url, username, password):
    driver.get(base_url + "/accounts/login/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    _navigate_by(driver, driver.find_element(By.ID, "login-submit").click)


def _start_a_new_browser_session(driver, base_url):
    """As on another device: no cookies, nothing in localStorage."""
    driver.get(base_url + "/chat/")
    driver.execute_script("window.localStorage.clear()")
    driver.delete_all_cookies()


def test_a_users_read_position_follows_them_to_another_browser_session(browser, chat_server):
    password = "reads-Everywhere-42"
    _sign_up(browser, chat_server, "reader", password)
    _enter_chat_room(browser, chat_server, "read-here")
    for text in ("first", "second"):
        _post_message(browser, text)
        _wait(browser, lambda text=text: text in _chat_log_value(browser))
    _enter_chat_room(browser, chat_server, "read-elsewhere")
    _post_from_elsewhere(browser, chat_server, "read-here", "unread one")
    _wait(browser, lambda: _unread(browser, "read-here") == 1, "no unread count")

    _start_a_new_browser_session(browser, chat_server)
    _log_in(browser, chat_server, "reader", password)
    _enter_chat_room(browser, chat_server, "read-elsewhere")
    _wait(browser, lambda: _sidebar_lists(browser, "read-here"), "room not in the sidebar")
    _wait(browser, lambda: _unread(browser, "read-here") == 1, "read position not kept")
    browser.delete_all_cookies()  # the next tests are guests again


def _typing_line(driver):
    return driver.find_element(By.ID, "typing").text


def test_typing_is_shown_to_the_others_and_gone_when_they_stop_or_send(browser, chat_server):
    _enter_chat_room(browser, chat_server, "typing")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "typing")

    _switch_to_window(browser, 0)
    ActionChains(browser).send_keys("hel").perform()
    _switch_to_window(browser, 1)
    _wait(browser, lambda: _typing_line(browser).endswith("is typing…"), "typing not shown")
    _wait(browser, lambda: _typing_line(browser) == "", "still typing after they stopped")

    _switch_to_window(browser, 0)
    assert _typing_line(browser) == ""  # not told about its own typing
    ActionChains(browser).send_keys("lo").perform()
    _switch_to_window(browser, 1)
    _wait(browser, lambda: _typing_line(browser).endswith("is typing…"), "typing not shown")
    _switch_to_window(browser, 0)
    _post_message(browser, " there")
    _switch_to_window(browser, 1)
    _wait(browser, lambda: "hello there" in _chat_log_value(browser))
    assert _typing_line(browser) == ""  # cleared by their message, not by the timer


MENTION_EVENT = """
    const [text, history] = arguments;
    const element = document.createElement('div');
    document.body.append(element);
    const data = {id: 1, user: 'bob', guest: false, message: text};
    document.dispatchEvent(new CustomEvent('chat:message', {detail: {data, element, history}}));
    return element.classList.contains('mention');
"""


def test_a_mention_of_the_reader_is_highlighted_and_notified_when_hidden(browser, chat_server):
    _enter_chat_room(browser, chat_server, "mentions")
    me = browser.find_element(By.ID, "rooms-sidebar").get_attribute("data-me")

    def highlighted(text):
        return browser.execute_script(MENTION_EVENT, text, False)

    assert highlighted(f"hey @{me}, look")
    assert highlighted(f"@{me.upper()}")
    assert highlighted(f"thanks @{me}.")
    assert not highlighted(f"hey {me}")
    assert not highlighted(f"hey @{me}x")
    assert not highlighted(f"mail x@{me}")

    # Hidden tab: a notification, with permission granted (stubbed: headless asks nobody).
    browser.execute_script(
        """
        window.notified = [];
        window.Notification = class {
            static permission = 'granted';
            constructor(title, options) { window.notified.push([title, options.body]); }
        };
        Object.defineProperty(document, 'hidden', {get: () => true, configurable: true});
        """
    )
    browser.execute_script(MENTION_EVENT, f"@{me} are you there?", True)  # history: no
    browser.execute_script(MENTION_EVENT, f"@{me} are you there?", False)
    assert browser.execute_script("return window.notified") == [
        ["bob mentioned you in mentions", f"@{me} are you there?"]
    ]


def test_notification_permission_is_asked_on_the_click_of_a_button(browser, chat_server):
    _enter_chat_room(browser, chat_server, "ask-on-click")
    assert browser.execute_script("return Notification.permission") == "default"  # not asked
    browser.execute_script(
        """
        window.asked = 0;
        Notification.requestPermission = () => {
            window.asked += 1;
            return Promise.resolve('default');
        };
        """
    )
    button = browser.find_element(By.ID, "notify-button")
    assert button.is_displayed()
    button.click()
    assert browser.execute_script("return window.asked") == 1


def test_on_a_phone_the_sidebar_folds_behind_its_button(browser, chat_server):
    _enter_chat_room(browser, chat_server, "phone-sidebar")
    _post_message(browser, "so the room is listed")
    _wait(browser, lambda: _sidebar_lists(browser, "phone-sidebar"))
    size = browser.get_window_size()
    browser.set_window_size(390, 844)
    try:
        toggle = browser.find_element(By.ID, "rooms-sidebar-toggle")
        rooms_list = browser.find_element(By.ID, "rooms-sidebar-list")
        _wait(browser, lambda: toggle.is_displayed() and not rooms_list.is_displayed())
        toggle.click()
        assert rooms_list.is_displayed() and toggle.get_attribute("aria-expanded") == "true"
        toggle.click()
        assert not rooms_list.is_displayed()
    finally:
        browser.set_window_size(size["width"], size["height"])
    _wait(browser, lambda: rooms_list.is_displayed() and not toggle.is_displayed())
