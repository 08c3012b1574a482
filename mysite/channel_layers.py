"""The CHANNEL_LAYERS setting for a Redis URL, shared by settings and the test fixtures."""

from typing import Any

# channels_redis waits for messages with BZPOPMIN and a 5 s server-side timeout, while
# redis-py 8 aborts any read after a default socket_timeout of 5 s: the two race, and a
# lost race kills an idle consumer with "Timeout reading from" (channels_redis#422).
# Reads must outlast the blocking pop; staying finite still notices a dead connection.
REDIS_SOCKET_TIMEOUT_SECONDS = 15


def redis_channel_layers(redis_url: str) -> dict[str, Any]:
    """A RedisChannelLayer on redis_url, with a socket timeout that blocking reads outlast."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_url, "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS}],
            },
        },
    }
