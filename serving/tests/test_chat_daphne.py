"""serving.chat_daphne: what daphne would hold for a client without bound, bounded.

A client that stops reading is closed with 4408 and nobody else waits for it; one that
floods pings is closed with 4429; a socket lives CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS;
HTTP bodies over the limit are refused with 413 unread, and slow requests with 408.
"""

import asyncio
import gc
import http.client
import json
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import websockets
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket import protocol as autobahn_protocol
from daphne.server import Server
from django.conf import settings
from django.urls import clear_url_caches, get_resolver
from twisted.internet.testing import StringTransport

from benchmarks.ping_flood import LIFTED, PingingClient
from chat.protocol import (
    CLOSE_FLOODING,
    CLOSE_LIFETIME_ENDED,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SERVER_RESTARTING,
    CLOSE_TOO_SLOW,
)
from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS, server_environment
from serving.chat_daphne import SHUTDOWN_DRAIN_SECONDS, BacklogBoundedProtocol, ChatDaphneServer
from serving.embedded_redis import free_port
from serving.processes import stop_processes, wait_for_http

BACKLOG_LIMIT_BYTES = 256 * 1024
# Daphne's --websocket-max-message-size, which no entry point of ours changes.
MAX_MESSAGE_BYTES = 1024 * 1024
SEEDED_MESSAGES = 1500
# 1,500 frames of about 4 KB: some 6 MB, more than the kernel's socket buffers on both
# ends (about 3 MB on loopback) plus the limit, so the server must hold the rest itself.
SEEDED_TEXT = "x" * 4000
# The whole room recovered on the socket: what is under test is the server's bound on unread
# bytes. (The recovery bound bounds them too, but only for recoveries; a busy room's live
# messages not.)
SERVER_ENV = {
    "CHAT_SEND_BACKLOG_LIMIT_BYTES": str(BACKLOG_LIMIT_BYTES),
    "CHAT_RECOVERY_LIMIT": str(SEEDED_MESSAGES),
}


def seed_room(server, room: str, count: int, text: str):
    """Store `count` messages in `room`, in the server's own database."""
    code = (
        "from chat import services\n"
        f"author = services.Author(name='seeder')\n"
        f"for _ in range({count}):\n"
        f"    services.store_message({room!r}, author, {text!r}, None)\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env, check=True
    )


@pytest.fixture
def slow_client_server(start_chat_server):
    return start_chat_server(**SERVER_ENV)


def room_url(server, room: str, after: int | None = None) -> str:
    query = "" if after is None else f"?after={after}"
    return f"{server.url.replace('http', 'ws', 1)}/ws/chat/{room}/{query}"


async def connect(server, room: str, after: int | None = None, **options):
    return await websockets.connect(
        room_url(server, room, after), origin=server.url, ping_interval=None, **options
    )


async def connect_without_reading(server, room: str, after: int):
    """A client that never reads: a tiny receive buffer, and one queued frame at most."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    return await connect(server, room, after, sock=sock, max_queue=1)


async def presence_count(client, timeout: float = 10.0) -> int:
    """The count of the next presence frame, skipping anything else."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await client.recv())
            if "presence" in frame:
                return frame["presence"]["count"]


async def read_until_closed(client) -> list[int]:
    """Every message id the client still gets, up to the close."""
    ids = []
    async with asyncio.timeout(30):
        try:
            while True:
                frame = json.loads(await client.recv())
                if "id" in frame:
                    ids.append(frame["id"])
        except websockets.ConnectionClosed:
            return ids


async def test_a_client_that_stops_reading_is_closed_with_4408_and_others_are_not_delayed(
    start_chat_server,
):
    # Refresh rounds every half second: the round's catch-up is what floods the room here.
    server = start_chat_server(**SERVER_ENV, CHAT_PRESENCE_REFRESH_SECONDS="0.5")
    room = f"stuck-{uuid.uuid4().hex[:8]}"
    watcher = await connect(server, room, max_queue=None)
    try:
        assert await presence_count(watcher) == 1
        stuck = await connect_without_reading(server, room, after=0)
        assert await presence_count(watcher) == 2
        # 6 MB stored behind the sockets' backs (never broadcast): each refresh round has
        # them catch up. The one that never reads takes it only up to the limit, and
        # then leaves the room at once, long before its grace for the close frame ends.
        await asyncio.to_thread(seed_room, server, room, SEEDED_MESSAGES, SEEDED_TEXT)
        assert await presence_count(watcher, timeout=30) == 1

        # Meanwhile the room goes on, undelayed.
        started = time.monotonic()
        await watcher.send(json.dumps({"message": "still here"}))
        async with asyncio.timeout(2):
            while json.loads(await watcher.recv()).get("message") != "still here":
                pass
        assert time.monotonic() - started < 2

        # The stuck client reads at last: what the server held back was dropped, not
        # queued, and the close says why.
        received = await read_until_closed(stuck)
        assert stuck.close_code == CLOSE_TOO_SLOW
        assert received == list(range(1, len(received) + 1))
        assert len(received) < SEEDED_MESSAGES
    finally:
        await watcher.close()


async def test_a_closed_slow_client_catches_up_in_one_reconnect_however_far_behind(
    slow_client_server,
):
    server = slow_client_server
    room = f"catch-up-{uuid.uuid4().hex[:8]}"
    seed_room(server, room, SEEDED_MESSAGES, SEEDED_TEXT)
    stuck = await connect_without_reading(server, room, after=0)
    await asyncio.sleep(1)
    received = await read_until_closed(stuck)
    assert stuck.close_code == CLOSE_TOO_SLOW
    # As the page does: reconnect with ?after= the last id. A client that reads takes a
    # catch-up far bigger than the limit in one go: only what it leaves unread counts.
    client = await connect(server, room, after=received[-1])
    try:
        async with asyncio.timeout(30):
            while len(received) < SEEDED_MESSAGES:
                frame = json.loads(await client.recv())
                if "id" in frame:
                    received.append(frame["id"])
    finally:
        await client.close()
    assert received == list(range(1, SEEDED_MESSAGES + 1))


def test_unsent_bytes_reads_twisteds_write_buffer():
    """The one private thing serving.chat_daphne reads: Twisted's buffers, by their names."""
    from twisted.internet.abstract import FileDescriptor

    from serving.chat_daphne import unsent_bytes

    descriptor = FileDescriptor()
    descriptor.connected = True
    descriptor.startWriting = lambda: None
    descriptor.write(b"a" * 10)
    descriptor.write(b"b" * 5)
    assert unsent_bytes(descriptor) == 15


async def test_sigterm_stops_the_server_promptly_with_handlers_in_flight(start_chat_server):
    server = start_chat_server()
    room = f"sigterm-{uuid.uuid4().hex[:8]}"
    # Unbounded queues: clients that stop reading would not notice the server going.
    clients = [await connect(server, room, max_queue=None) for _ in range(5)]
    # 100 messages to store and 500 deliveries: the one sync thread is busy for a while.
    for number in range(20):
        for client in clients:
            await client.send(json.dumps({"message": f"in flight {number}"}))
    server.process.terminate()
    # Daphne alone waits for ever here: a handler in flight waits for the stopped loop.
    # Well within SHUTDOWN_DRAIN_SECONDS: every application ended, none was left behind.
    exit_code = await asyncio.to_thread(server.process.wait, SHUTDOWN_DRAIN_SECONDS - 1)
    assert exit_code == 0
    for client in clients:
        await client.close()


def flood_pings() -> int:
    """Enough pings that the server itself must hold some of their pongs (127 bytes each)."""
    # Twice what the server's kernel may hold for the client (its largest send buffer,
    # tcp_wmem's last field) plus the backlog limit.
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_buffer_max = 4 * 1024 * 1024
    return 2 * (send_buffer_max + BACKLOG_LIMIT_BYTES) // 127


def pinging_client(server, room: str) -> PingingClient:
    return PingingClient("127.0.0.1", server.port, f"/ws/chat/{room}/", server.url)


def test_pongs_count_against_the_backlog_so_a_pinger_that_never_reads_is_closed_with_4408(
    start_chat_server,
):
    server = start_chat_server(
        CHAT_SEND_BACKLOG_LIMIT_BYTES=str(BACKLOG_LIMIT_BYTES),
        # Time enough to read up to the close frame afterwards.
        CHAT_SLOW_CLIENT_GRACE_SECONDS="60",
        # Only the backlog bound holds the pongs here.
        CHAT_PING_BURST=LIFTED,
        CHAT_PING_PER_SECOND=LIFTED,
    )
    pings = flood_pings()
    client = pinging_client(server, f"pinger-{uuid.uuid4().hex[:8]}")
    try:
        client.send_pings(pings)
        pongs, code = client.read_until_close(timeout=10)
    finally:
        client.close()
    # Daphne alone queued every pong, without bound, and closed nothing.
    assert code == CLOSE_TOO_SLOW
    assert pongs < pings


def test_a_client_that_floods_pings_is_answered_up_to_the_burst_then_closed_with_4429(
    start_chat_server,
):
    server = start_chat_server()
    client = pinging_client(server, f"pings-{uuid.uuid4().hex[:8]}")
    try:
        client.send_pings(2 * settings.CHAT_PING_BURST)
        pongs, code = client.read_until_close(timeout=10)
    finally:
        client.close()
    assert code == CLOSE_FLOODING
    assert settings.CHAT_PING_BURST <= pongs < 2 * settings.CHAT_PING_BURST


async def test_a_socket_is_closed_with_4000_when_its_lifetime_ends(start_chat_server):
    lifetime = 3
    server = start_chat_server(CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS=str(lifetime))
    client = await connect(server, f"lifetime-{uuid.uuid4().hex[:8]}", max_queue=None)
    opened = time.monotonic()
    await read_until_closed(client)
    lived = time.monotonic() - opened
    assert client.close_code == CLOSE_LIFETIME_ENDED
    # Daphne looks at its sockets every 2 s; it counts from a little before the handshake.
    assert lifetime - 0.5 < lived < lifetime + 2 + 1


def test_daphnes_own_24_hour_cut_is_off_for_every_entry_point():
    """Not daphne's bare 1000 at 24 h: CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS, with 4000."""
    from django.core.management import get_commands, load_command_class

    assert ChatDaphneServer(application=None, endpoints=["tcp:0"]).websocket_timeout == -1
    # serving.supervisor, the Dockerfile and docker-compose.yml run `python -m serving.chat_daphne`.
    assert get_commands()["runserver"] == "serving"
    assert load_command_class("serving", "runserver").server_cls is ChatDaphneServer


def test_a_websocket_connection_takes_its_factorys_options_without_printing_them(monkeypatch):
    printed = []
    monkeypatch.setattr(autobahn_protocol, "pformat", lambda options: printed.extend(options))
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(autoPingInterval=7, openHandshakeTimeout=3)
    factory.protocol = BacklogBoundedProtocol
    connection = factory.buildProtocol(None)
    connection.maxMessagePayloadSize = 99  # set on the protocol: kept, as autobahn keeps it
    transport = StringTransport()
    transport.registerProducer(object(), True)  # as the HTTP channel upgraded from does
    connection.makeConnection(transport)
    assert (connection.autoPingInterval, connection.openHandshakeTimeout) == (7, 3)
    assert connection.maxMessagePayloadSize == 99
    assert printed == []  # autobahn's debug line, pretty-printed at every connect


@pytest.fixture
def http_server(start_chat_server):
    """A server with a 1-second request deadline, and the default body limit."""
    return start_chat_server(CHAT_HTTP_REQUEST_TIMEOUT_SECONDS="1")


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends up to its close."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post_head(length_header: str) -> bytes:
    return (
        b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n%s\r\n\r\n" % length_header.encode()
    )


def test_a_content_length_over_the_limit_is_answered_413_before_the_body_is_sent(http_server):
    with socket.create_connection(("127.0.0.1", http_server.port)) as sock:
        sock.sendall(post_head(f"Content-Length: {500 * 1024 * 1024}"))
        # Daphne alone waits for (and stores) all 500 MiB first.
        assert read_response(sock).startswith(b"HTTP/1.1 413 ")


def test_a_client_sending_an_over_limit_body_anyway_still_reads_the_413(http_server):
    # As a browser does, without waiting for an answer: 8 times the limit, more than the
    # kernels hold, so the server must read on (and drop) for the send to finish.
    body = b"x" * (8 * settings.CHAT_HTTP_MAX_BODY_BYTES)
    with socket.create_connection(("127.0.0.1", http_server.port)) as sock:
        sock.sendall(post_head(f"Content-Length: {len(body)}") + body)
        assert read_response(sock).startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_is_answered_413_as_soon_as_it_passes_the_limit(http_server):
    chunk = b"x" * 65536
    chunks = settings.CHAT_HTTP_MAX_BODY_BYTES // len(chunk) + 2
    with socket.create_connection(("127.0.0.1", http_server.port)) as sock:
        # The body never ends (no last chunk): daphne alone would wait for it.
        sock.sendall(post_head("Transfer-Encoding: chunked") + b"10000\r\n%s\r\n" % chunk * chunks)
        assert read_response(sock).startswith(b"HTTP/1.1 413 ")


def test_a_request_head_trickling_in_is_answered_408_at_the_deadline(http_server):
    with socket.create_connection(("127.0.0.1", http_server.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # One header line every 0.2 s, until the server answers: Twisted's idle timeout
        # (60 s) never fires, and daphne alone would wait for ever.
        while not select.select([sock], [], [], 0.2)[0] and time.monotonic() - started < 10:
            sock.sendall(b"X-Trickle: 1\r\n")
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1 + 2


def test_a_normal_post_on_a_kept_alive_connection_still_works(http_server):
    connection = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    try:
        connection.request("GET", "/accounts/login/")
        page = connection.getresponse()
        html = page.read().decode()
        assert page.status == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        cookie = page.getheader("Set-Cookie").split(";", 1)[0]
        # Idle between requests for longer than the request deadline: that is not slow.
        time.sleep(1.5)
        connection.request(
            "POST",
            "/accounts/login/",
            body=f"csrfmiddlewaretoken={token}&username=nobody&password=wrong",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
        )
        answer = connection.getresponse()
        # The form again, with its error: Django read the body and checked it.
        assert answer.status == 200
        assert "csrfmiddlewaretoken" in answer.read().decode()
    finally:
        connection.close()


@pytest.fixture
def heap_unfrozen_after():
    yield
    gc.unfreeze()


def test_the_server_freezes_its_start_up_heap_with_the_urlconf_before_serving(
    monkeypatch, heap_unfrozen_after
):
    """Full collections skip what start-up made: each walked it all, while messages waited."""
    clear_url_caches()  # as in a new process: Django loads the URLconf at the first request
    frozen_when_serving = []
    monkeypatch.setattr(
        Server, "run", lambda server: frozen_when_serving.append(gc.get_freeze_count())
    )

    ChatDaphneServer(application=None, endpoints=["tcp:0"]).run()

    assert frozen_when_serving and frozen_when_serving[0] > 0
    url_patterns = get_resolver().__dict__.get("url_patterns")
    assert url_patterns is not None, "the URLconf is loaded before serving"
    assert not any(o is url_patterns for o in gc.get_objects()), "and frozen with the rest"


def test_the_server_starts_before_django_is_set_up():
    """`python -m serving.chat_daphne` imports its close codes from chat.protocol first."""
    result = subprocess.run(
        [sys.executable, "-m", "serving.chat_daphne", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


# --- Client addresses, from every bind ---------------------------------------------------

# Production settings, over plain HTTP on a test address; the full address in the refusal
# line (no /64 grouping), and two requests to the rate-limited endpoint a minute.
ADDRESS_SERVER_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "test-only-" + "k" * 50,
    "DJANGO_ALLOWED_HOSTS": "*",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    # Binds beyond loopback serve production mode only behind a TLS proxy (serving.startup):
    # say there is one; these tests look at addresses, not at cookies.
    "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
    "CHAT_IPV6_PREFIX_LENGTH": "128",
    "CHAT_LIMIT_API_PER_ADDRESS": "2/minute",
}
REQUESTS_PAST_THE_LIMIT = 3
# A client that a namespace's new link has not carried yet retries for this long.
CLIENT_CONNECT_SECONDS = 10
# Three requests on fresh connections; prints each status. Run in a network namespace too.
CLIENT_SCRIPT = """
import sys, time, urllib.error, urllib.request
url, statuses, deadline = sys.argv[1], [], time.monotonic() + float(sys.argv[2])
headers = {"X-Forwarded-For": sys.argv[4]} if len(sys.argv) > 4 else {}
while len(statuses) < int(sys.argv[3]):
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            statuses.append(response.status)
    except urllib.error.HTTPError as error:
        statuses.append(error.code)
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
print(*statuses)
"""


@pytest.fixture
def serve_on(redis_server, limits_count_from_zero, migrated_database, tmp_path):
    """Start serving.supervisor on a bind; returns its base URL and its log file."""
    started = []

    def _serve(host: str, url_host: str, **extra_env: str) -> tuple[str, Path]:
        env = server_environment(
            redis_server.url, migrated_database, **ADDRESS_SERVER_ENV, **extra_env
        )
        port, log = free_port(), tmp_path / f"serve-{len(started)}.log"
        command = [sys.executable, "-m", "serving.supervisor", "--processes", "1", "--bind"]
        with log.open("w") as output:
            process = subprocess.Popen(
                [*command, f"{host}:{port}"], cwd=ROOT, env=env, stderr=output, stdout=output
            )
        started.append(process)
        url = f"http://{url_host}:{port}"
        wait_for_http(f"{url}/chat/", process, SERVER_READY_TIMEOUT_SECONDS)
        return url, log

    yield _serve
    stop_processes(started, timeout=30)


def requests_past_the_limit(
    url: str, namespace: str | None = None, forwarded_for: str | None = None
) -> list[int]:
    """The statuses of REQUESTS_PAST_THE_LIMIT requests to the rate-limited endpoint."""
    command = [sys.executable, "-c", CLIENT_SCRIPT, f"{url}/chat/lobby/messages/"]
    command += [str(CLIENT_CONNECT_SECONDS), str(REQUESTS_PAST_THE_LIMIT)]
    command += [forwarded_for] if forwarded_for else []
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [int(status) for status in result.stdout.split()]


def assert_seen_as(url: str, log: Path, address: str, namespace: str | None = None):
    """Requests from `address` share its limit, and the server names that address."""
    assert requests_past_the_limit(url, namespace) == [200, 200, 429]
    assert f"refused GET /chat/lobby/messages/ from {address}: " in log.read_text()


@pytest.mark.parametrize(
    ("bind", "url_host", "client"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]", "::1"),
        ("[::]", "[::1]", "::1"),  # dual stack, an IPv6 client
        ("[::]", "127.0.0.1", "127.0.0.1"),  # dual stack, an IPv4 client (::ffff:127.0.0.1)
    ],
)
def test_every_bind_sees_the_clients_own_address(serve_on, bind, url_host, client):
    url, log = serve_on(bind, url_host)
    assert_seen_as(url, log, client)


def test_a_proxy_on_a_dual_stack_bind_is_trusted_and_names_the_client(serve_on):
    # nginx on this host, reaching the server over IPv4 (::ffff:127.0.0.1 on [::]).
    url, log = serve_on("[::]", "127.0.0.1", CHAT_TRUSTED_PROXIES="127.0.0.1")
    assert requests_past_the_limit(url, forwarded_for="2001:db8::5") == [200, 200, 429]
    assert "refused GET /chat/lobby/messages/ from 2001:db8::5: " in log.read_text()


# A network of the test's own: a namespace holding a client, joined to this host by a
# veth pair (unique local addresses, no duplicate address detection to wait for).
NAMESPACE_NETWORK = "fd00:c4a7:1:2"


@pytest.fixture
def namespace_client():
    """A network namespace whose address is NAMESPACE_NETWORK::2; this host is ::1 there."""
    name = f"chat-test-{uuid.uuid4().hex[:8]}"
    host_link, client_link = f"vh{name[-8:]}", f"vc{name[-8:]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("`ip netns add` is not permitted here: no non-loopback IPv6 to test with")
    commands = [
        f"ip link add {host_link} type veth peer name {client_link} netns {name}",
        f"ip addr add {NAMESPACE_NETWORK}::1/64 dev {host_link} nodad",
        f"ip link set {host_link} up",
        f"ip -n {name} addr add {NAMESPACE_NETWORK}::2/64 dev {client_link} nodad",
        f"ip -n {name} link set {client_link} up",
    ]
    try:
        for command in commands:
            subprocess.run(command.split(), check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)  # and its veth pair


def test_a_non_loopback_ipv6_bind_sees_the_clients_own_address(serve_on, namespace_client):
    url, log = serve_on(f"[{NAMESPACE_NETWORK}::1]", f"[{NAMESPACE_NETWORK}::1]")
    assert_seen_as(url, log, f"{NAMESPACE_NETWORK}::2", namespace_client)


async def test_sigterm_closes_every_socket_with_4001_before_the_server_exits(start_chat_server):
    server = start_chat_server()
    room = f"restart-{uuid.uuid4().hex[:8]}"
    clients = [await connect(server, room) for _ in range(3)]
    server.process.terminate()
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), SHUTDOWN_DRAIN_SECONDS)
        assert (client.close_code, client.close_reason) == (
            CLOSE_SERVER_RESTARTING,
            "server restarting: reconnect",
        )
    assert await asyncio.to_thread(server.process.wait, SHUTDOWN_DRAIN_SECONDS) == 0


async def test_a_message_over_the_size_limit_is_closed_with_1009_and_a_log_line(
    start_chat_server, capfd
):
    server = start_chat_server()
    client = await connect(server, f"big-{uuid.uuid4().hex[:8]}")
    await client.send(json.dumps({"message": "x" * MAX_MESSAGE_BYTES}))
    await asyncio.wait_for(client.wait_closed(), 10)
    assert client.close_code == CLOSE_MESSAGE_TOO_BIG
    assert re.search(
        r"closing a WebSocket that sent a message over \d+ bytes", capfd.readouterr().err
    )


# The heartbeat of the half-open test: a ping after 1 s idle, and 1 s for its pong.
SHORT_HEARTBEAT = {"CHAT_HEARTBEAT_SECONDS": "1", "CHAT_HEARTBEAT_TIMEOUT_SECONDS": "1"}
# Daphne looks at its sockets every 2 s; the rest is a busy machine's slack.
HEARTBEAT_BOUND_SECONDS = 1 + 1 + 2 + 2


async def test_a_socket_whose_network_is_cut_is_dropped_within_the_heartbeat_bound(
    start_chat_server, tcp_relay
):
    server = start_chat_server(**SHORT_HEARTBEAT)
    relay = tcp_relay(server.port)
    room = f"cut-{uuid.uuid4().hex[:8]}"
    watcher = await connect(server, room)
    relayed = f"http://127.0.0.1:{relay.port}"
    cut_off = await websockets.connect(
        f"ws://127.0.0.1:{relay.port}/ws/chat/{room}/", origin=relayed, ping_interval=None
    )
    try:
        while await presence_count(watcher) != 2:
            pass
        relay.cut()  # the client hears nothing more, and the server nothing from it
        started = time.monotonic()
        while await presence_count(watcher, HEARTBEAT_BOUND_SECONDS) != 1:
            pass
        assert time.monotonic() - started < HEARTBEAT_BOUND_SECONDS
    finally:
        await watcher.close()
        cut_off.transport.abort()
