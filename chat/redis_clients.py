"""Plain Redis clients (presence, health checks), one per URL and timeout per process."""

import functools

import redis


@functools.cache
def redis_client(url: str, timeout: float) -> redis.Redis:
    """The process's client for url: its own connection pool, `timeout` s to connect and
    for each command, so that an unreachable Redis fails fast instead of hanging."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
