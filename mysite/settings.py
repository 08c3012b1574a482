"""Django settings for mysite.

One file for every environment: development defaults are safe, and production is
the same file with other environment variables (see docs/operations.md, "Configuration").
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.conf import global_settings
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from chat.redis_clients import redis_urls
from mysite.channel_layers import (
    DEFAULT_GROUP_EXPIRY_SECONDS,
    DEFAULT_LAYER,
    LAYER_BACKENDS,
    redis_channel_layers,
)
from mysite.environment import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_log_level,
    env_rate,
)
from mysite.proxies import trusted_networks

BASE_DIR = Path(__file__).resolve().parent.parent


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false")
    SECRET_KEY = "django-insecure-development-only-never-use-in-production"
elif not DEBUG and (
    len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH
    or len(set(SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
    or SECRET_KEY.startswith(SECRET_KEY_INSECURE_PREFIX)
):
    # A placeholder copied from a recipe ("...", "change-me") or a generated development
    # key signs sessions anyone could forge: refuse it where Django's check only warns.
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY is a placeholder or a development key (at least"
        f" {SECRET_KEY_MIN_LENGTH} random characters, not {SECRET_KEY_INSECURE_PREFIX}...):"
        " make one with python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# The read-position endpoint speaks JSON, its CSRF refusal too (chat.views.JSON_ENDPOINTS).
CSRF_FAILURE_VIEW = "chat.views.csrf_failure"

INSTALLED_APPS = [
    # First: its `manage.py runserver` (daphne's, which serves WebSockets too) checks Redis.
    "serving",
    "daphne",
    "chat",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Failed logins per account and per address, the admin's included (see AXES_* below).
    "axes",
    # Only for its system checks (settings from django-csp 3 are an error, not ignored).
    "csp",
    # Only for its Swagger page's template and static files (chat.api), served from here.
    "ninja",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    # Before anything reads a field into a query: PostgreSQL refuses a NUL in text.
    "mysite.nul_characters.NulCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # CommonMiddleware, whose slash redirect keeps a POST (308) and never raises in DEBUG.
    "mysite.slashes.SlashRedirectMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After it: refuses a deactivated account's browser at the chat's views (403).
    "chat.deactivation.DeactivatedSessionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into our 429 response.
    "axes.middleware.AxesMiddleware",
    # A request that meets an outage (Redis refusing writes too) gets 503, not 500.
    "chat.outages.OutageMiddleware",
]

# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
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

# Bounds on every database wait (docs/faults.md). The sync consumers of a process share one
# thread: a store waiting for one room's lock holds every room of the process, so past
# the lock bound it fails, the frame is refused with store_failed, and the page sends it
# again with its client_id. SQLite's busy timeout; PostgreSQL's lock_timeout.
DATABASE_LOCK_TIMEOUT_SECONDS = env_float("DATABASE_LOCK_TIMEOUT_SECONDS", 1.0)
# PostgreSQL's statement_timeout: no query runs longer (0 turns it off, as for a migration
# known to run long).
DATABASE_STATEMENT_TIMEOUT_SECONDS = env_float("DATABASE_STATEMENT_TIMEOUT_SECONDS", 5.0)
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
# PostgreSQL connections per server process (Django's pool, below): the sync thread and
# the HTTP requests running at once share them. 10 x a few processes stays well under
# PostgreSQL's default max_connections of 100; more clients at once wait their turn.
DATABASE_POOL_MAX_SIZE = 10
# A request that waits this long for a pooled connection fails (500) rather than hang.
DATABASE_POOL_TIMEOUT_SECONDS = 10.0
# The databases this project has drivers for (psycopg; sqlite3 is in Python).
DATABASE_ENGINES = ("django.db.backends.sqlite3", "django.db.backends.postgresql")
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            # Keep connections: the sync consumer stores on one thread per process, and
            # reconnecting to the database for every message costs more than the insert.
            conn_max_age=600,
            conn_health_checks=True,
        )
    }
except ValueError:  # dj_database_url's errors; not shown: they may quote a password
    raise ImproperlyConfigured(
        "DATABASE_URL is not a database URL such as sqlite:///path/db.sqlite3"
        " or postgres://user:password@host:5432/name"
    ) from None
if DATABASES["default"]["ENGINE"] not in DATABASE_ENGINES:
    raise ImproperlyConfigured(
        "DATABASE_URL must start with sqlite:// or postgres:// (no driver for the others)"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Several server processes share one SQLite file: readers never block the writer
        # (WAL), writers queue (up to the lock bound) instead of failing at once.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": DATABASE_LOCK_TIMEOUT_SECONDS,
    }
else:
    # Under ASGI every HTTP request runs in a thread of its own, and a kept connection
    # (CONN_MAX_AGE) stays with its finished thread: 40 concurrent clients exhausted
    # PostgreSQL (Django #33497). Django's pool for psycopg 3 bounds each process's
    # connections instead; each request and socket handler returns its connection to it.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django requires 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", DATABASE_POOL_MAX_SIZE, minimum=1),
        "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
    }
    # Bounds on waits, in milliseconds (DATABASE_LOCK_TIMEOUT_SECONDS, above).
    DATABASES["default"]["OPTIONS"]["options"] = (
        f"-c lock_timeout={DATABASE_LOCK_TIMEOUT_SECONDS * 1000:.0f}"
        f" -c statement_timeout={DATABASE_STATEMENT_TIMEOUT_SECONDS * 1000:.0f}"
    )

# REDIS_URL may list several Redis servers, comma-separated: the channel layer shards its
# channels and groups over all of them, while presence and /healthz use the first.
# redis_urls refuses a list with no URL in it, or a URL without a scheme.
REDIS_URLS = redis_urls(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
REDIS_URL = REDIS_URLS[0]

# CHAT_CHANNEL_LAYER: "pubsub" (RedisPubSubChannelLayer) or "redis" (the tutorial's
# RedisChannelLayer); mysite.channel_layers says why pubsub is the default.
CHAT_CHANNEL_LAYER = env_choice("CHAT_CHANNEL_LAYER", DEFAULT_LAYER, sorted(LAYER_BACKENDS))
CHANNEL_LAYERS = redis_channel_layers(
    REDIS_URLS,
    layer=CHAT_CHANNEL_LAYER,
    group_expiry=env_int("CHAT_GROUP_EXPIRY_SECONDS", DEFAULT_GROUP_EXPIRY_SECONDS, minimum=1),
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

# Mail, for password reset links: SMTP where DJANGO_EMAIL_HOST names a server; in
# development without one, mails are printed on the server's console.
EMAIL_HOST = os.environ.get("DJANGO_EMAIL_HOST", "")
if EMAIL_HOST:
    EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 587, minimum=1)  # submission, with STARTTLS
    EMAIL_HOST_USER = os.environ.get("DJANGO_EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("DJANGO_EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("DJANGO_EMAIL_USE_TLS", True)
elif DEBUG:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "webmaster@localhost")
# /accounts/password_reset/ and its pages are routed only where the link can be mailed:
# in production without a mail server they are a 404, not a failure on every request.
PASSWORD_RESET_BY_EMAIL = bool(EMAIL_HOST) or DEBUG

# Production hardening: on whenever DEBUG is off, so `manage.py check --deploy` is clean.
# Behind a TLS-terminating proxy, set DJANGO_SECURE_PROXY_SSL_HEADER=true so Django
# trusts its X-Forwarded-Proto header.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Load balancers probe the health check over plain HTTP, from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The reverse proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For
# names the client (mysite.proxies); from any other peer, neither it nor the header above
# is believed. Empty: no proxy is trusted, and the TCP peer is the client.
CHAT_TRUSTED_PROXIES = trusted_networks(env_list("CHAT_TRUSTED_PROXIES", []))
# Who may read /metrics (mysite.metrics) besides loopback: the Prometheus servers'
# addresses or networks, comma-separated; or whoever sends "Authorization: Bearer <token>".
# Anyone else gets a 404. Behind a proxy on this host, list it in CHAT_TRUSTED_PROXIES, or
# every client would come from loopback.
CHAT_METRICS_ALLOWED_NETWORKS = trusted_networks(env_list("CHAT_METRICS_ALLOWED_NETWORKS", []))
CHAT_METRICS_TOKEN = os.environ.get("CHAT_METRICS_TOKEN", "")

# Content-Security-Policy (django-csp): scripts and styles only from this site's own files,
# never inline, so markup that slips into a page runs nothing. 'self' covers the page's
# own ws:// and wss:// socket (CSP level 3). Data such as the room name reaches the
# scripts in json_script blocks, which are not scripts to the browser.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],  # as X-Frame-Options: DENY, for browsers that read CSP
    }
}
# Permissions-Policy (django-permissions-policy): a chat needs no camera, microphone,
# location or sensors; a script that got in anyway cannot ask for them either. Only
# features Chromium knows: it logs an error on every page for any other ("bluetooth" was
# one), and test_no_page_logs_a_console_error reads that console.
PERMISSIONS_POLICY = {
    feature: []
    for feature in (
        "accelerometer",
        "autoplay",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "hid",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "publickey-credentials-get",
        "screen-wake-lock",
        "serial",
        "usb",
        "xr-spatial-tracking",
    )
}

# DJANGO_LOG_FORMAT=json: each line one JSON object (python-json-logger) with time, level,
# logger and message, and the room, close or error code and client address where the log
# call passes them (extra=), for a log collector to index; "plain" for people.
LOG_FORMATS = {
    "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    "json": {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
    },
}
LOG_FORMAT = os.environ.get("DJANGO_LOG_FORMAT", "plain")
if LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(
        f"DJANGO_LOG_FORMAT={LOG_FORMAT!r} is not one of {sorted(LOG_FORMATS)}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": LOG_FORMATS[LOG_FORMAT]},
    "filters": {"one_line": {"()": "mysite.log_filters.ExpectedErrorsOnOneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    # One handler, on the root: every logger (daphne's, Django's, ours) prints once.
    "root": {"handlers": ["console"], "level": env_log_level("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "chat": {"level": env_log_level("CHAT_LOG_LEVEL", "INFO")},
        # Django gives "django" a console handler of its own (and mail_admins; ADMINS is
        # empty): its lines (runserver's "Not Found", the autoreloader's) print once, here.
        "django": {"handlers": []},
        # runserver gives this one a handler of its own: do not print its lines twice.
        "django.channels.server": {"propagate": False},
        # It logs a traceback a second per process while Redis is down: one line instead.
        "channels_redis.pubsub": {"filters": ["one_line"]},
        # django-axes logs five lines per failed login, the address masked, and a banner at
        # every start: chat.limits logs each lockout once, with the address, instead.
        "axes": {"level": "ERROR"},
    },
}

# --- Chat limits -----------------------------------------------------------------------
# A long paragraph fits; a pasted log file does not. Counted in characters, after trimming.
CHAT_MESSAGE_MAX_CHARS = 4096
# Frames longer than this are refused before JSON parsing: room for a maximal message
# with every character escaped as \uXXXX (6 chars each) plus the envelope.
CHAT_FRAME_MAX_CHARS = 6 * CHAT_MESSAGE_MAX_CHARS + 1024
# Token bucket per connection: a person typing fast stays far below 10 messages a second,
# and a burst of 20 lets a paste of several lines through. (From the environment too, so
# that the overload benchmark's clients can offer more than a person does.)
CHAT_RATE_BURST = env_int("CHAT_RATE_BURST", 20, minimum=1)
CHAT_RATE_PER_SECOND = env_float("CHAT_RATE_PER_SECOND", 10.0)
# Consecutive rate-limited frames after which the socket is closed as a flooder.
CHAT_FLOOD_CLOSE_AFTER = 50
# Messages a socket receives on joining: a screenful of context, cheap to send.
CHAT_HISTORY_LIMIT = 50
# Days a room's messages are kept before `manage.py chat_retention` deletes them, unless the
# room sets its own (Room.retention_days). 0 (the default): kept for ever, as before.
CHAT_RETENTION_DAYS = env_int("CHAT_RETENTION_DAYS", 0, minimum=0)
# Presence entries live this long unless their process refreshes them, so a killed
# process leaves ghosts for at most TTL + REFRESH seconds.
# (From the environment too, so that tests can kill a process and see its ghosts go fast.)
CHAT_PRESENCE_TTL_SECONDS = env_float("CHAT_PRESENCE_TTL_SECONDS", 30.0)
CHAT_PRESENCE_REFRESH_SECONDS = env_float("CHAT_PRESENCE_REFRESH_SECONDS", 10.0)
# Joins and leaves this close together make one presence announcement per room.
CHAT_PRESENCE_COALESCE_SECONDS = 0.2
# channels_redis forgets a group member this long after its group_add (its group_expiry);
# every process re-adds its sockets at half this, so long-lived sockets keep receiving.
CHAT_GROUP_EXPIRY_SECONDS = CHANNEL_LAYERS["default"]["CONFIG"].get(
    "group_expiry", DEFAULT_GROUP_EXPIRY_SECONDS
)
# A WebSocket client that stops reading is closed (4408) once this many bytes wait unsent
# for it in the server (serving.chat_daphne): bounded memory per stuck client. 1 MiB is some
# 5,000 ordinary messages, far more than a client that reads ever has waiting.
CHAT_SEND_BACKLOG_LIMIT_BYTES = env_int("CHAT_SEND_BACKLOG_LIMIT_BYTES", 1024 * 1024)
# ...and cut off if it has not read up to the close frame this many seconds later.
CHAT_SLOW_CLIENT_GRACE_SECONDS = env_float("CHAT_SLOW_CLIENT_GRACE_SECONDS", 10.0)
# Pings a WebSocket client may send: a burst of 10, then one a second. Browsers send none;
# client libraries send one every 20-30 s to keep a connection alive. Each ping costs a
# pong, so a client that floods pings is closed with 4429 at the first one over the limit.
# (From the environment too, so that a test can lift it and see the backlog bound pongs.)
CHAT_PING_BURST = env_int("CHAT_PING_BURST", 10)
CHAT_PING_PER_SECOND = env_float("CHAT_PING_PER_SECOND", 1.0)
# The heartbeat that finds a dead peer on a connection that looks alive (a cut network,
# a sleeping laptop): each side hears from the other at least every CHAT_HEARTBEAT_SECONDS,
# and takes the connection for dead if an answer takes longer than
# CHAT_HEARTBEAT_TIMEOUT_SECONDS. The page sends {"ping": true} after that long without a
# frame and reconnects if nothing comes back; the server pings an idle socket (daphne's
# --ping-interval and --ping-timeout, which these replace) and drops one that does not
# pong. So each side notices within 20 + 10 s (the server checks every 2 s more); idle
# proxies commonly cut at 60 s, and a ping costs a few bytes. (From the environment too,
# so that a test can shorten them.)
CHAT_HEARTBEAT_SECONDS = env_float("CHAT_HEARTBEAT_SECONDS", 20.0)
CHAT_HEARTBEAT_TIMEOUT_SECONDS = env_float("CHAT_HEARTBEAT_TIMEOUT_SECONDS", 10.0)
# The longest a WebSocket stays open: then serving.chat_daphne closes it with 4000 and the page
# reconnects at once, catching up with ?after=, so nothing is lost. A week: the socket's
# name and session are read again at least that often (a socket opened before its session
# ended stops speaking for it within a week; Django's session lasts two), while a reconnect
# a week costs nothing. 0 means no limit. (daphne's own limit, 24 h with a bare 1000, is
# always off: this one replaces it for every entry point.)
CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS = env_float(
    "CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS", 7 * 24 * 3600
)
# The largest HTTP request body serving.chat_daphne reads: over it the request is refused with
# 413 before its body is read (from Content-Length), or as soon as a chunked body passes
# it. Django itself refuses a form body over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), and
# this site takes no file uploads, so no larger body could succeed: refuse it unread.
CHAT_HTTP_MAX_BODY_BYTES = env_int(
    "CHAT_HTTP_MAX_BODY_BYTES", global_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
)
# A connection must deliver a whole request (line, headers and body) this many seconds
# after it opens or after the request's first byte, or it is answered 408 and closed: a
# client trickling a header line every few seconds holds no connection for long. A
# browser sends a request in one or two packets; Apache's mod_reqtimeout allows 20 s too.
CHAT_HTTP_REQUEST_TIMEOUT_SECONDS = env_float("CHAT_HTTP_REQUEST_TIMEOUT_SECONDS", 20.0)
# Broadcasts from two senders can overtake each other on the way: a socket holds a message
# that arrives ahead of a missing one this long, for the missing one to arrive too, before
# it takes the gap for a drop and reads it from the database (a query per socket, which
# under load costs more than the wait). It holds this many at most.
CHAT_REORDER_WAIT_SECONDS = 0.25
CHAT_REORDER_MAX_HELD = 100
# The bound on the queues of a message's path in its process: a message that would wait
# longer than this behind the calls for the sync thread (the store's queue) and then,
# stored, behind the channel-layer calls not done yet (the layer's queue, in front of
# Redis) is refused at once with `overloaded` and a retry hint, instead of waiting behind
# them: latency stays bounded under overload, and the client retries the same client_id.
# 0.5 s: a busy process's batches start within ~0.15 s and a publish takes a millisecond
# (benchmarks/overload.py), so only a queue that no longer drains is refused, and a person
# still sees their message within a second or hears why not.
CHAT_STORE_QUEUE_SECONDS = env_float("CHAT_STORE_QUEUE_SECONDS", 0.5)
# Combining marks a name may stack on one letter: enough for the letters of real names
# (Thai's vowel and tone marks, Hebrew's dagesh and vowel: 2), too few for a tower that
# overdraws the names around it.
CHAT_NAME_MAX_STACKED_MARKS = 2


# The most stored messages a socket sends to recover (a reconnect's ?after=, a gap fill, a
# resync after Redis restarted): one screenful, as the join history (CHAT_HISTORY_LIMIT),
# so a recovery costs the process no more than a join. A client further behind is told so
# ({"catch_up": {"recovered": false, ...}}) and reads the rest from GET
# /chat/<room>/messages/, page by page as it asks, under that endpoint's per-address
# limit: one read path for bulk history, one limit on it.
# (From the environment too, so that tests and benchmarks can change it.)
CHAT_RECOVERY_LIMIT = env_int("CHAT_RECOVERY_LIMIT", 50, minimum=1)
# Page size of GET /chat/<room>/messages/: default, and the most one request may ask for.
CHAT_API_PAGE_SIZE = 100
CHAT_API_PAGE_MAX = 500
# Rooms the index and the room page's sidebar list by recent activity (and at most as many
# recent rooms a page may ask about): a list one can scan, and one Redis pipeline of two
# commands a room for who is online in them.
CHAT_ROOM_LIST_SIZE = 30
# A socket's "is typing" signal goes to its room at most once per this many seconds; the
# page shows it for TYPING_SHOWN_MS (typing.js, 5 s), so a steady typist never flickers.
CHAT_TYPING_THROTTLE_SECONDS = 2.0

# --- Limits per person, shared by all processes (chat.limits; counters in Redis) --------
# Rates as the `limits` library writes them ("N/period" or "N/<k>periods"), counted in a
# moving window. Each one can be set from the environment, so a load test from one address
# can lift them. Several people behind one address (an office's NAT) share the
# per-address ones: raise those for such a crowd.
# What "an address" is for every per-address limit (and the login lockout): an IPv4
# address, or the IPv6 network of this prefix length. ISPs and clouds give one customer a
# whole /64 (RFC 6177), whose 2**64 addresses it may use as it likes: a /64 is one client.
CHAT_IPV6_PREFIX_LENGTH = env_int("CHAT_IPV6_PREFIX_LENGTH", 64, minimum=1)
if not 1 <= CHAT_IPV6_PREFIX_LENGTH <= 128:
    raise ImproperlyConfigured("CHAT_IPV6_PREFIX_LENGTH must be between 1 and 128")
# New WebSockets per client address: a page opens one and reconnects with backoff, and a
# person has a few tabs; a whole office reloading at once stays under 120 a minute, while
# a script opening 2,000 in 9 s is cut off at 120. Refused at the handshake (403).
CHAT_LIMIT_SOCKETS_PER_ADDRESS = env_rate("CHAT_LIMIT_SOCKETS_PER_ADDRESS", "120/minute")
# Sockets open at once, over every process: per account or guest session (a person has a
# few tabs; a page holds one socket), and per address (an office behind one NAT, a few
# tabs each). New sockets per minute alone let one address hold 360 sockets in three
# minutes, each listed in its room. Over either cap, a new socket is closed with 4430.
CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON = env_int("CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON", 20, minimum=1)
CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS = env_int("CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS", 100, minimum=1)
# Messages per account over all its sockets and processes, and per address for guests
# (all guests of one address share it: guest sessions cost nothing to make): nobody types
# 3 messages a second for 10 s, and a burst of 30 lets a pasted conversation through;
# 100 sockets storing 11,604 messages in 10 s would have stored 30.
CHAT_LIMIT_MESSAGES_PER_PERSON = env_rate("CHAT_LIMIT_MESSAGES_PER_PERSON", "30/10seconds")
# Rooms created (a room's first message creates it) per address: people mostly join rooms
# that exist; 20 an hour is a busy organiser, 1,000 in 9 s is someone filling the database.
CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS = env_rate("CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS", "20/hour")
# Guest sessions made per address (the room page and a guest name make one for a visitor
# without a cookie): a browser keeps its cookie, so each is a new visitor; 60 an hour lets
# a classroom in, and stops a client that drops its cookie from filling the session table.
CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS = env_rate("CHAT_LIMIT_GUEST_SESSIONS_PER_ADDRESS", "60/hour")
# Accounts created per address: a person signs up once; 10 an hour covers a family or a
# class signing up together, not 30 accounts in 6 s.
CHAT_LIMIT_SIGNUPS_PER_ADDRESS = env_rate("CHAT_LIMIT_SIGNUPS_PER_ADDRESS", "10/hour")
# GET /chat/<room>/messages/ per address: a page scrolling up or back from a long absence
# (recovered: false) reads at most 60 pages a minute (6,000 messages at the default page
# size); a script paging through a room gets 60 x 500 messages a minute,
# not 200 pages in 4.8 s.
CHAT_LIMIT_API_PER_ADDRESS = env_rate("CHAT_LIMIT_API_PER_ADDRESS", "60/minute")
# GET /api/rooms/ per address: a tab's sidebar asks every 5 s (12 a minute), and an office
# behind one address has many tabs open; 16 clients asking as fast as they could tripled
# everyone else's latency.
CHAT_LIMIT_ROOM_LIST_PER_ADDRESS = env_rate("CHAT_LIMIT_ROOM_LIST_PER_ADDRESS", "600/minute")
# POST /api/rooms/<room>/read/ per account: a page reports once a second at most while its
# room is busy; 133 reports a second from one account each took SQLite's write lock.
CHAT_LIMIT_READ_REPORTS_PER_PERSON = env_rate("CHAT_LIMIT_READ_REPORTS_PER_PERSON", "120/minute")
# Reports of messages (chat.moderation) per account, or per address for guests: enough
# for someone reporting a flood by hand, too few to bury the admin's queue.
CHAT_LIMIT_MESSAGE_REPORTS_PER_PERSON = env_rate("CHAT_LIMIT_MESSAGE_REPORTS_PER_PERSON", "10/hour")
# Password reset requests per address (a 429, whether the address asked about has an
# account or not): someone who lost a password asks a few times, not 100 in 22 s.
CHAT_LIMIT_PASSWORD_RESETS_PER_ADDRESS = env_rate(
    "CHAT_LIMIT_PASSWORD_RESETS_PER_ADDRESS", "10/hour"
)
# Reset mails per account, from any address (more are not sent, and the answer does not
# say so): one link is enough, three cover a slow mailbox; nobody's inbox gets a flood.
CHAT_LIMIT_PASSWORD_RESET_MAILS_PER_ACCOUNT = env_rate(
    "CHAT_LIMIT_PASSWORD_RESET_MAILS_PER_ACCOUNT", "3/hour"
)
# Calls to /api/v1/ per user, over all their API tokens (chat.api; 20 tokens must not make
# 20 budgets), reads and posts alike; posts also count as the user's messages
# (CHAT_LIMIT_MESSAGES_PER_PERSON), as their sockets' do. A bot reading a page and posting
# an answer a second stays under it; a loop without a pause does not.
CHAT_LIMIT_API_PER_PERSON = os.environ.get("CHAT_LIMIT_API_PER_PERSON", "120/minute")

# Failed logins (django-axes, the login page and /admin/login/ alike), counted in the
# database (shared by every process, on SQLite and PostgreSQL, and kept when Redis
# restarts). 10 failures lock out the account, and separately the address: enough for
# a person who mistypes, while guessing gets 10 tries per 15 minutes instead of 300 a
# minute. A failure during a lockout starts it again; the page says when to retry.
AXES_FAILURE_LIMIT = env_int("CHAT_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_COOLOFF_TIME = timedelta(seconds=env_int("CHAT_LOGIN_COOLOFF_SECONDS", 900))
# Not cleared by a successful login: axes would clear the address's failures too, and a
# guesser who logs in to an account of their own now and then would never be locked out.
# Failures are forgotten AXES_COOLOFF_TIME after the last one instead.
AXES_RESET_ON_SUCCESS = False
# Per address as every other limit counts: an IPv6 client's whole network (chat.limits).
AXES_CLIENT_IP_CALLABLE = "chat.limits.client_network_address"
AXES_LOCKOUT_CALLABLE = "chat.limits.login_lockout_response"
# Failures are what it needs; a row per successful login would only grow.
AXES_DISABLE_ACCESS_LOG = True
