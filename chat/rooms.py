"""The room-name rule, room addresses, and the one mapping from a room to its group.

The HTTP route, the WebSocket route and the index page all decide validity here.
A room's address is what a URL names: a public room's name; `~<id>` for a private room
(an unguessable id, made here); `@<username>` for the reader's direct messages with that
user. No public name can start with `~` or `@`, so the three spaces never meet. A room's
key (Room.name) is its address, except for direct messages, whose key `@<id>-<id>` names
the two users by id and is the same for both (permissions.room_for turns one into the other).
Public room names are compared after Unicode NFC normalization, so that `café` typed with
a composed or a decomposed `é` is one room. They obey the rule of every other name
(identity.hidden_characters: nothing invisible or blank, no towers of marks), and a new
room may not look like an existing one (`Lobby`, `lоbby` with a Cyrillic o, `lobby.`: the
look-alike key of chat.lookalikes, stored as Room.key; services.store_message refuses it).

Explained in docs/protocol.md, 'Room names'.
"""

import hashlib
import re
import secrets
import unicodedata

from django.contrib.auth.validators import UnicodeUsernameValidator

from . import identity

ROOM_NAME_MAX_CHARS = 100
ROOM_NAME_PUNCTUATION = "-_."
# Letters (any script), combining marks (needed by Devanagari, Thai, ...) and digits.
_ALLOWED_CATEGORIES = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd"}

# channels requires group names of ASCII [a-zA-Z0-9-_.] shorter than 100 characters.
_READABLE_GROUP_ROOM = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_READABLE_GROUP_PREFIX = "chat_"
_HASHED_GROUP_PREFIX = "chat."
_PRIVATE_GROUP_PREFIX = "chat.private."
_DIRECT_GROUP_PREFIX = "chat.direct."

PUBLIC, PRIVATE, DIRECT = "public", "private", "direct"
PRIVATE_MARK = "~"
DIRECT_MARK = "@"
# 128 bits from secrets.token_urlsafe: nobody finds a private room by guessing its id.
PRIVATE_ID_BYTES = 16
PRIVATE_KEY = re.compile(r"~[A-Za-z0-9_-]{22}")
DIRECT_KEY = re.compile(r"@([1-9][0-9]{0,18})-([1-9][0-9]{0,18})")
# Django's username field is at most 150 characters, and never holds a '/'.
USERNAME_MAX_CHARS = 150
# A direct conversation's address names a username: Django's rule for one, so that no
# character a username cannot hold (NUL, which PostgreSQL refuses in text) reaches a query.
USERNAME = re.compile(UnicodeUsernameValidator.regex)

# The characters people type by mistake, said in words: a refusal of "U+0020" explains
# nothing. Visible ones are shown too, so the reader can find them in what they typed.
_CHARACTER_WORDS = {
    " ": "a space",
    "\t": "a tab",
    "\n": "a line break",
    "\r": "a line break",
    "\u00a0": "a non-breaking space",
    "/": "a slash (/)",
    "\\": "a backslash (\\)",
    "?": "a question mark (?)",
    "#": "a hash sign (#)",
    "%": "a percent sign (%)",
    "&": "an ampersand (&)",
    ",": "a comma (,)",
    ":": "a colon (:)",
    ";": "a semicolon (;)",
    "!": "an exclamation mark (!)",
    "'": "an apostrophe (')",
    '"': 'a double quote (")',
    "@": "an at sign (@)",
    "+": "a plus sign (+)",
    "=": "an equals sign (=)",
    "*": "an asterisk (*)",
    "~": "a tilde (~)",
}


class InvalidRoomName(ValueError):
    """A room name the rule refuses; its message says why, for the user."""


def normalize_room_name(name: str) -> str:
    """Return the room's canonical spelling (NFC), or raise InvalidRoomName."""
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise InvalidRoomName("Enter a room name.")
    if len(name) > ROOM_NAME_MAX_CHARS:
        raise InvalidRoomName(f"Room names are at most {ROOM_NAME_MAX_CHARS} characters.")
    for char in name:
        if (
            char not in ROOM_NAME_PUNCTUATION
            and unicodedata.category(char) not in _ALLOWED_CATEGORIES
        ):
            raise InvalidRoomName(
                f"Room names may contain letters, digits, '-', '_' and '.', not {describe(char)}."
            )
    if (problem := identity.hidden_characters(name)) is not None:
        raise InvalidRoomName(f"Room names {problem}")
    if set(name) == {"."}:
        raise InvalidRoomName("A room name needs at least one letter, digit, '-' or '_'.")
    return name


def describe(char: str) -> str:
    """Say which character this is, for a person: in words, as itself, or by code and name."""
    if char in _CHARACTER_WORDS:
        return _CHARACTER_WORDS[char]
    if char.isprintable() and not char.isspace():
        return f"'{char}'"
    name = unicodedata.name(char, "")
    # Control characters have no name in the Unicode database, only a code.
    return f"U+{ord(char):04X} ({name})" if name else f"a control character (U+{ord(char):04X})"


def kind(address_or_key: str) -> str:
    """PUBLIC, PRIVATE or DIRECT: which space a room's address (or key) is in."""
    if address_or_key.startswith(PRIVATE_MARK):
        return PRIVATE
    if address_or_key.startswith(DIRECT_MARK):
        return DIRECT
    return PUBLIC


def normalize_address(address: str) -> str:
    """Return a room address's canonical form (see the module), or raise InvalidRoomName."""
    room_kind = kind(address)
    if room_kind == PRIVATE and not PRIVATE_KEY.fullmatch(address):
        raise InvalidRoomName("That is not the address of a private room.")
    if room_kind == DIRECT and not (
        len(address) <= USERNAME_MAX_CHARS + 1 and USERNAME.match(address[1:])
    ):
        raise InvalidRoomName("That is not the address of a direct conversation.")
    return normalize_room_name(address) if room_kind == PUBLIC else address


def new_private_key() -> str:
    """A fresh private room's key: `~` and an unguessable id."""
    return PRIVATE_MARK + secrets.token_urlsafe(PRIVATE_ID_BYTES)


def direct_key(user_id: int, other_id: int) -> str:
    """The key of two users' direct messages: the same whichever of them asks."""
    low, high = sorted((user_id, other_id))
    return f"{DIRECT_MARK}{low}-{high}"


def direct_members(key: str) -> tuple[int, int]:
    """The ids of the two users of a direct-messages key."""
    low, high = DIRECT_KEY.fullmatch(key).groups()
    return int(low), int(high)


def group_name(room_name: str) -> str:
    """Name the channel-layer group of a valid room key: ASCII, under 100 characters, one per room.

    Short ASCII names stay readable (`chat_lobby`); any other public name becomes a SHA-256
    digest under a prefix that no readable name can produce. Private rooms and direct
    messages have ASCII keys of their own, under prefixes of their own.
    """
    if kind(room_name) == PRIVATE and PRIVATE_KEY.fullmatch(room_name):
        return _PRIVATE_GROUP_PREFIX + room_name[1:]
    if kind(room_name) == DIRECT and DIRECT_KEY.fullmatch(room_name):
        return _DIRECT_GROUP_PREFIX + room_name[1:]
    room_name = normalize_room_name(room_name)
    if _READABLE_GROUP_ROOM.fullmatch(room_name):
        return _READABLE_GROUP_PREFIX + room_name
    digest = hashlib.sha256(room_name.encode("utf-8")).hexdigest()
    return _HASHED_GROUP_PREFIX + digest


class RoomNameConverter:
    """URL converter shared by the HTTP and WebSocket routes: invalid addresses do not match."""

    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        try:
            return normalize_address(value)
        except InvalidRoomName as refusal:
            raise ValueError(str(refusal)) from refusal

    def to_url(self, value: str) -> str:
        return value
