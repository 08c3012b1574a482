"""The run command's server half: Redis + migrate + runserver, and a clean stop on Ctrl-C."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import websocket

from conftest import ROOT
from mysite import devserver
from mysite.embedded_redis import DEFAULT_PORT, free_port, port_is_free
from mysite.processes import wait_for_http


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (this test's unique port)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def next_message(client: websocket.WebSocket) -> dict:
    """The next frame carrying a chat message (presence updates are skipped)."""
    while "message" not in (frame := json.loads(client.recv())):
        pass
    return frame


def test_run_serves_the_chat_and_ctrl_c_stops_server_and_redis(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    output = open(tmp_path / "output.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mysite.devserver", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/chat/", process, timeout=30)
        sockets = [
            websocket.create_connection(
                f"ws://127.0.0.1:{port}/ws/chat/lobby/", origin=f"http://127.0.0.1:{port}"
            )
            for _ in range(2)
        ]
        sockets[0].send(json.dumps({"message": "hi"}))
        assert [next_message(s)["message"] for s in sockets] == ["hi", "hi"]
        for s in sockets:
            s.close()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    output.seek(0)
    log = output.read()
    redis_pid = int(re.search(r"Embedded Redis listening on \S+ \(pid (\d+)\)", log).group(1))
    deadline = time.monotonic() + 5
    while (processes_mentioning(f"127.0.0.1:{port}") or os.path.exists(f"/proc/{redis_pid}")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert processes_mentioning(f"127.0.0.1:{port}") == []
    assert not os.path.exists(f"/proc/{redis_pid}")
    assert "Traceback" not in log


def test_embedded_redis_moves_off_a_taken_6379_and_says_so(capsys):
    occupant = None
    if port_is_free(DEFAULT_PORT):
        occupant = socket.socket()
        # A Redis that just stopped there may have left connections in TIME_WAIT.
        occupant.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        occupant.bind(("127.0.0.1", DEFAULT_PORT))
        occupant.listen()
    try:
        server = devserver.start_embedded_redis()
        server.stop()
    finally:
        if occupant is not None:
            occupant.close()
    assert server.port != DEFAULT_PORT
    assert f"Port {DEFAULT_PORT} is taken" in capsys.readouterr().out
