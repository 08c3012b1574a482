"""The WebSocket wire format: parsing inbound frames and building every outbound one.

Inbound, a valid frame is a text frame holding a JSON object with a "message" string and,
optionally, a "client_id" that makes a retried send idempotent; other keys are ignored.
An object with "catch_up" and no "message" asks for the next page of a catch-up.
Outbound frames stay tutorial-compatible: every chat message carries "message", beside
"id" (its seq in the room), "user", "guest", "ts" and "client_id". A refusal is
`{"error": {"code": ..., "detail": ...}}`; presence is `{"presence": {...}}`; the end of
a catch-up page is `{"catch_up": {"more": ..., "next_after": ...}}`.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from .models import Message

# Close code for a client that keeps sending after being rate limited
# (4000-4999 is the range RFC 6455 leaves to applications; 429 echoes HTTP's).
CLOSE_FLOODING = 4429
# Close code (or handshake refusal) while Redis or the database cannot be reached: the
# client should reconnect with backoff and catch up with ?after=.
CLOSE_SERVICE_UNAVAILABLE = 4503

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FrameRefused(Exception):
    """An inbound frame we will not act on; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str, client_id: str | None = None):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        # Echoed in the error event, so a client knows which of its sends was refused.
        self.client_id = client_id


@dataclass(frozen=True)
class ChatFrame:
    """A valid inbound chat frame."""

    message: str
    client_id: str | None = None


@dataclass(frozen=True)
class CatchUpRequest:
    """A valid inbound request for the next catch-up page: the messages after `after`."""

    after: int


def parse_chat_frame(
    text_data: str | None, bytes_data: bytes | None, *, max_chars: int, max_frame_chars: int
) -> ChatFrame | CatchUpRequest:
    """Return the frame's trimmed message and client id (or its catch-up request); or refuse."""
    if text_data is None:
        raise FrameRefused("binary_frame", "Send text frames holding JSON, not binary frames.")
    if len(text_data) > max_frame_chars:
        raise FrameRefused("frame_too_large", f"Frames are at most {max_frame_chars} characters.")
    try:
        payload = json.loads(text_data)
    except (ValueError, RecursionError):
        raise FrameRefused("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise FrameRefused("not_an_object", 'Send a JSON object such as {"message": "hi"}.')
    client_id = payload.get("client_id")
    if client_id is not None and not (
        isinstance(client_id, str) and CLIENT_ID_PATTERN.fullmatch(client_id)
    ):
        raise FrameRefused(
            "invalid_client_id", '"client_id" must be 1-64 letters, digits, "-" or "_".'
        )
    if "message" not in payload:
        if "catch_up" in payload:
            return parse_catch_up(payload["catch_up"])
        raise FrameRefused("missing_message", 'The object needs a "message" key.', client_id)
    message = payload["message"]
    if not isinstance(message, str):
        raise FrameRefused("message_not_string", '"message" must be a string.', client_id)
    message = message.strip()
    if not message:
        raise FrameRefused("empty_message", "The message is empty.", client_id)
    if len(message) > max_chars:
        raise FrameRefused(
            "message_too_long", f"Messages are at most {max_chars} characters.", client_id
        )
    return ChatFrame(message, client_id)


def parse_catch_up(value: Any) -> CatchUpRequest:
    """The request in a frame's "catch_up" value, `{"after": <id>}`; or raise FrameRefused."""
    after = value.get("after") if isinstance(value, dict) else None
    # bool is an int in Python, not in JSON: true is not an id.
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise FrameRefused(
            "invalid_catch_up", 'Ask for the next page with {"catch_up": {"after": <id>}}.'
        )
    return CatchUpRequest(after)


def parse_after(query_string: bytes) -> int | None:
    """The `after` seq a reconnecting socket asks to catch up from, or None."""
    for pair in query_string.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name == "after" and value.isascii() and value.isdigit():
            return int(value)
    return None


def chat_message_event(message: Message) -> dict[str, Any]:
    """Build the channel-layer event that fans one stored message out to a room's group."""
    return {"type": "chat.message", **message_fields(message)}


def message_fields(message: Message) -> dict[str, Any]:
    """The public fields of a stored message, as every frame and the HTTP API show them."""
    return {
        "message": message.text,
        "id": message.seq,
        "user": message.display_name,
        "guest": message.author_id is None,
        "ts": message.created.isoformat(),
        "client_id": message.client_id or None,
    }


def message_frame(event: dict[str, Any], *, history: bool = False) -> str:
    """Build the outbound frame for a chat.message event; history marks the join backlog."""
    fields = {key: value for key, value in event.items() if key != "type"}
    if history:
        fields["history"] = True
    return json.dumps(fields)


def catch_up_frame(more: bool, next_after: int) -> str:
    """Build the frame that ends a catch-up page: is there more, and from where to ask for it."""
    return json.dumps({"catch_up": {"more": more, "next_after": next_after}})


def presence_event(count: int, names: list[str]) -> dict[str, Any]:
    """Build the channel-layer event that tells a room who is in it."""
    return {"type": "chat.presence", "count": count, "names": names}


def presence_frame(event: dict[str, Any]) -> str:
    """Build the outbound frame for a chat.presence event."""
    return json.dumps({"presence": {"count": event["count"], "names": event["names"]}})


def error_frame(refusal: FrameRefused) -> str:
    """Build the outbound frame that tells one socket why its frame was refused."""
    error = {"code": refusal.code, "detail": refusal.detail}
    if refusal.client_id is not None:
        error["client_id"] = refusal.client_id
    return json.dumps({"error": error})
