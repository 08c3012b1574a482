"""Who is in each room right now, kept in Redis so that every server process agrees.

Each socket is one member of a sorted set per room, scored with the time its entry
expires. Every process refreshes the entries of its own sockets; a process that dies
stops refreshing, and its entries expire within CHAT_PRESENCE_TTL_SECONDS, at which point
a surviving process that notices tells the room. Presence is best effort: when Redis
is unreachable it is logged and left out, and chatting goes on.
"""

import logging
import math
import threading
import time

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from . import protocol

logger = logging.getLogger(__name__)

_SEPARATOR = "\x1f"  # never in a channel name; the label may contain anything else
_clients: dict[str, redis.Redis] = {}
_local_members: dict[tuple[str, str], str] = {}
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def _redis() -> redis.Redis:
    url = settings.REDIS_URL
    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return _clients[url]


def _key(group: str) -> str:
    return f"chat:presence:{group}"


def _expiry() -> float:
    return time.time() + settings.CHAT_PRESENCE_TTL_SECONDS


def _key_ttl() -> int:
    """Lifetime of a room's whole set: it outlives its entries, and goes with a dead room."""
    return math.ceil(2 * settings.CHAT_PRESENCE_TTL_SECONDS)


def join(group: str, channel_name: str, label: str):
    """Record a socket in its room, and keep refreshing it while this process lives."""
    with _lock:
        _local_members[(group, channel_name)] = label
    _ensure_refresher()
    try:
        pipe = _redis().pipeline()
        pipe.zadd(_key(group), {channel_name + _SEPARATOR + label: _expiry()})
        pipe.expire(_key(group), _key_ttl())
        pipe.execute()
    except redis.RedisError as error:
        logger.warning("presence join not recorded: %s", error)


def leave(group: str, channel_name: str):
    """Forget a socket."""
    with _lock:
        label = _local_members.pop((group, channel_name), None)
    if label is None:
        return
    try:
        _redis().zrem(_key(group), channel_name + _SEPARATOR + label)
    except redis.RedisError as error:
        logger.warning("presence leave not recorded: %s", error)


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
    labels = [member.decode().partition(_SEPARATOR)[2] for member in members]
    return protocol.presence_event(len(labels), sorted(set(labels)))


def announce(group: str):
    """Tell every socket in the room who is there now."""
    async_to_sync(get_channel_layer().group_send)(group, snapshot(group))


def refresh_local_members() -> set[str]:
    """Extend this process's entries; return the rooms in which expired entries were dropped."""
    with _lock:
        members = dict(_local_members)
    by_group: dict[str, dict[str, float]] = {}
    for (group, channel_name), label in members.items():
        by_group.setdefault(group, {})[channel_name + _SEPARATOR + label] = _expiry()
    pipe = _redis().pipeline()
    for group, entries in by_group.items():
        pipe.zadd(_key(group), entries)
        pipe.expire(_key(group), _key_ttl())
        pipe.zremrangebyscore(_key(group), "-inf", time.time())
    results = pipe.execute()
    dropped = results[2::3]
    return {group for group, removed in zip(by_group, dropped, strict=True) if removed}


def _refresh_forever():
    while True:
        time.sleep(settings.CHAT_PRESENCE_REFRESH_SECONDS)
        try:
            for group in refresh_local_members():
                announce(group)
        except Exception as error:  # keep refreshing whatever one round met
            logger.warning("presence refresh failed: %s", error)


def _ensure_refresher():
    global _refresher
    with _lock:
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(
                target=_refresh_forever, name="chat-presence", daemon=True
            )
            _refresher.start()
