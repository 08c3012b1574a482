"""`manage.py runserver` on its own: daphne's server with our bounds, and no silent start
without Redis."""

import subprocess
import sys

from conftest import ROOT, server_environment
from serving.embedded_redis import free_port

REFUSAL_TIMEOUT_SECONDS = 30


def test_runserver_without_a_redis_that_answers_exits_at_once_with_one_line(tmp_path):
    env = server_environment(f"redis://127.0.0.1:{free_port()}/0", f"sqlite:///{tmp_path}/db")
    # With the autoreloader, as a newcomer types it: the refusal comes before it starts.
    result = subprocess.run(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: Redis at redis://127.0.0.1:")
    assert "python3 dev.py run" in result.stderr
    assert len(result.stderr.splitlines()) == 1
