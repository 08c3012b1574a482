"""serving.metrics_files: the supervisor's children count into a directory that is empty at
each start, and a killed child's open sockets leave the sum while its counts stay."""

import asyncio
import os
import subprocess
import sys

import psutil
import pytest
import websockets

from chat.tests.test_metrics import scrape, until
from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS, server_environment
from serving.embedded_redis import free_port
from serving.metrics_files import VARIABLE, fresh_metrics_directory, process_exited
from serving.processes import stop_processes, wait_for_http

SOCKETS = 16  # over two processes: all on one by chance is 1 in 30,000


def test_a_directory_of_its_own_is_made_for_the_children_and_removed_after(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    with fresh_metrics_directory() as path:
        assert os.environ[VARIABLE] == str(path) and path.is_dir()
        assert list(path.iterdir()) == []
    assert not path.exists() and VARIABLE not in os.environ


def test_the_operators_directory_is_emptied_of_the_last_runs_files(monkeypatch, tmp_path):
    (tmp_path / "counter_4242.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv(VARIABLE, str(tmp_path))
    with fresh_metrics_directory() as path:
        assert path == tmp_path
        assert [file.name for file in path.iterdir()] == ["notes.txt"]
    assert tmp_path.is_dir() and os.environ[VARIABLE] == str(tmp_path)


def test_a_dead_process_loses_its_open_sockets_and_keeps_its_counts(monkeypatch, tmp_path):
    for name in ("gauge_livesum_4242.db", "counter_4242.db", "gauge_livesum_4343.db"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv(VARIABLE, str(tmp_path))
    process_exited(4242)
    assert sorted(file.name for file in tmp_path.iterdir()) == [
        "counter_4242.db",
        "gauge_livesum_4343.db",
    ]


@pytest.fixture
def served_with_sockets(redis_server, migrated_database):
    port = free_port()
    env = server_environment(
        redis_server.url, migrated_database, CHAT_LIMIT_SOCKETS_PER_ADDRESS="100000/minute"
    )
    command = [sys.executable, "-m", "serving.supervisor", "--processes", "2", "--bind"]
    process = subprocess.Popen([*command, f"127.0.0.1:{port}"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    yield url, process, port
    stop_processes([process], timeout=30)


async def test_a_killed_childs_sockets_leave_the_open_socket_count(served_with_sockets):
    url, process, port = served_with_sockets
    wait_for_http(
        f"{url}/chat/",
        process,
        SERVER_READY_TIMEOUT_SECONDS,
        also=lambda: len(psutil.Process(process.pid).children()) == 2,
    )
    ws_url = url.replace("http://", "ws://")
    sockets = await asyncio.gather(
        *(
            websockets.connect(f"{ws_url}/ws/chat/counted/", origin=url, ping_interval=None)
            for _ in range(SOCKETS)
        )
    )
    try:
        await asyncio.to_thread(until, lambda: scrape(url).get("chat_sockets_open") == SOCKETS)
        victim, survivor = psutil.Process(process.pid).children()
        survivor_holds = sum(
            1
            for connection in survivor.net_connections(kind="tcp")
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
        )
        assert 0 < survivor_holds < SOCKETS
        victim.kill()  # no clean-up of its own: the supervisor's is what is tested
        await asyncio.to_thread(
            until, lambda: scrape(url).get("chat_sockets_open") == survivor_holds
        )
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
