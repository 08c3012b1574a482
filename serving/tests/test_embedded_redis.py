"""The embedded redis-server: starts on loopback, answers, and leaves nothing when stopped."""

import os
import socket

import pytest
import redis

from serving.embedded_redis import EmbeddedRedis, free_port, port_is_free


def test_server_answers_and_is_gone_after_stop():
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        client.close()
        pid, workdir = server.process.pid, server._workdir
        assert os.path.isdir(workdir)
    assert server.process.poll() is not None
    assert not os.path.exists(f"/proc/{pid}") or server.process.returncode is not None
    assert not os.path.exists(workdir)
    assert port_is_free(server.port)


def test_a_taken_port_is_reported_not_hung_on():
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        server = EmbeddedRedis(occupant.getsockname()[1])
        with pytest.raises(RuntimeError, match=f"port {server.port} on 127.0.0.1 is taken"):
            server.start()
    assert server.process is None


def test_free_port_is_bindable():
    assert port_is_free(free_port())
