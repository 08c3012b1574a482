"""The tutorial's Part 4 checks, in real headless Chromium against a real daphne process."""

import datetime
import functools
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest
import websockets.sync.client
from axe_selenium_python import Axe
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

from chat.tests.test_consumers import room_locked_outside
from conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("limits_count_from_zero")]

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
    """The driver with one tab left open, on about:blank, with no cookies and nothing in the
    chat's localStorage (sent ids, read positions, recent rooms), after each test."""
    yield driver
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd(
        "Storage.clearDataForOrigin", {"origin": chat_server, "storageTypes": "local_storage"}
    )
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
    browser, start_chat_server, session_chat_server
):
    doomed, survivor = start_chat_server(), session_chat_server  # only the doomed one is killed
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


def test_the_api_docs_page_lists_the_operations_with_no_console_error(browser, chat_server):
    _console_errors(browser)
    browser.get(chat_server + "/api/v1/")
    _wait(
        browser,
        lambda: "/api/v1/rooms/{room}/messages" in browser.find_element(By.TAG_NAME, "body").text,
        "the API's operations are not listed",
    )
    assert browser.current_url == chat_server + "/api/v1/docs"
    assert _console_errors(browser) == []


def _console_errors(driver) -> list[str]:
    """Console errors since the last call: SEVERE lines, and the security source's lines
    (a header Chromium cannot read: DevTools shows it as an error, chromedriver as a warning)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" or entry["source"] == "security"
    ]


def test_no_page_logs_a_console_error(browser, chat_server):
    _console_errors(browser)
    for path in ("/chat/", "/accounts/login/", "/accounts/signup/"):
        browser.get(chat_server + path)
        _wait(browser, lambda: browser.execute_script("return document.readyState") == "complete")
        assert _console_errors(browser) == [], path
    _enter_chat_room(browser, chat_server, "console")
    _post_message(browser, "quiet console")
    _wait(browser, lambda: "quiet console" in _chat_log_value(browser), "room page broken")
    assert _console_errors(browser) == []


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
# A guest who chose no name, in a session (chat.identity.default_guest_name).
GUEST_WITHOUT_A_NAME = r"Guest [0-9a-f]{4}"
LINE_SEPARATORS = ["\n", "\r\n", "\r", "\u2028", "\u2029"]


def test_a_bots_post_is_marked_as_a_bot_never_as_a_guest(browser, start_chat_server):
    server = start_chat_server()
    _enter_chat_room(browser, server.url, "bots")
    manage = [sys.executable, "manage.py", "chat_post", "bots", "deployed", "--as", "ci"]
    subprocess.run(manage, cwd=ROOT, env=server.env, check=True, stdout=subprocess.DEVNULL)
    _wait(browser, lambda: "ci (bot): deployed" in _log_lines(browser), "bot not marked")
    message = browser.find_element(By.CSS_SELECTOR, '.message[data-author="bot:ci"]')
    assert message.find_element(By.CSS_SELECTOR, ".tag").text == "(bot)"
    assert "guest" not in message.get_attribute("class").split()


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


# The page's reads of the messages endpoint wait until the test opens them (openFetch), and
# are recorded; the frames of the socket open now or next are recorded too. Other fetches
# (the sidebar's room list, every ROOMS_REFRESH_SECONDS) go through as they come.
HOLD_FETCHES_AND_RECORD_FRAMES = """
window.fetched = []; window.framesSeen = []; window.heldFetches = [];
const realFetch = window.fetch;
const recordedFetch = (url, ...rest) => {
    window.fetched.push(String(url));
    return realFetch(url, ...rest);
};
let holding = true;
window.fetch = (url, ...rest) => {
    if (!holding || !String(url).includes('/messages/')) return recordedFetch(url, ...rest);
    return new Promise((resolve) => {
        window.heldFetches.push(() => resolve(recordedFetch(url, ...rest)));
    });
};
window.openFetch = () => {
    holding = false;
    window.heldFetches.forEach((go) => go());
};
window.RealWebSocket = window.RealWebSocket || window.WebSocket;
window.WebSocket = class extends window.RealWebSocket {
    constructor(...args) {
        super(...args);
        this.addEventListener('message', (e) => window.framesSeen.push(JSON.parse(e.data)));
    }
};
"""


def _messages_seen(driver) -> list[dict]:
    """The chat messages the page's socket received (HOLD_FETCHES_AND_RECORD_FRAMES)."""
    return [frame for frame in driver.execute_script("return window.framesSeen") if "id" in frame]


# More than the messages endpoint's default page (CHAT_API_PAGE_SIZE, 100): read in pages.
MISSED_BEYOND_THE_BOUND = 230


def test_a_page_away_for_more_than_the_bound_reads_them_over_http_once_in_order(
    browser, start_chat_server
):
    server = start_chat_server(CHAT_RECOVERY_LIMIT="5")
    _enter_chat_room(browser, server.url, "away")
    _post_message(browser, "before")
    _wait(browser, lambda: _log_texts(browser) == ["before"])
    missed = [f"missed {number}" for number in range(1, MISSED_BEYOND_THE_BOUND + 1)]
    _store_behind_the_sockets_back(server, "away", missed)
    browser.execute_script(HOLD_FETCHES_AND_RECORD_FRAMES + "chatClient.socket().close()")
    # Back with ?after=1: the socket sends none of them, and says where to read them.
    marker = {
        "catch_up": {
            "recovered": False,
            "after": 1,
            "until": len(missed) + 1,
            "changes": {"recovered": True, "after": 0, "until": 0},
        }
    }
    _wait(browser, lambda: marker in browser.execute_script("return window.framesSeen"))
    _wait(browser, lambda: browser.execute_script("return window.heldFetches.length") == 1)
    # A live message arrives while the gap is read: it waits behind the gap.
    _post_message(browser, "sent while the gap is read")
    _wait(browser, lambda: len(_messages_seen(browser)) == 1, "the live message never came")
    assert _log_texts(browser) == ["before"]
    browser.execute_script("window.openFetch()")
    expected = ["before", *missed, "sent while the gap is read"]  # once each, in order
    _wait(browser, lambda: _log_texts(browser) == expected, "not every message arrived")
    assert _pending(browser) == []
    reads = [url for url in browser.execute_script("return window.fetched") if "after=" in url]
    assert [url.rpartition("after=")[2] for url in reads] == ["1", "101", "201"]


# ---- The rich view (#messages): its contract, for tests and for people who restyle it ----

RICH_MESSAGES = """
return Array.from(document.querySelectorAll('#messages .message:not(.pending)'), (m) => ({
    id: m.dataset.id,
    author: m.querySelector('.author').textContent,
    text: m.querySelector('.text').textContent,
    mine: m.classList.contains('mine'),
    guest: m.classList.contains('guest'),
    continued: m.classList.contains('continued'),
    datetime: m.querySelector('time') && m.querySelector('time').getAttribute('datetime'),
    time: m.querySelector('time') && m.querySelector('time').textContent,
    whiteSpace: getComputedStyle(m.querySelector('.text')).whiteSpace,
}));
"""


def _rich_messages(driver) -> list[dict]:
    return driver.execute_script(RICH_MESSAGES)


def _rich_texts(driver) -> list[str]:
    return [message["text"] for message in _rich_messages(driver)]


def _store_as(server, room_name, author_code, texts, client_id=None):
    """Store messages as the Author built by author_code, without broadcasting them."""
    code = (
        "from chat import services\n"
        f"for text in {texts!r}:\n"
        f"    services.store_message({room_name!r}, {author_code}, text, {client_id!r})\n"
    )
    manage = [sys.executable, "manage.py", "shell", "-c", code]
    subprocess.run(manage, cwd=ROOT, env=server.env, check=True)


@pytest.fixture
def chat_server_process(session_chat_server):
    """A chat server whose environment the test can use to store messages behind its back:
    the session's (each test has rooms of its own), not one started for each of them."""
    return session_chat_server


def test_each_message_is_an_element_with_id_author_text_and_the_readers_local_time(
    browser, chat_server_process
):
    server = chat_server_process
    _store_as(server, "rich", "services.Author('seeder')", ["from the seeder"])
    # The reader is in Kolkata (UTC+05:30): times show there, not in UTC.
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    try:
        _enter_chat_room(browser, server.url, "rich")
        _post_message(browser, "hello <b>there</b>")
        _wait(browser, lambda: len(_rich_messages(browser)) == 2, "messages not rendered")
        log = browser.find_element(By.ID, "messages")
        assert log.get_attribute("role") == "log"
        assert log.get_attribute("aria-live") == "polite"
        assert log.get_attribute("aria-label") == "Messages in rich"
        seeded, mine = _rich_messages(browser)
        assert (seeded["id"], seeded["author"], seeded["text"]) == (
            "1",
            "seeder",
            "from the seeder",
        )
        assert (mine["id"], mine["author"], mine["text"]) == (
            "2",
            _identity_name(browser),
            "hello <b>there</b>",
        )
        assert not browser.find_elements(By.CSS_SELECTOR, "#messages b")
        assert [seeded["mine"], mine["mine"]] == [False, True]
        assert seeded["guest"] and mine["guest"]
        assert browser.find_element(By.CSS_SELECTOR, "#messages .message .tag").text == "(guest)"
        for message in (seeded, mine):
            stored = datetime.datetime.fromisoformat(message["datetime"])
            local = stored.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
            # In the browser's locale: "17:05" or "05:05 PM"; the hour and minute are local.
            hour, minute = re.match(r"(\d{1,2}):(\d{2})", message["time"]).groups()
            assert (int(hour) % 12, int(minute)) == (local.hour % 12, local.minute), message
    finally:
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


def test_a_message_with_line_breaks_is_one_element_under_its_senders_name(browser, chat_server):
    _enter_chat_room(browser, chat_server, "forged-rich")
    for separator in LINE_SEPARATORS:
        browser.execute_script(
            "chatClient.socket().send(JSON.stringify({message: arguments[0]}))",
            f"ok{separator}alice: yes, go ahead",
        )
    _wait(browser, lambda: len(_rich_messages(browser)) == len(LINE_SEPARATORS))
    for message in _rich_messages(browser):
        assert message["author"] == _identity_name(browser), message
        assert message["text"].startswith("ok") and message["text"].endswith("alice: yes, go ahead")
        assert message["whiteSpace"] == "pre-wrap"  # the break is shown, inside the element


def test_another_guest_with_the_same_name_or_a_copied_client_id_is_not_mine(
    browser, chat_server_process
):
    server = chat_server_process
    _enter_chat_room(browser, server.url, "same-name")
    _post_message(browser, "really mine")
    _wait(browser, lambda: _rich_texts(browser) == ["really mine"])
    client_id = browser.execute_script(
        "return Array.from(JSON.parse(localStorage.getItem('chat.sent.same-name')))[0][0]"
    )
    impostor = f"services.Author({_identity_name(browser)!r}, guest_key='someone-else')"
    _store_as(server, "same-name", impostor, ["copied my client id"], client_id=client_id)
    _store_as(server, "same-name", impostor, ["same name, another guest"])
    browser.refresh()
    _wait(browser, lambda: len(_rich_messages(browser)) == 3)
    mine = {message["text"]: message["mine"] for message in _rich_messages(browser)}
    assert mine == {
        "really mine": True,
        "copied my client id": False,
        "same name, another guest": False,
    }


def test_a_logged_in_users_messages_are_mine_on_every_device(browser, chat_server_process):
    server = chat_server_process
    _sign_up(browser, server.url, "carol", "a long passphrase 42")
    user = (
        "services.Author('carol', user_id=__import__('django.contrib.auth').contrib.auth"
        ".get_user_model().objects.get(username='carol').pk)"
    )
    _store_as(server, "devices", user, ["from my phone"])
    _store_as(server, "devices", "services.Author('carol')", ["a guest called carol"])
    _enter_chat_room(browser, server.url, "devices")
    _wait(browser, lambda: len(_rich_messages(browser)) == 2)
    by_text = {message["text"]: message for message in _rich_messages(browser)}
    assert by_text["from my phone"]["mine"] and not by_text["from my phone"]["guest"]
    assert not by_text["a guest called carol"]["mine"]


def _presence_items(driver) -> list[str]:
    return [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#presence li")]


def _choose_name(driver, base_url, name):
    driver.get(base_url + "/chat/")
    name_box = driver.find_element(By.ID, "display-name-input")
    name_box.clear()
    _navigate_by(driver, lambda: name_box.send_keys(name, Keys.ENTER))


def test_presence_counts_people_one_guest_in_two_tabs_once_two_anonymous_guests_twice(
    browser, chat_server
):
    _choose_name(browser, chat_server, "Zoë")
    _enter_chat_room(browser, chat_server, "people")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "people")
    ws_url = chat_server.replace("http://", "ws://") + "/ws/chat/people/"
    names = sorted(["Zoë (guest)", "Guest (guest)"])
    heading = browser.find_element(By.ID, "presence-heading")
    # Two clients without a session: two guests who both go by "Guest".
    with (
        websockets.sync.client.connect(ws_url, origin=chat_server),
        websockets.sync.client.connect(ws_url, origin=chat_server),
    ):
        _wait(browser, lambda: heading.text == "Here now (3)", "not counted as people")
        assert sorted(_presence_items(browser)) == names


# From now on every socket the page opens is refused at the handshake (a path no route has).
NEVER_OPENS = """
window.RealWebSocket = window.RealWebSocket || window.WebSocket;
window.WebSocket = class extends window.RealWebSocket {
    constructor(url) { super(url.replace('/ws/chat/', '/ws/nowhere/')); }
};
"""


def test_presence_is_hidden_while_disconnected(browser, chat_server):
    _enter_chat_room(browser, chat_server, "offline-presence")
    _wait(browser, lambda: _presence_items(browser) == [f"{_identity_name(browser)} (guest)"])
    browser.execute_script(NEVER_OPENS + "chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    assert not browser.find_element(By.ID, "presence").is_displayed()


def test_one_authors_messages_are_grouped_until_someone_else_speaks(browser, chat_server_process):
    server = chat_server_process
    _enter_chat_room(browser, server.url, "grouping")
    for text in ("one", "two"):
        _post_message(browser, text)
        _wait(browser, lambda text=text: text in _rich_texts(browser))
    _store_as(server, "grouping", "services.Author('seeder')", ["interruption"])
    _post_message(browser, "three")  # its catch-up brings the interruption first
    browser.execute_script("chatClient.socket().close()")
    _wait(browser, lambda: _rich_texts(browser) == ["one", "two", "interruption", "three"])
    continued = [message["continued"] for message in _rich_messages(browser)]
    assert continued == [False, True, False, False]


def test_a_day_separator_stands_before_each_days_first_message(browser, chat_server_process):
    server = chat_server_process
    _store_as(server, "days", "services.Author('seeder')", ["old one", "old two", "today"])
    code = (
        "import datetime\n"
        "from chat.models import Message\n"
        "old = datetime.datetime(2025, 3, 14, 12, 0, tzinfo=datetime.timezone.utc)\n"
        "Message.objects.filter(room_id='days', seq__lt=3).update(created=old)\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env, check=True
    )
    _enter_chat_room(browser, server.url, "days")
    _wait(browser, lambda: len(_rich_messages(browser)) == 3)
    children = browser.execute_script(
        "return Array.from(document.querySelector('#messages').children, (c) =>"
        " c.classList.contains('day-separator') ? 'day: ' + c.textContent"
        " : c.querySelector('.text').textContent)"
    )
    assert children[0].startswith("day: ") and "2025" in children[0]
    assert children[1:3] == ["old one", "old two"]
    assert children[3:] == ["day: Today", "today"]


def test_http_links_are_clickable_and_safe_and_other_schemes_are_text(browser, chat_server):
    _enter_chat_room(browser, chat_server, "links")
    text = "see https://example.com/a?b=1. or javascript:alert(1) or data:text/html,x or ftp://x.y"
    browser.execute_script(
        "chatClient.socket().send(JSON.stringify({message: arguments[0]}))", text
    )
    _wait(browser, lambda: _rich_texts(browser) == [text], "message not shown whole")
    (link,) = browser.find_elements(By.CSS_SELECTOR, "#messages .text a")
    assert link.get_attribute("href") == "https://example.com/a?b=1"
    assert link.text == "https://example.com/a?b=1"
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert link.get_attribute("target") == "_blank"


def test_a_links_text_reads_in_the_order_of_where_it_points_and_each_text_is_isolated(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "bidi")
    # Balanced, so the server takes it: the override turns "gpj.exe" into "exe.jpg" on screen.
    text = "get https://example.com/\u202egpj.exe\u202c now"
    browser.execute_script(
        "chatClient.socket().send(JSON.stringify({message: arguments[0]}))", text
    )
    shown = "get https://example.com/gpj.exe now"
    _wait(browser, lambda: _rich_texts(browser) == [shown], "message not shown")
    (link,) = browser.find_elements(By.CSS_SELECTOR, "#messages .text a")
    assert link.get_attribute("href").endswith("gpj.exe%E2%80%AC")
    assert link.get_attribute("dir") == "ltr"
    for part in [".text", ".author"]:
        (element,) = browser.find_elements(By.CSS_SELECTOR, f"#messages .message {part}")
        assert element.get_attribute("dir") == "auto", part

    # Unclosed, it is refused: it would turn around whatever follows the message.
    browser.execute_script(
        "chatClient.socket().send(JSON.stringify({message: arguments[0]}))", "\u202eexe.jpg"
    )
    error = browser.find_element(By.ID, "chat-error")
    _wait(browser, lambda: error.get_attribute("data-code") == "unbalanced_bidi", "not refused")


def test_shift_enter_is_a_new_line_and_enter_sends(browser, chat_server):
    _enter_chat_room(browser, chat_server, "multiline")
    chain = ActionChains(browser).send_keys("line one")
    chain.key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT)
    chain.send_keys("line two", Keys.ENTER).perform()
    _wait(browser, lambda: _rich_texts(browser) == ["line one\nline two"], "not one message")
    assert _log_texts(browser) == ["line one ↵ line two"]
    assert browser.find_element(By.ID, "chat-message-input").get_property("value") == ""


def _scroll_state(driver) -> dict:
    return driver.execute_script(
        "const m = document.querySelector('#messages');"
        "return {top: m.scrollTop, bottom: m.scrollHeight - m.scrollTop - m.clientHeight,"
        " button: !document.querySelector('#new-messages').hidden};"
    )


def test_reading_position_is_kept_and_a_button_jumps_to_new_messages(browser, chat_server_process):
    server = chat_server_process
    _store_as(server, "reading", "services.Author('seeder')", [f"old {n}" for n in range(50)])
    _enter_chat_room(browser, server.url, "reading")
    _wait(browser, lambda: len(_rich_messages(browser)) == 50)
    _open_new_window(browser)
    _enter_chat_room(browser, server.url, "reading")
    _switch_to_window(browser, 0)
    browser.execute_script("document.querySelector('#messages').scrollTop = 400")
    _wait(browser, lambda: _scroll_state(browser)["top"] == 400)
    _switch_to_window(browser, 1)
    _post_message(browser, "while you read")
    _switch_to_window(browser, 0)
    _wait(browser, lambda: "while you read" in _rich_texts(browser))
    state = _scroll_state(browser)
    assert state["top"] == 400 and state["button"], state
    browser.find_element(By.ID, "new-messages").click()
    _wait(browser, lambda: _scroll_state(browser)["bottom"] < 2, "not scrolled down")
    assert not _scroll_state(browser)["button"]
    assert browser.switch_to.active_element.get_attribute("id") == "chat-message-input"


def _pending(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .message.pending'), (m) => ({"
        " text: m.querySelector('.text').textContent,"
        " delivery: m.querySelector('.delivery').textContent,"
        " code: m.querySelector('.delivery').dataset.code}))"
    )


def test_a_message_typed_offline_shows_as_sending_until_the_server_has_it(
    browser, start_chat_server
):
    server = start_chat_server()
    _enter_chat_room(browser, server.url, "offline-send")
    server.kill()
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    _post_message(browser, "typed offline")
    assert _pending(browser) == [{"text": "typed offline", "delivery": "sending…", "code": None}]
    assert browser.find_element(By.ID, "chat-message-input").get_property("value") == ""
    server.start()
    _wait(browser, lambda: _rich_texts(browser) == ["typed offline"], "never delivered")
    assert _pending(browser) == []
    assert _rich_messages(browser)[0]["mine"]


def test_a_refused_message_stays_with_its_reason_to_retry_or_discard(browser, chat_server):
    _enter_chat_room(browser, chat_server, "refused")
    message_input = browser.find_element(By.ID, "chat-message-input")
    browser.execute_script("arguments[0].value = 'bad \\u0007 bell'", message_input)
    browser.find_element(By.ID, "chat-message-submit").click()
    _wait(browser, lambda: _pending(browser) and _pending(browser)[0]["code"], "not refused")
    (refused,) = _pending(browser)
    assert refused["code"] == "invalid_character"
    assert refused["delivery"].startswith("Not sent: This message holds a character")
    error = browser.find_element(By.ID, "chat-error")
    assert error.get_attribute("data-code") == "invalid_character"
    assert "invalid_character" not in error.text and "U+" not in error.text
    buttons = browser.find_elements(By.CSS_SELECTOR, "#messages .pending .delivery button")
    assert [button.text for button in buttons] == ["Retry", "Discard"]
    buttons[1].click()
    _wait(browser, lambda: _pending(browser) == [], "not discarded")
    _post_message(browser, "fine now")
    _wait(browser, lambda: _rich_texts(browser) == ["fine now"])
    _wait(browser, lambda: error.text == "", "the error outlived the next success")
    assert error.get_attribute("data-code") is None


def test_after_clicking_send_the_focus_is_back_in_the_input(browser, chat_server):
    _enter_chat_room(browser, chat_server, "focus")
    browser.find_element(By.ID, "chat-message-input").send_keys("clicked")
    browser.find_element(By.ID, "chat-message-submit").click()
    _wait(browser, lambda: _rich_texts(browser) == ["clicked"])
    assert browser.switch_to.active_element.get_attribute("id") == "chat-message-input"


def test_a_counter_shows_the_length_near_the_limit(browser, chat_server):
    _enter_chat_room(browser, chat_server, "counter")
    message_input = browser.find_element(By.ID, "chat-message-input")
    counter = browser.find_element(By.ID, "char-count")
    message_input.send_keys("short")
    assert counter.text == ""
    browser.execute_script("arguments[0].value = 'x'.repeat(4000)", message_input)
    message_input.send_keys("y")
    assert counter.text == "4001 / 4096"
    browser.execute_script("arguments[0].value = 'x'.repeat(4100)", message_input)
    message_input.send_keys("y")
    assert counter.text == "4101 / 4096" and "over" in counter.get_attribute("class")


def test_an_over_long_message_is_refused_in_plain_words_and_cleared_by_a_success(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "plain-words")
    message_input = browser.find_element(By.ID, "chat-message-input")
    browser.execute_script("arguments[0].value = 'x'.repeat(5000)", message_input)
    message_input.send_keys(Keys.ENTER)
    error = browser.find_element(By.ID, "chat-error")
    assert error.text == "Not sent: messages are at most 4096 characters, this one has 5000."
    assert error.get_attribute("data-code") == "message_too_long"
    message_input.clear()
    message_input.send_keys("short", Keys.ENTER)
    _wait(browser, lambda: error.text == "", "the error outlived the next success")


def test_the_reconnect_countdown_ticks_every_second(browser, start_chat_server):
    server = start_chat_server()
    _enter_chat_room(browser, server.url, "countdown")
    server.kill()
    seconds = re.compile(r"Reconnecting in (\d+) s…")

    def counting_from(low):
        match = seconds.search(_status(browser))
        return match and int(match.group(1)) >= low and int(match.group(1))

    start = _wait(browser, lambda: counting_from(3), "no countdown of 3 s or more")
    _wait(browser, lambda: counting_from(1) == start - 1, "the countdown never ticked")
    status = browser.find_element(By.ID, "connection-status")
    assert "code" not in status.text and status.get_attribute("data-code") == "1006"


PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_room_fits_the_screen_with_the_composer_in_view(browser, chat_server, size):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    try:
        _enter_chat_room(browser, chat_server, f"fits-{size['width']}")
        for n in range(15):
            browser.execute_script("chatClient.send({message: arguments[0]})", f"line {n} " * 30)
        _wait(browser, lambda: len(_rich_messages(browser)) == 15)
        layout = browser.execute_script(
            "const input = document.querySelector('#chat-message-input').getBoundingClientRect();"
            "const send = document.querySelector('#chat-message-submit').getBoundingClientRect();"
            "return {scrollWidth: document.documentElement.scrollWidth, width: innerWidth,"
            " height: innerHeight, inputBottom: input.bottom, sendTop: send.top,"
            " inputTop: input.top, sendLeft: send.left, inputRight: input.right};"
        )
        assert layout["scrollWidth"] <= layout["width"], layout
        assert layout["inputBottom"] <= layout["height"], layout  # the composer is in view
        assert layout["sendLeft"] >= layout["inputRight"], layout  # Send beside the input
        assert layout["sendTop"] < layout["inputBottom"], layout
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _post_a_run(driver, count):
    """Send count messages of three lines as the reader: one run of one author's messages."""
    for n in range(count):
        text = f"run {n}\nsecond line\nthird line"
        driver.execute_script("chatClient.send({message: arguments[0]})", text)
    _wait(driver, lambda: len(_rich_messages(driver)) == count, "the run never arrived")


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_a_long_run_of_one_persons_messages_scrolls_the_log_never_the_page(
    browser, chat_server, size
):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    try:
        _enter_chat_room(browser, chat_server, f"run-{size['width']}")
        _post_a_run(browser, 20)
        layout = browser.execute_script(
            "const log = document.querySelector('#messages');"
            "return {page: document.documentElement.scrollHeight, viewport: innerHeight,"
            " log: log.scrollHeight, shown: log.clientHeight};"
        )
        assert layout["page"] == layout["viewport"], layout
        assert layout["log"] > layout["shown"], layout  # the log itself scrolls
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# Each message's time is on screen: the pointer, at its middle, would be on it.
SHOWN_TIMES = """
return Array.from(document.querySelectorAll('#messages .message'), (m) => {
    const time = m.querySelector('time');
    const box = time.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return box.width > 1 && box.height > 1 && time.contains(hit);
});
"""


def _times_in_accessibility_tree(driver, text) -> int:
    """How many nodes of the log Chromium's accessibility tree names `text` (screen readers)."""
    document = driver.execute_cdp_cmd("DOM.getDocument", {})
    log = driver.execute_cdp_cmd(
        "DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": "#messages"}
    )
    found = driver.execute_cdp_cmd(
        "Accessibility.queryAXTree", {"nodeId": log["nodeId"], "accessibleName": text}
    )
    return len([node for node in found["nodes"] if node["role"]["value"] == "StaticText"])


def test_a_follow_up_messages_time_shows_on_hover_and_on_keyboard_focus(browser, chat_server):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)  # all in view
    try:
        _shows_follow_up_times(browser, chat_server)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _shows_follow_up_times(browser, chat_server):
    _enter_chat_room(browser, chat_server, "follow-up-times")
    _post_a_run(browser, 3)
    first, second, third = browser.find_elements(By.CSS_SELECTOR, "#messages .message")
    assert [message["continued"] for message in _rich_messages(browser)] == [False, True, True]
    # Only the first message's time is on screen; every one is read out to screen readers.
    assert browser.execute_script(SHOWN_TIMES) == [True, False, False]
    for time_text in {message["time"] for message in _rich_messages(browser)}:
        shown = [message["time"] for message in _rich_messages(browser)].count(time_text)
        assert _times_in_accessibility_tree(browser, time_text) == shown

    ActionChains(browser).move_to_element(second).perform()
    assert browser.execute_script(SHOWN_TIMES) == [True, True, False]

    ActionChains(browser).move_to_element(
        browser.find_element(By.ID, "chat-message-input")
    ).perform()
    browser.find_element(By.ID, "messages").send_keys(Keys.ARROW_UP)  # from the log: the last
    assert browser.switch_to.active_element == third
    assert browser.execute_script(SHOWN_TIMES) == [True, False, True]
    ActionChains(browser).send_keys(Keys.ARROW_UP).perform()
    assert browser.switch_to.active_element == second
    assert browser.execute_script(SHOWN_TIMES) == [True, True, False]
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    assert browser.switch_to.active_element == third
    assert first.get_attribute("tabindex") is None  # the log stays one Tab stop


def _wait_for_presence(observer, condition):
    """Read an observer socket's frames until a presence update whose names satisfy condition."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        frame = json.loads(observer.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if "presence" in frame and condition(frame["presence"]["names"]):
            return


def test_a_page_left_for_another_leaves_the_room_and_comes_back_with_back(browser, chat_server):
    _choose_name(browser, chat_server, "Walker")
    ws_url = chat_server.replace("http://", "ws://") + "/ws/chat/bfcache/"
    with websockets.sync.client.connect(ws_url, origin=chat_server) as observer:
        _enter_chat_room(browser, chat_server, "bfcache")
        _wait_for_presence(observer, lambda names: "Walker (guest)" in names)
        browser.execute_script("window.keptByTheCache = true")
        _navigate_by(browser, lambda: browser.get(chat_server + "/chat/"))
        _wait_for_presence(observer, lambda names: "Walker (guest)" not in names)
        browser.back()
        _wait(browser, lambda: _status(browser) == "Connected", "never reconnected after Back")
        assert browser.execute_script("return window.keptByTheCache === true"), "not the cache"
        _wait_for_presence(observer, lambda names: "Walker (guest)" in names)


def test_a_socket_closed_for_a_changed_identity_reloads_the_page_as_the_new_one(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "renamed")
    browser.execute_script("window.keptUntilReload = true")
    _open_new_window(browser)
    _choose_name(browser, chat_server, "Renamed")  # in another tab
    _switch_to_window(browser, 0)
    _wait(browser, lambda: not browser.execute_script("return window.keptUntilReload === true"))
    _wait(browser, lambda: _status(browser) == "Connected")
    assert _identity_name(browser) == "Renamed"
    _post_message(browser, "under my new name")
    _wait(browser, lambda: _rich_texts(browser) == ["under my new name"])
    (message,) = _rich_messages(browser)
    assert message["author"] == "Renamed" and message["mine"]


def _identity_name(driver):
    return driver.find_element(By.ID, "identity-name").text


def _logged_in_header(driver):
    return bool(driver.find_elements(By.ID, "logout-button"))


READ_POSITION_POST = """
const [room, done] = [arguments[0], arguments[arguments.length - 1]];
fetch('/api/rooms/' + room + '/read/', {
    method: 'POST',
    headers: {'X-CSRFToken': document.getElementById('rooms-sidebar').dataset.csrf},
    body: new URLSearchParams({up_to: '1'}),
}).then((r) => done(r.status), (e) => done(String(e)));
"""


def test_signing_out_and_in_in_one_tab_brings_the_other_tab_up_to_date(browser, chat_server):
    password = "two-Tabs-one-person-42"
    _sign_up(browser, chat_server, "twotabs", password)
    _enter_chat_room(browser, chat_server, "two-tabs")
    _open_new_window(browser)
    _enter_chat_room(browser, chat_server, "two-tabs")
    _navigate_by(browser, browser.find_element(By.ID, "logout-button").click)

    _switch_to_window(browser, 0)
    _wait(browser, lambda: not _logged_in_header(browser), "the header still says logged in")
    _wait(browser, lambda: _status(browser) == "Connected")
    assert re.fullmatch(GUEST_WITHOUT_A_NAME, _identity_name(browser))
    _post_message(browser, "as a guest now")
    _wait(browser, lambda: "as a guest now" in _rich_texts(browser))
    last = _rich_messages(browser)[-1]
    assert last["author"] == _identity_name(browser) and last["mine"] and last["guest"]

    _switch_to_window(browser, 1)
    _log_in(browser, chat_server, "twotabs", password)  # Django rotates the CSRF token
    _switch_to_window(browser, 0)
    _wait(browser, lambda: _logged_in_header(browser), "the header still says guest")
    _wait(browser, lambda: _status(browser) == "Connected")
    assert _identity_name(browser) == "twotabs"
    _post_message(browser, "signed in again")
    _wait(browser, lambda: "signed in again" in _rich_texts(browser))
    last = _rich_messages(browser)[-1]
    assert last["author"] == "twotabs" and last["mine"] and not last["guest"]
    assert browser.execute_async_script(READ_POSITION_POST, "two-tabs") == 200


READ_POSITION_GET = """
const [room, done] = [arguments[0], arguments[arguments.length - 1]];
fetch('/api/rooms/?online=0&room=' + encodeURIComponent(room)).then((r) => r.json()).then(
    (body) => done(body.rooms.find((listed) => listed.name === room)?.read_up_to ?? null),
    (e) => done(String(e)));
"""

# What a login in another tab does to this one: a new CSRF secret in the cookie, while the
# page keeps the token it was rendered with.
ROTATE_CSRF_COOKIE = """
const letters = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
const secret = Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => letters[b % 62]);
document.cookie = arguments[0] + '=' + secret.join('') + '; path=/; SameSite=Lax; Secure';
"""


def test_the_sidebar_reports_a_read_with_the_csrf_token_of_now_not_of_the_page(
    browser, chat_server
):
    _sign_up(browser, chat_server, "rotated", "csrf-Rotated-42")
    _enter_chat_room(browser, chat_server, "csrf-rotation")
    rendered_with = browser.get_cookie("csrftoken")["value"]
    browser.execute_script(ROTATE_CSRF_COOKIE, "csrftoken")
    assert browser.get_cookie("csrftoken")["value"] != rendered_with
    _post_message(browser, "read after the rotation")
    _wait(
        browser,
        lambda: browser.execute_async_script(READ_POSITION_GET, "csrf-rotation") == 1,
        "the sidebar's read report was refused (a stale CSRF token)",
    )


LOG_OUT_FROM_THIS_PAGE = """
const done = arguments[arguments.length - 1];
const form = document.querySelector('#identity form');
fetch(form.action, {method: 'POST', body: new FormData(form)})
    .then((r) => done(r.status), (e) => done(String(e)));
"""


def test_a_message_queued_offline_is_not_sent_under_a_new_sign_in_but_put_back(
    browser, chat_server
):
    _sign_up(browser, chat_server, "offline-alice", "queued-Offline-42")
    _enter_chat_room(browser, chat_server, "queued-sign-in")
    browser.execute_script(NEVER_OPENS + "chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    _post_message(browser, "typed as alice")
    _wait(browser, lambda: len(_pending(browser)) == 1)
    browser.find_element(By.ID, "chat-message-input").send_keys("a draft")
    assert browser.execute_async_script(LOG_OUT_FROM_THIS_PAGE) == 200  # as in another tab
    browser.execute_script("window.WebSocket = window.RealWebSocket")

    _wait(browser, lambda: _error_text(browser).startswith("Your sign-in changed"), "no notice")
    _wait(browser, lambda: _status(browser) == "Connected")
    assert re.fullmatch(GUEST_WITHOUT_A_NAME, _identity_name(browser))
    assert not _logged_in_header(browser)
    message_input = browser.find_element(By.ID, "chat-message-input")
    assert message_input.get_property("value") == "typed as alice\n\na draft"
    assert _pending(browser) == [] and _rich_texts(browser) == []
    assert _stored_texts(chat_server, "queued-sign-in") == []
    assert "send again" in _error_text(browser)


def _scroll_log_to_top(driver):
    driver.execute_script("document.querySelector('#messages').scrollTop = 0")


def _top_of_message(driver, message_id) -> float:
    return driver.execute_script(
        "return document.querySelector(`#messages [data-id='${arguments[0]}']`)"
        ".getBoundingClientRect().top",
        message_id,
    )


def test_older_messages_load_a_page_at_a_time_when_scrolling_up(browser, chat_server_process):
    server = chat_server_process
    texts = [f"message {n}" for n in range(1, 121)]
    _store_as(server, "long-ago", "services.Author('seeder')", texts)
    _enter_chat_room(browser, server.url, "long-ago")
    _wait(browser, lambda: _rich_texts(browser) == texts[-50:], "not the last 50")
    _scroll_log_to_top(browser)
    first_shown = _top_of_message(browser, "71")  # before the older page, fetched meanwhile
    _wait(browser, lambda: _rich_texts(browser) == texts[-100:], "no older page")
    # The page grew above what was on screen, and what was on screen stayed where it was.
    assert browser.execute_script("return document.querySelector('#messages').scrollTop") > 0
    assert _top_of_message(browser, "71") == pytest.approx(first_shown, abs=2)
    _scroll_log_to_top(browser)
    _wait(browser, lambda: _rich_texts(browser) == texts, "not back to the first message")
    assert _log_texts(browser) == texts  # the transcript holds them all, in order
    ids = [message["id"] for message in _rich_messages(browser)]
    assert ids == [str(n) for n in range(1, 121)]


SERIOUS = {"serious", "critical"}


@pytest.mark.parametrize("path", ["/chat/", "/chat/axe/", "/accounts/login/", "/accounts/signup/"])
def test_axe_finds_no_serious_accessibility_violation(browser, chat_server, path):
    browser.get(chat_server + path)
    _wait(browser, lambda: browser.execute_script("return document.readyState") == "complete")
    if path == "/chat/axe/":
        _wait(browser, lambda: _status(browser) == "Connected")
        _post_message(browser, "a message with a link https://example.com/")
        _wait(browser, lambda: len(_rich_messages(browser)) == 1)
    axe = Axe(browser)
    axe.inject()
    results = axe.run()
    serious = [v for v in results["violations"] if v["impact"] in SERIOUS]
    assert serious == [], axe.report(serious)


LISTEN_TO_THE_PAGE = """
window.heard = [];
for (const name of ['chat:message', 'chat:presence', 'chat:connection', 'chat:frame']) {
    document.addEventListener(name, (e) => window.heard.push({
        name: name,
        message: e.detail.data ? e.detail.data.message : undefined,
        history: e.detail.history,
        element: e.detail.element ? e.detail.element.dataset.id : undefined,
        state: e.detail.state,
        frame: name === 'chat:frame' ? e.detail : undefined,
    }));
}
"""


def test_other_scripts_hear_the_page_through_dom_events_and_send_through_chat_client(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "events")
    _post_message(browser, "before")
    _wait(browser, lambda: _rich_texts(browser) == ["before"])
    browser.execute_script(LISTEN_TO_THE_PAGE)
    assert browser.execute_script("return chatClient.send({message: 'sent by a script'})")
    _wait(browser, lambda: "sent by a script" in _rich_texts(browser))
    browser.execute_script("chatClient.socket().close()")
    _wait(browser, lambda: _status(browser) == "Connected")
    heard_presence = "return window.heard.some((entry) => entry.name === 'chat:presence')"
    _wait(browser, lambda: browser.execute_script(heard_presence), "no chat:presence event")
    heard = browser.execute_script("return window.heard")
    assert {"name": "chat:message", "message": "sent by a script", "history": False,
            "element": "2", "state": None, "frame": None} in [
        {key: entry.get(key) for key in ("name", "message", "history", "element", "state", "frame")}
        for entry in heard
    ]  # fmt: skip
    states = [entry["state"] for entry in heard if entry["name"] == "chat:connection"]
    assert states == ["closed", "open"]
    # A frame kind the page does not handle itself is passed on whole.
    browser.execute_script(
        "chatClient.socket().onmessage({data: JSON.stringify({typing: {user: 'bob'}})})"
    )
    frames = [e["frame"] for e in browser.execute_script("return window.heard") if e["frame"]]
    assert frames == [{"typing": {"user": "bob"}}]
    browser.execute_script(NEVER_OPENS + "chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    assert browser.execute_script("return chatClient.send({message: 'nowhere'})") is False


SCREENSHOTS = ROOT / "docs" / "screenshots"
SCREENSHOT_CONVERSATION = [
    ("bob", "Morning! Is the release still on for Friday?"),
    ("alice", "Yes, the checklist is at https://example.com/release-checklist."),
    ("alice", "Two items left:\n- the changelog\n- the screenshots"),
    ("bob", "I can take the changelog."),
    ("bob", "Done, have a look when you can."),
    ("alice", "Looks good, thanks!"),
]


@pytest.mark.skipif(
    not os.environ.get("CHAT_SCREENSHOTS"), reason="retakes docs/screenshots/: CHAT_SCREENSHOTS=1"
)
def test_take_the_readmes_screenshots_of_the_room_and_the_index(browser, chat_server_process):
    server = chat_server_process
    _sign_up(browser, server.url, "alice", "a long passphrase 42")
    authors = {
        "alice": "services.Author('alice', user_id=__import__('django.contrib.auth').contrib.auth"
        ".get_user_model().objects.get(username='alice').pk)",
        "bob": "services.Author('Bob', guest_key='bob')",
    }
    for name, text in SCREENSHOT_CONVERSATION:
        _store_as(server, "release", authors[name], [text])
    code = (
        "import datetime\n"
        "from django.utils import timezone\n"
        "from chat.models import Message\n"
        "yesterday = timezone.now() - datetime.timedelta(days=1)\n"
        "Message.objects.filter(room_id='release', seq__lt=4).update(created=yesterday)\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env, check=True
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ws_url = server.url.replace("http://", "ws://") + "/ws/chat/release/"
    with websockets.sync.client.connect(ws_url, origin=server.url):
        for size, name in ((DESKTOP, "room-desktop.png"), (PHONE, "room-phone.png")):
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
            try:
                _enter_chat_room(browser, server.url, "release")
                _wait(browser, lambda: len(_presence_items(browser)) == 2)
                _wait(browser, lambda: len(_rich_messages(browser)) >= len(SCREENSHOT_CONVERSATION))
                browser.find_element(By.ID, "chat-message-input").send_keys("Shipping it")
                browser.save_screenshot(str(SCREENSHOTS / name))
            finally:
                browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)
        try:
            browser.get(server.url + "/chat/")
            _wait(browser, lambda: _index_entry(browser, "release", ".room-online") == "1 online")
            browser.save_screenshot(str(SCREENSHOTS / "index-desktop.png"))
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_keyboard_alone_chooses_a_room_sends_and_reaches_the_log(browser, chat_server):
    _enter_chat_room(browser, chat_server, "keyboard")
    ActionChains(browser).send_keys("by keyboard", Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "chat-message-submit"
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    _wait(browser, lambda: _rich_texts(browser) == ["by keyboard"])
    assert browser.switch_to.active_element.get_attribute("id") == "chat-message-input"
    # Back up the page: the log takes the focus, so its history scrolls by keyboard.
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "messages"


def test_a_refused_message_waits_for_retry_and_retry_sends_it(browser, chat_server):
    _enter_chat_room(browser, chat_server, "retry")
    browser.execute_script(NEVER_OPENS + "chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    _post_message(browser, "try again")
    client_id = browser.execute_script("return document.querySelector('.pending').dataset.clientId")
    refusal = {"code": "too_many_rooms", "detail": "Too many new rooms.", "client_id": client_id}
    browser.execute_script(  # as the server answers a send it refuses
        "chatClient.socket().onmessage({data: JSON.stringify({error: arguments[0]})})", refusal
    )
    assert _pending(browser)[0]["delivery"].startswith("Not sent: Too many new rooms.")
    browser.execute_script("window.WebSocket = window.RealWebSocket")
    _wait(browser, lambda: _status(browser) == "Connected", "never reconnected")
    assert _pending(browser)[0]["code"] == "too_many_rooms"  # a refused send is not resent
    assert _rich_texts(browser) == []
    retry = browser.find_element(By.CSS_SELECTOR, "#messages .pending .delivery button")
    assert retry.text == "Retry"
    retry.click()
    _wait(browser, lambda: _rich_texts(browser) == ["try again"], "Retry sent nothing")
    assert _pending(browser) == []


def test_the_page_retries_a_message_refused_as_overloaded_until_it_is_delivered_once_in_order(
    browser, start_chat_server
):
    # No wait in front of the store is allowed; the lock's wait is long enough for the test.
    server = start_chat_server(CHAT_STORE_QUEUE_SECONDS="0", DATABASE_LOCK_TIMEOUT_SECONDS="60")
    _enter_chat_room(browser, server.url, "busy")
    _post_message(browser, "first")
    _wait(browser, lambda: _rich_texts(browser) == ["first"])
    with room_locked_outside(server.env["DATABASE_URL"], "busy"):
        _post_message(browser, "held by the lock")  # holds the server's sync thread
        _post_message(browser, "queued behind it")  # any wait is over the bound: refused
        _post_message(browser, "refused")  # would join a queue that waited: overloaded
        _wait(
            browser,
            lambda: _pending(browser)[-1] == {
                "text": "refused", "delivery": "Server busy, retrying…", "code": "overloaded"
            },
            "the page never showed the refusal",
        )  # fmt: skip
    expected = ["first", "held by the lock", "queued behind it", "refused"]
    _wait(browser, lambda: _rich_texts(browser) == expected, "not delivered once, in order")
    assert _pending(browser) == []
    assert _stored_texts(server.url, "busy") == expected  # stored once each


# Records each wait the page takes after `overloaded` (its sendAfterBusy timers) and counts
# those that are over.
RECORD_BUSY_WAITS = """
window.busyWaits = [];
window.busyOver = 0;
const realSetTimeout = window.setTimeout;
window.setTimeout = function (callback, delay, ...rest) {
    if (callback.name !== 'sendAfterBusy') {
        return realSetTimeout(callback, delay, ...rest);
    }
    window.busyWaits.push(delay);
    return realSetTimeout(() => { window.busyOver += 1; callback(); }, delay);
};
"""


def test_the_page_waits_as_long_as_each_overloaded_hint_says_however_many_in_a_row(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "hinted")
    browser.execute_script(NEVER_OPENS + "chatClient.socket().close()")
    _wait(browser, lambda: "Reconnecting" in _status(browser))
    _post_message(browser, "refused again and again")
    client_id = browser.execute_script("return document.querySelector('.pending').dataset.clientId")
    browser.execute_script(RECORD_BUSY_WAITS)
    hints = [0.25, 0.25, 0.25, 0.5]  # the server's slots for this page, refused each time
    for refusals, hint in enumerate(hints, start=1):
        refusal = {
            "code": "overloaded",
            "detail": "Busy.",
            "retry_after": hint,
            "client_id": client_id,
        }
        browser.execute_script(  # as the server answers a send it refuses
            "chatClient.socket().onmessage({data: JSON.stringify({error: arguments[0]})})", refusal
        )
        _wait(browser, lambda: browser.execute_script("return window.busyOver") == refusals)  # noqa: B023
    # Neither doubled nor jittered: the server already spread the refused pages.
    assert browser.execute_script("return window.busyWaits") == [1000 * hint for hint in hints]
    assert _pending(browser)[0]["delivery"] == "sending…"  # it goes once connected


def test_messages_from_history_and_catch_up_reach_other_scripts_marked_history(
    browser, chat_server_process
):
    server = chat_server_process
    _store_as(server, "marked", "services.Author('seeder')", ["backlog"])
    _enter_chat_room(browser, server.url, "marked")
    _wait(browser, lambda: _rich_texts(browser) == ["backlog"])
    browser.execute_script(LISTEN_TO_THE_PAGE)
    _store_as(server, "marked", "services.Author('seeder')", ["missed while away"])
    browser.execute_script("chatClient.socket().close()")  # reconnects with ?after=1
    _wait(browser, lambda: _rich_texts(browser) == ["backlog", "missed while away"])
    _post_message(browser, "live again")
    _wait(browser, lambda: "live again" in _rich_texts(browser))
    heard = browser.execute_script("return window.heard")
    flags = {e["message"]: e["history"] for e in heard if e["name"] == "chat:message"}
    assert flags == {"missed while away": True, "live again": False}


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


def _times_not_in_readers_time(driver) -> list[str]:
    """The page's server-written times (time.local) that do not read as dates.js says."""
    return driver.execute_script(
        """return [...document.querySelectorAll('time.local')]
               .filter((t) => t.textContent !== chatDates.full(new Date(t.dateTime)))
               .map((t) => t.outerHTML);"""
    )


def test_times_the_server_writes_into_pages_show_in_the_readers_time(browser, chat_server):
    _sign_up(browser, chat_server, "timekeeper", "a long enough password 42")
    _enter_chat_room(browser, chat_server, "local-times")
    _post_message(browser, "now")
    _wait(browser, lambda: "now" in _chat_log_value(browser))
    browser.get(chat_server + "/chat/")
    assert browser.find_elements(By.CSS_SELECTOR, "#active-rooms time.local")
    assert _times_not_in_readers_time(browser) == []
    browser.get(chat_server + "/accounts/tokens/")
    browser.find_element(By.ID, "token-name").send_keys("clock")
    _navigate_by(browser, browser.find_element(By.ID, "token-create").click)
    made = browser.find_element(By.CSS_SELECTOR, "#token-list time.local")
    assert _times_not_in_readers_time(browser) == [] and "UTC" not in made.text


def _index_entry(driver, room_name, selector):
    entry = f'#active-rooms li[data-room="{room_name}"] {selector}'
    return driver.find_element(By.CSS_SELECTOR, entry).text


def test_the_index_stops_counting_you_in_the_room_you_just_left(browser, chat_server):
    _enter_chat_room(browser, chat_server, "left-behind")
    _post_message(browser, "here for a moment")
    _wait(browser, lambda: "here for a moment" in _rich_texts(browser))
    # The index is rendered before the room's page lets its socket go.
    _navigate_by(browser, browser.find_element(By.LINK_TEXT, "All rooms").click)
    _wait(
        browser,
        lambda: _index_entry(browser, "left-behind", ".room-online") == "0 online",
        "still counted in the room left",
    )


def test_the_index_and_the_room_write_a_time_the_same_way(browser, chat_server):
    _enter_chat_room(browser, chat_server, "one-format")
    _post_message(browser, "what time is it")
    _wait(browser, lambda: len(_rich_messages(browser)) == 1)
    (message,) = _rich_messages(browser)
    assert re.fullmatch(r"\d{2}:\d{2}( [AP]M)?", message["time"]), message["time"]
    browser.get(chat_server + "/chat/")
    assert _index_entry(browser, "one-format", "time") == f"Today, {message['time']}"


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


# sidebar.js's ROOMS_REFRESH_MS.
ROOMS_REFRESH_SECONDS = 5

# Records the status of every /api/rooms/ request the page makes, and hides the tab as far
# as the page can tell (document.hidden, visibilityState, and the visibilitychange event).
HIDE_THIS_TAB = """
window.roomPolls = [];
const realFetch = window.fetch;
window.fetch = (...args) => realFetch(...args).then((response) => {
    if (String(args[0]).includes('/api/rooms/?')) { window.roomPolls.push(response.status); }
    return response;
});
Object.defineProperty(document, 'hidden', {configurable: true, get: () => window.fakeHidden});
Object.defineProperty(document, 'visibilityState', {
    configurable: true, get: () => (window.fakeHidden ? 'hidden' : 'visible'),
});
window.fakeHidden = true;
document.dispatchEvent(new Event('visibilitychange'));
"""

SHOW_THIS_TAB = """
window.fakeHidden = false;
document.dispatchEvent(new Event('visibilitychange'));
"""


def test_a_recent_room_whose_name_the_rule_now_refuses_is_forgotten_not_failing_the_list(
    browser, chat_server
):
    browser.get(chat_server + "/chat/")
    # Visited before the room-name rule refused blank names (U+3164, a Hangul filler).
    browser.execute_script(
        "localStorage.setItem('chat:recent-rooms', JSON.stringify(['\u3164', 'lobby']))"
    )
    _enter_chat_room(browser, chat_server, "after-the-rule")
    _post_message(browser, "hello")
    listed = "#rooms-sidebar-list li[data-room='after-the-rule']"
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, listed), "list never loaded")
    kept = browser.execute_script("return JSON.parse(localStorage.getItem('chat:recent-rooms'))")
    assert kept == ["after-the-rule"]


def test_a_hidden_tab_asks_nothing_and_on_coming_back_an_unchanged_list_is_a_304(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "hidden-tab")
    _post_message(browser, "listed")
    _wait(browser, lambda: _sidebar_lists(browser, "hidden-tab"), "room not in the sidebar")
    browser.execute_script(HIDE_THIS_TAB)
    # Nothing to wait for: the test is that nothing happens for longer than one round.
    time.sleep(ROOMS_REFRESH_SECONDS * 1.4)
    assert browser.execute_script("return window.roomPolls") == []
    browser.execute_script(SHOW_THIS_TAB)
    _wait(browser, lambda: browser.execute_script("return window.roomPolls") == [304])
    assert _sidebar_lists(browser, "hidden-tab") and _unread(browser, "hidden-tab") == 0


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


# Records every fetch a page makes, from before its own scripts run.
FETCH_SPY = """
window.fetchedUrls = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
    window.fetchedUrls.push(String(url));
    return realFetch(url, options);
};
"""


def test_a_logged_in_reader_of_a_room_with_no_messages_reports_no_read_position(
    browser, chat_server
):
    # The server has no position to keep there (404 no_such_room, a console error).
    _sign_up(browser, chat_server, "empty-room-reader", "reads-Nothing-42")
    spy = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FETCH_SPY})
    try:
        _enter_chat_room(browser, chat_server, "nothing-said-yet")
        _wait(browser, lambda: _status(browser) == "Connected", "not connected")
        browser.execute_script("window.dispatchEvent(new Event('pagehide'))")  # sends one due
        fetched = browser.execute_script("return window.fetchedUrls")
        assert [url for url in fetched if url.endswith("/read/")] == []
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", spy)
        browser.delete_all_cookies()  # the next tests are guests again


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


def _mentions_shown(driver) -> list[bool]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .message'),"
        " (m) => m.classList.contains('mention'));"
    )


def _change(driver, frame: dict):
    assert driver.execute_script("return window.chatClient.send(arguments[0])", frame)


def test_an_edit_or_deletion_that_adds_or_removes_a_mention_updates_the_highlight(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "mention-edits")
    me = browser.find_element(By.ID, "rooms-sidebar").get_attribute("data-me")
    _post_message(browser, "hello")
    _post_message(browser, f"@{me} look")
    _wait(browser, lambda: _rich_texts(browser) == ["hello", f"@{me} look"])
    assert _mentions_shown(browser) == [False, True]
    _change(browser, {"edit": {"id": 1, "message": f"hello @{me}"}})
    _wait(browser, lambda: _mentions_shown(browser) == [True, True], "an added mention not shown")
    _change(browser, {"edit": {"id": 2, "message": "look"}})
    _wait(browser, lambda: _mentions_shown(browser) == [True, False], "a removed one still shown")
    _change(browser, {"delete": {"id": 1}})
    _wait(browser, lambda: _mentions_shown(browser) == [False, False], "a deleted one still shown")


def test_a_mention_removed_by_a_change_that_waited_for_its_message_is_not_highlighted(
    browser, chat_server
):
    _enter_chat_room(browser, chat_server, "mention-waited")
    me = browser.find_element(By.ID, "rooms-sidebar").get_attribute("data-me")
    # room.js applies a change that came before its message, then tells the other scripts.
    shown = browser.execute_script(
        """
        const [me] = arguments;
        const element = document.createElement('div');
        element.chatData = {id: 1, user: 'bob', message: 'never mind', change: 1};
        document.body.append(element);
        const data = {id: 1, user: 'bob', guest: false, message: '@' + me + ' look'};
        document.dispatchEvent(
            new CustomEvent('chat:message', {detail: {data, element, history: false}}));
        return element.classList.contains('mention');
        """,
        me,
    )
    assert not shown


def _guest_session_cookie(base_url: str, name: str) -> str:
    """The Cookie header of a new guest session that chose `name`, as a browser gets one."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base_url + "/chat/").read()
    token = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    form = urllib.parse.urlencode({"display_name": name, "csrfmiddlewaretoken": token})
    opener.open(urllib.request.Request(base_url + "/accounts/name/", form.encode())).read()
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)


def test_a_guest_is_marked_as_a_guest_wherever_others_see_its_name(browser, chat_server):
    # A name no test signs up with: a guest name that looks like a username is refused.
    _choose_name(browser, chat_server, "Wren")
    _enter_chat_room(browser, chat_server, "guest-marked")
    browser.execute_script(
        """
        window.notified = [];
        window.Notification = class {
            static permission = 'granted';
            constructor(title, options) { window.notified.push(title); }
        };
        Object.defineProperty(document, 'hidden', {get: () => true, configurable: true});
        """
    )
    ws_url = chat_server.replace("http://", "ws://") + "/ws/chat/guest-marked/"
    cookie = _guest_session_cookie(chat_server, "Security Team")
    with websockets.sync.client.connect(
        ws_url, origin=chat_server, additional_headers={"Cookie": cookie}
    ) as guest:
        _wait(browser, lambda: "Security Team (guest)" in _presence_items(browser), "presence")
        guest.send(json.dumps({"typing": True}))
        _wait(browser, lambda: _typing_line(browser) == "Security Team (guest) is typing…")
        guest.send(json.dumps({"message": "@Wren reset your password here"}))
        line = "Security Team (guest): @Wren reset your password here"
        _wait(browser, lambda: line in _log_lines(browser), "transcript")
        (header,) = browser.find_elements(By.CSS_SELECTOR, "#messages .message .meta")
        author, tag = header.find_elements(By.CSS_SELECTOR, ".author, .tag")
        assert (author.text, tag.text) == ("Security Team", "(guest)")
        assert browser.execute_script("return window.notified") == [
            "Security Team (guest) mentioned you in guest-marked"
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


def test_a_page_whose_network_is_cut_says_so_and_reconnects(browser, start_chat_server, tcp_relay):
    # The page pings after 1 s without a frame and waits 1 s for an answer.
    server = start_chat_server(CHAT_HEARTBEAT_SECONDS="1", CHAT_HEARTBEAT_TIMEOUT_SECONDS="1")
    relay = tcp_relay(server.port)
    _enter_chat_room(browser, f"http://127.0.0.1:{relay.port}", "cut-line")
    # Every status the page shows, however briefly: it may reconnect before a poll sees it.
    browser.execute_script(
        """
        const status = document.getElementById('connection-status');
        window.statuses = [];
        new MutationObserver(() => window.statuses.push(status.textContent)).observe(
            status, {childList: true, characterData: true, subtree: true});
        """
    )
    relay.cut()  # the socket stays open at both ends; nothing crosses any more
    _wait(
        browser,
        lambda: any(
            s.startswith("Connection lost.")
            for s in browser.execute_script("return window.statuses")
        ),
        "cut never noticed",
    )
    _wait(browser, lambda: _status(browser) == "Connected", "never reconnected")
