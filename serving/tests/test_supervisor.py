"""`python -m serving.supervisor`: N daphne processes on one socket, restarted when they die,
and refusing to start (one line, non-zero exit) where it could only fail or mislead."""

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import psutil
import pytest
import websockets

from chat.protocol import CLOSE_SERVER_RESTARTING
from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS, server_environment
from serving.embedded_redis import free_port
from serving.processes import stop_processes, wait_for_http
from serving.supervisor import raise_open_file_limit

PIDS_SEEN_WITHIN_REQUESTS = 200
# Refusals come before any child starts; giving up waits 1 + 2 + 4 s between restarts.
REFUSAL_TIMEOUT_SECONDS = 20
GIVE_UP_TIMEOUT_SECONDS = 45


def healthz_pid(url: str) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return json.load(response)["pid"]


def pids_answering(url: str, wanted: int) -> set[int]:
    """Pids seen over fresh connections, until `wanted` distinct ones answered."""
    pids: set[int] = set()
    for _ in range(PIDS_SEEN_WITHIN_REQUESTS):
        pids.add(healthz_pid(url))
        if len(pids) >= wanted:
            break
    return pids


def serve_until_it_exits(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str]:
    """Run serving.supervisor; its exit status and stderr, or a failure if it is still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.supervisor", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_processes([process], timeout=30)
        pytest.fail(f"serving.supervisor {' '.join(args)} still running after {timeout} s")
    return process.returncode, errors


@contextlib.contextmanager
def supervising(redis_url: str, database_url: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """serving.supervisor with two processes on a free port; its URL and process."""
    port = free_port()
    # Every socket of the bursts below comes from 127.0.0.1: lift the per-address limits.
    env = server_environment(
        redis_url,
        database_url,
        CHAT_LIMIT_SOCKETS_PER_ADDRESS="100000/minute",
        CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS="100000",
    )
    command = [sys.executable, "-m", "serving.supervisor", "--processes", "2", "--bind"]
    process = subprocess.Popen([*command, f"127.0.0.1:{port}"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/chat/", process, SERVER_READY_TIMEOUT_SECONDS)
        yield url, process
    finally:
        # Longer than serve's own wait for its children, so it is never killed mid-shutdown.
        stop_processes([process], timeout=30)


@pytest.fixture
def served(redis_server, limits_count_from_zero, migrated_database):
    """A supervisor of the test's own, for tests that kill or stop it or count its sockets."""
    with supervising(redis_server.url, migrated_database) as supervisor:
        yield supervisor


@pytest.fixture(scope="module")
def module_supervisor(redis_server, migrated_database):
    """One supervisor for the whole module (served_as_found)."""
    with supervising(redis_server.url, migrated_database) as supervisor:
        yield supervisor


@pytest.fixture
def served_as_found(module_supervisor, limits_count_from_zero):
    """The module's supervisor, for tests that leave it as they found it (two children)."""
    return module_supervisor


def test_two_processes_share_one_port(served_as_found):
    url, process = served_as_found
    children = {child.pid for child in psutil.Process(process.pid).children()}
    assert len(children) == 2
    assert pids_answering(url, 2) == children


SPREAD_SOCKETS = 200
# Each connection lands on one of two children by a hash of its address: 100 each on
# average, give or take 7; fewer than 60 on one child is about 1 chance in 10 million.
SPREAD_FEWEST_PER_CHILD = 60


def established_sockets_by_pid(children: list[psutil.Process], port: int) -> dict[int, int]:
    return {
        child.pid: sum(
            1
            for connection in child.net_connections(kind="tcp")
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
        )
        for child in children
    }


async def test_a_burst_of_connections_is_spread_evenly_over_the_processes(served):
    url, process = served
    port = int(url.rpartition(":")[2])
    ws_url = url.replace("http://", "ws://")
    sockets = await asyncio.gather(
        *(
            websockets.connect(f"{ws_url}/ws/chat/spread/", origin=url, ping_interval=None)
            for _ in range(SPREAD_SOCKETS)
        )
    )
    try:
        counts = established_sockets_by_pid(psutil.Process(process.pid).children(), port)
        assert sum(counts.values()) == SPREAD_SOCKETS
        assert min(counts.values()) >= SPREAD_FEWEST_PER_CHILD, counts
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets))


def test_a_killed_process_is_replaced_and_the_port_keeps_answering(served):
    url, process = served
    victim = psutil.Process(process.pid).children()[0]
    victim.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        children = {child.pid for child in psutil.Process(process.pid).children()}
        if len(children) == 2 and victim.pid not in children:
            break
        time.sleep(0.2)
    assert victim.pid not in children and len(children) == 2
    assert healthz_pid(url) in children


def test_children_die_with_a_killed_supervisor(served):
    _, process = served
    children = psutil.Process(process.pid).children()
    process.kill()
    process.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_sigterm_stops_every_process(served):
    _, process = served
    children = psutil.Process(process.pid).children()
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


async def test_sigterm_closes_every_socket_of_every_process_with_4001(served):
    url, process = served
    ws_url = url.replace("http", "ws", 1) + "/ws/chat/restarting/"
    clients = [await websockets.connect(ws_url, origin=url) for _ in range(6)]
    process.send_signal(signal.SIGTERM)
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 20)
        assert client.close_code == CLOSE_SERVER_RESTARTING
    assert await asyncio.to_thread(process.wait, 20) == 0


STORM_SOCKETS = 1000
STORM_ROOM_SIZE = 10


async def test_a_storm_of_a_thousand_connections_all_get_in(served_as_found):
    url, _ = served_as_found
    raise_open_file_limit()  # this process holds a thousand sockets too
    ws_url = url.replace("http://", "ws://")

    async def connect(number: int):
        room = f"storm-{number // STORM_ROOM_SIZE}"
        return await websockets.connect(
            f"{ws_url}/ws/chat/{room}/", origin=url, open_timeout=60, ping_interval=None
        )

    results = await asyncio.gather(
        *(connect(number) for number in range(STORM_SOCKETS)), return_exceptions=True
    )
    sockets = [result for result in results if not isinstance(result, BaseException)]
    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    try:
        assert failures == []
        assert len(sockets) == STORM_SOCKETS
        # And the last room still chats.
        last_room = sockets[-STORM_ROOM_SIZE:]
        await last_room[0].send(json.dumps({"message": "after the storm"}))
        for socket in last_room:
            while "message" not in (frame := json.loads(await socket.recv())):
                pass
            assert frame["message"] == "after the storm"
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)


def test_processes_that_keep_dying_at_start_are_given_up_on_with_a_clear_message(
    redis_server, tmp_path
):
    env = server_environment(redis_server.url, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    # A daphne option that does not exist: every child exits at once, as with a broken install.
    bind = f"127.0.0.1:{free_port()}"
    args = ["--processes", "2", "--bind", bind, "--", "--no-such-option"]
    returncode, errors = serve_until_it_exits(env, *args, timeout=GIVE_UP_TIMEOUT_SECONDS)
    assert returncode == 1
    assert "unrecognized arguments: --no-such-option" in errors
    assert errors.strip().splitlines()[-1] == (
        "serving.supervisor: 4 server processes in a row exited within 10 s of starting (the last"
        " with status 2); giving up. Their errors are above."
    )


def test_a_second_serve_on_the_same_port_refuses_to_start(served_as_found, redis_server, tmp_path):
    url, process = served_as_found
    port = url.rpartition(":")[2]
    env = server_environment(redis_server.url, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    args = ["--processes", "2", "--bind", f"127.0.0.1:{port}"]
    returncode, errors = serve_until_it_exits(env, *args, timeout=REFUSAL_TIMEOUT_SECONDS)
    assert returncode == 1
    assert errors == (
        f"serving.supervisor: 127.0.0.1:{port} is already in use (another supervisor?);"
        " stop it or change --bind.\n"
    )
    # The first one still has every connection.
    children = {child.pid for child in psutil.Process(process.pid).children()}
    assert pids_answering(url, 3) == children


def test_serve_refuses_a_redis_that_does_not_answer_and_hides_its_password(tmp_path):
    redis_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = server_environment(redis_url, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    args = ["--processes", "1", "--bind", f"127.0.0.1:{free_port()}"]
    returncode, errors = serve_until_it_exits(env, *args, timeout=REFUSAL_TIMEOUT_SECONDS)
    assert returncode == 1
    assert errors.startswith(
        f"serving.supervisor: Redis at {redis_url.replace('hunter2', '***')} does not answer"
        " (ConnectionError: "
    )
    assert len(errors.splitlines()) == 1
    assert "hunter2" not in errors


def test_serve_refuses_a_redis_url_without_a_scheme(tmp_path):
    env = server_environment("localhost:6379", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    args = ["--processes", "1", "--bind", f"127.0.0.1:{free_port()}"]
    returncode, errors = serve_until_it_exits(env, *args, timeout=REFUSAL_TIMEOUT_SECONDS)
    assert returncode == 1
    assert errors == (
        "serving.supervisor: REDIS_URL 'localhost:6379' does not start with redis://, rediss:// or"
        " unix:// (did you mean redis://localhost:6379?).\n"
    )


def test_serve_under_a_python_without_the_dependencies_says_so_in_one_line(tmp_path):
    env = server_environment("redis://127.0.0.1:6379/0", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    # -S: no site-packages, so serving imports (from the working directory) and Django does not.
    process = subprocess.run(
        [sys.executable, "-S", "-m", "serving.supervisor", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert process.returncode == 1
    assert process.stderr == (
        "serving.supervisor: No module named 'django': run it with the virtualenv's Python"
        " (python3 dev.py serve ...).\n"
    )
