"""What the per-person message limit adds to each message: one Redis round trip.

Starts an embedded redis-server and times, on one thread as the consumer's sync thread
does, --repeat calls each of:

- ping: a bare PING on the same client, the floor of any round trip;
- message_limit: chat.limits.retry_after(MESSAGES, person), the check every stored
  message makes (one EVALSHA of the moving-window script), within the limit;
- message_limit_refused: the same once over the limit (the script, then a read of the
  window for Retry-After);
- client_network: chat.limits.client_network of an IPv6 peer (its /64), no Redis;
- open_slots: chat.limits.take_open_slots, the caps of open sockets every socket takes
  at its connect (one EVAL over two sorted sets), and their release (as a closing
  socket's upkeep does, pipelined with others there: here one round trip of its own);
- typing: chat.limits.typing_allowed, a person's typing signal (one SET NX);
- handshake_refused: chat.limits.refuse_socket over the new-socket limit, the whole cost
  of a refused handshake in HandshakeLimitMiddleware (on an event loop, as there).

Prints median and p99 in microseconds, then one JSON line per measurement.

    .venv/bin/python -m benchmarks.limits_cost [--repeat 5000]
"""

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")


def timed(call: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median and p99 of `repeat` calls, in microseconds, after a few untimed ones."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return {"median_us": statistics.median(samples), "p99_us": samples[int(0.99 * len(samples))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()

    from serving.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        os.environ["REDIS_URL"] = server.url
        django.setup()
        from django.conf import settings

        from chat import limits
        from chat.identity import Author
        from chat.redis_clients import LIMITS_TIMEOUT_SECONDS, redis_client

        settings.CHAT_LIMIT_MESSAGES_PER_PERSON = f"{10 * args.repeat}/minute"
        client = redis_client(server.url, LIMITS_TIMEOUT_SECONDS)
        results = {
            "ping": timed(client.ping, args.repeat),
            "message_limit": timed(lambda: limits.retry_after(limits.MESSAGES, "u:1"), args.repeat),
        }
        settings.CHAT_LIMIT_MESSAGES_PER_PERSON = "1/minute"
        results["message_limit_refused"] = timed(
            lambda: limits.retry_after(limits.MESSAGES, "u:2"), args.repeat
        )
        scope = {"client": ["2001:db8:1:2::1", 50000]}
        results["client_network"] = timed(lambda: limits.client_network(scope), args.repeat)
        author = Author(name="bench", user_id=1)

        loop = asyncio.new_event_loop()  # take_open_slots and refuse_socket run on one

        def open_and_close():
            keys = loop.run_until_complete(limits.take_open_slots(scope, author, "channel"))
            client.pipeline().zrem(keys[0], "channel").zrem(keys[1], "channel").execute()

        results["open_slots"] = timed(open_and_close, args.repeat)
        results["typing"] = timed(lambda: limits.typing_allowed(scope, author, "r"), args.repeat)
        settings.CHAT_LIMIT_SOCKETS_PER_ADDRESS = "1/minute"
        results["handshake_refused"] = timed(
            lambda: loop.run_until_complete(limits.refuse_socket(scope)), args.repeat
        )
        loop.close()
    print(f"{'case':<24}{'median µs':>12}{'p99 µs':>12}")
    for case, figures in results.items():
        print(f"{case:<24}{figures['median_us']:>12.0f}{figures['p99_us']:>12.0f}")
    for case, figures in results.items():
        print(json.dumps({"case": case, "repeat": args.repeat, **figures}))


if __name__ == "__main__":
    main()
