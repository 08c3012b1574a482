"""Who is in each room right now, kept in Redis so that every server process agrees.

Each socket is one member of a sorted set per room, scored with the time its entry
expires. Every process refreshes the entries of its own sockets (chat.upkeep); a process
that dies stops refreshing, and its entries expire within CHAT_PRESENCE_TTL_SECONDS, at
which point a surviving process that notices tells the room. Presence is best effort:
when Redis is unreachable it is logged and left out, and chatting goes on.

snapshot and snapshots are for the sync thread (the views); apply and refresh for the
event loop (chat.upkeep), with that loop's asyncio client: a socket's join and leave go
there, pipelined with the other sockets' and the announcements they cause, so the sync
thread never waits for Redis on a socket's behalf.
"""

import logging
import math
import time
from collections.abc import Iterable

import redis
import redis.asyncio
from django.conf import settings

from chat.redis_clients import redis_client

from . import protocol

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 5.0
_SEPARATOR = "\x1f"  # never in a channel name; the label may contain anything else


def _redis() -> redis.Redis:
    """The process's client for the first Redis."""
    return redis_client(settings.REDIS_URL, REDIS_TIMEOUT_SECONDS)


def _key(group: str) -> str:
    return f"chat:presence:{group}"


def member(channel_name: str, person: str, label: str) -> str:
    """A socket's entry in its room's set: its channel, whose it is, and how it is shown.

    `person` is services.Author.key ("u:<user id>" or "g:<guest key>"): the room counts
    people, so two tabs of one person are one, and two guests who chose one name are two.
    """
    return _SEPARATOR.join((channel_name, person, label))


def _expiry() -> float:
    return time.time() + settings.CHAT_PRESENCE_TTL_SECONDS


def _key_ttl() -> int:
    """Lifetime of a room's whole set: it outlives its entries, and goes with a dead room."""
    return math.ceil(2 * settings.CHAT_PRESENCE_TTL_SECONDS)


def _presence_event(members: list[bytes]) -> dict:
    """People counted once however many sockets they have; their labels, sorted."""
    people, labels = set(), set()
    for entry in members:
        _channel_name, person, label = entry.decode().split(_SEPARATOR, 2)
        people.add(person)
        labels.add(label)
    return protocol.presence_event(len(people), sorted(labels))


def snapshot(group: str) -> dict:
    """The room's presence event: people counted (not sockets), distinct labels sorted."""
    return snapshots([group])[group]


def snapshots(groups: list[str]) -> dict[str, dict]:
    """Each room's presence event (see snapshot), read in one Redis round trip for them all."""
    now = time.time()
    try:
        pipe = _redis().pipeline()
        for group in groups:
            pipe.zremrangebyscore(_key(group), "-inf", now)
            pipe.zrange(_key(group), 0, -1)
        results = pipe.execute()
    except redis.RedisError as error:
        logger.warning("presence not read: %s", error)
        results = [0, []] * len(groups)
    return {
        group: _presence_event(members)
        for group, members in zip(groups, results[1::2], strict=True)
    }


async def apply(
    client: redis.asyncio.Redis,
    joins: Iterable[tuple[str, str]],
    leaves: Iterable[tuple[str, str]],
    groups: Iterable[str],
) -> dict[str, dict]:
    """Record the (group, member) joins, then the leaves, then read each group's presence
    event: one round trip for them all, on the loop with its client; raises when Redis
    does not answer.

    A socket that joined and left since the last call has its join and its leave here, in
    that order, and so leaves no entry.
    """
    pipe = client.pipeline(transaction=False)
    by_group: dict[str, dict[str, float]] = {}
    for group, entry in joins:
        by_group.setdefault(group, {})[entry] = _expiry()
    for group, entries in by_group.items():
        pipe.zadd(_key(group), entries)
        pipe.expire(_key(group), _key_ttl())
    for group, entry in leaves:
        pipe.zrem(_key(group), entry)
    groups = list(groups)
    now = time.time()
    for group in groups:
        pipe.zremrangebyscore(_key(group), "-inf", now)
        pipe.zrange(_key(group), 0, -1)
    results = await pipe.execute() if len(pipe) else []
    reads = results[len(results) - 2 * len(groups) :] if groups else []
    return {
        group: _presence_event(members) for group, members in zip(groups, reads[1::2], strict=True)
    }


async def refresh(client: redis.asyncio.Redis, entries: Iterable[tuple[str, str]]) -> set[str]:
    """Extend the (group, member) entries; return the rooms in which expired entries (other
    processes' dead sockets) were dropped."""
    by_group: dict[str, dict[str, float]] = {}
    for group, entry in entries:
        by_group.setdefault(group, {})[entry] = _expiry()
    if not by_group:
        return set()
    pipe = client.pipeline()
    for group, entries in by_group.items():
        pipe.zadd(_key(group), entries)
        pipe.expire(_key(group), _key_ttl())
        pipe.zremrangebyscore(_key(group), "-inf", time.time())
    results = await pipe.execute()
    dropped = results[2::3]
    return {group for group, removed in zip(by_group, dropped, strict=True) if removed}
