"""GET /healthz: whether this process reaches its database and its Redis, for load balancers."""

import logging
import os
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from chat.redis_clients import redis_client
from mysite.channel_layers import redacted_url, redis_urls

logger = logging.getLogger(__name__)

# A probe must answer quickly even when Redis is gone: load balancers time out in seconds.
REDIS_TIMEOUT_SECONDS = 1.0
# Enough of an error to diagnose it, not a wall of text in a probe's log.
ERROR_MAX_CHARS = 200


def ping_database() -> None:
    """Run a trivial query on the default database; raises when it is unreachable."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def ping_redis(url: str) -> None:
    """PING the Redis at url with short timeouts; raises when it does not answer."""
    redis_client(url, REDIS_TIMEOUT_SECONDS).ping()


def _describe(error: Exception) -> str:
    """The error's type and the first line of its message, short enough for a probe's log."""
    lines = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return detail[:ERROR_MAX_CHARS]


def redis_problem(redis_url: str | list[str]) -> str | None:
    """What stops REDIS_URL from serving the chat, in one line (password hidden); None if
    every Redis in it answers. For start-up, where /healthz would only say it later."""
    try:
        urls = redis_urls(redis_url)
    except ImproperlyConfigured as error:
        return str(error)
    for url in urls:
        try:
            ping_redis(url)
        except Exception as error:  # whatever stops a PING stops the chat: report it
            return f"Redis at {redacted_url(url)} does not answer ({_describe(error)})"
    return None


def _status(name: str, check: Callable[..., object], *args: str) -> str:
    """The check's status: "ok", or "error: <exception type>" (the details go to the log).

    The endpoint is public: hosts, ports and user names stay out of its answer.
    """
    try:
        check(*args)
    except Exception as error:  # any failure is the probe's answer, never a crash of the view
        logger.warning("health check: %s unreachable: %s", name, _describe(error))
        return f"error: {type(error).__name__}"
    return "ok"


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis both answer, else 503; each with "ok" or the error."""
    report = {
        "database": _status("database", ping_database),
        "redis": _status("redis", ping_redis, settings.REDIS_URL),
    }
    healthy = all(status == "ok" for status in report.values())
    return JsonResponse({**report, "pid": os.getpid()}, status=200 if healthy else 503)
