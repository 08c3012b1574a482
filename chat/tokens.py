"""API tokens for programs: made for a user, shown once, stored as a SHA-256 hash and found
by a public prefix; revoked by deleting them, which closes their sockets (chat.revocation).

A token reads `chat_<prefix>_<secret>`: 12 hex digits anyone may see (lists, logs), then 32
random bytes, URL-safe base64, that only its holder has.

Explained in docs/security.md, 'API tokens'.
"""

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.utils import timezone

from .models import ApiToken

# 48 bits: a prefix finds one row, and two tokens never meet on one by chance
# (create_token draws again if they do).
PREFIX_BYTES = 6
# 256 bits of secret: a hash needs no salt or stretching when nobody can guess the input.
SECRET_BYTES = 32
TOKEN_PATTERN = re.compile(r"chat_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
# A token's last use is written at most this often: not one write per request.
LAST_USED_EVERY = timedelta(minutes=1)
# A socket's token as a subprotocol (browsers cannot set headers), and the subprotocol the
# server accepts when the client offers it beside (else it echoes the token's).
SUBPROTOCOL_PREFIX = "chat.token."
SUBPROTOCOL = "chat"
# Tokens per user: one per program is a handful; a page reloaded in a loop is not.
MAX_TOKENS_PER_USER = 20
NAME_MAX_CHARS = 100


class InvalidToken(ValueError):
    """A token that cannot be made; its message says why, for the user."""


def digest_of(raw: str) -> str:
    """The SHA-256 of a whole token, hex, as stored."""
    return hashlib.sha256(raw.encode()).hexdigest()


def refuse_new_token(user, name: str) -> None:
    """Raise InvalidToken when user may not make a token of this name."""
    if not name or len(name) > NAME_MAX_CHARS:
        raise InvalidToken(f"Name the token (at most {NAME_MAX_CHARS} characters).")
    if ApiToken.objects.filter(user=user).count() >= MAX_TOKENS_PER_USER:
        raise InvalidToken(f"At most {MAX_TOKENS_PER_USER} tokens: revoke one first.")


def create_token(user, name: str) -> tuple[ApiToken, str]:
    """Make a token for user; returns its row and the token itself, which is never stored."""
    refuse_new_token(user, name)
    while True:
        prefix = secrets.token_hex(PREFIX_BYTES)
        if not ApiToken.objects.filter(prefix=prefix).exists():
            break
    raw = f"chat_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    token = ApiToken.objects.create(user=user, name=name, prefix=prefix, digest=digest_of(raw))
    return token, raw


def token_for(raw: str) -> ApiToken | None:
    """The stored token a presented one is, with its user, if that user is active; else None."""
    match = TOKEN_PATTERN.fullmatch(raw)
    if match is None:
        return None
    token = ApiToken.objects.select_related("user").filter(prefix=match[1]).first()
    if token is None or not hmac.compare_digest(token.digest, digest_of(raw)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used is None or now - token.last_used > LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
        token.last_used = now
    return token


def still_valid(token: ApiToken) -> bool:
    """Whether a token a socket was opened with still stands: not revoked, its user active.

    Read afresh (one indexed query) before each message such a socket stores, as a session's
    socket reads its session (revocation.speaks_as_now): a user deactivated by
    QuerySet.update(), with no signal and so no closing event, stops it too.
    """
    return ApiToken.objects.filter(
        pk=token.pk, user_id=token.user_id, user__is_active=True
    ).exists()


def presented_token(scope: dict) -> str | None:
    """The API token a WebSocket handshake presents: `Authorization: Bearer <token>`, or a
    subprotocol `chat.token.<token>`; None when it presents none (a browser's)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    for subprotocol in scope.get("subprotocols", []):
        if subprotocol.startswith(SUBPROTOCOL_PREFIX):
            return subprotocol.removeprefix(SUBPROTOCOL_PREFIX)
    return None


def accepted_subprotocol(scope: dict) -> str | None:
    """The subprotocol to accept a handshake with: "chat" if offered, else the token's one
    (a client that offers subprotocols fails when none is accepted), else None."""
    offered = scope.get("subprotocols", [])
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    return next((p for p in offered if p.startswith(SUBPROTOCOL_PREFIX)), None)
