"""The CHANNEL_LAYERS setting for one or more Redis URLs, shared by settings and the tests."""

from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured

# channels_redis waits for messages with BZPOPMIN and a 5 s server-side timeout, while
# redis-py 8 aborts any read after a default socket_timeout of 5 s: the two race, and a
# lost race kills an idle consumer with "Timeout reading from" (channels_redis#422).
# Reads must outlast the blocking pop; staying finite still notices a dead connection.
REDIS_SOCKET_TIMEOUT_SECONDS = 15
# After Redis restarts, every pooled connection is dead and fails its next command; redis-py
# retries nothing by default. One retry on a fresh connection heals that without a blip.
REDIS_RETRY_ON_ERROR = [redis.exceptions.ConnectionError]


# What redis-py's from_url (and so channels_redis) accepts. Anything else fails only at the
# first connection, on every connection, long after start-up: refuse it where it is read.
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


def redacted_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, fit for a log or an error."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{location}"
    return f"{head}{separator}{rest}"


def redis_urls(redis_url: str | list[str]) -> list[str]:
    """The Redis URLs in a comma-separated string (or a list), in order, blanks dropped.

    Raises ImproperlyConfigured when there is none, or one lacks a scheme redis-py knows.
    """
    raw = redis_url.split(",") if isinstance(redis_url, str) else redis_url
    urls = [url.strip() for url in raw if url.strip()]
    if not urls:
        raise ImproperlyConfigured(f"REDIS_URL={redis_url!r} holds no URL")
    for url in urls:
        scheme, separator, _ = url.partition("://")
        if not separator or scheme.lower() not in REDIS_URL_SCHEMES:
            shown = redacted_url(url)
            raise ImproperlyConfigured(
                f"REDIS_URL {shown!r} does not start with redis://, rediss:// or unix://"
                + ("" if separator else f" (did you mean redis://{shown}?)")
            )
    return urls


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
