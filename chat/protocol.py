"""The WebSocket wire format: parsing inbound frames and building every outbound one.

Inbound, a valid frame is a text frame holding a JSON object with a "message" string;
other keys are ignored. Outbound frames stay tutorial-compatible: a chat message is
`{"message": ...}`, and a refusal is `{"error": {"code": ..., "detail": ...}}`.
"""

import json
from typing import Any

# Close code for a client that keeps sending after being rate limited
# (4000-4999 is the range RFC 6455 leaves to applications; 429 echoes HTTP's).
CLOSE_FLOODING = 4429


class FrameRefused(Exception):
    """An inbound frame we will not act on; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def parse_chat_frame(
    text_data: str | None, bytes_data: bytes | None, *, max_chars: int, max_frame_chars: int
) -> str:
    """Return the trimmed message text of a frame, or raise FrameRefused."""
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
    if "message" not in payload:
        raise FrameRefused("missing_message", 'The object needs a "message" key.')
    message = payload["message"]
    if not isinstance(message, str):
        raise FrameRefused("message_not_string", '"message" must be a string.')
    message = message.strip()
    if not message:
        raise FrameRefused("empty_message", "The message is empty.")
    if len(message) > max_chars:
        raise FrameRefused("message_too_long", f"Messages are at most {max_chars} characters.")
    return message


def chat_message_event(message: str) -> dict[str, Any]:
    """Build the channel-layer event that fans one message out to a room's group."""
    return {"type": "chat.message", "message": message}


def message_frame(event: dict[str, Any]) -> str:
    """Build the outbound frame for a chat.message event."""
    return json.dumps({"message": event["message"]})


def error_frame(code: str, detail: str) -> str:
    """Build the outbound frame that tells one socket why its frame was refused."""
    return json.dumps({"error": {"code": code, "detail": detail}})
