"""GET /metrics (mysite.metrics): the chat's metrics for loopback, the listed networks and
the token's bearer; a 404 for anyone else."""

import ipaddress

import pytest

STRANGER = "203.0.113.7"
TOKEN = "a-scrape-token"


@pytest.fixture
def metrics_settings(settings):
    settings.CHAT_METRICS_TOKEN = TOKEN
    settings.CHAT_METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.1.0.0/16")]
    return settings


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3"])
def test_loopback_and_allowed_networks_get_the_metrics(client, metrics_settings, address):
    response = client.get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE chat_sockets_open gauge" in response.content
    assert b"chat_messages_stored_total" in response.content


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "]
)
def test_a_stranger_without_the_token_gets_404(client, metrics_settings, authorization):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    assert client.get("/metrics", REMOTE_ADDR=STRANGER, **headers).status_code == 404


def test_a_stranger_with_the_token_gets_the_metrics(client, metrics_settings):
    response = client.get("/metrics", REMOTE_ADDR=STRANGER, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert b"chat_deliveries_total" in response.content


def test_without_a_token_set_no_authorization_header_opens_the_metrics(client, settings):
    settings.CHAT_METRICS_TOKEN = ""
    response = client.get("/metrics", REMOTE_ADDR=STRANGER, HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 404
