"""The CHANNEL_LAYERS setting for one or more Redis URLs, shared by settings and the tests;
and channels_redis's two layers, each taught to forget a channel whose consumer is done.
"""

import asyncio
import collections
import logging
import time
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from chat import loops
from chat.redis_clients import OUTAGE_ERRORS, layer_host, redis_urls

logger = logging.getLogger(__name__)

# channels_redis's default; named so that the membership refresh (chat.presence) and the
# layer agree on it.
DEFAULT_GROUP_EXPIRY_SECONDS = 86400

# Channel-layer calls in flight per loop (sends, group sends, adds and discards): each
# holds a connection of channels_redis's pool (100 by default), which raises
# MaxConnectionsError instead of waiting when it runs out. Below it, leaving room for the
# layer's own receive loop.
LAYER_CALLS_IN_FLIGHT = 32

LAYER_BACKENDS = {
    # Redis PUBLISH/SUBSCRIBE: one publish per message per group, fanned out in-process.
    # The default: about twice the deliveries per second of the other here
    # (docs/architecture.md), and groups that neither expire nor vanish when Redis restarts.
    # It has no queues: a message to a socket not subscribed yet is gone, so sockets fill
    # such gaps from the database (chat.consumers).
    "pubsub": "mysite.channel_layers.PubSubLayer",
    # The tutorial's layer: per-channel queues in Redis, each capped at `capacity`. Each
    # received message costs a process four Redis round trips, one after the other.
    "redis": "mysite.channel_layers.RedisLayer",
}
DEFAULT_LAYER = "pubsub"


def redis_channel_layers(
    redis_url: str | list[str],
    layer: str = DEFAULT_LAYER,
    group_expiry: float = DEFAULT_GROUP_EXPIRY_SECONDS,
) -> dict[str, Any]:
    """A channel layer sharded over every URL, with a timeout that blocking reads outlast."""
    if layer not in LAYER_BACKENDS:
        raise ValueError(f"unknown channel layer {layer!r}; choose one of {sorted(LAYER_BACKENDS)}")
    config: dict[str, Any] = {
        "hosts": [layer_host(url) for url in redis_urls(redis_url)],
    }
    if layer == "redis":
        config["group_expiry"] = int(group_expiry)
    return {"default": {"BACKEND": LAYER_BACKENDS[layer], "CONFIG": config}}


# Channels never tells a layer that a consumer's channel is done with; channels_redis
# forgets one only when a receive waiting on it is cancelled as the consumer stops. A
# receive that already holds a message is not cancelled: a socket that leaves a busy room,
# with the room's messages on their way to it, leaves its channel behind for ever, still
# SUBSCRIBEd on pubsub (channels_redis#276), its buffer held on the redis layer
# (channels_redis#212, #426). ChatConsumer calls clean_channel as it stops, the method
# channels_redis#339 proposes for this.


def layer_slot() -> asyncio.Semaphore:
    """On the loop: its LAYER_CALLS_IN_FLIGHT slots for channel-layer calls (chat.loops)."""
    state = loops.of_loop()
    if state.layer_slots is None:
        state.layer_slots = asyncio.Semaphore(LAYER_CALLS_IN_FLIGHT)
    return state.layer_slots


class _LayerCalls:
    """One loop's channel-layer calls not done yet, oldest first, and the recent time per call
    (in chat.loops, where chat.pipeline.layer_queue_seconds reads it).

    Calls are done one after another (channels_redis's one connection and lock per Redis
    server): a call's time is from when it was made, or the call before it was done if
    later, until it is done.
    """

    __slots__ = ("made", "last_done", "wait")

    def __init__(self):
        self.made: collections.OrderedDict[object, float] = collections.OrderedDict()
        self.last_done = 0.0  # when the last call was done (time.monotonic())
        self.wait = loops.QueueWait()

    def done(self, call: object):
        """The call is done: forget it, and count its time in the recent time per call."""
        made, now = self.made.pop(call), time.monotonic()
        self.wait.took(now - max(made, self.last_done))
        self.last_done = now

    def waited(self, behind: int = 0) -> float:
        """The oldest call's wait so far, or the calls' work at the recent time per call,
        with `behind` calls more (to be made ahead of the one asked about)."""
        oldest = next(iter(self.made.values()), None)
        return self.wait.waited(oldest, len(self.made) + behind)


def _layer_calls() -> _LayerCalls:
    """On the loop: its channel-layer calls (chat.loops)."""
    state = loops.of_loop()
    if state.layer_calls is None:
        state.layer_calls = _LayerCalls()
    return state.layer_calls


class _BoundedCalls:
    """Every send, group_send, group_add and group_discard waits for a slot (layer_slot),
    counted from when it is made until it is done (chat.pipeline.layer_queue_seconds).

    Inside the layer, so that no caller can skip it, as channels_redis's pubsub layer takes
    its shard lock inside publish: a burst of sockets (a server restart, everyone
    reconnecting at once) would otherwise make hundreds of calls at once and run the
    connection pool dry; so would the upkeep's re-adds or a revocation's sends among them.
    """

    def _unbounded(self, name: str):
        raise NotImplementedError

    async def _bounded(self, name: str, *args):
        calls, call = _layer_calls(), object()
        calls.made[call] = time.monotonic()
        try:
            async with layer_slot():
                return await self._unbounded(name)(*args)
        finally:
            calls.done(call)

    async def send(self, channel: str, message: dict):
        """Send a message to a channel, once a slot is free."""
        return await self._bounded("send", channel, message)

    async def group_send(self, group: str, message: dict):
        """Send a message to a group, once a slot is free."""
        return await self._bounded("group_send", group, message)

    async def group_add(self, group: str, channel: str):
        """Add a channel to a group, once a slot is free."""
        return await self._bounded("group_add", group, channel)

    async def group_discard(self, group: str, channel: str):
        """Remove a channel from a group, once a slot is free."""
        return await self._bounded("group_discard", group, channel)


class PubSubLayer(_BoundedCalls, RedisPubSubChannelLayer):
    """channels_redis's pubsub layer, bounded (_BoundedCalls) and with clean_channel."""

    def _unbounded(self, name: str):
        return getattr(self._get_layer(), name)  # as the base class's __getattr__ does

    async def clean_channel(self, channel: str):
        """Forget a channel: its queue, its groups, and the subscriptions only it needed."""
        layer = self._get_layer()
        layer.channels.pop(channel, None)
        # Even when the layer forgot it: a receive that was cancelled forgets its channel
        # first, then unsubscribes, and a second cancellation can cut that short. A channel
        # no longer subscribed costs no round trip.
        unsubscribe = [channel]
        for group_channel, members in list(layer.groups.items()):
            if channel in members:
                members.discard(channel)
                if not members:
                    del layer.groups[group_channel]
                    unsubscribe.append(group_channel)
        # Shielded: a consumer that is cancelled while it cleans up still leaves Redis clean.
        await asyncio.shield(_unsubscribe(layer, unsubscribe))


async def _unsubscribe(layer, names: list[str]):
    for name in names:
        try:
            await layer._get_shard(name).unsubscribe(name)
        except OUTAGE_ERRORS as error:
            logger.warning("could not unsubscribe %s: %r", name, error)


class RedisLayer(_BoundedCalls, RedisChannelLayer):
    """channels_redis's RedisChannelLayer, bounded (_BoundedCalls) and with clean_channel; it
    buffers for live channels only.

    Any receive of the process buffers the messages it pops for the process's other
    channels. A message sent to a socket just before it left arrives after it is gone, and
    would be buffered for it for ever: this layer drops messages for a channel it did not
    hand out, or that was cleaned.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receive_buffer = _LiveChannelBuffers(self.receive_buffer.default_factory)

    def _unbounded(self, name: str):
        return getattr(super(_BoundedCalls, self), name)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel, live until clean_channel."""
        channel = await super().new_channel(prefix)
        self.receive_buffer.live.add(channel)
        return channel

    async def clean_channel(self, channel: str):
        """Forget a channel and drop what is buffered or still on its way for it."""
        self.receive_buffer.live.discard(channel)
        self.receive_buffer.pop(channel, None)

    async def _brpop_with_clean(self, index, channel, timeout):
        """One blocking pop; a receive that was cancelled ends here, even if the pop returned.

        channels_redis pops again, every brpop_timeout, until a message comes. redis-py
        writes each command under asyncio.wait_for, which on Python 3.11 returns instead
        of raising when the cancellation comes just as the write is done (CPython
        gh-86296, fixed in 3.12): the pop goes on, returns, and the receive would poll for
        ever. The consumer waits for it as it stops (channels' await_many_dispatch), and so
        does whatever waits for the consumer: daphne stopping, a test's communicator or
        event loop. The task still counts the cancellation. A message popped meanwhile
        stays in the backup queue, and the next receive puts it back.
        """
        member = await super()._brpop_with_clean(index, channel, timeout)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        return member


class _LiveChannelBuffers(collections.defaultdict):
    """Queues by channel, made on first use for live channels only."""

    def __init__(self, default_factory):
        super().__init__(default_factory)
        self.live: set[str] = set()

    def __missing__(self, channel: str):
        if channel in self.live:
            return super().__missing__(channel)
        return self.default_factory()  # kept by nobody: what is put in it is dropped
