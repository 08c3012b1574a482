"""Cost of a room message's frames in one process: encoded per socket vs once (FrameCache).

    python3 -m benchmarks.frame_encoding            # 200 sockets of a room in one process

Prints microseconds per room message for each way; no server, no Redis.
"""

import sys
import timeit

from chat import protocol
from chat.delivery import FrameCache

SOCKETS = 200
ROUNDS = 200


def event(seq: int) -> dict:
    """A chat.message event as every socket of the room receives its own copy of it."""
    return {
        "type": "chat.message",
        "message": f"benchmark message number {seq}, of an ordinary length for a chat",
        "id": seq,
        "user": "Anonymous",
        "guest": True,
        "ts": "2026-11-30T00:00:00.000000+00:00",
        "client_id": f"client-{seq}",
    }


def main(argv: list[str]) -> int:
    sockets = int(argv[0]) if argv else SOCKETS
    copies = [[event(seq) for _ in range(sockets)] for seq in range(ROUNDS)]

    def per_socket():
        for message_copies in copies:
            for copy in message_copies:
                protocol.message_frame(copy)

    def once():
        cache = FrameCache()
        for message_copies in copies:
            for copy in message_copies:
                cache.frame(copy)

    for name, run in (("json.dumps per socket", per_socket), ("FrameCache, once", once)):
        seconds = min(timeit.repeat(run, number=1, repeat=5))
        print(f"{name:>22}: {1e6 * seconds / ROUNDS:8.1f} µs per message to {sockets} sockets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
