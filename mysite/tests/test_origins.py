"""The WebSocket Origin check: this site's own origin, exactly, or a trusted one."""

import http.client
import logging
from urllib.parse import urlsplit

import pytest

from chat.tests.conftest import communicator
from mysite.origins import TokenUserMiddleware, refusal_reason

# Sockets go through the real application: accepted ones join a room, refused ones close
# their (unused) database connection as every consumer does.
pytestmark = pytest.mark.usefixtures("redis_channel_layer", "transactional_db")

HOST = b"127.0.0.1:8000"
SAME_ORIGIN = b"http://127.0.0.1:8000"

# Every one of these has the chat's host name: channels' AllowedHostsOriginValidator
# accepted them all.
FOREIGN_ORIGINS = [
    b"http://127.0.0.1:9999",
    b"https://127.0.0.1:8443",
    b"ftp://127.0.0.1",
    b"http://127.0.0.1",
    b"https://127.0.0.1:8000",
    b"http://127.0.0.1:8000/",
    b"http://evil.example",
    b"null",
]


def handshake_scope(host=HOST, origin=SAME_ORIGIN, scheme="ws", **headers) -> dict:
    """The scope of a WebSocket handshake with these headers (None leaves one out)."""
    pairs = [("host", host), ("origin", origin), *headers.items()]
    return {
        "type": "websocket",
        "scheme": scheme,
        "path": "/ws/chat/lobby/",
        "headers": [(name.replace("_", "-").encode(), value) for name, value in pairs if value],
    }


async def handshake(host, origin) -> bool:
    """Whether mysite.asgi.application accepts a handshake with this Host and Origin."""
    socket = communicator("lobby", origin=origin, host=host)
    connected, _ = await socket.connect()
    await socket.disconnect()
    return connected


async def test_same_origin_handshake_is_accepted():
    assert await handshake(HOST, SAME_ORIGIN)


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
async def test_handshake_from_another_port_scheme_or_host_is_refused(origin):
    assert not await handshake(HOST, origin)


async def test_handshake_without_origin_is_refused():
    assert not await handshake(HOST, None)


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        (b"evil.example", SAME_ORIGIN),
        (b"evil.example", b"http://evil.example"),
        (None, SAME_ORIGIN),
        (b"127.0.0.1:x", SAME_ORIGIN),
    ],
)
async def test_handshake_to_a_host_not_allowed_is_refused(host, origin):
    assert not await handshake(host, origin)


async def test_handshake_from_a_trusted_origin_in_settings_is_accepted(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    assert await handshake(HOST, b"https://chat.example.com")
    assert not await handshake(HOST, b"https://chat.example.com:8443")


async def test_refused_handshake_is_logged_once_with_its_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="mysite.origins"):
        assert not await handshake(HOST, b"http://127.0.0.1:9999")
    [record] = [r for r in caplog.records if r.name == "mysite.origins"]
    assert "'http://127.0.0.1:9999'" in record.getMessage()
    assert "http://127.0.0.1:8000" in record.getMessage()
    assert record.exc_info is None


def test_secure_socket_wants_an_https_origin():
    assert refusal_reason(handshake_scope(scheme="wss", origin=b"https://127.0.0.1:8000")) is None
    assert refusal_reason(handshake_scope(scheme="wss", origin=SAME_ORIGIN)) is not None


def test_behind_a_tls_proxy_the_scheme_comes_from_secure_proxy_ssl_header(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = {"x_forwarded_proto": b"https"}
    assert refusal_reason(handshake_scope(origin=b"https://127.0.0.1:8000", **proxied)) is None
    assert refusal_reason(handshake_scope(origin=SAME_ORIGIN, **proxied)) is not None
    # Unless Django is told to trust the proxy, its header is ignored, as for HTTP.
    settings.SECURE_PROXY_SSL_HEADER = None
    assert refusal_reason(handshake_scope(origin=b"https://127.0.0.1:8000", **proxied)) is not None


def test_host_is_validated_against_allowed_hosts_as_django_does(settings):
    settings.ALLOWED_HOSTS = [".example.com"]
    assert refusal_reason(handshake_scope(b"chat.example.com", b"http://chat.example.com")) is None
    assert "ALLOWED_HOSTS" in refusal_reason(handshake_scope())


@pytest.mark.parametrize(
    ("origin", "trusted"),
    [
        (b"https://a.example.com", True),
        (b"https://a.b.example.com", True),
        (b"http://a.example.com", False),
        (b"https://a.example.com:8443", False),
        (b"https://example.org", False),
        (b"https://notexample.com", False),
    ],
)
def test_wildcard_trusted_origin_matches_subdomains_on_its_scheme_only(settings, origin, trusted):
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.com"]
    assert (refusal_reason(handshake_scope(origin=origin)) is None) is trusted


def _handshake_status(server_url: str, host: str, origin: str) -> int:
    """The HTTP status a real server answers a WebSocket handshake with."""
    address = urlsplit(server_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request(
            "GET",
            "/ws/chat/lobby/",
            headers={
                "Host": host,
                "Origin": origin,
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_real_server_answers_a_foreign_host_or_origin_with_403(chat_server):
    own = urlsplit(chat_server).netloc
    assert _handshake_status(chat_server, own, chat_server) == 101
    assert _handshake_status(chat_server, own, "http://127.0.0.1:9999") == 403
    assert _handshake_status(chat_server, "evil.example", chat_server) == 403


def test_the_token_user_middleware_keeps_no_frame_of_its_own_while_a_socket_is_open():
    async def application(scope, receive, send):
        return scope

    handed_on = TokenUserMiddleware(application)(handshake_scope(), None, None)
    try:
        assert handed_on.cr_code is application.__code__  # the application's coroutine itself
    finally:
        handed_on.close()
