"""What a process keeps for sockets that are gone: sockets churned through busy rooms.

Starts an embedded Redis and a throwaway, migrated SQLite database, then drives
mysite.asgi.application in this process (channels' WebsocketCommunicator, no network).
Each of --rooms rooms has one socket that stays open throughout. Each round, --sockets
sockets join every room, each sends a message, and all leave at once: the room's messages
are on their way to them as they go (channels_redis#276). After each round it prints
what the channel layer still holds and the process's RSS:

- subscribed: channels the process is SUBSCRIBEd to in Redis (PUBSUB CHANNELS; pubsub);
- channels: socket channels the layer keeps in the process (its queues or buffers);
- members: group members (in the process on pubsub, Redis's zsets on the redis layer).

With the stayers open, a layer that forgets every socket that left holds one channel per
room, and one group per room. --upstream runs channels_redis's own layer class instead of
mysite.channel_layers's, to show what it keeps. Run from the project root:

    .venv/bin/python -m benchmarks.churn [--layer pubsub|redis] [--upstream]
"""

import argparse
import asyncio
import gc
import os
import secrets
import tempfile
import time

import django
import redis

from benchmarks.stack import LIMITS_LIFTED
from mysite.channel_layers import DEFAULT_LAYER, LAYER_BACKENDS
from serving.embedded_redis import EmbeddedRedis

UPSTREAM_BACKENDS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "redis": "channels_redis.core.RedisChannelLayer",
}
# Same-origin, as a page of the chat would open it (mysite.origins).
HANDSHAKE_HEADERS = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
# A round opens hundreds of sockets at once on two shared cores: generous, not 1 s.
SOCKET_TIMEOUT_SECONDS = 60
KIB_PER_MIB = 1024
ROW = "{:>5} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7}"


def configure_django(database_path: str, redis_url: str, layer: str, upstream: bool):
    """Point Django at the throwaway database and Redis, with production's DEBUG off."""
    os.environ.update(
        DATABASE_URL=f"sqlite:///{database_path}",
        REDIS_URL=redis_url,
        CHAT_CHANNEL_LAYER=layer,
        DJANGO_SETTINGS_MODULE="mysite.settings",
        DJANGO_DEBUG="false",  # DEBUG keeps every query in memory, which RSS would count
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        # Quiet: the redis layer logs each message over its capacity, and a round has many.
        DJANGO_LOG_LEVEL="WARNING",
        CHAT_LOG_LEVEL="WARNING",
        **LIMITS_LIFTED,
    )
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if upstream:
        settings.CHANNEL_LAYERS["default"]["BACKEND"] = UPSTREAM_BACKENDS[layer]
    call_command("migrate", verbosity=0)


def rss_mib() -> float:
    """This process's resident set size, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError("no VmRSS in /proc/self/status")


def layer_holds(redis_url: str) -> dict[str, int]:
    """What the channel layer holds for sockets, counted."""
    from channels.layers import get_channel_layer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = get_channel_layer()
    client = redis.Redis.from_url(redis_url)
    try:
        if isinstance(layer, RedisPubSubChannelLayer):
            loop_layer = layer._get_layer()
            return {
                "subscribed": len(client.pubsub_channels(f"{loop_layer.prefix}*")),
                "channels": len(loop_layer.channels),
                "members": sum(map(len, loop_layer.groups.values())),
            }
        groups = client.keys(f"{layer.prefix}:group:*")
        return {
            "subscribed": 0,
            "channels": len(layer.receive_buffer),
            "members": sum(client.zcard(group) for group in groups),
        }
    finally:
        client.close()


async def join(room: str):
    """An open socket in room."""
    from channels.testing import WebsocketCommunicator

    from mysite.asgi import application

    socket = WebsocketCommunicator(application, f"/ws/chat/{room}/", headers=HANDSHAKE_HEADERS)
    connected, code = await socket.connect(timeout=SOCKET_TIMEOUT_SECONDS)
    if not connected:
        raise RuntimeError(f"handshake refused with {code}")
    return socket


async def churn(args) -> None:
    rooms = [f"churn-{number}" for number in range(args.rooms)]
    stayers = [await join(room) for room in rooms]
    print(ROW.format("round", "sockets", "subscribed", "channels", "members", "RSS MiB", "seconds"))

    def report(label: str, sockets: int, started: float):
        gc.collect()
        holds = layer_holds(args.redis_url)
        seconds = f"{time.monotonic() - started:.1f}"
        print(ROW.format(label, sockets, *holds.values(), f"{rss_mib():.1f}", seconds))

    report("0", 0, time.monotonic())
    for number in range(1, args.rounds + 1):
        started = time.monotonic()
        leavers = await asyncio.gather(*(join(room) for room in rooms for _ in range(args.sockets)))
        for socket in leavers:
            await socket.send_json_to({"message": "bye"})
        await asyncio.gather(*(s.disconnect(timeout=SOCKET_TIMEOUT_SECONDS) for s in leavers))
        del leavers
        report(str(number), number * args.rooms * args.sockets, started)
    started = time.monotonic()
    await asyncio.gather(*(s.disconnect(timeout=SOCKET_TIMEOUT_SECONDS) for s in stayers))
    report("end", args.rounds * args.rooms * args.sockets + args.rooms, started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--sockets", type=int, default=20, help="sockets per room per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--layer", choices=sorted(LAYER_BACKENDS), default=DEFAULT_LAYER)
    parser.add_argument("--upstream", action="store_true", help="channels_redis's own class")
    args = parser.parse_args()
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as directory:
        args.redis_url = server.url
        configure_django(
            os.path.join(directory, "churn.sqlite3"), server.url, args.layer, args.upstream
        )
        from django.conf import settings

        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        print(f"layer: {backend}; {args.rooms} rooms, {args.sockets} sockets a room a round")
        asyncio.run(churn(args))


if __name__ == "__main__":
    main()
