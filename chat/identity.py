"""Who is speaking: a logged-in user's username, or a guest's chosen display name.

Explained in docs/security.md, 'Look-alike names'.
"""

import functools
import secrets
import unicodedata
from dataclasses import dataclass

import regex
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.crypto import salted_hmac

from .lookalikes import name_key
from .models import UsernameKey

DISPLAY_NAME_MAX_CHARS = 30
# A guest who chose no name is "Guest 4f2a": the tag tells the guests of one room apart in
# messages and presence, stable for their session. Without a session (a client without the
# cookie) there is nothing to keep it stable by: plain "Guest".
GUEST_DEFAULT_NAME = "Guest"
GUEST_TAG_SALT = "chat.identity.guest_tag"
# 16 bits: enough to tell a room's guests apart at a glance, too few to say anything of the
# session (the tag is a keyed hash of the guest's key, itself one of the session key).
GUEST_TAG_CHARS = 4
SESSION_KEY = "display_name"
GUEST_KEY_SALT = "chat.identity.guest_key"
SIGN_IN_SALT = "chat.identity.sign_in"
# 128 bits: no two guests' keys meet by chance; 32 hex digits fit Message.author_key.
GUEST_KEY_BYTES = 16
# 64 bits: two sign-ins of one browser never share a tag by chance.
SIGN_IN_CHARS = 16


@dataclass(frozen=True, slots=True)  # one per socket: slots keep them small
class Author:
    """Who sends: a logged-in user (with `user_id`) or a guest with a display name.

    `guest_key` tells one guest from another (author_for derives it from the
    session); it scopes the guest's client ids and is never sent to anyone. A bot
    (bot_author: a program posting through chat.posting) is neither user nor guest.
    `is_staff` is read with the user (an active account's is_staff): who the author
    is, so a change of it closes their sockets as a new username does (chat.revocation).
    """

    name: str
    user_id: int | None = None
    guest_key: str = ""
    is_bot: bool = False
    is_staff: bool = False

    @property
    def is_guest(self) -> bool:
        return self.user_id is None and not self.is_bot

    @property
    def key(self) -> str:
        """Whose client ids these are: "u:<user id>", "g:<guest key>" or "b:<bot name>"."""
        if self.is_bot:
            return f"b:{self.name}"
        return f"g:{self.guest_key}" if self.is_guest else f"u:{self.user_id}"


class InvalidDisplayName(ValueError):
    """A display name the rule refuses; its message says why, for the user."""


# What renders as nothing or as blank: controls, format characters, unassigned and private
# code points, Unicode's Default_Ignorable_Code_Point (which holds the Hangul fillers
# U+115F, U+1160, U+3164, U+FFA0 and the variation selectors), any white space but the
# plain space, and the braille blank U+2800.
INVISIBLE = regex.compile(
    r"[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Default_Ignorable_Code_Point}"
    r"\u2800[\p{White_Space}--[ ]]]",
    regex.VERSION1,
)
# A guest name is letters, marks, digits, spaces and the punctuation names are written
# with. Not commas, semicolons, slashes, brackets or "&": "alice, bob" would read as two.
GUEST_NAME = regex.compile(r"[\p{L}\p{M}\p{N} \-_.'\u2019]+")


@functools.cache
def _stacked_marks(most: int) -> regex.Pattern:
    """More than `most` non-spacing or enclosing marks in a row: they pile up on one letter.

    Spacing marks (Mc) take room. Counted decomposed: Vietnamese "ệ" is e + two marks, as
    many as a real letter needs. One pattern per limit, compiled on first use: the limit is
    CHAT_NAME_MAX_STACKED_MARKS, read when a name is checked.
    """
    return regex.compile(r"[\p{Mn}\p{Me}]{" + str(most + 1) + ",}")


def clean_display_name(raw: str) -> str:
    """Return the trimmed display name, or raise InvalidDisplayName (no database needed)."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise InvalidDisplayName("Enter a name.")
    if len(name) > DISPLAY_NAME_MAX_CHARS:
        raise InvalidDisplayName(f"Names are at most {DISPLAY_NAME_MAX_CHARS} characters.")
    refuse_hidden_characters(name)
    if not GUEST_NAME.fullmatch(name):
        raise InvalidDisplayName("Names may contain only letters, digits, spaces and - _ . '")
    return name


def clean_guest_name(raw: str) -> str:
    """clean_display_name, and refused if it looks like a username (one indexed query)."""
    name = clean_display_name(raw)
    refuse_lookalike(name)
    return name


def hidden_characters(name: str) -> str | None:
    """Why a name would hide or overdraw text, as "Names may not ...", or None.

    The one rule for every name people see: usernames, guest names and room names.
    """
    if INVISIBLE.search(name):
        return "may not contain control or invisible characters."
    # Decomposed, so that a mark NFC folded into its letter counts too.
    most = settings.CHAT_NAME_MAX_STACKED_MARKS
    if _stacked_marks(most).search(unicodedata.normalize("NFD", name)):
        return f"may not stack more than {most} marks on one letter."
    return None


def refuse_hidden_characters(name: str) -> None:
    """Raise InvalidDisplayName for invisible or blank characters and stacked marks."""
    if (problem := hidden_characters(name)) is not None:
        raise InvalidDisplayName(f"Names {problem}")


def refuse_lookalike(name: str) -> None:
    """Raise InvalidDisplayName if the name looks like an existing username."""
    username_field = f"user__{get_user_model().USERNAME_FIELD}"
    lookalikes = UsernameKey.objects.filter(key=name_key(name))
    existing = lookalikes.values_list(username_field, flat=True).first()
    if existing is not None:
        raise InvalidDisplayName(f'That name looks too much like the username "{existing}".')


def keep_username_key(sender, instance, update_fields=None, **kwargs) -> None:
    """post_save of the user model: store the username's look-alike key beside it."""
    if update_fields is not None and instance.USERNAME_FIELD not in update_fields:
        return  # a login's last_login, a password change: the username did not change
    UsernameKey.objects.update_or_create(
        user_id=instance.pk, defaults={"key": name_key(instance.get_username())}
    )


def bot_author(name: str) -> Author:
    """A named bot's Author: a guest name's rules, and never a look-alike of a username."""
    return Author(name=clean_guest_name(name), is_bot=True)


def author_for(user, session) -> Author:
    """The Author a request or socket speaks as."""
    if user is not None and user.is_authenticated:
        return author_of_user(user)
    # Read first: loading a session whose cookie names no stored session clears its key.
    name = session.get(SESSION_KEY) if session is not None else None
    key = guest_key(session)
    return Author(name=name or default_guest_name(session, key), guest_key=key)


def default_guest_name(session, key: str) -> str:
    """The name of a guest who chose none: "Guest <tag>", the tag stable for their session."""
    if not getattr(session, "session_key", None):
        return GUEST_DEFAULT_NAME
    tag = salted_hmac(GUEST_TAG_SALT, key, algorithm="sha256").hexdigest()[:GUEST_TAG_CHARS]
    return f"{GUEST_DEFAULT_NAME} {tag}"


def author_of_user(user) -> Author:
    """The Author an account speaks as: staff only while active."""
    staff = user.is_active and user.is_staff
    return Author(name=user.get_username(), user_id=user.pk, is_staff=staff)


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


def sign_in_of(author: Author) -> str:
    """An opaque tag of who speaks and under which name, for a page to tell its socket.

    The same person under the same name, in any tab, has the same tag; a logout, a login,
    a new username or guest name changes it. Keyed, so it tells nothing of the session.
    """
    seed = f"{author.key}\0{author.name}"
    return salted_hmac(SIGN_IN_SALT, seed, algorithm="sha256").hexdigest()[:SIGN_IN_CHARS]


def presence_label(author: Author) -> str:
    """How the presence list shows an author: guests are marked, so no one passes as a user."""
    return f"{author.name} (guest)" if author.is_guest else author.name
