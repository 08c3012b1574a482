"""The WebSocket wire format: parsing inbound frames and building every outbound one.

Inbound, a valid frame is a text frame holding a JSON object with a "message" string and,
optionally, a "client_id" that makes a retried send idempotent; other keys are ignored.
An object with "catch_up" and no "message" asks for the next page of a catch-up;
`{"typing": true}` (and no "message") says its sender is typing, and is never stored.
Outbound frames stay tutorial-compatible: every chat message carries "message", beside
"id" (its seq in the room), "user", "guest", "ts" and "client_id". A refusal is
`{"error": {"code": ..., "detail": ...}}`; presence is `{"presence": {...}}`; the end of
a catch-up page is `{"catch_up": {"more": ..., "next_after": ...}}`; someone else typing
is `{"typing": {"user": ..., "guest": ...}}`.

Explained in docs/protocol.md.
"""

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    # For annotations only: serving.chat_daphne imports the close codes below before
    # Django is set up, when no model can be imported yet.
    from .identity import Author
    from .models import Message

# Every WebSocket close code we send, the consumer's and the server's (serving.chat_daphne)
# alike, each listed in docs/protocol.md. 4000-4999 is the range RFC 6455 leaves to applications;
# past the 4, most echo the HTTP status that means the same.
#
# Close code for a client that keeps sending after being rate limited, or pings faster
# than CHAT_PING_BURST and CHAT_PING_PER_SECOND allow (429 echoes HTTP's).
CLOSE_FLOODING = 4429
# Close code for a socket over a cap of open sockets (CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON,
# CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS), right after the handshake, with the cap in its
# reason: close another tab, or reconnect with backoff (4429's neighbour: too many).
CLOSE_TOO_MANY_SOCKETS = 4430
# Close code for a client that does not read: more than CHAT_SEND_BACKLOG_LIMIT_BYTES waits
# unsent for it; it reconnects and catches up with ?after= (408 echoes HTTP's timeout).
CLOSE_TOO_SLOW = 4408
# Close code at the end of a socket's CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS: reconnect at once
# (identity is read afresh) and catch up with ?after=.
CLOSE_LIFETIME_ENDED = 4000
# Close code (or handshake refusal) while Redis or the database cannot be reached: the
# client should reconnect with backoff and catch up with ?after=.
CLOSE_SERVICE_UNAVAILABLE = 4503
# Close code for a socket whose session or user changed (logout, password change,
# deactivation, a new guest name, an expired session): reconnect at once, as the session
# now is. 401 echoes HTTP's "who are you?".
CLOSE_IDENTITY_CHANGED = 4401
# RFC 6455's "internal error": a consumer failed in a way no input explains (a bug). Its
# socket left the room first; the client reconnects and catches up with ?after=.
CLOSE_INTERNAL_ERROR = 1011

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Message ids are PositiveBigIntegerField: PostgreSQL's bigint, at most 2**63 - 1. A larger
# `after` would make the database refuse the query itself (DataError), not answer "none".
MAX_SEQ = 2**63 - 1
# Control characters a message may carry: tab and the two line ends (the page shows them).
_ALLOWED_CONTROLS = frozenset("\t\n\r")


class FrameRefused(Exception):
    """An inbound frame we will not act on; `code` is stable, `detail` is for people."""

    def __init__(
        self, code: str, detail: str, client_id: str | None = None, retry_after: int | None = None
    ):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        # Echoed in the error event, so a client knows which of its sends was refused.
        self.client_id = client_id
        # A limit's refusal: the seconds until it lets the next one through (HTTP's Retry-After).
        self.retry_after = retry_after


@dataclass(frozen=True)
class ChatFrame:
    """A valid inbound chat frame."""

    message: str
    client_id: str | None = None


@dataclass(frozen=True)
class CatchUpRequest:
    """A valid inbound request for the next catch-up page: the messages after `after`."""

    after: int


@dataclass(frozen=True)
class TypingSignal:
    """A valid inbound "I am typing" signal: shown to the room for a while, never stored."""


def parse_chat_frame(
    text_data: str | None, bytes_data: bytes | None, *, max_chars: int, max_frame_chars: int
) -> ChatFrame | CatchUpRequest | TypingSignal:
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
        if "typing" in payload:
            if payload["typing"] is not True:
                raise FrameRefused("invalid_typing", 'Say you are typing with {"typing": true}.')
            return TypingSignal()
        raise FrameRefused("missing_message", 'The object needs a "message" key.', client_id)
    return chat_frame(payload["message"], client_id, max_chars=max_chars)


def chat_frame(message: Any, client_id: str | None, *, max_chars: int) -> ChatFrame:
    """The message rule, for a socket's frame and a program's post alike: trimmed, or refused."""
    if client_id is not None and not (
        isinstance(client_id, str) and CLIENT_ID_PATTERN.fullmatch(client_id)
    ):
        raise FrameRefused(
            "invalid_client_id", '"client_id" must be 1-64 letters, digits, "-" or "_".'
        )
    if not isinstance(message, str):
        raise FrameRefused("message_not_string", '"message" must be a string.', client_id)
    message = message.strip()
    if not message:
        raise FrameRefused("empty_message", "The message is empty.", client_id)
    if len(message) > max_chars:
        raise FrameRefused(
            "message_too_long", f"Messages are at most {max_chars} characters.", client_id
        )
    unstorable = unstorable_character(message)
    if unstorable is not None:
        raise FrameRefused(
            "invalid_character",
            f"The message holds {describe_character(unstorable)}, which cannot be sent as text.",
            client_id,
        )
    return ChatFrame(message, client_id)


def unstorable_character(text: str) -> str | None:
    """The first character of text that cannot be stored or shown safely, or None.

    JSON's \\u escapes can spell any UTF-16 code unit, so a frame that parses may still
    hold what no database, encoder or browser carries as text:
    - lone surrogates (U+D800-U+DFFF: half an emoji cut by a paste, as JSON.stringify
      sends it); UTF-8 cannot encode them (UnicodeEncodeError on every database);
    - control characters other than tab, LF and CR: NUL, which PostgreSQL refuses in text,
      and the rest of C0 and C1 (vertical tab, form feed, NEL, escape...) that terminals
      and logs act on;
    - noncharacters (U+FDD0-U+FDEF and U+xFFFE, U+xFFFF in every plane), which Unicode
      reserves for a program's internal use and tells interchange to avoid.
    """
    for char in text:
        code = ord(char)
        category = unicodedata.category(char)
        if (
            category == "Cs"
            or (category == "Cc" and char not in _ALLOWED_CONTROLS)
            or 0xFDD0 <= code <= 0xFDEF
            or code & 0xFFFE == 0xFFFE
        ):
            return char
    return None


def describe_character(char: str) -> str:
    """Name a character for people: `U+D83D (half of an emoji)`, `U+0000`, ..."""
    described = f"U+{ord(char):04X}"
    if unicodedata.category(char) == "Cs":
        described += " (half of an emoji or other character)"
    return described


def parse_seq(raw: str) -> int:
    """Read a message id given as text (`after=`): a whole number 0..MAX_SEQ, or ValueError.

    Only ASCII digits, and never more than MAX_SEQ has: int() would also read "+1", " 1",
    "١" (Arabic-Indic one) and "1_0", and refuses past 4,300 digits with its own ValueError.
    """
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_SEQ))):
        raise ValueError(f"not a whole number from 0 to {MAX_SEQ}")
    seq = int(raw)
    if seq > MAX_SEQ:
        raise ValueError(f"not a whole number from 0 to {MAX_SEQ}")
    return seq


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
    """The `after` seq a reconnecting socket asks to catch up from; None when there is none.

    Raises FrameRefused("invalid_after") when `after` is there but not a message id
    (parse_seq); the consumer answers with that error and sends the history instead.
    """
    value = query_value(query_string, "after")
    if value is None:
        return None
    try:
        return parse_seq(value)
    except ValueError:
        raise FrameRefused(
            "invalid_after",
            f"after= must be a message id, a whole number from 0 to {MAX_SEQ}; "
            "sent the recent history instead.",
        ) from None


def parse_sign_in(query_string: bytes) -> str | None:
    """The sign-in tag (identity.sign_in_of) the page expects its socket to speak as, if any."""
    return query_value(query_string, "as")


def query_value(query_string: bytes, name: str) -> str | None:
    """The first value of `name` in a handshake's query string (blank kept), or None."""
    # ASGI gives the raw bytes, still percent-encoded; parse_qs decodes the escapes (UTF-8).
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get(name)
    return values[0] if values else None


def chat_message_event(message: "Message") -> dict[str, Any]:
    """Build the channel-layer event that fans one stored message out to a room's group."""
    return {"type": "chat.message", **message_fields(message)}


def message_fields(message: "Message") -> dict[str, Any]:
    """The public fields of a stored message, as every frame and the HTTP API show them."""
    return {
        "message": message.text,
        "id": message.seq,
        "user": message.display_name,
        # A bot (chat.posting) is neither a user nor a guest, and is shown as a bot.
        "guest": message.author_id is None and not message.bot,
        "bot": message.bot,
        "ts": message.created.isoformat(),
        "client_id": message.client_id or None,
    }


def message_frame(event: dict[str, Any], *, history: bool = False) -> str:
    """Build the outbound frame for a chat.message event; history marks the join backlog."""
    fields = {key: value for key, value in event.items() if key != "type"}
    if history:
        fields["history"] = True
    return json.dumps(fields)


def identity_changed_event(reason: str) -> dict[str, Any]:
    """Build the channel-layer event that closes the sockets of a changed session or user."""
    return {"type": "chat.identity_changed", "reason": reason}


def catch_up_frame(more: bool, next_after: int) -> str:
    """Build the frame that ends a catch-up page: is there more, and from where to ask for it."""
    return json.dumps({"catch_up": {"more": more, "next_after": next_after}})


def typing_event(author: "Author", sender_channel: str) -> dict[str, Any]:
    """Build the channel-layer event that tells a room someone is typing (not stored).

    `sender_channel` is the typer's socket, which is not told about itself.
    """
    return {
        "type": "chat.typing",
        "user": author.name,
        "guest": author.is_guest,
        "sender_channel": sender_channel,
    }


def typing_frame(event: dict[str, Any]) -> str:
    """Build the outbound frame for a chat.typing event."""
    return json.dumps({"typing": {"user": event["user"], "guest": event["guest"]}})


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
