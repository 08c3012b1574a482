"""GET /healthz: whether this process reaches its database and its Redis, for load balancers."""

import logging
import os
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from chat.redis_clients import PING_TIMEOUT_SECONDS, describe_error, redis_client

logger = logging.getLogger(__name__)

# The key the probe writes: one SET, which a Redis refusing writes (at maxmemory, a
# read-only replica: chat.outages) refuses, where a PING would still answer.
PROBE_KEY = "chat:healthz"
# Long enough to outlive the probe, short enough never to pile up.
PROBE_KEY_TTL_MILLISECONDS = 10_000


def ping_database() -> None:
    """Run a trivial query on the default database; raises when it is unreachable."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def write_to_redis(url: str) -> None:
    """Write one short-lived key to the Redis at url; raises when it is gone or refuses."""
    redis_client(url, PING_TIMEOUT_SECONDS).set(
        PROBE_KEY, os.getpid(), px=PROBE_KEY_TTL_MILLISECONDS
    )


def _status(name: str, check: Callable[..., object], *args: str) -> str:
    """The check's status: "ok", or "error: <exception type>" (the details go to the log).

    The endpoint is public: hosts, ports and user names stay out of its answer.
    """
    try:
        check(*args)
    except Exception as error:  # any failure is the probe's answer, never a crash of the view
        logger.warning("health check: %s unreachable: %s", name, describe_error(error))
        return f"error: {type(error).__name__}"
    return "ok"


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers and Redis takes a write, else 503; each "ok" or the error."""
    report = {
        "database": _status("database", ping_database),
        "redis": _status("redis", write_to_redis, settings.REDIS_URL),
    }
    healthy = all(status == "ok" for status in report.values())
    return JsonResponse({**report, "pid": os.getpid()}, status=200 if healthy else 503)
