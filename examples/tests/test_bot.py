"""examples/bot.py: its answers, and the bot itself against a real server that it outlives."""

import json
import os
import subprocess
import sys
import time

import pytest
import websocket

from conftest import ROOT
from examples import bot
from serving.tests.test_dev import system_python

# Generous: the bot's backoff reaches 4 s while a server restarts on a loaded machine.
ANSWER_TIMEOUT_SECONDS = 30


def test_help_and_rolls_get_answers_and_other_messages_none(monkeypatch):
    monkeypatch.setattr(bot.random, "randint", lambda low, high: high)
    assert bot.answer(" /help ") == bot.HELP
    assert bot.answer("/roll 2d6") == "2d6: 6 + 6 = 12"
    assert bot.answer("/roll 1d20") == "1d20: 20"
    for wrong in ("/roll", "/roll 0d6", "/roll 2d1", "/roll 101d6", "/roll 2d6x", "/roll d6"):
        assert bot.answer(wrong).startswith("Roll like this")
    for other in ("hello", "/rolling", "I answer /help", ""):
        assert bot.answer(other) is None


def test_the_socket_url_catches_up_from_the_last_id_seen():
    room_bot = bot.Bot("https://chat.example.com", "café", "t")
    assert room_bot.socket_url() == "wss://chat.example.com/ws/chat/caf%C3%A9/"
    room_bot.last_id = 41
    assert room_bot.socket_url().endswith("/ws/chat/caf%C3%A9/?after=41")


def test_the_bot_under_a_python_without_websockets_says_what_to_run_in_one_line():
    python = system_python()  # a python3 outside the virtualenv, as a newcomer's
    if subprocess.run([python, "-c", "import websockets"], capture_output=True).returncode == 0:
        pytest.skip(f"{python} has websockets installed")
    result = subprocess.run(
        [python, "examples/bot.py", "http://127.0.0.1:8000", "lobby"],
        cwd=ROOT, env={**os.environ, "CHAT_TOKEN": "t"}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert ".venv/bin/python" in result.stderr


def _manage(server, *args: str) -> str:
    command = [sys.executable, "manage.py", *args]
    done = subprocess.run(command, cwd=ROOT, env=server.env, check=True, capture_output=True)
    return done.stdout.decode()


def _answer_to(socket, command_id: int) -> dict:
    """The bot's answer (client_id answer-<id>) to the command with that id."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
    while True:
        socket.settimeout(max(deadline - time.monotonic(), 0.1))
        frame = json.loads(socket.recv())
        if frame.get("client_id") == f"answer-{command_id}":
            return frame


def _guest(server, query: str = ""):
    return websocket.create_connection(
        server.url.replace("http://", "ws://") + f"/ws/chat/dice/{query}",
        origin=server.url,
        timeout=ANSWER_TIMEOUT_SECONDS,
    )


def _wait_for_the_bot(socket):
    """Until the room's presence lists the bot: commands before it came are not asked of it."""
    while "dicebot" not in json.loads(socket.recv()).get("presence", {}).get("names", []):
        pass


def _send(socket, text: str) -> int:
    """Send a message; its id, from its broadcast."""
    socket.send(json.dumps({"message": text}))
    while (frame := json.loads(socket.recv())).get("message") != text:
        pass
    return frame["id"]


@pytest.fixture
def bot_process(start_chat_server):
    """The example bot, as a user with a token, in room "dice" of a real server."""
    server = start_chat_server()
    make_token = (
        "from django.contrib.auth.models import User; from chat import tokens; "
        "user, _ = User.objects.get_or_create(username='dicebot'); "
        "print(tokens.create_token(user, 'the example bot')[1])"
    )
    token = _manage(server, "shell", "-c", make_token).split()[-1]
    env = {**os.environ, "CHAT_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "examples/bot.py", server.url, "dice"], cwd=ROOT, env=env
    )
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_bot_answers_and_catches_up_after_the_server_closes_its_socket(bot_process):
    server = bot_process
    guest = _guest(server)
    _wait_for_the_bot(guest)
    help_id = _send(guest, "/help")
    help_answer = _answer_to(guest, help_id)
    assert (help_answer["message"], help_answer["user"], help_answer["guest"]) == (
        bot.HELP,
        "dicebot",
        False,
    )
    roll = _answer_to(guest, _send(guest, "/roll 2d6"))["message"]
    assert roll.startswith("2d6: ") and 2 <= int(roll.rsplit(" ", 1)[1]) <= 12
    guest.close()

    # The server stops (SIGTERM: every socket gets its close frame); a command is stored
    # while the bot is away; the bot reconnects with ?after= and answers it.
    server.stop()
    posted = _manage(server, "chat_post", "dice", "/roll 3d6", "--as", "tester")
    missed_id = int(posted.split("#")[1].split()[0])
    server.start()
    guest = _guest(server, f"?after={missed_id - 1}")
    missed = _answer_to(guest, missed_id)
    assert missed["message"].startswith("3d6: ") and missed["user"] == "dicebot"
    guest.close()
