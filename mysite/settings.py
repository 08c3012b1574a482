"""Django settings for mysite.

One file for every environment: development defaults are safe, and production is
the same file with other environment variables (see README.md, "Configuration").
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from mysite.channel_layers import (
    DEFAULT_GROUP_EXPIRY_SECONDS,
    DEFAULT_LAYER,
    redis_channel_layers,
    redis_urls,
)

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no environment variable; unknown spellings are an error, not a guess."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a yes/no value")


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated environment variable."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false")
    SECRET_KEY = "django-insecure-development-only-never-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # First, so that `manage.py runserver` is daphne's and serves WebSockets too.
    "daphne",
    "chat",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mysite.wsgi.application"
ASGI_APPLICATION = "mysite.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Keep connections: the sync consumer stores on one thread per process, and
        # reconnecting to the database for every message costs more than the insert.
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Several server processes share one SQLite file: readers never block the writer
        # (WAL), writers queue instead of failing with "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

# REDIS_URL may list several Redis servers, comma-separated: the channel layer shards its
# channels and groups over all of them, while presence and /healthz use the first.
REDIS_URLS = redis_urls(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
if not REDIS_URLS:
    raise ImproperlyConfigured(f"REDIS_URL={os.environ['REDIS_URL']!r} holds no URL")
REDIS_URL = REDIS_URLS[0]

# CHAT_CHANNEL_LAYER: "pubsub" (RedisPubSubChannelLayer) or "redis" (the tutorial's
# RedisChannelLayer); mysite.channel_layers says why pubsub is the default.
CHAT_CHANNEL_LAYER = os.environ.get("CHAT_CHANNEL_LAYER", DEFAULT_LAYER)
CHANNEL_LAYERS = redis_channel_layers(
    REDIS_URLS,
    layer=CHAT_CHANNEL_LAYER,
    group_expiry=float(os.environ.get("CHAT_GROUP_EXPIRY_SECONDS", DEFAULT_GROUP_EXPIRY_SECONDS)),
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise serves the page scripts and the admin's CSS from daphne itself, production
# included, straight from the apps' static folders: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "chat:index"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Production hardening: on whenever DEBUG is off, so `manage.py check --deploy` is clean.
# Behind a TLS-terminating proxy, set DJANGO_SECURE_PROXY_SSL_HEADER=true so Django
# trusts its X-Forwarded-Proto header.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Load balancers probe the health check over plain HTTP, from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = int(
    os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000")
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"one_line": {"()": "mysite.log_filters.ExpectedErrorsOnOneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # One handler, on the root: every logger (daphne's, Django's, ours) prints once.
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "chat": {"level": os.environ.get("CHAT_LOG_LEVEL", "INFO")},
        # runserver gives this one a handler of its own: do not print its lines twice.
        "django.channels.server": {"propagate": False},
        # It logs a traceback a second per process while Redis is down: one line instead.
        "channels_redis.pubsub": {"filters": ["one_line"]},
    },
}

# --- Chat limits -----------------------------------------------------------------------
# A long paragraph fits; a pasted log file does not. Counted in characters, after trimming.
CHAT_MESSAGE_MAX_CHARS = 4096
# Frames longer than this are refused before JSON parsing: room for a maximal message
# with every character escaped as \uXXXX (6 chars each) plus the envelope.
CHAT_FRAME_MAX_CHARS = 6 * CHAT_MESSAGE_MAX_CHARS + 1024
# Token bucket per connection: a person typing fast stays far below 10 messages a second,
# and a burst of 20 lets a paste of several lines through.
CHAT_RATE_BURST = 20
CHAT_RATE_PER_SECOND = 10.0
# Consecutive rate-limited frames after which the socket is closed as a flooder.
CHAT_FLOOD_CLOSE_AFTER = 50
# Messages a socket receives on joining: a screenful of context, cheap to send.
CHAT_HISTORY_LIMIT = 50
# Presence entries live this long unless their process refreshes them, so a killed
# process leaves ghosts for at most TTL + REFRESH seconds.
# (From the environment too, so that tests can kill a process and see its ghosts go fast.)
CHAT_PRESENCE_TTL_SECONDS = float(os.environ.get("CHAT_PRESENCE_TTL_SECONDS", "30"))
CHAT_PRESENCE_REFRESH_SECONDS = float(os.environ.get("CHAT_PRESENCE_REFRESH_SECONDS", "10"))
# Joins and leaves this close together make one presence announcement per room.
CHAT_PRESENCE_COALESCE_SECONDS = 0.2
# channels_redis forgets a group member this long after its group_add (its group_expiry);
# every process re-adds its sockets at half this, so long-lived sockets keep receiving.
CHAT_GROUP_EXPIRY_SECONDS = CHANNEL_LAYERS["default"]["CONFIG"].get(
    "group_expiry", DEFAULT_GROUP_EXPIRY_SECONDS
)
# A WebSocket client that stops reading is closed (4408) once this many bytes wait unsent
# for it in the server (mysite.server): bounded memory per stuck client. 1 MiB is some
# 5,000 ordinary messages, far more than a client that reads ever has waiting.
CHAT_SEND_BACKLOG_LIMIT_BYTES = int(os.environ.get("CHAT_SEND_BACKLOG_LIMIT_BYTES", 1024 * 1024))
# ...and cut off if it has not read up to the close frame this many seconds later.
CHAT_SLOW_CLIENT_GRACE_SECONDS = float(os.environ.get("CHAT_SLOW_CLIENT_GRACE_SECONDS", "10"))
# Broadcasts from two senders can overtake each other on the way: a socket holds a message
# that arrives ahead of a missing one this long, for the missing one to arrive too, before
# it takes the gap for a drop and reads it from the database (a query per socket, which
# under load costs more than the wait). It holds this many at most.
CHAT_REORDER_WAIT_SECONDS = 0.25
CHAT_REORDER_MAX_HELD = 100
# A socket catching up (?after=, a gap, a resync) is sent at most this many stored messages
# at a time, then asks for the next page; pages of all sockets take turns (one per sync
# batch, each followed by a pause as long as it took). A page of 50 of the largest
# messages (200 KB) delays another room's message by a few milliseconds; 100 or 200 cost
# it 2-3x more at p99 (benchmarks/catch_up.py), for fewer round trips per catch-up.
# (From the environment too, so that tests and benchmarks can change it.)
CHAT_CATCH_UP_PAGE = int(os.environ.get("CHAT_CATCH_UP_PAGE", "50"))
# Page size of GET /chat/<room>/messages/: default, and the most one request may ask for.
CHAT_API_PAGE_SIZE = 100
CHAT_API_PAGE_MAX = 500
