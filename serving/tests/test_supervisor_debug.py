"""`python -m serving.supervisor` listens beyond this machine only with DEBUG off."""

import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from serving.embedded_redis import free_port
from serving.supervisor import debug_bind_refusal

REFUSAL_TIMEOUT_SECONDS = 60


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_may_be_listened_on_in_debug(settings, host):
    settings.DEBUG = True
    assert debug_bind_refusal(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.7", "no-such-host.invalid"])
def test_other_addresses_are_refused_in_debug(settings, host):
    settings.DEBUG = True
    assert "DEBUG" in debug_bind_refusal(host)


def test_any_address_may_be_listened_on_with_debug_off(settings):
    settings.DEBUG = False
    assert debug_bind_refusal("0.0.0.0") is None


@pytest.mark.parametrize("bind", ["0.0.0.0:{port}", "[::]:{port}", ":{port}"])
def test_serve_in_debug_on_a_public_address_exits_with_a_message_and_listens_on_nothing(bind):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    command = [sys.executable, "-m", "serving.supervisor", "--processes", "1", "--bind"]
    result = subprocess.run(
        [*command, bind.format(port=port)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert result.returncode == 1
    assert "refusing to listen" in result.stderr and "DJANGO_DEBUG=false" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
