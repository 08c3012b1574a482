"""Limits per person, shared by every server process: counters in Redis, kept by `limits`.

Each limit is a setting such as "30/10seconds", counted in a moving window per client
address, or per user or guest session, so that opening more sockets or running more
processes buys nobody more. The per-socket token bucket (chat.ratelimit) stays in front
of them, and failed logins are django-axes's (see login_lockout_response).

Explained in docs/protocol.md, 'Limits'.
"""

import functools
import ipaddress
import logging
import math
import time
from dataclasses import dataclass

import limits
import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from . import protocol
from .models import Room
from .redis_clients import redis_client
from .services import Author

logger = logging.getLogger(__name__)

KEY_PREFIX = "chat:limits"
# A check is one round trip to a Redis on the same network; give up on it quickly.
REDIS_TIMEOUT_SECONDS = 2.0
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
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
    try:
        parsed = ipaddress.ip_address(address or UNKNOWN_ADDRESS)
    except ValueError:
        return address  # not an address (a test's name for a client): as it is
    # A dual-stack socket names IPv4 peers ::ffff:a.b.c.d: the same client as a.b.c.d.
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)


def client_network(connection: HttpRequest | dict) -> str:
    """Who a per-address limit counts: the client's IPv4 address, or its IPv6 network.

    One IPv6 host is given a whole /64 (CHAT_IPV6_PREFIX_LENGTH) and picks any address
    in it, so counting IPv6 addresses one by one would multiply every limit by 2**64.
    Written as an address or a network ("2001:db8:1:2::/64"): django-axes stores it too.
    """
    address = client_address(connection)
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    prefix = settings.CHAT_IPV6_PREFIX_LENGTH
    if parsed.version == 4 or prefix == parsed.max_prefixlen:
        return address
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


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
    address = client_network(scope)
    wait = retry_after(SOCKETS, address)
    if wait is None:
        return False
    logger.warning("refused socket from %s: %s", address, describe(SOCKETS, wait))
    return True


def check_message(
    scope: dict, author: Author, room_name: str, room_may_be_new: bool, frame: protocol.ChatFrame
) -> None:
    """Raise FrameRefused when this frame's message would pass a per-person or per-address limit.

    A logged-in user's messages count per account; a guest's per address network
    (client_network), whatever session it has: sessions cost nothing to make, and each
    would bring a budget of its own. A message to a room that has none
    yet would create it, which counts as a new room for the address; `room_may_be_new`
    (the socket has seen no message in its room) spares the query for every other one.
    """
    address = client_network(scope)
    if room_may_be_new and not Room.objects.filter(name=room_name).exists():
        if (wait := retry_after(ROOMS, address)) is not None:
            raise protocol.FrameRefused("too_many_rooms", describe(ROOMS, wait), frame.client_id)
    person = _person(scope, author)
    if (wait := retry_after(MESSAGES, person)) is not None:
        raise protocol.FrameRefused("rate_limited", describe(MESSAGES, wait), frame.client_id)


def typing_allowed(scope: dict, author: Author, room_name: str) -> bool:
    """Whether this person's "typing" may go to the room: once per throttle period.

    Counted per person as messages are (a guest per address network), over all their
    sockets and processes: one SET NX with an expiry, one round trip. Without Redis the
    signal is dropped; it is only a hint.
    """
    throttle = settings.CHAT_TYPING_THROTTLE_SECONDS
    if throttle <= 0:
        return True
    key = f"{KEY_PREFIX}:typing:{room_name}:{_person(scope, author)}"
    client = redis_client(settings.REDIS_URL, REDIS_TIMEOUT_SECONDS)
    try:
        return bool(client.set(key, 1, px=math.ceil(throttle * 1000), nx=True))
    except REDIS_ERRORS as error:
        logger.warning("typing signal dropped, Redis unreachable: %r", error)
        return False


def _person(scope: dict, author: Author) -> str:
    """Whose budget a socket's messages and typing count against: an account, or for a
    guest the address network (guest sessions cost nothing to make)."""
    return f"a:{client_network(scope)}" if author.is_guest else author.key


def http_refusal(limit: Limit, request: HttpRequest) -> HttpResponse | None:
    """Count a request against a per-address limit: None within it, else a 429 to return.

    While Redis is unreachable the request goes through (logged): the pages and the
    messages endpoint do not otherwise need Redis.
    """
    address = client_network(request)
    try:
        wait = retry_after(limit, address)
    except REDIS_ERRORS as error:
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
    address = client_network(request)
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
    pool = redis_client(url, REDIS_TIMEOUT_SECONDS).connection_pool
    return MovingWindowRateLimiter(RedisStorage(url, connection_pool=pool, key_prefix=KEY_PREFIX))
