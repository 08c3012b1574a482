"""Limits per person, shared by every server process: counters in Redis, kept by `limits`.

Each limit is a setting such as "30/10seconds", counted in a moving window per client
address, or per user or guest session, so that opening more sockets or running more
processes buys nobody more. The per-socket token bucket (chat.ratelimit) stays in front
of them, and failed logins are django-axes's (see login_lockout_response).

Explained in docs/protocol.md, 'Limits'.
"""

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import limits
import limits.aio.storage
import limits.aio.strategies
import redis
import redis.asyncio
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from . import loops, metrics, protocol, sides
from .identity import Author
from .models import Room
from .redis_clients import (
    LIMITS_TIMEOUT_SECONDS,
    OUTAGE_ERRORS,
    PAGE_TIMEOUT_SECONDS,
    ConnectionLost,
    NoScriptError,
    ResponseError,
    asyncio_redis_client,
    redis_client,
)

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
    # How long its check waits for Redis before the request goes through unchecked.
    timeout: float = LIMITS_TIMEOUT_SECONDS

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
# Asked by the index and the sidebar, which answer within a second whatever Redis does.
ROOM_LIST = Limit(
    "CHAT_LIMIT_ROOM_LIST_PER_ADDRESS", "room list requests from your address", PAGE_TIMEOUT_SECONDS
)
READ_REPORTS = Limit("CHAT_LIMIT_READ_REPORTS_PER_PERSON", "read positions from you")
MESSAGE_REPORTS = Limit("CHAT_LIMIT_MESSAGE_REPORTS_PER_PERSON", "reports of messages from you")
PASSWORD_RESETS = Limit(
    "CHAT_LIMIT_PASSWORD_RESETS_PER_ADDRESS", "password reset requests from your address"
)
PASSWORD_RESET_MAILS = Limit(
    "CHAT_LIMIT_PASSWORD_RESET_MAILS_PER_ACCOUNT", "password reset mails to one account"
)
API_PERSON = Limit("CHAT_LIMIT_API_PER_PERSON", "API requests from you, over all your tokens")


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
    return _canonical_address(address or UNKNOWN_ADDRESS)


# Client addresses a process meets over and over (each socket's, at each message): each
# is parsed once. ipaddress takes 3 µs (IPv4) to 25 µs (IPv6) an address, on the sync thread
# every socket shares.
ADDRESSES_CACHED = 4096


@functools.lru_cache(maxsize=ADDRESSES_CACHED)
def _canonical_address(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an address (a test's name for a client): as it is
    # A dual-stack socket names IPv4 peers ::ffff:a.b.c.d: the same client as a.b.c.d.
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)


def client_network(connection: HttpRequest | dict) -> str:
    """Who a per-address limit counts: the client's IPv4 address, or its IPv6 network.

    One IPv6 host is given a whole /64 (CHAT_IPV6_PREFIX_LENGTH) and picks any address
    in it, so counting IPv6 addresses one by one would multiply every limit by 2**64.
    Written as an address or a network ("2001:db8:1:2::/64"); django-axes stores it as one
    address (client_network_address).
    """
    return _network_of(client_address(connection), settings.CHAT_IPV6_PREFIX_LENGTH)


@functools.lru_cache(maxsize=ADDRESSES_CACHED)
def _network_of(address: str, prefix: int) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 4 or prefix == parsed.max_prefixlen:
        return address
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def client_network_address(request: HttpRequest) -> str:
    """client_network as one address (an IPv6 network's first), for django-axes, which
    stores it in an address field: PostgreSQL's inet refuses "2001:db8:1:2::/64"."""
    return client_network(request).partition("/")[0]


def retry_after(limit: Limit, who: str) -> int | None:
    """Count one hit of `who` on `limit`: None within it, else the seconds until one is free.

    One round trip (a Lua script) within the limit; a second to read the window when over.
    """
    rate = limit.rate
    limiter = _limiter(settings.REDIS_URL, limit.timeout)
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


async def refuse_socket(scope: dict) -> bool:
    """On the loop: True when the socket's address opened too many sockets lately.

    Logged once per burst: the first refusal says how long the address must wait, and
    the refusals until then (a script retrying at once) write nothing more, on any process.
    """
    address = client_network(scope)
    client, limiter, scripts = _on_this_loop(settings.REDIS_URL)
    rate = SOCKETS.rate
    key = f"{KEY_PREFIX}:{rate.key_for(SOCKETS.setting, address)}"
    # The limits library's own moving-window script, as limiter.hit runs it: here batched.
    hit = [time.time(), rate.amount, rate.get_expiry(), 1]
    if await scripts.run(RedisStorage.SCRIPT_ACQUIRE_MOVING_WINDOW, [key], hit):
        return False
    reset, _ = await limiter.get_window_stats(rate, SOCKETS.setting, address)
    wait = max(1, math.ceil(reset - time.time()))
    metrics.HANDSHAKES_REFUSED.labels("too_many_sockets").inc()
    if await client.set(f"{KEY_PREFIX}:refusing:{address}", 1, ex=wait, nx=True):
        detail = describe(SOCKETS, wait)
        logger.warning(
            "refused socket from %s: %s (no more lines till then)",
            address,
            detail,
            extra={"client": address},
        )
    return True


# Redis calls of the limits in flight at once on one loop, each on a connection of its own
# (the handshake limit and the open-socket caps go in one pipeline per turn of the loop,
# ScriptBatch; a refusal reads its window on its own): a burst of thousands of connects
# (a server restart's reconnects) waits its turn for one of these, as the layer's calls do.
HANDSHAKE_CONNECTIONS_PER_LOOP = 32


class ScriptBatch:
    """On one loop: the limit scripts called in one turn of the loop, sent in one pipeline.

    A burst of connects (a server's restart reconnects thousands) checks its handshakes and
    takes its open slots together: one round trip, one write and one read for them all,
    where a call each cost its own, and each its share of the loop's CPU. Redis runs them
    one after the other, in the order they were called, as separate calls would run.
    """

    def __init__(self, client: redis.asyncio.Redis):
        self.client = client
        self.calls: list[tuple[str | bytes, Sequence, Sequence, asyncio.Future]] = []
        self.sending: set[asyncio.Task] = set()  # the loop keeps only weak references

    @sides.on_loop
    async def run(self, script: str | bytes, keys: Sequence[str], args: Sequence) -> Any:
        """The script's reply (EVALSHA, loaded again if Redis lost it), or its error."""
        loop = asyncio.get_running_loop()
        if not self.calls:
            loop.call_soon(self._send)  # once the calls made in this turn are in
        reply = loop.create_future()
        self.calls.append((script, keys, args, reply))
        return await reply

    def _send(self):
        calls, self.calls = self.calls, []
        task = asyncio.ensure_future(self._answer(calls))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _answer(self, calls: list):
        try:
            replies = await self._execute(calls)
        except Exception as error:  # an outage: every caller answers it as its own
            replies = [error] * len(calls)
        for (*_, reply), outcome in zip(calls, replies, strict=True):
            if reply.done():  # its caller was cancelled
                continue
            if isinstance(outcome, Exception):
                reply.set_exception(outcome)
            else:
                reply.set_result(outcome)

    async def _execute(self, calls: list) -> list:
        replies = await self._pipeline(calls)
        # Redis restarted since (or SCRIPT FLUSH): none of these ran; load and run them.
        lost = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            for script in {calls[index][0] for index in lost}:
                await self.client.script_load(script)
            again = await self._pipeline([calls[index] for index in lost])
            for index, reply in zip(lost, again, strict=True):
                replies[index] = reply
        return replies

    async def _pipeline(self, calls: list) -> list:
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in calls:
                pipe.evalsha(_sha(script), len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)


@functools.cache
def _sha(script: str | bytes) -> str:
    text = script.encode() if isinstance(script, str) else script  # limits' scripts are bytes
    return hashlib.sha1(text).hexdigest()  # noqa: S324 (Redis names scripts so)


@sides.on_loop
def _on_this_loop(
    url: str,
) -> tuple[redis.asyncio.Redis, limits.aio.strategies.MovingWindowRateLimiter, ScriptBatch]:
    """The running loop's client for url, a limiter counting in the same keys as
    retry_after's, and the batch of script calls: asyncio clients serve one loop
    (chat.loops keeps them)."""
    state = loops.of_loop()
    if state.limits is None:
        state.limits = {}
    if url not in state.limits:
        client = asyncio_redis_client(url, LIMITS_TIMEOUT_SECONDS, HANDSHAKE_CONNECTIONS_PER_LOOP)
        # The storage takes its scheme from the URL and its connections from the client.
        scheme_url = url if url.startswith(("redis://", "rediss://")) else f"redis+{url}"
        storage = limits.aio.storage.RedisStorage(
            f"async+{scheme_url}",
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            connection_pool=client.connection_pool,
        )
        limiter = limits.aio.strategies.MovingWindowRateLimiter(storage)
        state.limits[url] = client, limiter, ScriptBatch(client)
    return state.limits[url]


class HandshakeLimitMiddleware:
    """ASGI middleware: refuse a WebSocket over the new-socket limit (refuse_socket) with 403,
    before the consumer is built and before AuthMiddlewareStack loads its session.

    Counted on the loop: a thread hop a handshake cost more than its Redis round trip; the
    handshakes of a burst share theirs (ScriptBatch). A refused handshake costs that and
    one more to read its window (and one for the first of a burst's log line): no
    consumer, no group joins, no database query, no log line but the burst's first.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        """Pass the socket on, or answer its handshake with a refusal."""
        if scope["type"] == "websocket":
            try:
                refused = await refuse_socket(scope)
            except OUTAGE_ERRORS as error:
                metrics.outage(error)
                logger.warning("refused socket, Redis unreachable: %r", error)
                refused = True  # the consumer could not join its room either
            if refused:
                await receive()  # the handshake: a close before accepting it is a 403
                await send({"type": "websocket.close"})
                return None
        return await self.application(scope, receive, send)


class PostCheck(NamedTuple):
    """What the limits need to know of one message: whose budgets it counts against, where."""

    person: str  # whose messages (an account, or a guest's address network)
    creator: str  # who would make the room, were it new (an address network, or a program)
    room_name: str
    room_may_be_new: bool  # its sender has seen no message in the room
    client_id: str | None


def message_check(
    scope: dict, author: Author, room_name: str, room_may_be_new: bool, client_id: str | None
) -> PostCheck:
    """What check_posts needs of a socket's message.

    An edit or a deletion counts as a message: it takes the same tokens.

    A logged-in user's messages count per account; a guest's per address network
    (client_network), whatever session it has: sessions cost nothing to make, and each
    would bring a budget of its own. A message to a room that has none yet would create
    it, which counts as a new room for the address; `room_may_be_new` (the socket has seen
    no message in its room) spares the query for every other one.
    """
    return PostCheck(_person(scope, author), client_network(scope), room_name, room_may_be_new,
                     client_id)  # fmt: skip


def check_message(
    scope: dict,
    author: Author,
    room_name: str,
    frame: protocol.EditFrame | protocol.DeleteFrame,
) -> None:
    """Raise FrameRefused when an edit or a deletion would pass the per-person limit: it
    counts as a message, and takes the same tokens (never a new room's)."""
    check_post(_person(scope, author), client_network(scope), room_name, False, None)


def check_post(
    person: str, creator: str, room_name: str, room_may_be_new: bool, client_id: str | None
) -> None:
    """Raise FrameRefused when `person` sent too many messages lately, or `creator` (an
    address network, or whoever posts from code) made too many rooms and this one has none."""
    (refusal,) = check_posts([PostCheck(person, creator, room_name, room_may_be_new, client_id)])
    if refusal is not None:
        raise refusal


def check_posts(checks: Sequence[PostCheck]) -> list[protocol.FrameRefused | None]:
    """check_post for many messages at once: what each is refused with, or None.

    Counted in order, as one check_post after another would count them, the messages limit
    of all of them in one round trip to Redis (and one more when some are over it). A room
    new to several of them counts once against its creator.
    """
    return start_checks(checks).refusals()


class PendingChecks:
    """check_posts in two halves: the messages' hits are in Redis's hands (start_checks);
    refusals() reads what came of them. Their caller works on meanwhile (chat.commits)."""

    def __init__(self, checks: Sequence[PostCheck]):
        self.checks = checks
        # Those refused already (a new room over its creator's limit) are not counted.
        self._refusals = _new_room_refusals(checks)
        self._counted = [index for index, refusal in enumerate(self._refusals) if refusal is None]
        self._hits = SentHits(MESSAGES, [checks[index].person for index in self._counted])

    def refusals(self) -> list[protocol.FrameRefused | None]:
        """What each message is refused with, or None; waits for Redis's answers if need be."""
        refusals = list(self._refusals)
        for index, wait in zip(self._counted, self._hits.waits(), strict=True):
            if wait is not None:
                refusals[index] = protocol.FrameRefused(
                    "rate_limited", describe(MESSAGES, wait), self.checks[index].client_id, wait
                )
        return refusals


def start_checks(checks: Sequence[PostCheck]) -> PendingChecks:
    """Start check_posts: the new rooms' checks now, the messages' hits sent to Redis."""
    return PendingChecks(checks)


def _new_room_refusals(checks: Sequence[PostCheck]) -> list[protocol.FrameRefused | None]:
    refusals: list[protocol.FrameRefused | None] = [None] * len(checks)
    new_room_waits: dict[tuple[str, str], int | None] = {}
    for index, check in enumerate(checks):
        if not check.room_may_be_new:
            continue
        key = (check.room_name, check.creator)
        if key not in new_room_waits:
            exists = Room.objects.filter(name=check.room_name).exists()
            new_room_waits[key] = None if exists else retry_after(ROOMS, check.creator)
        if (wait := new_room_waits[key]) is not None:
            refusals[index] = protocol.FrameRefused(
                "too_many_rooms", describe(ROOMS, wait), check.client_id, wait
            )
    return refusals


def retries_after(limit: Limit, whos: Sequence[str]) -> list[int | None]:
    """retry_after for several hits at once, counted in order: one round trip.

    The limits library's own moving-window script, one call per hit, pipelined (Redis runs
    them one after another, as separate hits would run); a second round trip reads the
    windows of those over the limit.
    """
    return SentHits(limit, whos).waits()


class SentHits:
    """retries_after in two halves: the hits are sent at once, in one write on a connection
    of their own; waits() reads Redis's answers, so that the caller's thread works on while
    Redis counts.
    """

    def __init__(self, limit: Limit, whos: Sequence[str]):
        self.limit, self.whos = limit, list(whos)
        self._rate = limit.rate
        self._limiter = _limiter(settings.REDIS_URL, limit.timeout)
        self._client = redis_client(settings.REDIS_URL, limit.timeout)
        self._connection = None  # holding the hits' answers, until waits() reads them
        if self.whos:
            self._connection = self._send()

    def _hits(self, whos: Sequence[str]) -> list[tuple]:
        # EVALSHA itself, not the Script: a Script asks Redis first whether it exists, one
        # more round trip each time.
        rate, storage = self._rate, self._limiter.storage
        sha, now, expiry = storage.lua_acquire_moving_window.sha, time.time(), rate.get_expiry()
        return [
            ("EVALSHA", sha, 1, storage.prefixed_key(rate.key_for(self.limit.setting, who)),
             now, rate.amount, expiry, 1)
            for who in whos
        ]  # fmt: skip

    def _send(self):
        """The connection the hits were sent on; None if it failed (waits() sends again)."""
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands(self._hits(self.whos)))
        except ConnectionLost:  # a connection Redis closed (it restarted)
            connection.disconnect()
            pool.release(connection)
            return None
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        return connection

    def _read(self, connection) -> list | None:
        """The hits' answers (an error each for those that failed), None if the connection
        failed: then the hits are sent again, as redis-py retries a failed command."""
        try:
            answers = []
            for _ in self.whos:
                try:
                    answers.append(connection.read_response())
                except ResponseError as error:
                    answers.append(error)
            return answers
        except ConnectionLost:
            connection.disconnect()
            return None
        except BaseException:
            connection.disconnect()  # answers may be left unread: the connection is spent
            raise
        finally:
            self._client.connection_pool.release(connection)

    def waits(self) -> list[int | None]:
        """For each hit, None within the limit, else the seconds until one is free."""
        if not self.whos:
            return []
        connection, self._connection = self._connection, None
        answers = None if connection is None else self._read(connection)
        if answers is None:
            answers = self._hit_again(self.whos)
        forgotten = [
            index for index, answer in enumerate(answers) if isinstance(answer, NoScriptError)
        ]
        if forgotten:  # Redis restarted since, or flushed its scripts: those hits never ran
            script = self._limiter.storage.lua_acquire_moving_window
            script.sha = self._client.script_load(script.script)
            again = self._hit_again([self.whos[index] for index in forgotten])
            for index, answer in zip(forgotten, again, strict=True):
                answers[index] = answer
        waits: list[int | None] = []
        for answer, who in zip(answers, self.whos, strict=True):
            if isinstance(answer, Exception):
                raise answer
            if answer:
                waits.append(None)
            else:
                reset, _ = self._limiter.get_window_stats(self._rate, self.limit.setting, who)
                waits.append(max(1, math.ceil(reset - time.time())))
        return waits

    def _hit_again(self, whos: Sequence[str]) -> list:
        pipe = self._client.pipeline(transaction=False)
        for hit in self._hits(whos):
            pipe.execute_command(*hit)
        return pipe.execute(raise_on_error=False)


class TooManySockets(Exception):
    """A new socket would pass a cap of open sockets; the message says which, for the client."""


# Takes a slot in each set (KEYS) for one socket (ARGV[3]) unless one of them is full: one
# round trip, atomic, so two processes never both take the last slot. Entries are scored
# with their expiry (ARGV[2]); those of sockets nobody refreshed (a killed process's) go
# first. Returns 0, or the 1-based index of the full set. ARGV[4]: the sets' lifetime;
# ARGV[5...]: each set's cap.
_TAKE_SLOTS = """
for i, key in ipairs(KEYS) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
    if not redis.call('ZSCORE', key, ARGV[3])
            and redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then
        return i
    end
end
for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, ARGV[2], ARGV[3])
    redis.call('EXPIRE', key, ARGV[4])
end
return 0
"""


async def take_open_slots(scope: dict, author: Author, member: str) -> tuple[str, ...]:
    """On the loop: count a new socket among its person's and its address's open sockets;
    the sets it is now in (refresh_open_slots keeps it there, release_open_slots takes it
    out). A round trip the sockets' one thread would spend waiting, connect after connect;
    shared with the other limit checks of this turn of the loop (ScriptBatch).

    Raises TooManySockets when either already holds its cap. A socket that nobody
    refreshes (its process was killed) stops counting after CHAT_PRESENCE_TTL_SECONDS.
    """
    network = client_network(scope)
    caps = {
        f"{KEY_PREFIX}:open:{author.key}": (
            settings.CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON,
            "connections open for you",
        ),
        f"{KEY_PREFIX}:open:a:{network}": (
            settings.CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS,
            "connections open from your address",
        ),
    }
    now = time.time()
    _, _, scripts = _on_this_loop(settings.REDIS_URL)
    full = await scripts.run(
        _TAKE_SLOTS,
        list(caps),
        [
            now,
            now + settings.CHAT_PRESENCE_TTL_SECONDS,
            member,
            _open_sets_lifetime(),
            *(cap for cap, _ in caps.values()),
        ],
    )
    if full:
        cap, counts = list(caps.values())[full - 1]
        logger.warning(
            "refused socket from %s: %d %s already", network, cap, counts, extra={"client": network}
        )
        raise TooManySockets(f"Too many {counts}: at most {cap}. Close one, then reconnect.")
    return tuple(caps)


async def refresh_open_slots(client: redis.asyncio.Redis, held: list[tuple[tuple[str, ...], str]]):
    """On the loop: keep these sockets (their sets, their member) counted for another TTL.

    One ZADD and one EXPIRE a set, not a socket: the sockets of one address all share its
    set, and a process holds thousands.
    """
    expires = time.time() + settings.CHAT_PRESENCE_TTL_SECONDS
    async with client.pipeline(transaction=False) as pipe:
        for key, members in _members_by_set(held).items():
            pipe.zadd(key, dict.fromkeys(members, expires), xx=True)
            pipe.expire(key, _open_sets_lifetime())
        await pipe.execute()


async def release_open_slots(client: redis.asyncio.Redis, held: list[tuple[tuple[str, ...], str]]):
    """On the loop: these sockets closed; they no longer count against any cap (one ZREM a
    set)."""
    async with client.pipeline(transaction=False) as pipe:
        for key, members in _members_by_set(held).items():
            pipe.zrem(key, *members)
        await pipe.execute()


def _members_by_set(held: list[tuple[tuple[str, ...], str]]) -> dict[str, list[str]]:
    by_set: dict[str, list[str]] = {}
    for keys, member in held:
        for key in keys:
            by_set.setdefault(key, []).append(member)
    return by_set


def _open_sets_lifetime() -> int:
    # A set outlives its entries, and goes with a client that left.
    return math.ceil(2 * settings.CHAT_PRESENCE_TTL_SECONDS)


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
    client = redis_client(settings.REDIS_URL, LIMITS_TIMEOUT_SECONDS)
    try:
        return bool(client.set(key, 1, px=math.ceil(throttle * 1000), nx=True))
    except OUTAGE_ERRORS as error:
        logger.warning("typing signal dropped, Redis unreachable: %r", error)
        return False


def _person(scope: dict, author: Author) -> str:
    """Whose budget a socket's messages and typing count against: an account, or for a
    guest the address network (guest sessions cost nothing to make)."""
    return f"a:{client_network(scope)}" if author.is_guest else author.key


def http_refusal(
    limit: Limit, request: HttpRequest, who: str | None = None, as_json: bool = False
) -> HttpResponse | None:
    """Count a request against a limit, per address or per `who`: None within it, else a 429,
    in plain text or, `as_json`, as an endpoint's `rate_limited` error.

    While Redis is unreachable the request goes through (logged): the pages and the
    messages endpoint do not otherwise need Redis.
    """
    address = client_network(request)
    try:
        wait = retry_after(limit, who or address)
    except OUTAGE_ERRORS as error:
        logger.warning("%s not checked, Redis unreachable: %r", limit.setting, error)
        return None
    if wait is None:
        return None
    detail = describe(limit, wait)
    logger.warning("refused %s %s from %s: %s", request.method, request.path, address, detail)
    return _too_many_requests(detail, wait, as_json)


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


def _too_many_requests(detail: str, wait: int, as_json: bool = False) -> HttpResponse:
    if as_json:
        error = {"error": {"code": "rate_limited", "detail": detail}}
        response = JsonResponse(error, status=429)
    else:
        response = HttpResponse(detail + "\n", status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(wait)
    # Logged already, with the address and the reason: not again by django.request.
    response._has_been_logged = True
    return response


@functools.cache
def _parse(rate: str) -> limits.RateLimitItem:
    return limits.parse(rate)


@functools.cache
def _limiter(url: str, timeout: float) -> MovingWindowRateLimiter:
    # On the process's client for this Redis (chat.redis_clients): no pool of its own.
    pool = redis_client(url, timeout).connection_pool
    return MovingWindowRateLimiter(RedisStorage(url, connection_pool=pool, key_prefix=KEY_PREFIX))
