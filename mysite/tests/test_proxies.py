"""The client's address behind a reverse proxy: believed only from CHAT_TRUSTED_PROXIES."""

import http.client
import logging
import time
from urllib.parse import urlsplit

import pytest
from channels.testing import ApplicationCommunicator
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_started

from mysite.asgi import application
from mysite.proxies import (
    UNREADABLE_CLIENT,
    TrustedProxyMiddleware,
    forwarded_client,
    trusted_networks,
)

PROXY = "10.0.0.1"
CLIENT = "203.0.113.7"
LOG_TIMEOUT_SECONDS = 10.0


def scope(kind: str = "http", peer: str = PROXY, **headers: bytes) -> dict:
    """An ASGI scope from this TCP peer, with these headers (x_forwarded_for=...)."""
    return {
        "type": kind,
        "path": "/ws/chat/lobby/" if kind == "websocket" else "/chat/",
        "client": [peer, 54321],
        "method": "GET",
        "query_string": b"",
        "headers": [(name.replace("_", "-").encode(), value) for name, value in headers.items()],
    }


async def seen_by_application(incoming: dict) -> dict:
    """The scope the wrapped application receives from TrustedProxyMiddleware."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    await TrustedProxyMiddleware(app)(incoming, None, None)
    return seen[0]


def trust(settings, *entries: str):
    settings.CHAT_TRUSTED_PROXIES = trusted_networks(entries)


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_without_trusted_proxies_a_client_sent_forwarded_for_is_ignored(settings, kind):
    trust(settings)
    incoming = scope(kind, peer=CLIENT, x_forwarded_for=b"6.6.6.6")
    assert await seen_by_application(incoming) == incoming


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_from_a_trusted_proxy_the_forwarded_address_is_the_client(settings, kind):
    trust(settings, PROXY)
    seen = await seen_by_application(scope(kind, x_forwarded_for=CLIENT.encode()))
    assert seen["client"] == [CLIENT, 0]


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_from_an_untrusted_peer_forwarding_headers_are_ignored_and_dropped(settings, kind):
    trust(settings, PROXY)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    incoming = scope(
        kind, peer=CLIENT, x_forwarded_for=b"6.6.6.6", x_forwarded_proto=b"https", origin=b"x"
    )
    seen = await seen_by_application(incoming)
    assert seen["client"] == [CLIENT, 54321]
    assert seen["headers"] == [(b"origin", b"x")]


async def test_a_spoofed_chain_through_a_trusted_proxy_yields_the_right_most_untrusted(settings):
    trust(settings, PROXY)
    seen = await seen_by_application(scope(x_forwarded_for=b"6.6.6.6, 1.2.3.4"))
    assert seen["client"] == ["1.2.3.4", 0]


def test_trusted_hops_in_the_chain_are_skipped_networks_included():
    networks = trusted_networks(["10.0.0.0/8", "fd00::1"])
    assert forwarded_client("6.6.6.6, 1.2.3.4, 10.9.9.9, fd00::1", networks) == "1.2.3.4"
    # Only proxies in the chain: the farthest one is the nearest thing to a client.
    assert forwarded_client("10.1.1.1, 10.2.2.2", networks) == "10.1.1.1"


async def test_repeated_forwarded_for_headers_are_read_as_one_list(settings):
    trust(settings, PROXY)
    incoming = scope()
    incoming["headers"] = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4")]
    assert (await seen_by_application(incoming))["client"] == ["1.2.3.4", 0]


@pytest.mark.parametrize("forwarded", [b"", b"not-an-address", b"1.2.3.4, junk", b"[::1"])
async def test_an_unreadable_forwarded_address_makes_the_client_unknown_never_the_proxy(
    settings, forwarded
):
    trust(settings, "127.0.0.1")  # a proxy on this host: as the client, loopback's rights
    incoming = scope(peer="127.0.0.1", x_forwarded_for=forwarded)
    assert (await seen_by_application(incoming))["client"] == [UNREADABLE_CLIENT, 0]


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (b"1.2.3.4:5678", "1.2.3.4"),
        (b"[2001:db8::5]:443", "2001:db8::5"),
        (b"[2001:db8::5]", "2001:db8::5"),
        (b"2001:db8::5", "2001:db8::5"),
    ],
)
async def test_a_forwarded_address_with_a_port_or_brackets_is_read(settings, forwarded, client):
    trust(settings, PROXY)
    incoming = scope(x_forwarded_for=forwarded)
    assert (await seen_by_application(incoming))["client"] == [client, 0]


async def test_a_trusted_proxys_own_request_without_forwarded_for_is_its_own(settings):
    trust(settings, PROXY)
    assert (await seen_by_application(scope()))["client"] == [PROXY, 54321]


async def test_a_proxy_on_a_dual_stack_socket_is_recognised_by_its_ipv4_address(settings):
    trust(settings, "10.0.0.0/24")
    seen = await seen_by_application(scope(peer="::ffff:10.0.0.1", x_forwarded_for=b"::1"))
    assert seen["client"] == ["::1", 0]


def test_trusted_proxies_are_addresses_or_networks_and_a_typo_is_refused():
    assert [str(n) for n in trusted_networks(["172.18.0.0/16", "10.0.0.5"])] == [
        "172.18.0.0/16",
        "10.0.0.5/32",
    ]
    with pytest.raises(ImproperlyConfigured, match="CHAT_TRUSTED_PROXIES"):
        trusted_networks(["nginx"])


async def _client_django_sees(incoming: dict) -> list:
    """scope["client"] as Django's ASGI handler receives it (its REMOTE_ADDR) for an HTTP GET."""
    seen = []

    def started(sender, scope, **kwargs):
        seen.append(scope["client"])

    request_started.connect(started)
    try:
        communicator = ApplicationCommunicator(application, incoming)
        await communicator.send_input({"type": "http.request"})
        await communicator.receive_output(timeout=10)  # the response's start
        await communicator.wait(timeout=10)
    finally:
        request_started.disconnect(started)
    return seen[0]


@pytest.mark.django_db
async def test_django_gets_the_forwarded_client_only_from_a_trusted_proxy(settings):
    trust(settings, PROXY)
    via_proxy = scope(x_forwarded_for=b"6.6.6.6, " + CLIENT.encode(), host=b"127.0.0.1")
    assert (await _client_django_sees(via_proxy))[0] == CLIENT
    direct = scope(peer=CLIENT, x_forwarded_for=b"6.6.6.6", host=b"127.0.0.1")
    assert (await _client_django_sees(direct))[0] == CLIENT


async def _refused_handshake_logs(caplog, incoming: dict) -> str:
    """The warning mysite.asgi.application logs when it refuses this handshake."""
    communicator = ApplicationCommunicator(application, incoming)
    with caplog.at_level(logging.WARNING, logger="mysite.origins"):
        await communicator.send_input({"type": "websocket.connect"})
        assert (await communicator.receive_output(timeout=10))["type"] == "websocket.close"
    await communicator.wait(timeout=10)
    [record] = [r for r in caplog.records if r.name == "mysite.origins"]
    return record.getMessage()


@pytest.mark.usefixtures("redis_channel_layer", "transactional_db")
async def test_a_refused_handshake_is_logged_with_the_forwarded_client(settings, caplog):
    trust(settings, PROXY)
    incoming = scope("websocket", x_forwarded_for=b"6.6.6.6, " + CLIENT.encode())
    incoming["headers"] += [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://evil.example")]
    assert f"from {CLIENT} " in await _refused_handshake_logs(caplog, incoming)


@pytest.mark.usefixtures("redis_channel_layer", "transactional_db")
@pytest.mark.parametrize(("peer", "accepted"), [(PROXY, True), (CLIENT, False)])
async def test_the_scheme_from_x_forwarded_proto_is_believed_only_from_a_trusted_proxy(
    settings, peer, accepted
):
    trust(settings, PROXY)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    incoming = scope("websocket", peer=peer, x_forwarded_proto=b"https")
    incoming["headers"] += [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://127.0.0.1:8000")]
    communicator = ApplicationCommunicator(application, incoming)
    await communicator.send_input({"type": "websocket.connect"})
    answer = await communicator.receive_output(timeout=10)
    assert (answer["type"] == "websocket.accept") is accepted
    await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(timeout=10)


def _refused_handshake(server_url: str, forwarded_for: str):
    """A WebSocket handshake from a foreign Origin, as a proxy forwarding this client."""
    address = urlsplit(server_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request(
            "GET",
            "/ws/chat/lobby/",
            headers={
                "Host": address.netloc,
                "Origin": "http://evil.example",
                "X-Forwarded-For": forwarded_for,
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert connection.getresponse().status == 403
    finally:
        connection.close()


def _wait_for_output(capfd, text: str) -> str:
    """The server's output up to the line containing text (it writes to our stdout/stderr)."""
    output = ""
    deadline = time.monotonic() + LOG_TIMEOUT_SECONDS
    while text not in output and time.monotonic() < deadline:
        captured = capfd.readouterr()
        output += captured.out + captured.err
        time.sleep(0.05)  # polling the captured output, not guessing how long a step takes
    return output


def test_a_real_server_behind_a_trusted_proxy_sees_the_forwarded_client(start_chat_server, capfd):
    server = start_chat_server(CHAT_TRUSTED_PROXIES="127.0.0.1")
    _refused_handshake(server.url, f"6.6.6.6, {CLIENT}")
    output = _wait_for_output(capfd, "refused")
    assert f"WebSocket handshake from {CLIENT} to /ws/chat/lobby/ refused" in output
