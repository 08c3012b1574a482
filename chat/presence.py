"""Who is in each room right now, kept in Redis so that every server process agrees;
and the upkeep of this process's sockets' group membership.

Each socket is one member of a sorted set per room, scored with the time its entry
expires. Every process refreshes the entries of its own sockets; a process that dies
stops refreshing, and its entries expire within CHAT_PRESENCE_TTL_SECONDS, at which point
a surviving process that notices tells the room. Announcements go out from the same
refresher thread, one per room per CHAT_PRESENCE_COALESCE_SECONDS however many sockets
came and went. Presence is best effort: when Redis is unreachable it is logged and left
out, and chatting goes on.

On the redis layer group membership lives in Redis too, and a Redis that restarts has
none: a socket that stayed open would be deaf. The same refresher notices a restart
(Redis's run_id changes), has every local socket catch up from the database and, on that
layer, adds each to its group again; there it also re-adds all of them every half
CHAT_GROUP_EXPIRY_SECONDS, before channels_redis forgets long-lived members. On either
layer it has any socket that fell behind its room's stored messages catch up.
"""

import logging
import math
import threading
import time
import weakref

import redis
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.db import close_old_connections

from chat.redis_clients import redis_client

from . import protocol
from .models import Room

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 5.0
_SEPARATOR = "\x1f"  # never in a channel name; the label may contain anything else
_local_members: dict[tuple[str, str], str] = {}
# channel name -> consumer, for its room_name and last_seq; gone with the consumer.
_watched: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# Each watched room's last stored seq at the previous refresh round.
_latest_a_round_ago: dict[str, int] = {}
# Rooms whose presence changed and is not announced yet; the refresher thread sends them.
_pending_announcements: set[str] = set()
_announcements_waiting = threading.Event()
# _local_members and _watched are shared by the sync thread and the refresher thread.
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def _redis(url: str | None = None) -> redis.Redis:
    """The process's client for url (default: the first Redis)."""
    return redis_client(url or settings.REDIS_URL, REDIS_TIMEOUT_SECONDS)


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
        _watched.pop(channel_name, None)
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
    """Have every socket in the room told who is there, shortly, from the refresher thread.

    Joins and leaves within CHAT_PRESENCE_COALESCE_SECONDS make one announcement per room,
    not one each: a room of 200 filling up at once would otherwise be sent 200 x 200
    presence frames, and each handler that asked would wait for Redis twice.
    """
    with _lock:
        _pending_announcements.add(group)
    _ensure_refresher()
    _announcements_waiting.set()


def announce_now(group: str):
    """Tell every socket in the room who is there now."""
    async_to_sync(get_channel_layer().group_send)(group, snapshot(group))


def send_pending_announcements():
    """Announce every room whose presence changed since the last time."""
    with _lock:
        groups = sorted(_pending_announcements)
        _pending_announcements.clear()
    for group in groups:
        announce_now(group)


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


_redis_run_ids: tuple[str, ...] | None = None
_groups_refreshed_at = time.monotonic()


def redis_restarted() -> bool:
    """True when a Redis server of the channel layer restarted since the last call."""
    global _redis_run_ids
    run_ids = tuple(_redis(url).info("server")["run_id"] for url in settings.REDIS_URLS)
    restarted = _redis_run_ids is not None and run_ids != _redis_run_ids
    _redis_run_ids = run_ids
    return restarted


async def _send_resyncs(layer, channel_names: list[str]):
    """Ask each socket to catch up; one whose inbox is full is asked again next round."""
    for channel_name in channel_names:
        try:
            await layer.send(channel_name, {"type": "chat.resync"})
        except ChannelFull:
            pass


def rejoin_groups(resync: bool):
    """Add every local socket to its group again; with resync, have each catch up."""
    global _groups_refreshed_at
    with _lock:
        members = list(_local_members)
    layer = get_channel_layer()

    async def rejoin():
        if _groups_live_in_redis(layer):
            for group, channel_name in members:
                await layer.group_add(group, channel_name)
        if resync:
            await _send_resyncs(layer, [channel_name for _, channel_name in members])

    async_to_sync(rejoin)()
    _groups_refreshed_at = time.monotonic()


def _groups_live_in_redis(layer) -> bool:
    """RedisChannelLayer keeps groups in Redis: they expire, and a restart empties them.

    The pubsub layer keeps them in each process, as subscriptions that redis-py renews
    when it reconnects; and it refuses a group_add from another loop (the refresher's).
    """
    return not isinstance(layer, RedisPubSubChannelLayer)


def watch_progress(consumer):
    """Let the refresher notice when this socket falls behind its room."""
    with _lock:  # the refresher thread copies it meanwhile
        _watched[consumer.channel_name] = consumer


def resync_lagging_sockets() -> int:
    """Have every local socket that missed a message stored a round ago catch up; how many.

    A broadcast the layer dropped is refilled when the room's next message arrives; this
    catches the last one, which has no next message. A message gets one whole round to
    arrive live: under load most sockets are a few messages behind their room at any
    instant, and resyncing them all would cost a query each for nothing.
    """
    global _latest_a_round_ago
    with _lock:
        consumers = list(_watched.values())
    rooms = {consumer.room_name for consumer in consumers}
    try:
        latest = dict(Room.objects.filter(name__in=rooms).values_list("name", "last_seq"))
    finally:
        close_old_connections()
    lagging = [
        consumer.channel_name
        for consumer in consumers
        if consumer.delivery.last < _latest_a_round_ago.get(consumer.room_name, 0)
    ]
    _latest_a_round_ago = latest
    if lagging:
        async_to_sync(_send_resyncs)(get_channel_layer(), lagging)
    return len(lagging)


def refresh_once():
    """One round of upkeep: membership after a restart or at half expiry, then presence."""
    restarted = redis_restarted()
    if restarted:
        logger.warning("Redis restarted: rejoining %d sockets", len(_local_members))
        rejoin_groups(resync=True)
    elif time.monotonic() - _groups_refreshed_at > settings.CHAT_GROUP_EXPIRY_SECONDS / 2:
        rejoin_groups(resync=False)
    changed = refresh_local_members()
    if restarted:
        changed |= {group for group, _ in list(_local_members)}
    for group in changed:
        announce(group)
    resync_lagging_sockets()


def _refresh_forever():
    next_round = time.monotonic() + settings.CHAT_PRESENCE_REFRESH_SECONDS
    while True:
        if _announcements_waiting.wait(timeout=max(next_round - time.monotonic(), 0)):
            time.sleep(settings.CHAT_PRESENCE_COALESCE_SECONDS)  # let the burst gather
            _announcements_waiting.clear()
            _logged(send_pending_announcements)
        if time.monotonic() >= next_round:
            _tick()
            next_round = time.monotonic() + settings.CHAT_PRESENCE_REFRESH_SECONDS


def _tick():
    """One timed round; whatever it meets (Redis down...) is logged and the next one tried."""
    _logged(refresh_once)


def _logged(work):
    try:
        work()
    except Exception as error:
        logger.warning("presence %s failed: %r", work.__name__, error)


def _ensure_refresher():
    global _refresher
    with _lock:
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(
                target=_refresh_forever, name="chat-presence", daemon=True
            )
            _refresher.start()
