"""Configurations that cannot work are refused at start, in one line and with exit status 1,
by `dev.py run` (serving.devserver) and `dev.py serve` (serving.supervisor) alike."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from serving.embedded_redis import free_port
from serving.startup import PLAIN_LOOPBACK_ENVIRONMENT, plain_http_environment, plain_http_problem

# Refusals come before Redis starts, before migrate and before any child.
REFUSAL_TIMEOUT_SECONDS = 30
SECRET_KEY = "x7Vq2kP9mZr4tW8yB3nL6cF1hJ5sD0gA-uE_iO7pQwRtYuIoPaSdFgHjKlZxCvBnM"
PRODUCTION = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": SECRET_KEY}
MAIL = {"DJANGO_EMAIL_HOST": "smtp.example.com"}

# One bad value for every environment variable mysite/settings.py reads, grouped by the
# family of its reader; the variable, then what else it needs to be read at all.
BAD_VALUES = [
    ("DJANGO_DEBUG", "maybe", {}),
    ("DJANGO_SECURE_SSL_REDIRECT", "sometimes", {}),
    ("DJANGO_SECURE_PROXY_SSL_HEADER", "nginx", {}),
    ("DJANGO_EMAIL_USE_TLS", "sure", MAIL),
    ("DJANGO_SECRET_KEY", "...", PRODUCTION),
    ("DJANGO_SECRET_KEY", "change-me", PRODUCTION),
    ("DJANGO_SECRET_KEY", "django-insecure-" + SECRET_KEY, PRODUCTION),
    ("DATABASE_URL", "db.sqlite3", {}),
    ("DATABASE_URL", "mysql://chat@127.0.0.1/chat", {}),
    ("REDIS_URL", "localhost:6379", {}),
    ("CHAT_TRUSTED_PROXIES", "nginx.internal", {}),
    ("CHAT_CHANNEL_LAYER", "kafka", {}),
    ("DJANGO_LOG_LEVEL", "loud", {}),
    ("CHAT_LOG_LEVEL", "quiet", {}),
    ("CHAT_GROUP_EXPIRY_SECONDS", "a day", {}),
    ("DJANGO_EMAIL_PORT", "smtp", MAIL),
    ("DJANGO_SECURE_HSTS_SECONDS", "1y", {}),
    ("CHAT_SEND_BACKLOG_LIMIT_BYTES", "1MB", {}),
    ("CHAT_PING_BURST", "-1", {}),
    ("CHAT_HTTP_MAX_BODY_BYTES", "2.5MB", {}),
    ("CHAT_RECOVERY_LIMIT", "0", {}),
    ("CHAT_LOGIN_FAILURE_LIMIT", "ten", {}),
    ("CHAT_LOGIN_COOLOFF_SECONDS", "15m", {}),
    ("CHAT_PRESENCE_TTL_SECONDS", "30s", {}),
    ("CHAT_PRESENCE_REFRESH_SECONDS", "-1", {}),
    ("CHAT_SLOW_CLIENT_GRACE_SECONDS", "ten", {}),
    ("CHAT_PING_PER_SECOND", "nan", {}),
    ("CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS", "1w", {}),
    ("CHAT_HTTP_REQUEST_TIMEOUT_SECONDS", "20s", {}),
    ("CHAT_LIMIT_SOCKETS_PER_ADDRESS", "lots", {}),
    ("CHAT_LIMIT_MESSAGES_PER_PERSON", "30/fortnight", {}),
    ("CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS", "20", {}),
    ("CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS", "many/hour", {}),
    ("CHAT_LIMIT_SIGNUPS_PER_ADDRESS", "10 per hour please", {}),
    ("CHAT_LIMIT_API_PER_ADDRESS", "-", {}),
]
LAUNCHERS = {
    "run": lambda port: ["-m", "serving.devserver", f"127.0.0.1:{port}", "--noreload"],
    "serve": lambda port: [
        "-m",
        "serving.supervisor",
        "--processes",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
    ],  # fmt: skip
}


def launch(launcher: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `dev.py run` or `dev.py serve` (what dev.py execs) until it exits."""
    return subprocess.run(
        [sys.executable, *LAUNCHERS[launcher](free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_SECONDS,
    )  # fmt: skip


def clean_environment(tmp_path, **variables: str) -> dict[str, str]:
    """This environment without the chat's variables, on a database of its own, plus these."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CHAT_", "REDIS_", "DATABASE_"))
    }
    return {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **variables}


# Both launchers refuse through one check (serving.startup.settings_problem), before they
# start anything: each bad value goes to one of them in turn, so each meets half of them
# (every value on both was 35 more start-ups proving the same thing twice).
BAD_VALUE_LAUNCHES = [
    (sorted(LAUNCHERS)[number % len(LAUNCHERS)], *bad) for number, bad in enumerate(BAD_VALUES)
]


@pytest.mark.parametrize(("launcher", "variable", "value", "needs"), BAD_VALUE_LAUNCHES)
def test_a_bad_environment_variable_is_one_line_and_exit_status_1(
    tmp_path, launcher, variable, value, needs
):
    result = launch(launcher, clean_environment(tmp_path, **{**needs, variable: value}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert variable in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", ""])
def test_production_over_plain_http_beyond_loopback_is_refused(settings, host):
    settings.DEBUG, settings.SECURE_PROXY_SSL_HEADER = False, None
    assert "Secure session cookie" in plain_http_problem(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_production_over_plain_http_on_loopback_is_served_without_the_https_redirect(
    settings, monkeypatch, host
):
    monkeypatch.delenv("DJANGO_SECURE_SSL_REDIRECT", raising=False)
    settings.DEBUG, settings.SECURE_PROXY_SSL_HEADER = False, None
    assert plain_http_problem(host) is None
    assert plain_http_environment(host) == PLAIN_LOOPBACK_ENVIRONMENT


def test_an_https_redirect_asked_for_without_a_tls_proxy_is_refused(settings, monkeypatch):
    monkeypatch.setenv("DJANGO_SECURE_SSL_REDIRECT", "true")
    settings.DEBUG, settings.SECURE_PROXY_SSL_HEADER = False, None
    settings.SECURE_SSL_REDIRECT = True
    assert "redirect" in plain_http_problem("127.0.0.1")


def test_behind_a_tls_proxy_any_address_is_served_as_configured(settings):
    settings.DEBUG = False
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert plain_http_problem("0.0.0.0") is None
    assert plain_http_environment("0.0.0.0") == {}


def test_serve_in_production_over_plain_http_on_a_lan_address_exits_with_one_line(tmp_path):
    env = clean_environment(tmp_path, **PRODUCTION)
    result = subprocess.run(
        [sys.executable, "-m", "serving.supervisor", "--bind", f"0.0.0.0:{free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("serving.supervisor: refusing to serve production mode")
    assert len(result.stderr.splitlines()) == 1
