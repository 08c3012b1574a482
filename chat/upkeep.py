"""Each process's upkeep of its sockets: one asyncio task on the server's event loop.

It starts with the first socket of the loop (socket_joined) and, every
CHAT_PRESENCE_REFRESH_SECONDS, runs a round (run_round):
- notices a Redis restart (its run_id changed): on the redis layer, whose groups live in
  Redis and are gone, it adds every socket to its groups again, and it has every socket
  catch up from the database, since broadcasts were lost meanwhile. On the redis layer it
  also re-adds them every half CHAT_GROUP_EXPIRY_SECONDS, before channels_redis forgets
  long-lived members;
- refreshes this process's presence entries (chat.presence), and announces the rooms in
  which another process's dead sockets expired;
- has any socket that fell behind its room's stored messages or changes catch up (a
  broadcast the layer dropped is refilled when the next one arrives; this catches the
  last one).
Joins and leaves are written to Redis at once (the index and the room list read presence
there: a page that has just left its room must not be counted in it), by one task at a
time, in the order they came. Between rounds it sends presence announcements: joins and
leaves within CHAT_PRESENCE_COALESCE_SECONDS make one announcement per room, not one each
(a room of 200 filling up at once would otherwise be sent 200 x 200 presence frames).

Everything here runs on the loop, as the sockets' RoomDelivery does, so it reads and
drives their delivery directly: no thread, no lock, no message through the layer. Its
Redis calls use redis.asyncio, its layer calls the layer's async API. Whatever a round
meets (Redis down...) is logged, and the next round tried.

Explained in docs/architecture.md, 'The upkeep'.
"""

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import redis.asyncio
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from . import limits, loops, permissions, pipeline, presence, protocol, rooms, sides
from .delivery import RoomDelivery
from .identity import Author
from .models import Room
from .redis_clients import PRESENCE_TIMEOUT_SECONDS, asyncio_redis_client

logger = logging.getLogger(__name__)


class LocalSocket(Protocol):
    """What the upkeep needs of a socket (chat.consumers.ChatConsumer)."""

    channel_name: str
    room_name: str
    room_group_name: str
    joined_groups: tuple[str, ...]
    presence_member: str
    open_slots: tuple[str, ...]
    delivery: RoomDelivery
    author: Author

    def close_from_loop(self, code: int): ...


@sides.on_loop
def socket_joined(socket: LocalSocket):
    """Record this socket in its room's presence, keep it fresh, and tell the
    room it came (shortly, with the other joins and leaves: see _Upkeep.flush)."""
    _of_running_loop().joined(socket)


@sides.on_loop
def socket_left(socket: LocalSocket):
    """Forget this socket, and tell its room it went (shortly, as above)."""
    _of_running_loop().left(socket)


async def stop():
    """On the loop, as the server stops: record the last joins and leaves, and announce them.

    Without it, the sockets that the shutdown closed would stay listed in their rooms for
    up to CHAT_PRESENCE_TTL_SECONDS.
    """
    state = loops.of_loop()
    upkeep, state.upkeep = state.upkeep, None
    if upkeep is not None:
        await upkeep.stop()


async def run_round() -> int:
    """One round of this loop's upkeep, now; returns how many sockets it had catch up."""
    return await _of_running_loop().run_round()


@sides.on_loop
def _of_running_loop() -> "_Upkeep":
    state = loops.of_loop()
    if state.upkeep is None:
        state.upkeep = _Upkeep()
    return state.upkeep


@sides.on_sync_thread
def _readers(pairs: set[tuple[Author, str]]) -> set[tuple[Author, str]]:
    return permissions.readers(pairs)


@sides.on_sync_thread
def _latest(room_names: set[str]) -> dict[str, tuple[int, int]]:
    """Each room's newest stored message id and change number."""
    rows = Room.objects.filter(name__in=room_names).values_list("name", "last_seq", "last_change")
    return {name: (seq, change) for name, seq, change in rows}


class _Upkeep:
    """One loop's sockets, its pending announcements, and the task that serves them."""

    @sides.on_loop
    def __init__(self):
        self.sockets: dict[str, LocalSocket] = {}  # by channel name
        # Presence entries (group, member) to add and remove, written at once by the one
        # recording task (record_soon), and rooms to tell at the next flush.
        self.to_join: list[tuple[str, str]] = []
        self.to_leave: list[tuple[str, str]] = []
        self.recording: asyncio.Task | None = None
        self.to_announce: set[str] = set()
        # Sockets that closed, to take out of the caps of open sockets (chat.limits).
        self.to_release: list[tuple[tuple[str, ...], str]] = []
        self.announcements_waiting = asyncio.Event()
        self.clients: dict[str, redis.asyncio.Redis] = {}  # by Redis URL
        self.run_ids: tuple[str, ...] | None = None
        self.groups_refreshed_at = time.monotonic()
        # Each room's newest stored id and change number at the previous round: a message
        # or an edit gets one whole round to arrive live before its socket counts as behind.
        self.latest_a_round_ago: dict[str, tuple[int, int]] = {}
        self.task = pipeline.start_logged_task(self._run_forever())

    @sides.on_loop
    def joined(self, socket: LocalSocket):
        self.sockets[socket.channel_name] = socket
        self.to_join.append((socket.room_group_name, socket.presence_member))
        self.record_soon()
        self.announce(socket.room_group_name)

    @sides.on_loop
    def left(self, socket: LocalSocket):
        # First: even when Redis is down, no round refreshes a dead socket's entry again.
        if self.sockets.pop(socket.channel_name, None) is not None:
            self.to_leave.append((socket.room_group_name, socket.presence_member))
            self.record_soon()
        if socket.open_slots:
            self.to_release.append((socket.open_slots, socket.channel_name))
        self.announce(socket.room_group_name)

    @sides.on_loop
    def record_soon(self):
        """Write the joins and leaves to Redis now, not at the next announcement."""
        # One task at a time: a socket's join and leave, in two batches, reach Redis in
        # that order. What comes in meanwhile goes in that task's next batch.
        if self.recording is None or self.recording.done():
            self.recording = pipeline.start_logged_task(self._record())

    async def _record(self):
        while self.to_join or self.to_leave:
            joins, self.to_join = self.to_join, []
            leaves, self.to_leave = self.to_leave, []
            try:
                await presence.apply(self._client(), joins, leaves, [])
            except Exception as error:
                # The next round adds every live socket's entry again; a left one expires.
                logger.warning(
                    "presence of %d sockets not recorded: %r", len(joins + leaves), error
                )

    async def _recorded(self):
        """Wait until every join and leave so far is written (or failed)."""
        while self.recording is not None and not self.recording.done():
            # Shielded: a stop cancelling the waiter must not cancel the writes.
            await asyncio.shield(self.recording)

    @sides.on_loop
    def announce(self, group: str):
        self.to_announce.add(group)
        self.announcements_waiting.set()

    async def _run_forever(self):
        next_round = time.monotonic() + settings.CHAT_PRESENCE_REFRESH_SECONDS
        task = asyncio.current_task()
        # Until cancelled, even when the cancellation was swallowed: in Python 3.11 a
        # timeout that ends as it comes (wait_for, or redis-py's socket timeout, logged
        # as a failed step) can turn it into a TimeoutError, and the loop would go on.
        while not task.cancelling():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_round - time.monotonic(), 0)):
                    await self.announcements_waiting.wait()
            if self.announcements_waiting.is_set():
                await asyncio.sleep(settings.CHAT_PRESENCE_COALESCE_SECONDS)  # let a burst gather
                self.announcements_waiting.clear()
                await self.flush()
            if time.monotonic() >= next_round:
                await self.run_round()
                next_round = time.monotonic() + settings.CHAT_PRESENCE_REFRESH_SECONDS
        raise asyncio.CancelledError

    @sides.on_loop
    def _client(self, url: str | None = None) -> redis.asyncio.Redis:
        url = url or settings.REDIS_URL
        if url not in self.clients:
            self.clients[url] = asyncio_redis_client(url, PRESENCE_TIMEOUT_SECONDS)
        return self.clients[url]

    async def flush(self):
        """Once the joins and leaves so far are written, tell each room they touched who is
        there now: one Redis round trip, then one group_send per room."""
        await self._recorded()
        groups = sorted(self.to_announce)
        self.to_announce.clear()
        releases, self.to_release = self.to_release, []
        try:
            await limits.release_open_slots(self._client(), releases)
        except Exception as error:
            # Their entries expire unrefreshed (CHAT_PRESENCE_TTL_SECONDS).
            logger.warning("%d closed sockets still counted: %r", len(releases), error)
        try:
            events = await presence.apply(self._client(), [], [], groups)
        except Exception as error:
            logger.warning("presence of %d rooms not read: %r", len(groups), error)
            return
        layer = get_channel_layer()
        for group, event in events.items():
            try:
                await layer.group_send(group, event)
            except Exception as error:
                logger.warning("presence of %s not announced: %r", group, error)

    async def stop(self):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.flush()
        for client in self.clients.values():
            await client.aclose()

    async def run_round(self) -> int:
        resynced = 0
        try:
            resynced += await self._keep_membership()
        except Exception as error:
            logger.warning("upkeep: group membership not checked: %r", error)
        try:
            members = [
                (socket.room_group_name, socket.presence_member) for socket in self.sockets.values()
            ]
            for group in await presence.refresh(self._client(), members):
                self.announce(group)
        except Exception as error:
            logger.warning("upkeep: presence not refreshed: %r", error)
        try:
            held = [(s.open_slots, s.channel_name) for s in self.sockets.values() if s.open_slots]
            await limits.refresh_open_slots(self._client(), held)
        except Exception as error:
            logger.warning("upkeep: open sockets not refreshed: %r", error)
        try:
            resynced += await self._resync_lagging()
        except Exception as error:
            logger.warning("upkeep: lagging sockets not checked: %r", error)
        try:
            await self._close_former_members()
        except Exception as error:
            logger.warning("upkeep: private rooms' members not checked: %r", error)
        return resynced

    async def _close_former_members(self):
        """Close (4403) each socket whose author may no longer read its room.

        A removal closes its member's sockets through the room's group at once; this
        catches the event that Redis lost, within a round. Public rooms need no query.
        """
        sockets = [s for s in self.sockets.values() if rooms.kind(s.room_name) != rooms.PUBLIC]
        if not sockets:
            return
        pairs = {(socket.author, socket.room_name) for socket in sockets}
        readers = await pipeline.call_batched(_readers, pairs)
        for socket in sockets:
            if (socket.author, socket.room_name) not in readers:
                logger.info("closing socket in room %r: no longer a member", socket.room_name)
                socket.close_from_loop(protocol.CLOSE_NOT_A_MEMBER)

    async def _keep_membership(self) -> int:
        """After a Redis restart, rejoin and catch every socket up; at half expiry, rejoin."""
        run_ids = tuple(
            [(await self._client(url).info("server"))["run_id"] for url in settings.REDIS_URLS]
        )
        restarted = self.run_ids is not None and run_ids != self.run_ids
        self.run_ids = run_ids
        if restarted:
            logger.warning("Redis restarted: rejoining %d sockets", len(self.sockets))
            await self._rejoin_groups()
            for socket in list(self.sockets.values()):
                socket.delivery.resync()
                self.announce(socket.room_group_name)
            return len(self.sockets)
        if time.monotonic() - self.groups_refreshed_at > settings.CHAT_GROUP_EXPIRY_SECONDS / 2:
            await self._rejoin_groups()
        return 0

    async def _rejoin_groups(self):
        """Add every socket to its groups again, where groups live in Redis.

        RedisChannelLayer keeps them there: they expire, and a restart empties them. The
        pubsub layer keeps them in this process, as subscriptions that redis-py renews
        when it reconnects.
        """
        layer = get_channel_layer()
        if not isinstance(layer, RedisPubSubChannelLayer):
            for socket in list(self.sockets.values()):
                for group in socket.joined_groups:
                    await layer.group_add(group, socket.channel_name)
        self.groups_refreshed_at = time.monotonic()

    async def _resync_lagging(self) -> int:
        """Have every socket that missed a message, edit or deletion stored a round ago
        catch up; how many.

        Under load most sockets are a few messages behind their room at any instant, and
        resyncing them all would cost a query each for nothing.
        """
        sockets = list(self.sockets.values())
        latest = await pipeline.call_batched(_latest, {s.room_name for s in sockets})
        a_round_ago, self.latest_a_round_ago = self.latest_a_round_ago, latest
        return sum(
            socket.delivery.catch_up_to(*a_round_ago.get(socket.room_name, (0, 0)))
            for socket in sockets
        )
