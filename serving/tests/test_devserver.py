"""The run command's server half: Redis + migrate + runserver, a clean stop on Ctrl-C, and
one line and a non-zero exit, at once, for what would only fail later."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websocket

from conftest import ROOT
from serving import devserver
from serving.embedded_redis import DEFAULT_PORT, free_port, port_is_free
from serving.processes import stop_processes, wait_for_http

# Refusals come before Redis starts and before migrate.
REFUSAL_TIMEOUT_SECONDS = 20


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


def run_until_it_exits(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the devserver; its exit status, stdout and stderr, or a failure if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.devserver", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        output, errors = process.communicate(timeout=REFUSAL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        stop_processes([process], timeout=20)
        pytest.fail(f"devserver {' '.join(args)} still running after {REFUSAL_TIMEOUT_SECONDS} s")
    return process.returncode, output, errors


def test_run_on_a_taken_port_exits_at_once_with_one_line(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        returncode, output, errors = run_until_it_exits(env, f"127.0.0.1:{port}", "--noreload")
    assert returncode == 1
    assert output == ""
    assert re.fullmatch(
        rf"Port {port} on 127.0.0.1 is already in use: stop what holds it, or run on another"
        r" port \(python3 dev.py run 127.0.0.1:\d+\)\.\n",
        errors,
    )


def test_run_with_a_redis_that_does_not_answer_exits_at_once_naming_it_without_password(
    tmp_path,
):
    redis_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    env["REDIS_URL"] = redis_url
    returncode, output, errors = run_until_it_exits(env, f"127.0.0.1:{free_port()}")
    assert returncode == 1
    assert output == ""
    assert errors.startswith(
        f"Redis at {redis_url.replace('hunter2', '***')} does not answer (ConnectionError: "
    )
    assert errors.endswith(". Fix REDIS_URL, or unset it for the embedded Redis.\n")
    assert len(errors.splitlines()) == 1


def test_run_refuses_a_redis_url_without_a_scheme(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    env["REDIS_URL"] = "localhost:6379"
    returncode, output, errors = run_until_it_exits(env, f"127.0.0.1:{free_port()}")
    assert returncode == 1
    assert errors == (
        "REDIS_URL 'localhost:6379' does not start with redis://, rediss:// or unix:// (did you"
        " mean redis://localhost:6379?).\n"
    )


def test_a_server_that_stops_by_itself_makes_run_fail_even_with_status_0():
    # Daphne's runserver --noreload exits 0 after "Listen failure"; killed, it has no status.
    assert devserver.exit_status_of_server(0) == 1
    assert devserver.exit_status_of_server(-signal.SIGKILL) == 1
    assert devserver.exit_status_of_server(3) == 3


def test_run_serves_the_chat_and_ctrl_c_stops_server_and_redis(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    output = open(tmp_path / "output.txt", "w+")
    # In a process group of its own, as a terminal runs it: Ctrl-C signals the whole group.
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.devserver", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
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
        sockets[0].close()  # the other is still open at Ctrl-C: its leave is recorded then
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
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
    assert log.count("Watching for file changes") == 1  # not once plain and once as a log line
    # Redis outlived the server: the server's last presence flush found it (it runs in a
    # session of its own, so the terminal's Ctrl-C does not reach it first).
    assert "not recorded" not in log


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


@pytest.mark.parametrize(
    ("addrport", "url"),
    [
        ("8607", "http://127.0.0.1:8607/chat/"),
        ("127.0.0.2:8607", "http://127.0.0.2:8607/chat/"),
        ("localhost:8607", "http://localhost:8607/chat/"),
        ("0:8607", "http://127.0.0.1:8607/chat/"),
        ("0.0.0.0:8607", "http://127.0.0.1:8607/chat/"),
        ("[::1]:8607", "http://[::1]:8607/chat/"),
        ("[::]:8607", "http://[::1]:8607/chat/"),
    ],
)
def test_run_reads_its_address_as_runserver_does_and_prints_a_url_that_opens(addrport, url):
    assert devserver.chat_url(*devserver.address_to_check(addrport)) == url


@pytest.mark.parametrize("addrport", ["http://127.0.0.1:8000", "127.0.0.1:", "::1:8000", "80x"])
def test_run_refuses_an_address_runserver_would_refuse(addrport):
    with pytest.raises(ValueError):
        devserver.address_to_check(addrport)
