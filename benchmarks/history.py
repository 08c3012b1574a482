"""How fast history and catch-up stay when one room holds 100,000 messages.

Builds a throwaway SQLite database in a temporary directory (never the project's
db.sqlite3, and no Redis), fills the room "bench" with N messages (seq 1..N) and a second
room with a few thousand, interleaved as real traffic would leave them, then times the
calls of chat.services that a busy room makes on every join, reconnect and send:

- recent_messages_50: recent_messages("bench", 50), the history a socket gets on joining;
- catch_up_last_100: messages_after("bench", N - 100), a reconnect that missed 100;
- api_page_100_middle: messages_after(..., limit=100) from a random seq in the middle of
  the room, one page of GET /chat/<room>/messages/;
- store_message_append: store_message(...), appending the next message (N+1, N+2, ...).

Each call is timed with time.perf_counter over --repeat runs, after a few untimed warm-up
runs, and reported as median and p99 in milliseconds: a table for people, then one JSON
line per measurement for machines. The SQLite query plans of the two reads show the index
they search: the UniqueConstraint "message_room_seq_unique" on (room, seq), which SQLite
names sqlite_autoindex_chat_message_<n>. Every result is checked, outside the timing, so a
fast wrong answer cannot pass.

Run from the project root:

    .venv/bin/python -m benchmarks.history [--messages 100000] [--repeat 200]
"""

import argparse
import json
import os
import platform
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import cycle

import django

BENCH_ROOM = "bench"
OTHER_ROOM = "other"
DEFAULT_MESSAGES = 100_000
DEFAULT_REPEAT = 200
# One room of this size next to the bench room, so a lookup by room must skip its rows.
OTHER_ROOM_MESSAGES = 5_000
INSERT_BATCH_SIZE = 5_000
HISTORY_LIMIT = 50  # settings.CHAT_HISTORY_LIMIT: what a socket gets on joining.
CATCH_UP_MISSED = 100
API_PAGE_SIZE = 100  # settings.CHAT_API_PAGE_SIZE: one page of the HTTP API.
# The middle half of the room: neither the hot tail nor the very start.
MIDDLE_FROM, MIDDLE_TO = 0.25, 0.75
WARMUP_RUNS = 5
P99 = 99
PERCENT = 100
# Room for the catch-up, the history and a page from the middle of the room.
MIN_MESSAGES = 1_000
RANDOM_SEED = 20_260_101
# About the length of a typical chat line.
SAMPLE_TEXTS = [
    "Has anyone tried the new build on the staging server yet today?",
    "Yes, it deploys fine, but the login page is slow on first load.",
    "I think that is the cache warming up; give it a minute and retry.",
    "Lunch at noon? The place on the corner has a new menu this week.",
    "Pushed the fix for the timezone bug, please review when you can.",
]
SAMPLE_NAMES = ["ada", "grace", "linus", "margaret", "guido", "barbara"]
MS_PER_SECOND = 1000


def configure_django(database_path: str) -> None:
    """Point Django at the throwaway database and set it up, with production's DEBUG off."""
    os.environ["DATABASE_URL"] = f"sqlite:///{database_path}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    # DEBUG logs every query (on SQLite with an extra query to quote its parameters),
    # which would be timed too; production runs without it.
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    django.setup()


def fill(messages: int) -> float:
    """Store `messages` in the bench room and OTHER_ROOM_MESSAGES in another; returns seconds."""
    from django.db import transaction

    from chat.models import Message, Room

    texts, names = cycle(SAMPLE_TEXTS), cycle(SAMPLE_NAMES)
    other_seq = 0
    start = time.perf_counter()
    with transaction.atomic():
        Room.objects.create(name=BENCH_ROOM, last_seq=messages)
        Room.objects.create(name=OTHER_ROOM, last_seq=0)
        for first in range(1, messages + 1, INSERT_BATCH_SIZE):
            batch = []
            for seq in range(first, min(first + INSERT_BATCH_SIZE, messages + 1)):
                batch.append(
                    Message(room_id=BENCH_ROOM, seq=seq, display_name=next(names), text=next(texts))
                )
                # The other room's messages are spread evenly between the bench room's,
                # so their rows interleave in the table as concurrent rooms' would.
                while other_seq < seq * OTHER_ROOM_MESSAGES // messages:
                    other_seq += 1
                    batch.append(
                        Message(
                            room_id=OTHER_ROOM,
                            seq=other_seq,
                            display_name=next(names),
                            text=next(texts),
                        )
                    )
            Message.objects.bulk_create(batch, batch_size=INSERT_BATCH_SIZE)
        Room.objects.filter(name=OTHER_ROOM).update(last_seq=other_seq)
    return time.perf_counter() - start


def measure(runs: int, call: Callable[[int], object], check: Callable[[int, object], None]):
    """Time call(i) `runs` times after WARMUP_RUNS untimed ones; check(i, result) is untimed."""
    samples_ms = []
    for i in range(WARMUP_RUNS + runs):
        start = time.perf_counter()
        result = call(i)
        elapsed_ms = (time.perf_counter() - start) * MS_PER_SECOND
        check(i, result)
        if i >= WARMUP_RUNS:
            samples_ms.append(elapsed_ms)
    return samples_ms


def percentile(samples: list[float], percent: int) -> float:
    """The nearest-rank percentile: the smallest sample with `percent`% of samples at or below."""
    ordered = sorted(samples)
    rank = -(-percent * len(ordered) // PERCENT)  # ceil(percent * n / 100), in integers
    return ordered[rank - 1]


def assert_seqs(messages: list, first: int, count: int) -> None:
    """The result is exactly seqs first..first+count-1 of the bench room, in order."""
    assert [m.seq for m in messages] == list(range(first, first + count)), "wrong messages"
    assert all(m.room_id == BENCH_ROOM for m in messages), "wrong room"


def query_plan(call: Callable[[], object]) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN for the last SQL query that call() runs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        call()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + captured.captured_queries[-1]["sql"])
        return [row[-1] for row in cursor.fetchall()]


def message_indexes() -> list[str]:
    """Each index on the message table, with its columns and where it comes from."""
    from django.db import connection

    from chat.models import Message

    table = Message._meta.db_table
    # SQLite names a UNIQUE constraint's index itself; match it back to the model's name.
    constraints = {
        tuple(Message._meta.get_field(field).column for field in constraint.fields): constraint
        for constraint in Message._meta.constraints
    }
    origins = {"c": "CREATE INDEX", "u": "UNIQUE constraint", "pk": "primary key"}
    lines = []
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA index_list('{table}')")
        for _, name, unique, origin, partial in cursor.fetchall():
            cursor.execute(f"PRAGMA index_info('{name}')")
            columns = [row[2] for row in cursor.fetchall()]
            kind = ("unique " if unique else "") + ("partial " if partial else "")
            line = f"{name}: {kind}({', '.join(columns)}), from {origins[origin]}"
            constraint = constraints.get(tuple(columns))
            if constraint is not None and constraint.name != name:
                line += f" {constraint.name!r}"
            lines.append(line)
    return lines


def run_cases(messages: int, repeat: int) -> list[tuple[str, list[float]]]:
    """Time the four calls; returns (case, samples in ms) for each."""
    from chat.models import Message, Room
    from chat.services import Author, messages_after, recent_messages, store_message

    rng = random.Random(RANDOM_SEED)
    middle = [
        rng.randint(int(messages * MIDDLE_FROM), int(messages * MIDDLE_TO))
        for _ in range(WARMUP_RUNS + repeat)
    ]
    author = Author(name="bench")

    def check_append(i, result):
        message, created = result
        assert created and message.seq == messages + 1 + i, "append got the wrong seq"

    cases = [
        (
            f"recent_messages_{HISTORY_LIMIT}",
            lambda i: recent_messages(BENCH_ROOM, HISTORY_LIMIT),
            lambda i, r: assert_seqs(r, messages - HISTORY_LIMIT + 1, HISTORY_LIMIT),
        ),
        (
            f"catch_up_last_{CATCH_UP_MISSED}",
            lambda i: messages_after(BENCH_ROOM, messages - CATCH_UP_MISSED),
            lambda i, r: assert_seqs(r, messages - CATCH_UP_MISSED + 1, CATCH_UP_MISSED),
        ),
        (
            f"api_page_{API_PAGE_SIZE}_middle",
            lambda i: messages_after(BENCH_ROOM, middle[i], limit=API_PAGE_SIZE),
            lambda i, r: assert_seqs(r, middle[i] + 1, API_PAGE_SIZE),
        ),
        # Last: it grows the room, which the reads above must not see.
        (
            "store_message_append",
            lambda i: store_message(BENCH_ROOM, author, "x", None),
            check_append,
        ),
    ]
    results = [(name, measure(repeat, call, check)) for name, call, check in cases]

    appended = WARMUP_RUNS + repeat
    assert Room.objects.get(name=BENCH_ROOM).last_seq == messages + appended
    assert Message.objects.filter(room_id=BENCH_ROOM).count() == messages + appended
    return results


def print_machine() -> None:
    """The machine and versions the numbers were measured on."""
    print(f"machine:  {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs")
    print(
        f"versions: Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"Django {django.get_version()}"
    )


def print_plans(messages: int) -> None:
    """The query plans of the join history and the catch-up, and the indexes they can use."""
    from chat.services import messages_after, recent_messages

    print("\nindexes on chat_message:")
    for line in message_indexes():
        print(f"  {line}")
    plans = [
        (f"recent_messages_{HISTORY_LIMIT}", lambda: recent_messages(BENCH_ROOM, HISTORY_LIMIT)),
        (
            f"catch_up_last_{CATCH_UP_MISSED}",
            lambda: messages_after(BENCH_ROOM, messages - CATCH_UP_MISSED),
        ),
    ]
    for name, call in plans:
        print(f"\nquery plan, {name}:")
        for step in query_plan(call):
            print(f"  {step}")


def print_results(messages: int, repeat: int, fill_seconds: float, results) -> None:
    """A table for people, then one JSON line per measurement for machines."""
    print(f"\n{'case':<24}{'runs':>6}{'median ms':>12}{'p99 ms':>10}")
    rows = []
    for name, samples in results:
        median, p99 = statistics.median(samples), percentile(samples, P99)
        print(f"{name:<24}{len(samples):>6}{median:>12.3f}{p99:>10.3f}")
        rows.append({"case": name, "median_ms": round(median, 4), "p99_ms": round(p99, 4)})
    print()
    common = {"bench": "history", "messages": messages}
    fill_row = {"case": "fill", "seconds": round(fill_seconds, 3)}
    print(json.dumps({**common, **fill_row, "other_room_messages": OTHER_ROOM_MESSAGES}))
    for row in rows:
        print(json.dumps({**common, **row, "runs": repeat}))


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, build the throwaway database, measure, print, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=DEFAULT_MESSAGES, help="messages in the bench room"
    )
    parser.add_argument(
        "--repeat", type=int, default=DEFAULT_REPEAT, help="timed runs of each call"
    )
    args = parser.parse_args(argv)
    if args.messages < MIN_MESSAGES:
        parser.error(f"--messages must be at least {MIN_MESSAGES:,}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmpdir:
        configure_django(os.path.join(tmpdir, "bench.sqlite3"))
        from django.core.management import call_command
        from django.db import connections

        try:
            call_command("migrate", verbosity=0)
            print_machine()
            fill_seconds = fill(args.messages)
            print(
                f"\nfilled {args.messages:,} messages in {BENCH_ROOM!r} "
                f"(+{OTHER_ROOM_MESSAGES:,} in {OTHER_ROOM!r}) in {fill_seconds:.2f} s"
            )
            print_plans(args.messages)
            results = run_cases(args.messages, args.repeat)
            print_results(args.messages, args.repeat, fill_seconds, results)
        finally:
            connections.close_all()


if __name__ == "__main__":
    main()
