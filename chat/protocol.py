"""The WebSocket wire format: parsing inbound frames and building every outbound one.

Inbound, a valid frame is a text frame holding a JSON object with a "message" string and,
optionally, a "client_id" that makes a retried send idempotent; other keys are ignored.
`{"typing": true}` (and no "message") says its sender is typing, and is never stored;
`{"ping": true}` (and no "message") asks for `{"pong": true}`, the page's heartbeat.
Outbound frames stay tutorial-compatible: every chat message carries "message", beside
"id" (its seq in the room), "user", "guest", "ts" and "client_id". A refusal is
`{"error": {"code": ..., "detail": ...}}`; presence is `{"presence": {...}}`; someone else
typing is `{"typing": {"user": ..., "guest": ...}}`. The end of a reconnect's recovery
(?after=), or a gap too long to fill on the socket, is
`{"catch_up": {"recovered": ..., "after": A, "until": S}}`: recovered false means the
messages (A, S] were not sent, and the client fetches them from GET
/chat/<room>/messages/?after=A.

Explained in docs/protocol.md.
"""

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from django.http import HttpRequest, HttpResponse, JsonResponse

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
# deletion, a new guest name, an expired session): reconnect at once, as the session
# now is. 401 echoes HTTP's "who are you?".
CLOSE_IDENTITY_CHANGED = 4401
# Close code for every socket of an account that was deactivated, and for a handshake from
# a browser session that was signed in as it (chat.deactivation): do not reconnect; the
# page says "This account has been deactivated." 412 echoes HTTP's "precondition failed".
CLOSE_ACCOUNT_DEACTIVATED = 4412
# Close code for a socket whose author is no longer a member of its private room (removed
# by its owner, or left from another tab): do not reconnect. 403 echoes HTTP's forbidden.
CLOSE_NOT_A_MEMBER = 4403
# Close code for a socket a moderator kicked out of its room (chat.moderation): the page
# says so and offers to rejoin, but does not reconnect by itself. 410 echoes HTTP's "gone".
CLOSE_KICKED = 4410
# Close code for a socket a moderator banned from its room, and, right after the handshake,
# for every socket of a banned account, guest session or guest address there: do not
# reconnect. 4410's neighbour: gone, and not coming back.
CLOSE_BANNED = 4411
# A consumer failed in a way no input explains (a bug). Its socket left the room first;
# the client reconnects with backoff and catches up with ?after=. Not RFC 6455's 1011:
# autobahn (under daphne) sends only 1000 and 3000-4999, and drops any other code unsent
# (test_every_close_code_is_one_autobahn_sends). 500 echoes HTTP's.
CLOSE_INTERNAL_ERROR = 4500
# Close code for every open socket when its server process stops (SIGTERM, a deploy):
# reconnect with backoff (to another process, or this one restarted) and catch up.
# RFC 6455's 1001 "going away" is another that autobahn will not send.
CLOSE_SERVER_RESTARTING = 4001
# Close code for a socket whose address is a look-alike of an existing room's (`Lobby`,
# `lоbby` beside `lobby`): right after the handshake and a `lookalike_room` error naming
# that room; connect to it instead. 308 echoes HTTP's permanent redirect, which the page
# and the messages endpoint answer for the same address.
CLOSE_LOOKALIKE_ROOM = 4308
# RFC 6455's "message too big", for a frame over daphne's --websocket-max-message-size
# (1 MiB): sent by autobahn itself (serving.chat_daphne), never by the application.
CLOSE_MESSAGE_TOO_BIG = 1009

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Message ids are PositiveBigIntegerField: PostgreSQL's bigint, at most 2**63 - 1. A larger
# `after` would make the database refuse the query itself (DataError), not answer "none".
MAX_SEQ = 2**63 - 1
# Control characters a message may carry: tab and the two line ends (the page shows them).
_ALLOWED_CONTROLS = frozenset("\t\n\r")
# Explicit bidirectional formatting (Unicode's UAX #9): embeddings and overrides (LRE, RLE,
# LRO, RLO) are closed by PDF, isolates (LRI, RLI, FSI) by PDI, and a paragraph end
# (category B) closes everything. The marks (LRM, RLM, ALM) open nothing: always allowed.
_BIDI_EMBEDDINGS = frozenset("\u202a\u202b\u202d\u202e")
_BIDI_ISOLATES = frozenset("\u2066\u2067\u2068")
_BIDI_CLOSES = {"\u202c": _BIDI_EMBEDDINGS, "\u2069": _BIDI_ISOLATES}
_PARAGRAPH_ENDS = frozenset("\n\r\x1c\x1d\x1e\x85\u2029")


class FrameRefused(Exception):
    """An inbound frame we will not act on; `code` is stable, `detail` is for people."""

    def __init__(
        self,
        code: str,
        detail: str,
        client_id: str | None = None,
        retry_after: float | None = None,
        until: datetime | None = None,
    ):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        # Echoed in the error event, so a client knows which of its sends was refused.
        self.client_id = client_id
        # A limit's refusal: the seconds until it lets the next one through (HTTP's Retry-After);
        # an overload's: when to try again first (whole seconds for limits, hundredths here).
        self.retry_after = retry_after
        # A mute's or ban's end, so a page can say it in its reader's time (None: no end).
        self.until = until


@dataclass(frozen=True)
class ChatFrame:
    """A valid inbound chat frame."""

    message: str
    client_id: str | None = None


@dataclass(frozen=True)
class EditFrame:
    """A valid inbound edit: message `id`'s new text, trimmed."""

    id: int
    message: str


@dataclass(frozen=True)
class DeleteFrame:
    """A valid inbound deletion of message `id`."""

    id: int


# The frames that store something: a message, an edit, a deletion.
StoredFrame = ChatFrame | EditFrame | DeleteFrame


@dataclass(frozen=True)
class TypingSignal:
    """A valid inbound "I am typing" signal: shown to the room for a while, never stored."""


@dataclass(frozen=True)
class Ping:
    """A valid inbound heartbeat: answered with a pong, so the page knows the link is alive."""


def parse_chat_frame(
    text_data: str | None, bytes_data: bytes | None, *, max_chars: int, max_frame_chars: int
) -> ChatFrame | EditFrame | DeleteFrame | TypingSignal | Ping:
    """Return the frame's trimmed message and client id (or its typing signal or ping)."""
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
        if "catch_up" in payload:  # the paged catch-up of old: history is read over HTTP
            raise FrameRefused(
                "catch_up_over_http",
                "The socket sends no pages of history: "
                "fetch them from GET /chat/<room>/messages/?after=<id>.",
            )
        if "typing" in payload:
            if payload["typing"] is not True:
                raise FrameRefused("invalid_typing", 'Say you are typing with {"typing": true}.')
            return TypingSignal()
        if "ping" in payload:
            if payload["ping"] is not True:
                raise FrameRefused("invalid_ping", 'Ask for a pong with {"ping": true}.')
            return Ping()
        if "edit" in payload:
            edit = payload["edit"]
            seq = _target_id(edit, '{"edit": {"id": 42, "message": "new text"}}')
            if "message" not in edit:
                raise FrameRefused("missing_message", 'An edit needs a "message" key.')
            return EditFrame(seq, chat_frame(edit["message"], None, max_chars=max_chars).message)
        if "delete" in payload:
            return DeleteFrame(_target_id(payload["delete"], '{"delete": {"id": 42}}'))
        raise FrameRefused("missing_message", 'The object needs a "message" key.', client_id)
    return chat_frame(payload["message"], client_id, max_chars=max_chars)


def _target_id(value: Any, example: str) -> int:
    """The message id an edit or delete frame names, or FrameRefused("invalid_id")."""
    seq = value.get("id") if isinstance(value, dict) else None
    # bool is an int in Python: true is not message 1.
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise FrameRefused("invalid_id", f"Name the message by its id, as in {example}.")
    return seq


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
    unbalanced = unbalanced_bidi(message)
    if unbalanced is not None:
        raise FrameRefused(
            "unbalanced_bidi",
            f"The message holds a text direction control, {describe_character(unbalanced)},"
            " that is not closed within its line or closes nothing: text after it would"
            " read in another order than it was written.",
            client_id,
        )
    return ChatFrame(message, client_id)


def unbalanced_bidi(text: str) -> str | None:
    """The first direction control of text that is not closed in its line, or closes
    nothing opened there; None when every one is paired, properly nested.

    An unclosed right-to-left override (U+202E) turns what follows it around: in a
    name, a link, or whatever a client shows after the message. Balanced, it stays
    inside the message, which the page shows isolated (dir=auto); and a right-to-left
    text that uses them legitimately opens and closes them.
    """
    opened: list[str] = []
    for char in text:
        if char in _PARAGRAPH_ENDS:
            if opened:
                return opened[-1]
        elif char in _BIDI_EMBEDDINGS or char in _BIDI_ISOLATES:
            opened.append(char)
        elif char in _BIDI_CLOSES:
            if not opened or opened[-1] not in _BIDI_CLOSES[char]:
                return char
            opened.pop()
    return opened[-1] if opened else None


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


def parse_changes(query_string: bytes) -> int | None:
    """The room change number a reconnecting socket has applied (`changes=`), if given.

    Raises FrameRefused("invalid_changes") when it is there but not a whole number.
    """
    value = query_value(query_string, "changes")
    if value is None:
        return None
    try:
        return parse_seq(value)
    except ValueError:
        raise FrameRefused(
            "invalid_changes",
            f"changes= must be a change number, a whole number from 0 to {MAX_SEQ}; "
            "sent no changes: read them from GET /chat/<room>/messages/?changes_after=0.",
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


def room_messages_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The one group event for a batch's new messages of one room (chat_message_event's, in
    seq order): that event for one message, a chat.messages event carrying them for more."""
    if len(events) == 1:
        return events[0]
    return {"type": "chat.messages", "messages": events}


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
        # Its final state: when last edited, whether deleted (its text is then ""), and the
        # room change number of its latest change (0 for none; docs/protocol.md, 'Edits').
        "edited": None if message.edited is None else message.edited.isoformat(),
        "deleted": message.deleted,
        "change": message.change,
    }


def message_json(message: "Message") -> str:
    """A stored message's public fields (message_fields) as JSON, as a page lists them."""
    return json.dumps(message_fields(message))


def page_json(page: dict[str, Any], messages: list[str]) -> str:
    """json.dumps(page), its "messages" listed from each one's message_json.

    Byte for byte what json.dumps writes for the page with its messages' fields in place
    (its separators, its key order): each message can so be encoded on its own, a slice
    at a time (chat.paced).
    """
    members = [
        f'"messages": [{", ".join(messages)}]'
        if key == "messages"
        else f"{json.dumps(key)}: {json.dumps(value)}"
        for key, value in page.items()
    ]
    return "{" + ", ".join(members) + "}"


def chat_change_event(message: "Message") -> dict[str, Any]:
    """Build the channel-layer event that tells a room of a message's edit or deletion."""
    return {
        "type": "chat.change",
        "id": message.seq,
        "change": message.change,
        "message": message.text,
        "edited": None if message.edited is None else message.edited.isoformat(),
        "deleted": message.deleted,
    }


def change_frame(event: dict[str, Any]) -> str:
    """Build the outbound frame for a chat.change event: an edit, or a deletion.

    No top-level "message" key: tutorial clients, which know only that key, ignore it.
    """
    if event["deleted"]:
        return json.dumps({"delete": {"id": event["id"], "change": event["change"]}})
    edit = {key: event[key] for key in ("id", "message", "edited", "change")}
    return json.dumps({"edit": edit})


def message_frame(
    event: dict[str, Any], *, history: bool = False, room_change: int | None = None
) -> str:
    """Build the outbound frame for a chat.message event; history marks the join backlog,
    which carries the room's newest change number (room_change) too."""
    fields = {key: value for key, value in event.items() if key != "type"}
    if history:
        fields["history"] = True
        fields["room_change"] = room_change
    return json.dumps(fields)


def identity_changed_event(reason: str) -> dict[str, Any]:
    """Build the channel-layer event that closes the sockets of a changed session or user."""
    return {"type": "chat.identity_changed", "reason": reason}


def account_deactivated_event() -> dict[str, Any]:
    """Build the channel-layer event that closes a deactivated user's sockets with 4412."""
    return {"type": "chat.account_deactivated"}


def membership_ended_event(user_id: int, reason: str) -> dict[str, Any]:
    """Build the room event that closes one user's sockets in the room (chat.memberships)."""
    return {"type": "chat.membership_ended", "user_id": user_id, "reason": reason}


def moderated_event(action: str, user_id: int | None, guest_key: str, network: str) -> dict:
    """Build the room event of a moderator's action (chat.moderation): every process forgets
    the room's sanctions, and a kick or a ban closes its target's sockets there."""
    return {
        "type": "chat.moderated",
        "action": action,
        "user_id": user_id,
        "guest_key": guest_key,
        "network": network,
    }


def catch_up_frame(
    recovered: bool, after: int, until: int, changes: tuple[bool, int, int] | None = None
) -> str:
    """Build the frame that says whether the socket sent the messages (after, until].

    Not recovered: they were too many for the socket, and the client fetches them from the
    messages endpoint; the socket goes on with the messages after `until`. `changes`, when
    given, is the same for the room's change numbers: (recovered, after, until).
    """
    catch_up: dict[str, Any] = {"recovered": recovered, "after": after, "until": until}
    if changes is not None:
        changes_recovered, changes_after, changes_until = changes
        catch_up["changes"] = {
            "recovered": changes_recovered,
            "after": changes_after,
            "until": changes_until,
        }
    return json.dumps({"catch_up": catch_up})


def gone_frame(until: int) -> str:
    """Build the frame that says the room's messages with ids up to `until` were deleted by
    retention (chat.retention): the client waits for none of them and asks for none."""
    return json.dumps({"gone": {"until": until}})


def pong_frame() -> str:
    """Build the frame that answers a ping: the connection is alive both ways."""
    return json.dumps({"pong": True})


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


def lookalike_room_refusal(existing: str, client_id: str | None = None) -> FrameRefused:
    """The `lookalike_room` refusal: this room's name looks like the room `existing`'s."""
    return FrameRefused(
        "lookalike_room",
        f'This room\'s name looks too much like the room "{existing}": '
        "talk there, or choose another name.",
        client_id,
    )


def overloaded(client_id: str | None, retry_after: float) -> FrameRefused:
    """The refusal of a message that would wait too long in front of the store: not stored,
    to be sent again (with the same client_id) `retry_after` seconds or more later."""
    return FrameRefused(
        "overloaded",
        f"The server is busy: the message was not stored. Send it again in {retry_after:g} s.",
        client_id,
        retry_after,
    )


def error_frame(refusal: FrameRefused) -> str:
    """Build the outbound frame that tells one socket why its frame was refused."""
    error: dict[str, Any] = {"code": refusal.code, "detail": refusal.detail}
    if refusal.retry_after is not None:
        error["retry_after"] = refusal.retry_after
    if refusal.until is not None:
        error["until"] = refusal.until.isoformat(timespec="seconds")
    if refusal.client_id is not None:
        error["client_id"] = refusal.client_id
    return json.dumps({"error": error})


def http_error(status: int, code: str, detail: str) -> JsonResponse:
    """The HTTP endpoints' error answer: {"error": {"code": ..., "detail": ...}}."""
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


def http_refusal(request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
    """http_error, or to a browser loading a page (Accept: text/html) the detail in words."""
    if "text/html" in request.headers.get("Accept", ""):
        return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")
    return http_error(status, code, detail)
