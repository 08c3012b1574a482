"""Who is speaking: a logged-in user's username, or a guest's chosen display name."""

import secrets
import unicodedata

from django.utils.crypto import salted_hmac

from .services import Author

DISPLAY_NAME_MAX_CHARS = 30
GUEST_DEFAULT_NAME = "Anonymous"
SESSION_KEY = "display_name"
GUEST_KEY_SALT = "chat.identity.guest_key"
# 128 bits: no two guests' keys meet by chance; 32 hex digits fit Message.author_key.
GUEST_KEY_BYTES = 16


class InvalidDisplayName(ValueError):
    """A display name the rule refuses; its message says why, for the user."""


def clean_display_name(raw: str) -> str:
    """Return the trimmed display name, or raise InvalidDisplayName."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise InvalidDisplayName("Enter a name.")
    if len(name) > DISPLAY_NAME_MAX_CHARS:
        raise InvalidDisplayName(f"Names are at most {DISPLAY_NAME_MAX_CHARS} characters.")
    if any(
        unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for char in name
    ):
        raise InvalidDisplayName("Names may not contain control or invisible characters.")
    return name


def author_for(user, session) -> Author:
    """The Author a request or socket speaks as."""
    if user is not None and user.is_authenticated:
        return Author(name=user.get_username(), user_id=user.pk)
    # Read first: loading a session whose cookie names no stored session clears its key.
    name = session.get(SESSION_KEY) if session is not None else None
    return Author(name=name or GUEST_DEFAULT_NAME, guest_key=guest_key(session))


def guest_key(session) -> str:
    """A guest's private key: a keyed hash of its session key, or random without a session.

    The hash keeps the session key (a login secret) out of the messages table. A guest
    with no session (a client without the cookie) gets a key of its own per call, i.e. per
    socket, so its client ids are never taken for anyone else's.
    """
    session_key = getattr(session, "session_key", None)
    if not session_key:
        return secrets.token_hex(GUEST_KEY_BYTES)
    digest = salted_hmac(GUEST_KEY_SALT, session_key, algorithm="sha256").hexdigest()
    return digest[: GUEST_KEY_BYTES * 2]


def presence_label(author: Author) -> str:
    """How the presence list shows an author: guests are marked, so no one passes as a user."""
    return f"{author.name} (guest)" if author.is_guest else author.name
