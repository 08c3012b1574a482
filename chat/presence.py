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

Explained in docs/architecture.md, 'The upkeep'.
"""

import logging
import math
import time
from collections.abc import Iterable

import redis
import redis.asyncio
from django.conf import settings

from chat.redis_clients import PAGE_TIMEOUT_SECONDS, redis_client

from . import protocol

logger = logging.getLogger(__name__)

_SEPARATOR = "\x1f"  # never in a channel name; the label may contain anything else


def _redis() -> redis.Redis:
    """The process's client for the first Redis, for pages: it gives up within a second."""
    return redis_client(settings.REDIS_URL, PAGE_TIMEOUT_SECONDS)


def _key(group: str) -> str:
    return f"chat:presence:{group}"


def member(channel_name: str, person: str, label: str) -> str:
    """A socket's entry in its room's set: its channel, whose it is, and how it is shown.

    `person` is identity.Author.key ("u:<user id>" or "g:<guest key>"): the room counts
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


def _queue_entries(pipe, entries: Iterable[tuple[str, str]]) -> list[str]:
    """Queue the (group, member) entries, fresh, with their rooms' lifetime (a ZADD and an
    EXPIRE per room); return those rooms, in order. For either client's pipeline."""
    by_group: dict[str, dict[str, float]] = {}
    for group, entry in entries:
        by_group.setdefault(group, {})[entry] = _expiry()
    for group, fresh in by_group.items():
        pipe.zadd(_key(group), fresh)
        pipe.expire(_key(group), _key_ttl())
    return list(by_group)


def _queue_reads(pipe, groups: list[str]):
    """Queue, per room, dropping its expired entries and reading the rest (see _events)."""
    now = time.time()
    for group in groups:
        pipe.zremrangebyscore(_key(group), "-inf", now)
        pipe.zrange(_key(group), 0, -1)


def _events(groups: list[str], results: list) -> dict[str, dict]:
    """Each room's presence event, from the results of its _queue_reads."""
    reads = zip(groups, results[1::2], strict=True)
    return {group: _presence_event(members) for group, members in reads}


def snapshot(group: str) -> dict:
    """The room's presence event: people counted (not sockets), distinct labels sorted;
    nobody when Redis does not answer."""
    return snapshots([group]).get(group, protocol.presence_event(0, []))


def snapshots(groups: list[str]) -> dict[str, dict]:
    """Each room's presence event (see snapshot), read in one Redis round trip for them all;
    {} when Redis does not answer within PAGE_TIMEOUT_SECONDS (logged): unknown, not empty."""
    try:
        pipe = _redis().pipeline()
        _queue_reads(pipe, groups)
        results = pipe.execute()
    except redis.RedisError as error:
        logger.warning("presence not read: %s", error)
        return {}
    return _events(groups, results)


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
    _queue_entries(pipe, joins)
    for group, entry in leaves:
        pipe.zrem(_key(group), entry)
    writes = len(pipe)
    groups = list(groups)
    _queue_reads(pipe, groups)
    results = await pipe.execute() if len(pipe) else []
    return _events(groups, results[writes:])


async def refresh(client: redis.asyncio.Redis, entries: Iterable[tuple[str, str]]) -> set[str]:
    """Extend the (group, member) entries; return the rooms in which expired entries (other
    processes' dead sockets) were dropped."""
    pipe = client.pipeline()
    groups = _queue_entries(pipe, entries)
    if not groups:
        return set()
    writes = len(pipe)
    now = time.time()
    for group in groups:
        pipe.zremrangebyscore(_key(group), "-inf", now)
    dropped = (await pipe.execute())[writes:]
    return {group for group, removed in zip(groups, dropped, strict=True) if removed}
