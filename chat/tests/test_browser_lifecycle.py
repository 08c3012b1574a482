"""A deactivated account and a room's retention in real headless Chromium, as people see
them: the page says so, at 1280x800 and 390x844."""

import json
import subprocess
import sys
import uuid

import pytest
import websocket
from selenium.webdriver.common.by import By

from chat import protocol
from chat.tests import test_browser
from chat.tests.test_browser import DESKTOP, PHONE, _log_in, _rich_texts, _status, _wait
from conftest import ROOT, server_environment

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("limits_count_from_zero")]
# test_browser's fixtures: one headless Chromium per module, cleared after each test.
driver = test_browser.driver
browser = test_browser.browser

PASSWORD = "lifecycle-Pages-42"


@pytest.fixture(params=[PHONE, DESKTOP], ids=["phone", "desktop"])
def screen(request, browser):
    """The browser at 390x844 (a phone) or 1280x800."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", request.param)
    yield request.param
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture
def shell(redis_server, migrated_database):
    """Run Python in chat_server's database, as `manage.py shell -c` would."""

    def _run(code: str):
        env = server_environment(redis_server.url, migrated_database)
        command = [sys.executable, "manage.py", "shell", "-c", code]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)

    return _run


def _fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_a_deactivated_accounts_page_says_so_and_stays_closed(browser, chat_server, screen, shell):
    username = f"leaving{screen['width']}"
    # Made in the database, not signed up: sign-ups are limited per address, and the
    # module's other tests may have used them up.
    shell(
        "from django.contrib.auth.models import User; "
        f"User.objects.create_user({username!r}, password={PASSWORD!r})"
    )
    _log_in(browser, chat_server, username, PASSWORD)
    browser.get(chat_server + "/chat/lobby/")
    _wait(browser, lambda: _status(browser) == "Connected", "socket never opened")

    shell(
        "from django.contrib.auth.models import User; "
        f"user = User.objects.get(username={username!r}); user.is_active = False; user.save()"
    )
    status = browser.find_element(By.ID, "connection-status")
    _wait(browser, lambda: status.text == "This account has been deactivated.")
    assert status.get_attribute("data-code") == str(protocol.CLOSE_ACCOUNT_DEACTIVATED)
    assert _fits(browser)
    browser.refresh()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Account deactivated"
    assert "This account has been deactivated." in browser.find_element(By.TAG_NAME, "main").text
    assert _fits(browser)


def test_where_retention_deleted_history_the_room_says_so(browser, chat_server, screen, shell):
    room = f"kept-{uuid.uuid4().hex[:8]}"
    socket = websocket.create_connection(
        chat_server.replace("http://", "ws://") + f"/ws/chat/{room}/", origin=chat_server
    )
    for text in ("old one", "old two", "new one"):
        socket.send(json.dumps({"message": text}))
        while json.loads(socket.recv()).get("message") != text:
            pass
    socket.close()
    shell(
        "from datetime import timedelta; from django.utils import timezone; "
        "from chat.models import Message, Room; from chat import retention; "
        f"Room.objects.filter(name={room!r}).update(retention_days=30); "
        f"Message.objects.filter(room_id={room!r}, seq__lte=2).update("
        "created=timezone.now() - timedelta(days=31)); "
        "list(retention.purge())"
    )

    browser.get(chat_server + f"/chat/{room}/")
    _wait(browser, lambda: _rich_texts(browser) == ["new one"], "the kept message")
    line = browser.find_element(By.ID, "history-gone")
    _wait(browser, lambda: line.text == "Older messages were deleted after 30 days.")
    above = browser.execute_script(
        "return arguments[0].compareDocumentPosition(document.querySelector('.message'))", line
    )
    assert above & 4  # DOCUMENT_POSITION_FOLLOWING: the line is above the first message
    assert _fits(browser)
