"""What storing a message costs the sync thread: one by one, or a batch at a time.

    .venv/bin/python -m benchmarks.group_commit                      # SQLite
    .venv/bin/python -m benchmarks.group_commit --database postgres  # BENCH_POSTGRES_URL's

Each round stores MESSAGES messages spread over ROOMS rooms, with their per-person limit
checks, as a socket's frames are: once as batches of one (what each frame cost before
group commit), once as batches of --batch (chat.commits.commit, as a busy sync thread
gathers them), alternating, on the embedded Redis and a fresh database. Prints the wall
time per message of each, the median over --rounds. One process, so no lock is waited
for: this is the cost of the work itself, which the load benchmark's knee follows.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.stack import (
    DATABASES,
    LIMITS_LIFTED,
    ROOT,
    create_postgres_database,
    drop_postgres_database,
)
from serving.embedded_redis import EmbeddedRedis

MESSAGES = 400
ROOMS = 10


def measure(batch: int, rounds: int) -> dict[str, float]:
    """Inside a configured Django: median µs per message, batches of 1 and of `batch`."""
    from chat import commits, limits, services
    from chat.identity import Author

    authors = [Author(name=f"guest {n}", guest_key=f"g{n}") for n in range(ROOMS * 10)]

    def posts(round_: int, size: int) -> list[commits.Post]:
        made = []
        for n in range(MESSAGES):
            room, author = f"bench-{n % ROOMS}", authors[n % len(authors)]
            check = limits.PostCheck(author.key, "198.51.100.1", room, False, None)
            draft = services.Draft(room, author, f"{size} {round_} {n}", None)
            made.append(commits.Post(draft, check))
        return made

    timings: dict[int, list[float]] = {1: [], batch: []}
    for round_ in range(rounds):
        for size in (1, batch):
            todo = posts(round_, size)
            started = time.perf_counter()
            for start in range(0, len(todo), size):
                commits.commit(todo[start : start + size])
            timings[size].append((time.perf_counter() - started) / len(todo) * 1e6)
            assert all(isinstance(post.outcome, tuple) for post in todo)
    return {
        f"batch {size}": round(statistics.median(values), 1) for size, values in timings.items()
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument("--batch", type=int, default=20, help="messages per group commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import django

        django.setup()
        print(measure(args.batch, args.rounds))
        return 0
    redis_server = EmbeddedRedis().start()
    workdir = tempfile.mkdtemp(prefix="chat-bench-")
    postgres_database, database_url = None, f"sqlite:///{workdir}/bench.sqlite3"
    if args.database == "postgres":
        postgres_database, database_url = create_postgres_database()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="mysite.settings", REDIS_URL=redis_server.url,
               DATABASE_URL=database_url, **LIMITS_LIFTED)  # fmt: skip
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        child = [sys.executable, "-m", "benchmarks.group_commit", "--child",
                 "--batch", str(args.batch), "--rounds", str(args.rounds)]  # fmt: skip
        subprocess.run(child, cwd=ROOT, env=env, check=True)
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if postgres_database is not None:
            drop_postgres_database(postgres_database)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
