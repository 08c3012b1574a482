"""Who is speaking: a logged-in user's username, or a guest's chosen display name."""

import unicodedata

from .services import Author

DISPLAY_NAME_MAX_CHARS = 30
GUEST_DEFAULT_NAME = "Anonymous"
SESSION_KEY = "display_name"


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
    name = session.get(SESSION_KEY) if session is not None else None
    return Author(name=name or GUEST_DEFAULT_NAME)


def presence_label(author: Author) -> str:
    """How the presence list shows an author: guests are marked, so no one passes as a user."""
    return f"{author.name} (guest)" if author.is_guest else author.name
