"""Who is in each room right now, kept in Redis so that every server process agrees.

Each socket is one member of a sorted set per room, scored with the time its entry
expires. Every process refreshes the entries of its own sockets (chat.upkeep); a process
that dies stops refreshing, and its entries expire within CHAT_PRESENCE_TTL_SECONDS, at
which point a surviving process that notices tells the room. Presence is best effort:
when Redis is unreachable it is logged and left out, and chatting goes on.

join, leave and snapshot are for the sync thread; refresh and snapshot_from_loop for
the event loop (chat.upkeep), with that loop's asyncio client.
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


def _member(channel_name: str, label: str) -> str:
    return channel_name + _SEPARATOR + label


def _expiry() -> float:
    return time.time() + settings.CHAT_PRESENCE_TTL_SECONDS


def _key_ttl() -> int:
    """Lifetime of a room's whole set: it outlives its entries, and goes with a dead room."""
    return math.ceil(2 * settings.CHAT_PRESENCE_TTL_SECONDS)


def join(group: str, channel_name: str, label: str):
    """Record a socket in its room (chat.upkeep keeps it fresh while the socket lives)."""
    try:
        pipe = _redis().pipeline()
        pipe.zadd(_key(group), {_member(channel_name, label): _expiry()})
        pipe.expire(_key(group), _key_ttl())
        pipe.execute()
    except redis.RedisError as error:
        logger.warning("presence join not recorded: %s", error)


def leave(group: str, channel_name: str, label: str):
    """Forget a socket; never raises."""
    try:
        _redis().zrem(_key(group), _member(channel_name, label))
    except redis.RedisError as error:
        logger.warning("presence leave not recorded: %s", error)


def _presence_event(members: list[bytes]) -> dict:
    labels = [member.decode().partition(_SEPARATOR)[2] for member in members]
    return protocol.presence_event(len(labels), sorted(set(labels)))


def snapshot(group: str) -> dict:
    """The room's presence event: live sockets counted, distinct labels sorted."""
    try:
        pipe = _redis().pipeline()
        pipe.zremrangebyscore(_key(group), "-inf", time.time())
        pipe.zrange(_key(group), 0, -1)
        _, members = pipe.execute()
    except redis.RedisError as error:
        logger.warning("presence not read: %s", error)
        members = []
    return _presence_event(members)


async def snapshot_from_loop(client: redis.asyncio.Redis, group: str) -> dict:
    """snapshot, on the event loop with its client; raises when Redis does not answer."""
    pipe = client.pipeline()
    pipe.zremrangebyscore(_key(group), "-inf", time.time())
    pipe.zrange(_key(group), 0, -1)
    _, members = await pipe.execute()
    return _presence_event(members)


async def refresh(client: redis.asyncio.Redis, members: Iterable[tuple[str, str, str]]) -> set[str]:
    """Extend the entries of (group, channel name, label); return the rooms in which expired
    entries (other processes' dead sockets) were dropped."""
    by_group: dict[str, dict[str, float]] = {}
    for group, channel_name, label in members:
        by_group.setdefault(group, {})[_member(channel_name, label)] = _expiry()
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
