"""REDIS_URL's list of URLs, refused without a scheme, shown without a password; and
whether each Redis answers, on a real one."""

import asyncio

import pytest
from django.core.exceptions import ImproperlyConfigured

from chat.redis_clients import (
    LIMITS_TIMEOUT_SECONDS,
    PRESENCE_TIMEOUT_SECONDS,
    asyncio_redis_client,
    redacted_url,
    redis_client,
    redis_problem,
    redis_urls,
)
from conftest import ROOT
from serving.embedded_redis import EmbeddedRedis, free_port

ONE = "redis://127.0.0.1:6379/0"
TWO = "redis://127.0.0.1:6380/0"


def test_redis_urls_split_on_commas_and_drop_blanks():
    assert redis_urls(f" {ONE} , {TWO},, ") == [ONE, TWO]
    assert redis_urls([ONE]) == [ONE]
    with pytest.raises(ImproperlyConfigured, match="holds no URL"):
        redis_urls(" , ")


@pytest.mark.parametrize(
    "url", ["localhost:6379", "127.0.0.1:6379/0", "http://127.0.0.1:6379", "user:pw@redis:6379"]
)
def test_redis_urls_refuse_a_url_without_a_redis_scheme_and_hide_its_password(url):
    with pytest.raises(ImproperlyConfigured, match="does not start with redis://") as refusal:
        redis_urls(f"{ONE},{url}")
    assert "pw" not in str(refusal.value)


def test_redis_urls_accept_every_scheme_redis_py_knows():
    urls = ["redis://h:6379/0", "rediss://h:6380/0", "unix:///run/redis.sock", "REDIS://h"]
    assert redis_urls(urls) == urls


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret@h:6380/0", "rediss://user:***@h:6380/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("user:s3cret@h:6379", "user:***@h:6379"),
    ],
)
def test_redacted_url_hides_only_the_password(url, shown):
    assert redacted_url(url) == shown


def test_redis_problem_is_none_when_every_redis_answers(redis_server):
    assert redis_problem(f"{redis_server.url},{redis_server.url}") is None


def test_redis_problem_names_the_redis_that_does_not_answer_without_its_password(redis_server):
    silent = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    problem = redis_problem(f"{redis_server.url},{silent}")
    assert problem.startswith(f"Redis at {redacted_url(silent)} does not answer (ConnectionError")
    assert "hunter2" not in problem


def test_redis_problem_is_the_refusal_for_a_url_without_a_scheme():
    assert "does not start with redis://" in redis_problem("localhost:6379")


@pytest.mark.parametrize("package", ["chat", "mysite"])
def test_only_redis_clients_makes_clients_or_names_redis_errors(package):
    # One factory (its timeouts named) and one tuple of outage errors, imported by all.
    made_elsewhere = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts
        and path.name != "redis_clients.py"
        and any(
            needle in path.read_text() for needle in ("from_url(", "Redis(", "redis.exceptions")
        )
    ]
    assert made_elsewhere == []


async def test_every_client_fails_within_its_named_timeout_and_retries_once():
    sync = redis_client(ONE, LIMITS_TIMEOUT_SECONDS)
    on_loop = asyncio_redis_client(ONE, PRESENCE_TIMEOUT_SECONDS)
    for client, timeout in ((sync, LIMITS_TIMEOUT_SECONDS), (on_loop, PRESENCE_TIMEOUT_SECONDS)):
        options = client.connection_pool.connection_kwargs
        assert options["socket_timeout"] == options["socket_connect_timeout"] == timeout
        assert options["retry"].get_retries() == 1
    await on_loop.aclose()


@pytest.mark.parametrize("max_connections", [None, 2])
async def test_an_asyncio_client_outlives_a_redis_restart_in_one_retry(max_connections):
    with EmbeddedRedis() as server:
        client = asyncio_redis_client(server.url, LIMITS_TIMEOUT_SECONDS, max_connections)
        await client.set("before", 1)
        server.stop()
        server.start()  # same port: every pooled connection is dead
        assert await client.set("after", 1)
        await client.aclose()


async def test_a_client_with_few_connections_makes_a_burst_wait_its_turn(redis_server):
    client = asyncio_redis_client(redis_server.url, LIMITS_TIMEOUT_SECONDS, max_connections=2)
    # Each BLPOP holds its connection for a moment: more at once than there are connections.
    replies = await asyncio.gather(*(client.blpop([f"empty-{n}"], 0.05) for n in range(6)))
    assert replies == [None] * 6
    await client.aclose()
