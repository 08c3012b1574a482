"""Reaching Redis: REDIS_URL's list of URLs, plain clients (presence, health checks), and
whether each Redis answers. No Django setup needed, so launchers check before they start.

Explained in docs/operations.md, 'Several Redis servers'.
"""

import functools

import redis
from django.core.exceptions import ImproperlyConfigured

# What redis-py's from_url (and so channels_redis) accepts. Anything else fails only at the
# first connection, on every connection, long after start-up: refuse it where it is read.
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
# A probe must answer quickly even when Redis is gone: load balancers time out in seconds.
PING_TIMEOUT_SECONDS = 1.0
# Enough of an error to diagnose it, not a wall of text in a probe's log.
ERROR_MAX_CHARS = 200


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


@functools.cache
def redis_client(url: str, timeout: float) -> redis.Redis:
    """The process's client for url: its own connection pool, `timeout` s to connect and
    for each command, so that an unreachable Redis fails fast instead of hanging."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def ping_redis(url: str) -> None:
    """PING the Redis at url with short timeouts; raises when it does not answer."""
    redis_client(url, PING_TIMEOUT_SECONDS).ping()


def describe_error(error: Exception) -> str:
    """The error's type and the first line of its message, short enough for a probe's log."""
    lines = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return detail[:ERROR_MAX_CHARS]


def redis_problem(redis_url: str | list[str]) -> str | None:
    """Why the chat cannot use REDIS_URL, in one line (password hidden); None if every
    Redis in it answers. For start-up, where /healthz would only say it later."""
    try:
        urls = redis_urls(redis_url)
    except ImproperlyConfigured as error:
        return str(error)
    for url in urls:
        try:
            ping_redis(url)
        except Exception as error:  # whatever stops a PING stops the chat: report it
            return f"Redis at {redacted_url(url)} does not answer ({describe_error(error)})"
    return None
