"""docs/operations.md's recipes, run as written."""

import contextlib
import http.client
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import TextIO

import pytest
import websocket

from chat.tests.test_browser import _chat_log_value, _enter_chat_room, _post_message, _status, _wait
from chat.tests.test_browser import driver as chromium  # noqa: F401 (a fixture)
from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS
from serving.embedded_redis import free_port
from serving.processes import stop_processes

OPERATIONS = ROOT / "docs" / "operations.md"
# The recipe's own port; the test serves on a free one instead.
RECIPE_PORT = "8000"
# dev.py may check the virtualenv first, migrate runs, then every process starts.
RECIPE_READY_TIMEOUT_SECONDS = 3 * SERVER_READY_TIMEOUT_SECONDS
STOP_TIMEOUT_SECONDS = 30


def recipe(heading: str) -> str:
    """The first ```sh block under a `## heading` of docs/operations.md."""
    section = OPERATIONS.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One plain HTTP request, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def wait_until_served(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the recipe exited with {process.returncode}"
        try:
            get(port, "/healthz")
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing answered within {timeout:g} s"
            time.sleep(0.2)


@contextlib.contextmanager
def running(heading: str, tmp_path) -> Iterator[tuple[int, TextIO]]:
    """A recipe, running in a shell of its own on a free port; stopped with all it started."""
    port = free_port()
    script = recipe(heading).replace(f":{RECIPE_PORT}", f":{port}")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CHAT_", "REDIS_URL", "VIRTUAL_ENV"))
    }
    # The recipe's SQLite file (db.sqlite3 in the checkout) would be this checkout's own.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    output = open(tmp_path / "output.txt", "w+")
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_served(port, process, RECIPE_READY_TIMEOUT_SECONDS)
        yield port, output
    finally:
        # SIGTERM to the shell's group, as a terminal's Ctrl-C: the supervisor (dev.py
        # execs it) stops its children, then the Redis it started.
        stop_processes([process], STOP_TIMEOUT_SECONDS, group=True)
        output.seek(0)


@pytest.fixture(scope="module")
def scaling_out(tmp_path_factory):
    """The Scaling out recipe, serving: one run for the tests that only use it, each in a
    room of its own (a run starts Redis, migrates and starts every process)."""
    with running("Scaling out", tmp_path_factory.mktemp("scaling-out")) as served:
        yield served


def test_the_scaling_out_recipe_serves_the_chat_over_plain_http_on_loopback(scaling_out):
    port, output = scaling_out
    page = get(port, "/chat/lobby/")
    assert page.status == 200, (page.status, page.getheader("Location"))
    cookies = "; ".join(
        value.split(";", 1)[0] for name, value in page.getheaders() if name == "Set-Cookie"
    )
    assert "sessionid=" in cookies and "Secure" in page.getheader("Set-Cookie")
    client = websocket.create_connection(
        f"ws://127.0.0.1:{port}/ws/chat/lobby/",
        origin=f"http://127.0.0.1:{port}",
        header=[f"Cookie: {cookies}"],
        timeout=10,
    )
    try:
        client.send(json.dumps({"message": "hello from the recipe"}))
        while "message" not in (frame := json.loads(client.recv())):
            pass
        assert frame["message"] == "hello from the recipe"
    finally:
        client.close()
    output.seek(0)
    log = output.read()
    assert "Embedded Redis listening on" in log
    assert "no redirect to HTTPS" in log
    assert "Traceback" not in log


def test_the_scaling_out_recipe_stops_with_everything_it_started(tmp_path):
    with running("Scaling out", tmp_path) as (port, output):
        pass
    log = output.read()
    redis_pid = int(re.search(r"Embedded Redis listening on \S+ \(pid (\d+)\)", log).group(1))
    assert "Stopped the embedded Redis." in log
    assert not os.path.exists(f"/proc/{redis_pid}")
    with pytest.raises(ConnectionRefusedError):
        get(port, "/healthz")


@pytest.mark.browser
def test_a_guest_in_chromium_posts_through_the_recipe_without_a_sign_in_loop(request, scaling_out):
    """Chromium sends the Secure session cookie back to plain-HTTP loopback."""
    port, _ = scaling_out
    browser = request.getfixturevalue("chromium")  # test_browser's driver, imported above
    _enter_chat_room(browser, f"http://127.0.0.1:{port}", "loopback")
    _post_message(browser, "hello over loopback")
    _wait(browser, lambda: "hello over loopback" in _chat_log_value(browser), "never echoed")
    assert _status(browser) == "Connected"
