"""CHANNEL_LAYERS for one or several Redis URLs, and a layer sharded over two real servers."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import redis
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubLoopLayer

from chat.pipeline import layer_queue_seconds
from chat.redis_clients import LAYER_TIMEOUT_SECONDS
from chat.tests.conftest import until_listening
from conftest import ROOT
from mysite.channel_layers import (
    LAYER_CALLS_IN_FLIGHT,
    PubSubLayer,
    RedisLayer,
    redis_channel_layers,
)
from serving.embedded_redis import EmbeddedRedis

ONE = "redis://127.0.0.1:6379/0"
TWO = "redis://127.0.0.1:6380/0"


def host(url: str) -> dict:
    return {
        "address": url,
        "socket_timeout": LAYER_TIMEOUT_SECONDS,
        "retry_on_error": [redis.exceptions.ConnectionError],
    }


def hosts(layers: dict) -> list[dict]:
    return layers["default"]["CONFIG"]["hosts"]


def test_one_url_gives_one_host_with_a_timeout_that_outlasts_blocking_reads():
    assert redis_channel_layers(ONE, layer="redis") == {
        "default": {
            "BACKEND": "mysite.channel_layers.RedisLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": ONE,
                        "socket_timeout": 15,
                        "retry_on_error": [redis.exceptions.ConnectionError],
                    }
                ],
                "group_expiry": 86400,
            },
        },
    }
    assert LAYER_TIMEOUT_SECONDS == 15


def test_group_expiry_is_set_deliberately():
    config = redis_channel_layers(ONE, layer="redis", group_expiry=30)["default"]["CONFIG"]
    assert config["group_expiry"] == 30


def test_pubsub_is_the_default_layer_and_has_no_group_expiry():
    layers = redis_channel_layers(ONE)
    assert layers["default"]["BACKEND"] == "mysite.channel_layers.PubSubLayer"
    assert hosts(layers) == [host(ONE)]
    assert "group_expiry" not in layers["default"]["CONFIG"]


def test_an_unknown_layer_is_refused():
    with pytest.raises(ValueError, match="unknown channel layer"):
        redis_channel_layers(ONE, layer="memory")


def test_two_urls_give_two_hosts_in_order_each_with_the_timeout():
    expected = [
        host(ONE),
        host(TWO),
    ]
    assert hosts(redis_channel_layers([ONE, TWO])) == expected
    assert hosts(redis_channel_layers(f"{ONE},{TWO}")) == expected


def test_settings_shard_the_layer_over_every_url_and_keep_the_first_for_presence():
    show = (
        "import json; from django.conf import settings; print(json.dumps([settings.REDIS_URL,"
        " settings.REDIS_URLS, [host['address'] for host in"
        " settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']]]))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", show],
        cwd=ROOT, env={**os.environ, "REDIS_URL": f"{ONE}, {TWO}"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, every, layer_addresses = json.loads(result.stdout)
    assert first == ONE
    assert every == [ONE, TWO]
    assert layer_addresses == [ONE, TWO]


def groups_held_by(url: str, layer_name: str) -> list:
    """The room groups one Redis server holds: keys on the redis layer, channels on pubsub."""
    client = redis.Redis.from_url(url)
    try:
        if layer_name == "redis":
            return client.keys("asgi:group:*")
        return client.pubsub_channels("*__group__*")
    finally:
        client.close()


@pytest.mark.parametrize("layer_name", ["pubsub", "redis"])
async def test_groups_sharded_over_two_redis_servers_still_deliver(
    redis_channel_layer, settings, layer_name
):
    with EmbeddedRedis() as second:
        urls = [redis_channel_layer.url, second.url]
        settings.CHANNEL_LAYERS = redis_channel_layers(urls, layer=layer_name)
        layer = get_channel_layer()
        groups = ["lobby", "kitchen", "garden", "cellar", "attic", "study"]
        channels = {group: await layer.new_channel() for group in groups}
        try:
            for group, channel in channels.items():
                await layer.group_add(group, channel)
            # Listening before sending: pubsub keeps nothing for a channel nobody reads.
            receiving = {
                group: asyncio.ensure_future(layer.receive(channel))
                for group, channel in channels.items()
            }
            await until_listening(list(channels.values()), layer)
            for group in groups:
                await layer.group_send(group, {"type": "chat.message", "group": group})
            for group, received in receiving.items():
                assert await asyncio.wait_for(received, 5) == {
                    "type": "chat.message",
                    "group": group,
                }
            # CRC32 puts these groups on both servers, whichever layer names them.
            for url in urls:
                assert groups_held_by(url, layer_name), f"no group landed on {url}"
        finally:
            await layer.flush()


RECEIVE_TIMEOUT_SECONDS = 5


async def subscriptions_once_settled(client: redis.Redis) -> list:
    """PUBSUB CHANNELS, once empty or RECEIVE_TIMEOUT_SECONDS later.

    Redis answers an UNSUBSCRIBE on the layer's own connection: this one sees it later.
    """
    deadline = asyncio.get_running_loop().time() + RECEIVE_TIMEOUT_SECONDS
    while (channels := client.pubsub_channels()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return channels


async def test_pubsub_clean_channel_unsubscribes_a_channel_whose_receive_holds_a_message(
    redis_channel_layer,
):
    layer = PubSubLayer(hosts=[redis_channel_layer.url])
    client = redis.Redis.from_url(redis_channel_layer.url)
    try:
        channel = await layer.new_channel()
        await layer.group_add("lobby", channel)
        receiving = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"type": "chat.message"})
        # As when a socket leaves just as a message reached it: the receive is done, so
        # no cancellation tells channels_redis the channel is gone (channels_redis#276).
        await asyncio.wait_for(receiving, RECEIVE_TIMEOUT_SECONDS)
        assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]

        await layer.clean_channel(channel)

        loop_layer = layer._get_layer()
        assert loop_layer.channels == {} and loop_layer.groups == {}
        assert await subscriptions_once_settled(client) == []
        await layer.clean_channel(channel)  # a second time does nothing
    finally:
        client.close()
        await layer.flush()


async def test_pubsub_clean_channel_unsubscribes_a_channel_whose_receive_clean_up_was_cut_short(
    redis_channel_layer,
):
    layer = PubSubLayer(hosts=[redis_channel_layer.url])
    client = redis.Redis.from_url(redis_channel_layer.url)
    try:
        channel = await layer.new_channel()
        await layer.group_add("lobby", channel)
        # As channels_redis's receive does when cancelled, before its unsubscribe, which a
        # second cancellation cut short: the channel is forgotten, still subscribed.
        del layer._get_layer().channels[channel]
        assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]

        await layer.clean_channel(channel)

        assert await subscriptions_once_settled(client) == []
    finally:
        client.close()
        await layer.flush()


async def test_redis_layer_drops_what_reaches_a_cleaned_channel_and_keeps_no_buffer(
    redis_channel_layer,
):
    layer = RedisLayer(hosts=[redis_channel_layer.url])
    try:
        gone, staying = await layer.new_channel(), await layer.new_channel()
        for channel in (gone, staying):
            await layer.group_add("lobby", channel)
        # Sent before the socket left, popped after: by another socket's receive.
        await layer.group_send("lobby", {"type": "chat.message", "n": 1})
        await layer.clean_channel(gone)
        message = await asyncio.wait_for(layer.receive(staying), RECEIVE_TIMEOUT_SECONDS)
        assert message == {"type": "chat.message", "n": 1}
        assert dict(layer.receive_buffer) == {}
    finally:
        await layer.flush()


async def test_a_cancelled_redis_layer_receive_ends_even_when_its_pop_swallows_the_cancellation(
    redis_channel_layer, monkeypatch
):
    layer = RedisLayer(hosts=[redis_channel_layer.url])
    layer.brpop_timeout = 1  # each blocking pop answers within a second
    popping, swallowed = asyncio.Event(), []
    real_bzpopmin = redis.asyncio.Redis.bzpopmin

    async def bzpopmin_noting_swallowed_cancellations(self, keys, timeout=0):
        popping.set()
        try:
            reply = await real_bzpopmin(self, keys, timeout)
        except asyncio.CancelledError:
            if swallowed:
                raise
            reply = None  # as redis-py does on Python 3.11 when the timing is right
        if asyncio.current_task().cancelling() and not swallowed:
            swallowed.append(reply)
        return reply

    monkeypatch.setattr(redis.asyncio.Redis, "bzpopmin", bzpopmin_noting_swallowed_cancellations)
    receiving = asyncio.ensure_future(layer.receive(await layer.new_channel()))
    try:
        await asyncio.wait_for(popping.wait(), RECEIVE_TIMEOUT_SECONDS)
        receiving.cancel()
        await asyncio.wait([receiving], timeout=3 * layer.brpop_timeout)
        assert swallowed == [None]  # the pop came back as if it had not been cancelled...
        assert receiving.cancelled()  # ...and the receive still ended, not popping for ever
    finally:
        receiving.cancel()
        await asyncio.wait([receiving], timeout=3 * layer.brpop_timeout)
        await layer.flush()


@pytest.mark.parametrize(
    ("layer_class", "unbounded_class"),
    [(PubSubLayer, RedisPubSubLoopLayer), (RedisLayer, RedisChannelLayer)],
)
@pytest.mark.parametrize("method", ["send", "group_send", "group_add", "group_discard"])
async def test_every_layer_call_waits_for_a_slot_whoever_makes_it(
    monkeypatch, layer_class, unbounded_class, method
):
    # Bounded inside the layer: a caller that forgets nothing can still not run the pool dry.
    in_flight, most = 0, 0

    async def call_redis(self, *args):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)  # waiting for Redis lets the other calls start
        in_flight -= 1

    monkeypatch.setattr(unbounded_class, method, call_redis)
    layer = layer_class(hosts=[ONE])
    await asyncio.gather(*(getattr(layer, method)("a", "b") for _ in range(100)))
    assert most == LAYER_CALLS_IN_FLIGHT


@pytest.mark.parametrize(
    ("layer_class", "unbounded_class"),
    [(PubSubLayer, RedisPubSubLoopLayer), (RedisLayer, RedisChannelLayer)],
)
async def test_the_layer_queue_counts_every_call_from_when_it_is_made_until_it_is_done(
    monkeypatch, layer_class, unbounded_class
):
    answered = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def call_redis(self, group, message):
        await answered[group].wait()

    monkeypatch.setattr(unbounded_class, "group_send", call_redis)
    layer = layer_class(hosts=[ONE])
    assert layer_queue_seconds() == 0
    calls = {group: asyncio.ensure_future(layer.group_send(group, {})) for group in answered}
    await asyncio.sleep(0)  # both sent, neither answered
    waited = layer_queue_seconds()
    assert waited > 0
    answered["b"].set()
    await calls["b"]
    assert layer_queue_seconds() > waited  # the older call still waits, and longer
    answered["a"].set()
    await calls["a"]
    assert layer_queue_seconds() == 0


@pytest.mark.parametrize(
    ("layer_class", "unbounded_class"),
    [(PubSubLayer, RedisPubSubLoopLayer), (RedisLayer, RedisChannelLayer)],
)
async def test_the_layer_queue_counts_calls_made_at_once_at_the_recent_time_per_call(
    monkeypatch, layer_class, unbounded_class
):
    answered = asyncio.Event()

    async def call_redis(self, group, message):
        if group == "slow":
            time.sleep(0.01)  # a call that takes 10 ms at least
        else:
            await answered.wait()

    monkeypatch.setattr(unbounded_class, "group_send", call_redis)
    layer = layer_class(hosts=[ONE])
    for _ in range(10):
        await layer.group_send("slow", {})
    burst = [asyncio.ensure_future(layer.group_send("burst", {})) for _ in range(100)]
    await asyncio.sleep(0)  # all made, none answered
    # Nothing has waited yet, but 100 calls at about 9 ms each (the average so far) wait.
    assert layer_queue_seconds() > 0.5
    answered.set()
    await asyncio.gather(*burst)
    assert layer_queue_seconds() == 0


@pytest.mark.parametrize(
    ("layer_class", "unbounded_class"),
    [(PubSubLayer, RedisPubSubLoopLayer), (RedisLayer, RedisChannelLayer)],
)
async def test_the_layer_queue_counts_calls_still_to_be_made_ahead_at_the_recent_time_per_call(
    monkeypatch, layer_class, unbounded_class
):
    async def call_redis(self, group, message):
        time.sleep(0.01)  # a call that takes 10 ms at least

    monkeypatch.setattr(unbounded_class, "group_send", call_redis)
    layer = layer_class(hosts=[ONE])
    for _ in range(10):
        await layer.group_send("slow", {})
    assert layer_queue_seconds() == 0  # none waits...
    # ...but the broadcasts of 100 messages stored ahead of one will: about 9 ms each.
    assert layer_queue_seconds(behind=100) > 0.5
