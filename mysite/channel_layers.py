"""The CHANNEL_LAYERS setting for one or more Redis URLs, shared by settings and the tests."""

from typing import Any

import redis

from chat.redis_clients import redis_urls

# channels_redis waits for messages with BZPOPMIN and a 5 s server-side timeout, while
# redis-py 8 aborts any read after a default socket_timeout of 5 s: the two race, and a
# lost race kills an idle consumer with "Timeout reading from" (channels_redis#422).
# Reads must outlast the blocking pop; staying finite still notices a dead connection.
REDIS_SOCKET_TIMEOUT_SECONDS = 15
# After Redis restarts, every pooled connection is dead and fails its next command; redis-py
# retries nothing by default. One retry on a fresh connection heals that without a blip.
REDIS_RETRY_ON_ERROR = [redis.exceptions.ConnectionError]


# channels_redis's default; named so that the membership refresh (chat.presence) and the
# layer agree on it.
DEFAULT_GROUP_EXPIRY_SECONDS = 86400

LAYER_BACKENDS = {
    # Redis PUBLISH/SUBSCRIBE: one publish per message per group, fanned out in-process.
    # The default: about twice the deliveries per second of the other here (README,
    # Benchmark), and groups that neither expire nor vanish when Redis restarts. It has
    # no queues: a message to a socket not subscribed yet is gone, so sockets fill such
    # gaps from the database (chat.consumers).
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    # The tutorial's layer: per-channel queues in Redis, each capped at `capacity`. Each
    # received message costs a process four Redis round trips, one after the other.
    "redis": "channels_redis.core.RedisChannelLayer",
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
        "hosts": [
            {
                "address": url,
                "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                "retry_on_error": REDIS_RETRY_ON_ERROR,
            }
            for url in redis_urls(redis_url)
        ],
    }
    if layer == "redis":
        config["group_expiry"] = int(group_expiry)
    return {"default": {"BACKEND": LAYER_BACKENDS[layer], "CONFIG": config}}
