"""Reaching Redis: REDIS_URL's list of URLs, every client the chat makes (sync and asyncio,
each with its named timeout), what an outage raises, and whether each Redis answers. No
Django setup needed, so launchers check before they start.

Explained in docs/operations.md, 'Several Redis servers'.
"""

import functools
import re
from typing import Any

import redis
import redis.asyncio
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

# What an unreachable or restarting Redis raises, to redis-py, redis.asyncio and so
# channels_redis alike: an outage, answered (a 4503 close, a check skipped) and logged on
# one line, never a bug's traceback.
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Redis errors that refuse a write while Redis is up: redis-py gives two of them a class,
# the others only their reply's first word. MISCONF: a failed background save with
# stop-writes-on-bgsave-error; MASTERDOWN: a replica cut off from its master. Redis 6.2
# wraps a refusal met inside a script (the per-person limits' EVALSHA) as
# "Error running script (...): @user_script:1: -OOM command not allowed ...".
WRITE_REFUSED_CLASSES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
WRITE_REFUSED_REPLY = re.compile(r"(?:^|: -)(?:OOM|READONLY|NOREPLICAS|MISCONF|MASTERDOWN) ")

# What redis-py's from_url (and so channels_redis) accepts. Anything else fails only at the
# first connection, on every connection, long after start-up: refuse it where it is read.
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
# How long each kind of caller waits for Redis, to connect and for each command.
# A probe must answer quickly even when Redis is gone: load balancers time out in seconds.
PING_TIMEOUT_SECONDS = 1.0
# A limit check is one round trip to a Redis on the same network, on a request's path.
LIMITS_TIMEOUT_SECONDS = 2.0
# The upkeep's presence writes: bigger pipelines, nobody waiting on them.
PRESENCE_TIMEOUT_SECONDS = 5.0
# What a page reads on its way (the index's online counts, the room list's limit check):
# a person waits for the page, which serves without them; a Redis on the same network
# answers in a millisecond. Never retried: the index answers within a second however
# Redis hangs.
PAGE_TIMEOUT_SECONDS = 0.25
# channels_redis waits for messages with BZPOPMIN and a 5 s server-side timeout, while
# redis-py 8 aborts any read after a default socket_timeout of 5 s: the two race, and a
# lost race kills an idle consumer with "Timeout reading from" (channels_redis#422).
# Reads must outlast the blocking pop; staying finite still notices a dead connection.
LAYER_TIMEOUT_SECONDS = 15
# A connection Redis closed (it restarted) or that could not be made.
ConnectionLost = redis.exceptions.ConnectionError
# After Redis restarts, every pooled connection is dead and fails its next command: one
# retry, at once, on a fresh connection heals that without a blip. A timeout is not
# retried (redis-py's Retry would): a Redis that hangs fails within one timeout, not two.
RETRY_ON_ERROR = [ConnectionLost]
# A script Redis no longer holds (it restarted, or SCRIPT FLUSH): load it and run it again.
NoScriptError = redis.exceptions.NoScriptError
# A command's own error reply (one answer of a pipeline read by hand: chat.limits.SentHits).
ResponseError = redis.exceptions.ResponseError


def _retry(kind: type[Retry] | type[AsyncRetry]) -> Retry | AsyncRetry:
    # An asyncio client awaits its retry: redis-py's sync Retry would hand back the
    # failing coroutine unretried, so a restarted Redis failed the first command.
    return kind(NoBackoff(), 1, supported_errors=tuple(RETRY_ON_ERROR))


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
    return redis.Redis.from_url(url, **_client_options(timeout, Retry))


def asyncio_redis_client(
    url: str, timeout: float, max_connections: int | None = None
) -> redis.asyncio.Redis:
    """A new asyncio client for url, as redis_client; for one event loop (its pool is).

    With max_connections, a command waits its turn for a free connection when that many
    are busy, where redis-py's pool would fail it: a burst is not an outage. The wait is
    bounded all the same, by the busy connections' own timeouts.
    """
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, **_client_options(timeout, AsyncRetry))
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        **_client_options(timeout, AsyncRetry),
    )
    return redis.asyncio.Redis(connection_pool=pool)


def layer_host(url: str) -> dict[str, Any]:
    """channels_redis's host entry for url: reads outlast its blocking pops, one retry."""
    return {
        "address": url,
        "socket_timeout": LAYER_TIMEOUT_SECONDS,
        "retry_on_error": RETRY_ON_ERROR,
    }


def _client_options(timeout: float, retry: type[Retry] | type[AsyncRetry]) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": _retry(retry),
        "retry_on_error": RETRY_ON_ERROR,
    }


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


def refuses_writes(error: BaseException) -> bool:
    """Whether error is Redis refusing a write while it is otherwise up (OOM, READONLY...)."""
    if isinstance(error, WRITE_REFUSED_CLASSES):
        return True
    return isinstance(error, redis.exceptions.ResponseError) and bool(
        WRITE_REFUSED_REPLY.search(str(error))
    )
