"""DJANGO_LOG_FORMAT=json (settings.LOGGING): a real server process writes each log line as
one JSON object, and the socket path's lines name their room, code and client."""

import asyncio
import json

import pytest
import websockets

from mysite.tests.test_settings import manage

FIELDS = {"time", "level", "logger", "message"}
WAIT_SECONDS = 10.0


def json_lines(text: str) -> list[dict]:
    """Each line of a log as the object it holds; fails on a line that is not one."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def refused_frame_then_bad_origin(url: str, room: str):
    ws_url = url.replace("http://", "ws://")
    async with websockets.connect(f"{ws_url}/ws/chat/{room}/", origin=url) as socket:
        await socket.send("not json")
        while "error" not in json.loads(await asyncio.wait_for(socket.recv(), WAIT_SECONDS)):
            pass
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(f"{ws_url}/ws/chat/{room}/", origin="http://evil.example")


def test_json_log_lines_parse_and_carry_room_code_and_client(start_chat_server, tmp_path):
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = start_chat_server(output=output, DJANGO_LOG_FORMAT="json")
        asyncio.run(refused_frame_then_bad_origin(server.url, "logged"))
        server.stop()
    lines = json_lines(log.read_text())
    assert lines and all(FIELDS <= line.keys() for line in lines), lines
    refused = [line for line in lines if line["message"].startswith("refused frame")]
    assert refused and refused[0]["room"] == "logged"
    assert refused[0]["code"] == "invalid_json" and refused[0]["client"] == "127.0.0.1"
    handshake = [line for line in lines if "handshake" in line["message"]]
    assert handshake and handshake[0]["client"] == "127.0.0.1"


def test_an_unknown_log_format_stops_the_server_at_start_in_one_line():
    result = manage("check", DJANGO_LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "DJANGO_LOG_FORMAT='xml' is not one of ['json', 'plain']" in result.stderr
