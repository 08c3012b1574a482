"""chat.metrics: what /metrics says after a short load on two server processes is what the
load did; the Grafana dashboard asks only for metrics the server exports; the loop's
delivery counter reaches the shared counter."""

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest
import websockets
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from chat import metrics
from chat.tests.conftest import ALLOWED_HOST, ALLOWED_ORIGIN
from conftest import ROOT, SERVER_READY_TIMEOUT_SECONDS, server_environment
from mysite.asgi import application
from serving.embedded_redis import free_port
from serving.processes import stop_processes, wait_for_http

DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
SOCKETS = 16  # over two processes: all on one by chance is 1 in 30,000
MESSAGES = 5
METRICS_TOKEN = "test-scrape-token"
STRANGER = "203.0.113.7"  # TEST-NET-3: neither loopback nor allowed
WAIT_SECONDS = 15.0
# PromQL words that are not metric names: functions, aggregations, keywords, and the
# labels and label values inside {...} and by (...), removed before names are read.
PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "le",
    "avg", "max", "min", "count", "topk", "clamp_min", "or", "and", "on", "ignoring",
}  # fmt: skip
PROMQL_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Every sample /metrics serves, as {'name{label="value",...}': value}."""
    request = urllib.request.Request(f"{url}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5):
            return 200
    except urllib.error.HTTPError as error:
        return error.code


def until(condition, timeout: float = WAIT_SECONDS):
    """Poll condition() until it returns something true; return it, or fail at the timeout."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


async def chat_frames(socket, count: int) -> list[dict]:
    """The next `count` live chat messages a socket receives (presence and the rest skipped)."""
    frames = []
    while len(frames) < count:
        frame = json.loads(await asyncio.wait_for(socket.recv(), WAIT_SECONDS))
        if "message" in frame and not frame.get("history"):
            frames.append(frame)
    return frames


async def run_load(url: str, room: str, when_open) -> None:
    """SOCKETS sockets in one room (when_open() called once all are open), MESSAGES
    messages from the first, one bad frame, a refused handshake; every socket closed."""
    ws_url = url.replace("http://", "ws://")
    sockets = await asyncio.gather(
        *(
            websockets.connect(f"{ws_url}/ws/chat/{room}/", origin=url, ping_interval=None)
            for _ in range(SOCKETS)
        )
    )
    try:
        when_open()
        for number in range(MESSAGES):
            await sockets[0].send(json.dumps({"message": f"hello {number}"}))
        received = await asyncio.gather(*(chat_frames(socket, MESSAGES) for socket in sockets))
        assert all(len(frames) == MESSAGES for frames in received)
        await sockets[1].send("not json")
        # Its refusal, after any presence announcement still on its way.
        while "error" not in json.loads(await asyncio.wait_for(sockets[1].recv(), WAIT_SECONDS)):
            pass
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await websockets.connect(f"{ws_url}/ws/chat/{room}/", origin="http://evil.example")
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets))


@pytest.fixture(scope="module")
def two_processes_after_load(redis_server, migrated_database):
    """serving.supervisor with two processes, after run_load: (url, its children's pids,
    the sockets each child held, what /metrics served)."""
    port = free_port()
    env = server_environment(
        redis_server.url,
        migrated_database,
        CHAT_LIMIT_SOCKETS_PER_ADDRESS="100000/minute",
        CHAT_LIMIT_MESSAGES_PER_PERSON="100000/second",
        CHAT_TRUSTED_PROXIES="127.0.0.1",  # so that X-Forwarded-For can play a stranger
        CHAT_METRICS_TOKEN=METRICS_TOKEN,
    )
    command = [sys.executable, "-m", "serving.supervisor", "--processes", "2", "--bind"]
    process = subprocess.Popen([*command, f"127.0.0.1:{port}"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(
            f"{url}/chat/",
            process,
            SERVER_READY_TIMEOUT_SECONDS,
            also=lambda: len(psutil.Process(process.pid).children()) == 2,
        )
        room = f"metrics-{uuid.uuid4().hex[:8]}"
        held = {}

        def count_holders():
            """Which child holds how many of the sockets."""
            for child in psutil.Process(process.pid).children():
                held[child.pid] = sum(
                    1
                    for connection in child.net_connections(kind="tcp")
                    if connection.status == psutil.CONN_ESTABLISHED
                    and connection.laddr.port == port
                )

        asyncio.run(run_load(url, room, count_holders))
        # Deliveries are written out up to a second late (chat.metrics.LoopCounter).
        until(lambda: scrape(url).get("chat_deliveries_total") == MESSAGES * SOCKETS)
        yield url, held, scrape(url)
    finally:
        stop_processes([process], timeout=30)


def test_metrics_count_what_the_load_did_on_two_processes(two_processes_after_load):
    url, held, samples = two_processes_after_load
    assert len(held) == 2 and min(held.values()) > 0, held  # both processes took part
    assert samples["chat_messages_stored_total"] == MESSAGES
    assert samples["chat_deliveries_total"] == MESSAGES * SOCKETS
    assert samples['chat_frames_refused_total{code="invalid_json"}'] == 1
    assert samples['chat_handshakes_refused_total{reason="origin"}'] == 1
    # One observation per stored batch (chat.commits): messages arriving together share one.
    assert 1 <= samples["chat_store_seconds_count"] <= MESSAGES
    # One broadcast per room per batch (chat.commits.RoomBroadcast), so at most one a message.
    assert 1 <= samples["chat_broadcast_seconds_count"] <= MESSAGES
    # Every socket closed: the gauge of both processes added up is back to zero.
    until(lambda: scrape(url).get("chat_sockets_open") == 0)
    until(lambda: scrape(url).get('chat_sockets_closed_total{code="1000"}') == SOCKETS)


def test_a_stranger_gets_404_and_a_token_gets_the_metrics(two_processes_after_load):
    url, _, _ = two_processes_after_load
    stranger = {"X-Forwarded-For": STRANGER}
    assert status_of(f"{url}/metrics", stranger) == 404
    assert status_of(f"{url}/metrics", {**stranger, "Authorization": "Bearer wrong"}) == 404
    token = {**stranger, "Authorization": f"Bearer {METRICS_TOKEN}"}
    assert status_of(f"{url}/metrics", token) == 200


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers and grouping dropped)."""
    expression = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    expression = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expression)  # grouping labels
    expression = re.sub(r"\[[^\]]*\]", "", expression)  # range selectors
    expression = re.sub(r'"[^"]*"', "", expression)
    return {
        word
        for word in PROMQL_IDENTIFIER.findall(expression)
        if word not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", word)
    }


def dashboard_queries() -> list[str]:
    """Every query of every panel of deploy/grafana-dashboard.json."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_dashboard_query_reads_a_metric_the_server_exports(two_processes_after_load):
    _, _, samples = two_processes_after_load
    exported = {name.partition("{")[0] for name in samples}
    queries = dashboard_queries()
    assert queries, "the dashboard has no queries"
    for query in queries:
        names = promql_metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= exported, f"{query!r} reads {names - exported}, not exported"


def test_the_promql_reader_finds_the_names_and_only_them():
    query = (
        'histogram_quantile(0.99, sum by (le) (rate(chat_store_seconds_bucket{job="chat"}[1m])))'
        " / sum(chat_sockets_open)"
    )
    assert promql_metric_names(query) == {"chat_store_seconds_bucket", "chat_sockets_open"}


def test_the_loop_counter_writes_its_count_out_from_the_loop_within_the_flush_period():
    registry = CollectorRegistry()
    counter = metrics.LoopCounter(Counter("counted", "a test's", registry=registry))

    def written() -> float:
        return registry.get_sample_value("counted_total")

    async def count_three():
        loop = asyncio.get_running_loop()
        for _ in range(3):
            counter.inc()
        assert written() == 0  # counted in the process, for now
        assert counter.timer.when() <= loop.time() + metrics.LOOP_FLUSH_SECONDS
        async with asyncio.timeout(WAIT_SECONDS):
            while written() < 3:
                await asyncio.sleep(0.05)
        assert counter.timer is None

    asyncio.run(count_three())
    counter.inc()  # no loop runs: written out at once
    assert written() == 4


async def test_a_handshake_to_a_path_no_route_takes_is_refused_and_counted(redis_channel_layer):
    def refused() -> float:
        return REGISTRY.get_sample_value("chat_handshakes_refused_total", {"reason": "path"})

    before = refused()
    headers = [(b"host", ALLOWED_HOST), (b"origin", ALLOWED_ORIGIN)]
    socket = WebsocketCommunicator(application, "/ws/nowhere/", headers=headers)
    connected, _ = await socket.connect()
    assert not connected
    assert refused() == before + 1
