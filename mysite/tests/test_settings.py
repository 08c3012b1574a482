"""Settings from the environment: safe development defaults, a clean production mode."""

import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from conftest import ROOT, suite_runs_on_postgresql
from mysite.settings import env_bool, env_list

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "x7Vq2kP9mZr4tW8yB3nL6cF1hJ5sD0gA-uE_iO7pQwRtYuIoPaSdFgHjKlZxCvBnM",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_production_mode_passes_check_deploy_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_mode_refuses_to_start_without_a_secret_key():
    result = manage("check", **{**PRODUCTION, "DJANGO_SECRET_KEY": ""})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_development_defaults_need_no_environment():
    result = manage("check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), (" Yes ", True)])
def test_env_bool_reads_yes_and_no(monkeypatch, raw, expected):
    monkeypatch.setenv("SOME_FLAG", raw)
    assert env_bool("SOME_FLAG", not expected) is expected


def test_env_bool_refuses_a_value_it_cannot_read(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured):
        env_bool("SOME_FLAG", False)


def test_env_list_splits_on_commas(monkeypatch):
    monkeypatch.setenv("SOME_LIST", "a.example, b.example,,")
    assert env_list("SOME_LIST", []) == ["a.example", "b.example"]


MAIL_AND_RESET = """
from django.conf import settings
from django.urls import NoReverseMatch, reverse
try:
    reverse("password_reset")
except NoReverseMatch:
    print(settings.EMAIL_BACKEND, "not routed")
else:
    print(settings.EMAIL_BACKEND, "routed")
"""
SMTP = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE = "django.core.mail.backends.console.EmailBackend"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, f"{CONSOLE} routed"),
        (PRODUCTION, f"{SMTP} not routed"),
        ({**PRODUCTION, "DJANGO_EMAIL_HOST": "smtp.example.com"}, f"{SMTP} routed"),
        ({"DJANGO_EMAIL_HOST": "smtp.example.com"}, f"{SMTP} routed"),
    ],
)
def test_password_reset_is_routed_only_where_its_mail_can_be_sent(env, expected):
    result = manage("shell", "--no-imports", "-c", MAIL_AND_RESET, **env)
    assert result.stdout.strip() == expected, result.stderr


def test_a_django_warning_is_printed_once_in_development():
    """Django's own console handler and the root's would print each line twice."""
    log_a_warning = "import logging; logging.getLogger('django.request').warning('Not Found: /x')"
    result = manage("shell", "--no-imports", "-c", log_a_warning)
    assert result.stderr.count("Not Found: /x") == 1, result.stderr


# More clients at once than a process's pool holds, for long enough to need them all.
CONCURRENT_CLIENTS = 40
REQUESTS_PER_CLIENT = 5


# The application_name of the pool test's server: its connections, among the session's.
POOL_TEST_NAME = "chat-pool-test"


def test_concurrent_requests_on_postgresql_hold_at_most_one_pool_of_connections(request):
    """Under ASGI each request has a thread of its own; kept connections stayed with them."""
    if not suite_runs_on_postgresql():
        pytest.skip("a PostgreSQL matter: the suite runs on SQLite (DATABASE_URL)")
    migrated_database = request.getfixturevalue("migrated_database")
    # Its own name on its connections: other servers of the session share the database.
    server = request.getfixturevalue("start_chat_server")(
        DATABASE_URL=f"{migrated_database}?application_name={POOL_TEST_NAME}"
    )

    def client(_) -> list[int]:
        statuses = []
        for _ in range(REQUESTS_PER_CLIENT):
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=30) as response:
                statuses.append(response.status)
        return statuses

    with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        statuses = [
            status for batch in pool.map(client, range(CONCURRENT_CLIENTS)) for status in batch
        ]
    assert statuses == [200] * CONCURRENT_CLIENTS * REQUESTS_PER_CLIENT
    with psycopg.connect(migrated_database) as admin:
        backends = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [POOL_TEST_NAME],
        ).fetchone()[0]
    assert backends > 0  # the name reached the server's connections
    assert backends <= settings.DATABASE_POOL_MAX_SIZE
