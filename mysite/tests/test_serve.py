"""`python -m mysite.serve`: N daphne processes on one socket, restarted when they die."""

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
import websockets

from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS, server_environment
from mysite.embedded_redis import free_port
from mysite.processes import stop_processes, wait_for_http
from mysite.serve import raise_open_file_limit

PIDS_SEEN_WITHIN_REQUESTS = 200


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


@pytest.fixture
def served(redis_server, migrated_database):
    port = free_port()
    env = server_environment(redis_server.url, migrated_database)
    command = [sys.executable, "-m", "mysite.serve", "--processes", "2", "--bind"]
    process = subprocess.Popen([*command, f"127.0.0.1:{port}"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/chat/", process, SERVER_READY_TIMEOUT_SECONDS)
    yield url, process
    # Longer than serve's own wait for its children, so it is never killed mid-shutdown.
    stop_processes([process], timeout=30)


def test_two_processes_share_one_port(served):
    url, process = served
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


STORM_SOCKETS = 1000
STORM_ROOM_SIZE = 10


async def test_a_storm_of_a_thousand_connections_all_get_in(served):
    url, _ = served
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
