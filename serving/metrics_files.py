"""The directory where serving.supervisor's children keep their metrics, one file set per process.

prometheus_client's multiprocess mode: each process writes its counters to files named
for its pid in PROMETHEUS_MULTIPROC_DIR, and whichever process answers /metrics adds up
all of them (mysite.metrics). The directory must be empty when the processes start
(yesterday's files would be added to today's counts, under pids that may come again),
and a dead process's open-socket gauge must go with it, while its counters stay
(a counter that drops would read as a reset).
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def fresh_metrics_directory() -> Iterator[Path]:
    """Set PROMETHEUS_MULTIPROC_DIR for the children to come, to an empty directory.

    The operator's, emptied; or a temporary one, removed at the end.
    """
    given = os.environ.get(VARIABLE)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="chat-metrics-"))
        os.environ[VARIABLE] = str(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)
            del os.environ[VARIABLE]


def process_exited(pid: int):
    """A child is gone: its sockets are no longer open (its counters stay counted)."""
    # Imported here: serving.supervisor imports this module before it checks that the
    # project's dependencies are installed (start_up_problem), to say so in one line.
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)
