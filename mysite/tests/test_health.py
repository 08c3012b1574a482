"""GET /healthz on a real database and a real Redis, and with each of them down."""

import os

import pytest
from django.db import OperationalError
from django.urls import reverse

from conftest import WRITE_REFUSALS, redis_refusing_writes
from mysite import health
from serving.embedded_redis import free_port


class UnreachableDatabase:
    """Stands in for django.db.connection while the database server is down."""

    def ensure_connection(self):
        raise OperationalError(
            'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
        )


def test_healthz_is_at_the_root_outside_the_rooms():
    assert reverse("healthz") == "/healthz"


@pytest.mark.django_db
def test_healthz_answers_200_when_database_and_redis_answer(client, redis_channel_layer):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "redis": "ok", "pid": os.getpid()}


@pytest.mark.django_db
def test_healthz_answers_503_naming_redis_when_redis_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["redis"] == "error: ConnectionError"


def test_healthz_answers_503_naming_the_database_when_it_is_down(
    client, redis_channel_layer, monkeypatch
):
    monkeypatch.setattr(health, "connection", UnreachableDatabase())
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["redis"] == "ok"
    assert body["database"] == "error: OperationalError"


@pytest.mark.django_db
def test_healthz_names_the_process_that_answered(client, redis_channel_layer):
    pid = client.get("/healthz").json()["pid"]
    assert isinstance(pid, int)
    assert pid == os.getpid()


@pytest.mark.django_db
def test_healthz_is_not_redirected_to_https_when_everything_else_is(
    client, redis_channel_layer, settings
):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/chat/").status_code == 301
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_healthz_answers_head_probes(client, redis_channel_layer):
    assert client.head("/healthz").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("refusal", WRITE_REFUSALS)
def test_healthz_answers_503_naming_redis_when_redis_refuses_writes(
    client, redis_channel_layer, refusal
):
    # A PING still answers; the chat cannot store a limit, a presence or a group.
    with redis_refusing_writes(redis_channel_layer.url, refusal):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error: ")
    assert client.get("/healthz").status_code == 200  # and well again once it takes writes
