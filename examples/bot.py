"""A chat bot that answers /help and /roll 2d6 in one room: a program using only the public
WebSocket protocol (docs/protocol.md) and an API token, as any client could.

    CHAT_TOKEN=chat_... .venv/bin/python examples/bot.py http://127.0.0.1:8000 lobby

(`websockets` is in requirements-dev.txt, which `python3 dev.py test` installs into .venv.)

It reconnects as the room page does, with a growing backoff, and catches up from the last
message id it saw (`?after=<id>`, then a page at a time), so a command sent while it was
away is still answered; each answer's client_id names the command's id, so a command seen
twice is answered once. Commands in the history it finds at its first connection were not
asked of it and get no answer.

Explained in docs/programs.md, 'A bot'.
"""

import json
import logging
import os
import random
import re
import sys
import time
from urllib.parse import quote, urlsplit

try:
    from websockets.exceptions import InvalidHandshake, InvalidURI
    from websockets.sync.client import connect
except ImportError as error:  # the system's Python, say: one line, not a traceback
    sys.exit(
        f"bot.py: {error} in {sys.executable}: run it with .venv/bin/python after"
        " python3 dev.py test (which installs websockets), or pip install websockets."
    )

logger = logging.getLogger("bot")

MAX_DICE = 100
MAX_SIDES = 1000
ROLL = re.compile(r"/roll\s+(\d{1,3})d(\d{1,4})")
HELP = (
    "I answer /help and /roll NdM: N dice of M sides, say /roll 2d6 "
    f"(at most {MAX_DICE} dice of {MAX_SIDES} sides)."
)
# Reconnecting: the first wait, doubled after each failure up to the last; a connection
# that delivered a frame starts again from the first.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


def answer(text: str) -> str | None:
    """The bot's reply to a message, or None when it is not a command for the bot."""
    text = text.strip()
    if text == "/help":
        return HELP
    if text != "/roll" and not text.startswith("/roll "):
        return None
    match = ROLL.fullmatch(text)
    dice, sides = (int(match[1]), int(match[2])) if match else (0, 0)
    if not (1 <= dice <= MAX_DICE and 2 <= sides <= MAX_SIDES):
        return f"Roll like this: /roll 2d6 (at most {MAX_DICE} dice of {MAX_SIDES} sides)."
    rolls = [random.randint(1, sides) for _ in range(dice)]
    shown = " + ".join(map(str, rolls))
    return f"{dice}d{sides}: {shown} = {sum(rolls)}" if dice > 1 else f"1d{sides}: {rolls[0]}"


class Bot:
    """One room's bot: its socket, and the last message id it saw."""

    def __init__(self, base_url: str, room: str, token: str):
        parts = urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = f"{scheme}://{parts.netloc}/ws/chat/{quote(room, safe='')}/"
        self.token = token
        self.last_id: int | None = None

    def socket_url(self) -> str:
        """The room's socket; after a first connection, catching up from the last id seen."""
        return self.url if self.last_id is None else f"{self.url}?after={self.last_id}"

    def run(self):
        """Stay in the room for ever: reconnect with backoff whenever the socket ends."""
        backoff = BACKOFF_FIRST_SECONDS
        while True:
            try:
                with connect(
                    self.socket_url(), additional_headers={"Authorization": f"Bearer {self.token}"}
                ) as socket:
                    logger.info("connected to %s", self.socket_url())
                    for raw in socket:
                        backoff = BACKOFF_FIRST_SECONDS
                        self.handle(json.loads(raw), socket)
                logger.info("socket closed: %s", socket.close_code)
            except (OSError, InvalidHandshake, InvalidURI) as error:
                logger.info("cannot connect: %r", error)
            except Exception as error:  # a closed connection and the like: go round again
                logger.info("connection lost: %r", error)
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def handle(self, frame: dict, socket):
        """Follow catch-up pages, remember the last id, answer commands."""
        page = frame.get("catch_up")
        if page is not None and page["more"]:
            socket.send(json.dumps({"catch_up": {"after": page["next_after"]}}))
        if "id" not in frame or "message" not in frame:
            return
        self.last_id = max(self.last_id or 0, frame["id"])
        if frame.get("history"):
            return  # said before the bot came: not asked of it
        reply = answer(frame["message"])
        if reply is not None:
            socket.send(json.dumps({"message": reply, "client_id": f"answer-{frame['id']}"}))


def main(argv: list[str]) -> int:
    """python examples/bot.py BASE_URL ROOM, with the token in CHAT_TOKEN."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bot: %(message)s")
    token = os.environ.get("CHAT_TOKEN")
    if len(argv) != 3 or not token:
        print("usage: CHAT_TOKEN=<token> python examples/bot.py BASE_URL ROOM", file=sys.stderr)
        return 2
    Bot(argv[1], argv[2], token).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
