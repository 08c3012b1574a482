"""Limits per person, shared by every server process: counters in Redis, kept by `limits`.

Each limit is a setting such as "30/10seconds", counted in a moving window per client
address, or per user or guest session, so that opening more sockets or running more
processes buys nobody more. The per-socket token bucket (chat.ratelimit) stays in front
of them, and failed logins are django-axes's (see login_lockout_response).

Explained in docs/protocol.md, 'Limits'.
"""

import functools
import logging
import math
import time
from dataclasses import dataclass

import limits
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from . import protocol
from .identity import Author
from .models import Room
from .redis_clients import LIMITS_TIMEOUT_SECONDS, OUTAGE_ERRORS, redis_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "chat:limits"
# No address known (scope["client"] on a Unix socket, a request built in a test): IPv4's
# "unspecified" address, which all such clients share, and which django-axes can store
# (an address field, which PostgreSQL checks).
UNKNOWN_ADDRESS = "0.0.0.0"


@dataclass(frozen=True)
class Limit:
    """One limit: the setting that holds its rate, and what it counts, for people."""

    setting: str
    counts: str

    @property
    def rate(self) -> limits.RateLimitItem:
        """The rate its setting holds now (tests override settings)."""
        return _parse(getattr(settings, self.setting))


SOCKETS = Limit("CHAT_LIMIT_SOCKETS_PER_ADDRESS", "new connections from your address")
MESSAGES = Limit("CHAT_LIMIT_MESSAGES_PER_PERSON", "messages from you, over all your connections")
ROOMS = Limit("CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS", "new rooms from your address")
GUEST_SESSIONS = Limit("CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS", "new guests from your address")
SIGNUPS = Limit("CHAT_LIMIT_SIGNUPS_PER_ADDRESS", "new accounts from your address")
API = Limit("CHAT_LIMIT_API_PER_ADDRESS", "requests for messages from your address")
PASSWORD_RESETS = Limit(
    "CHAT_LIMIT_PASSWORD_RESETS_PER_ADDRESS", "password reset requests from your address"
)
PASSWORD_RESET_MAILS = Limit(
    "CHAT_LIMIT_PASSWORD_RESET_MAILS_PER_ACCOUNT", "password reset mails to one account"
)


def client_address(connection: HttpRequest | dict) -> str:
    """The client's address: REMOTE_ADDR of a request, scope["client"] of a socket.

    The one place that says who a client is; the server sets both (behind a proxy it
    trusts, to the address the proxy saw).
    """
    if isinstance(connection, HttpRequest):
        address = connection.META.get("REMOTE_ADDR")
    else:
        client = connection.get("client")
        address = client[0] if client else None
    return address or UNKNOWN_ADDRESS


def retry_after(limit: Limit, who: str) -> int | None:
    """Count one hit of `who` on `limit`: None within it, else the seconds until one is free.

    One round trip (a Lua script) within the limit; a second to read the window when over.
    """
    rate = limit.rate
    limiter = _limiter(settings.REDIS_URL)
    if limiter.hit(rate, limit.setting, who):
        return None
    reset, _ = limiter.get_window_stats(rate, limit.setting, who)
    return max(1, math.ceil(reset - time.time()))


def describe(limit: Limit, wait: int) -> str:
    """The refusal's text: the limit, and when to try again."""
    rate = limit.rate
    per = (
        rate.GRANULARITY.name
        if rate.multiples == 1
        else f"{rate.multiples} {rate.GRANULARITY.name}s"
    )
    return f"Too many {limit.counts}: at most {rate.amount} per {per}. Try again in {wait} s."


def refuse_socket(scope: dict) -> bool:
    """True (and logged) when the socket's address opened too many sockets lately."""
    address = client_address(scope)
    wait = retry_after(SOCKETS, address)
    if wait is None:
        return False
    logger.warning("refused socket from %s: %s", address, describe(SOCKETS, wait))
    return True


def check_message(
    scope: dict, author: Author, room_name: str, room_may_be_new: bool, frame: protocol.ChatFrame
) -> None:
    """Raise FrameRefused when this frame's message would pass a per-person or per-address limit.

    Messages count per user or guest session (per address for a client without a
    session, whose guest key is new on every socket). A message to a room that has none
    yet would create it, which counts as a new room for the address; `room_may_be_new`
    (the socket has seen no message in its room) spares the query for every other one.
    """
    address = client_address(scope)
    if room_may_be_new and not Room.objects.filter(name=room_name).exists():
        if (wait := retry_after(ROOMS, address)) is not None:
            raise protocol.FrameRefused("too_many_rooms", describe(ROOMS, wait), frame.client_id)
    session = scope.get("session")
    has_session = getattr(session, "session_key", None) is not None
    person = author.key if not author.is_guest or has_session else f"a:{address}"
    if (wait := retry_after(MESSAGES, person)) is not None:
        raise protocol.FrameRefused("rate_limited", describe(MESSAGES, wait), frame.client_id)


def http_refusal(limit: Limit, request: HttpRequest) -> HttpResponse | None:
    """Count a request against a per-address limit: None within it, else a 429 to return.

    While Redis is unreachable the request goes through (logged): the pages and the
    messages endpoint do not otherwise need Redis.
    """
    address = client_address(request)
    try:
        wait = retry_after(limit, address)
    except OUTAGE_ERRORS as error:
        logger.warning("%s not checked, Redis unreachable: %r", limit.setting, error)
        return None
    if wait is None:
        return None
    detail = describe(limit, wait)
    logger.warning("refused %s %s from %s: %s", request.method, request.path, address, detail)
    return _too_many_requests(detail, wait)


def login_lockout_response(request: HttpRequest, *_) -> HttpResponse:
    """django-axes's lockout answer (AXES_LOCKOUT_CALLABLE): a 429 with Retry-After.

    The lockout lasts AXES_COOLOFF_TIME from the last failure, and a failure during it
    starts it again.
    """
    wait = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())
    detail = f"Too many failed logins for this account or from your address. Try again in {wait} s."
    address = client_address(request)
    logger.warning("refused login at %s from %s: locked out", request.path, address)
    return _too_many_requests(detail, wait)


def _too_many_requests(detail: str, wait: int) -> HttpResponse:
    response = HttpResponse(detail + "\n", status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(wait)
    # Logged already, with the address and the reason: not again by django.request.
    response._has_been_logged = True
    return response


@functools.cache
def _parse(rate: str) -> limits.RateLimitItem:
    return limits.parse(rate)


@functools.cache
def _limiter(url: str) -> MovingWindowRateLimiter:
    # On the process's client for this Redis (chat.redis_clients): no pool of its own.
    pool = redis_client(url, LIMITS_TIMEOUT_SECONDS).connection_pool
    return MovingWindowRateLimiter(RedisStorage(url, connection_pool=pool, key_prefix=KEY_PREFIX))
