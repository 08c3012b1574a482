"""Identity follows the session: a socket lives only as long as the identity it speaks as.

Channels reads a socket's user and session once, at the handshake (channels#1324), so
without this a socket keeps speaking as a user who has since logged out. Each socket
also joins a channel-layer group for its session and, when logged in, one for its user.
A socket opened with an API token also joins one for the token. When that identity changes
anywhere (logout, a login in the session, a password change, deletion of the user, a
guest's new display name, a revoked token), every process's sockets of that session or
user receive `chat.identity_changed` and close with CLOSE_IDENTITY_CHANGED (4401); the
page reloads as whoever the session now is. A deactivation closes them with 4412
instead, and signs the user out (chat.deactivation). A session that expires closes its
sockets the same way, from a timer in the socket's process.

The event can come late: a frame sent just after the logout may be handled first, and a
change that sends no signal (`User.objects.filter(...).update(is_active=False)`) sends no
event at all. So a socket also checks, before it stores each message, that its session
still speaks as it does (speaks_as_now), reading the session and the user afresh; a
batch's messages are checked together at their commit (speak_as_now, chat.commits).

Explained in docs/architecture.md, 'Why each choice'.
"""

import asyncio
import functools
import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
    user_logged_in,
    user_logged_out,
)
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from . import deactivation, identity, loops, protocol
from .identity import Author
from .models import ApiToken

logger = logging.getLogger(__name__)

# How long a revocation outside any server waits for its send (a layer slot, then Redis):
# a command or a script must not hang on an unreachable Redis.
SEND_TIMEOUT_SECONDS = 10
# What changes who a user is, for open sockets: other sessions' auth hash, or the right to log in.
_IDENTITY_FIELDS = ("password", "is_active", "username", "is_staff")
# Statements kept of _compiled_sql, one per kind and count: a batch's size varies with the load.
IDENTITY_SQL_CACHE_SIZE = 64


def session_group(session_key: str) -> str:
    """The group of one session's sockets: ASCII, under 100 characters, the key not shown."""
    return "chat.session." + hashlib.sha256(session_key.encode()).hexdigest()[:48]


def user_group(user_id: int) -> str:
    """The group of one user's sockets, across all of their sessions."""
    return f"chat.user.{user_id}"


def token_group(prefix: str) -> str:
    """The group of the sockets opened with one API token (chat.tokens), by its public prefix."""
    return f"chat.token.{prefix}"


def identity_groups(user, session, api_token=None) -> list[str]:
    """The groups a socket of this handshake's user, session and API token joins."""
    groups = [token_group(api_token.prefix)] if api_token is not None else []
    if session is not None and session.session_key:
        groups.append(session_group(session.session_key))
    if user is not None and user.is_authenticated:
        groups.append(user_group(user.pk))
    return groups


def session_expires_at(session) -> datetime | None:
    """When the stored session expires (None: no stored session, so nothing to expire).

    Read from the session store, not from the loaded copy, which knows only a custom
    expiry: a database session's expire_date moves on whenever the session is saved.
    """
    if session is None or not session.session_key:
        return None
    # __class__, not type(): channels hands the session over in a LazyObject.
    model = getattr(session.__class__, "get_model_class", None)
    if model is None:  # not a database session: the cookie's age from now is the best known
        return timezone.now() + timedelta(seconds=session.get_expiry_age())
    return (
        model()
        .objects.filter(session_key=session.session_key)
        .values_list("expire_date", flat=True)
        .first()
    )


class NoLongerSpeaks(Exception):
    """A message's socket no longer speaks as its author (speak_as_now): it is not stored."""


def speaks_as_now(author: Author, session) -> bool:
    """Whether the socket's session, read afresh, still speaks as `author`.

    What a reconnect would find: False after a logout, a login in the session, a new
    guest name, an expired session, or a user changed, deactivated or deleted by any
    means, signals or not. A socket without a session has nothing to lose.
    """
    (speaks,) = speak_as_now([(author, session)])
    return speaks


def speak_as_now(speakers: Sequence[tuple[Author, Any]]) -> list[bool]:
    """speaks_as_now of each (author, session), their sessions and users read together.

    Checked before every stored message (chat.commits, for a batch's messages at once), so
    it reads with SQL compiled once per count: one read of the sessions and one of their
    users, about 0.1 ms each for the whole batch, where the ORM took 0.5 ms each to
    build its query, and a read each per message cost 0.17 ms a message.
    """
    keys = list(dict.fromkeys(getattr(session, "session_key", None) for _, session in speakers))
    stored = _sessions_data([key for key in keys if key])
    users = _users_of(stored.values())
    speaking = []
    for author, session in speakers:
        key = getattr(session, "session_key", None)
        if not key:
            speaking.append(True)
        elif (data := stored.get(key)) is None:
            speaking.append(False)
        else:
            fresh = _ReadSession(key, data)
            speaking.append(identity.author_for(_user_of(fresh, users), fresh) == author)
    return speaking


class _ReadSession(dict):
    """What identity.author_for reads of a session: its values, and its key."""

    def __init__(self, session_key: str, data: dict):
        super().__init__(data)
        self.session_key = session_key


def _sessions_data(keys: list[str]) -> dict[str, dict]:
    """The values of the stored sessions of `keys` as they are now; none for those gone or
    expired."""
    if not keys:
        return {}
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):  # not a database session: its own load
        found = {}
        for key in keys:
            fresh = store(key)
            data = fresh.load()
            if fresh.session_key:
                found[key] = data
        return found
    sql = _compiled_sql(connection.vendor, store.get_model_class(), "session", len(keys))
    when = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [*keys, when])
        rows = cursor.fetchall()
    return {key: store().decode(data) for key, data in rows}


def _user_id(session: dict):
    """The primary key of the user a session was logged in as, or None."""
    user_id, backend_path = session.get(SESSION_KEY), session.get(BACKEND_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        return get_user_model()._meta.pk.to_python(user_id)
    except ValidationError:
        return None


def _users_of(sessions) -> dict[Any, tuple]:
    """The (password, is_active, username, is_staff) of the sessions' users, by primary key."""
    ids = list(dict.fromkeys(key for session in sessions if (key := _user_id(session)) is not None))
    if not ids:
        return {}
    model = get_user_model()
    with connection.cursor() as cursor:
        cursor.execute(_compiled_sql(connection.vendor, model, "user", len(ids)), ids)
        return {key: tuple(row) for key, *row in cursor.fetchall()}


def _user_of(session: dict, users: dict[Any, tuple]):
    """The session's user as django.contrib.auth.get_user verifies it, or None; read-only.

    get_user itself would flush the session or cycle its key on a mismatch: a socket
    only reads, and leaves that to the next request.
    """
    user_id = _user_id(session)
    if user_id is None or (row := users.get(user_id)) is None:
        return None
    model = get_user_model()
    password, is_active, username, is_staff = row
    user = model(pk=user_id, password=password, is_active=is_active, is_staff=is_staff)
    setattr(user, model.USERNAME_FIELD, username)
    backend = load_backend(session[BACKEND_SESSION_KEY])
    if hasattr(backend, "user_can_authenticate") and not backend.user_can_authenticate(user):
        return None  # ModelBackend: no longer active
    session_hash = session.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return user if any(constant_time_compare(session_hash, h) for h in hashes) else None


@functools.lru_cache(maxsize=IDENTITY_SQL_CACHE_SIZE)
def _compiled_sql(vendor: str, model, which: str, count: int) -> str:
    """The SQL of the read of `count` sessions (takes [*keys, now]) or users (takes ids)."""
    if which == "session":
        keys = [f"key{n}" for n in range(count)]
        # Q objects, positional: their conditions keep this order (keyword ones are sorted).
        query = model.objects.filter(Q(session_key__in=keys), Q(expire_date__gt=timezone.now()))
        query, first_params = query.values_list("session_key", "session_data"), keys
    else:
        first_params = list(range(1, count + 1))
        query = model._default_manager.filter(pk__in=first_params)
        query = query.values_list("pk", "password", "is_active", model.USERNAME_FIELD, "is_staff")
    sql, params = query.query.sql_with_params()
    extra = 1 if which == "session" else 0
    if list(params[:count]) != first_params or len(params) != count + extra:
        # The keys (or ids) must come first, as the callers pass them.
        raise RuntimeError(f"unexpected parameters in the identity check: {params!r}")
    return sql


def close_sockets_of(group: str, reason: str):
    """Once the current transaction commits, close every socket in group, on every process."""
    send_on_commit(group, protocol.identity_changed_event(reason))


def send_on_commit(group: str, event: dict):
    """Once the current transaction commits, send a closing event to group, on every process."""

    def send():
        try:
            send_to_group(group, event)
        except Exception as error:  # the change itself stands; the sockets go at reconnect
            logger.warning("could not close the sockets of %s (%s): %r", group, event, error)

    transaction.on_commit(send)


def send_to_group(group: str, event: dict):
    """Send event to group from the sync thread, through the layer's bounded calls, on an
    existing loop: the server's, in a request it serves; otherwise the process's one
    outside loop (chat.loops.outside_loop), never a new loop and connection per call."""
    if loops.in_a_servers_request_thread():
        async_to_sync(get_channel_layer().group_send)(group, event)
        return
    sending = asyncio.run_coroutine_threadsafe(
        get_channel_layer().group_send(group, event), loops.outside_loop()
    )
    sending.result(timeout=SEND_TIMEOUT_SECONDS)


@receiver(user_logged_in, dispatch_uid="chat.revocation.logged_in")
def _logged_in(sender, request, user, **kwargs):
    # login() has given the session a new key already; the request's cookie names the old
    # one, whose sockets (a guest, or another user) no longer speak as this browser does.
    old_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if old_key and old_key != request.session.session_key:
        close_sockets_of(session_group(old_key), "logged in")


@receiver(user_logged_out, dispatch_uid="chat.revocation.logged_out")
def _logged_out(sender, request, user, **kwargs):
    if request.session.session_key:
        close_sockets_of(session_group(request.session.session_key), "logged out")


@receiver(pre_save, sender=get_user_model(), dispatch_uid="chat.revocation.user_changing")
def _remember_identity(sender, instance, update_fields=None, **kwargs):
    # A login saves last_login alone: no query for that.
    touches_identity = update_fields is None or set(update_fields) & set(_IDENTITY_FIELDS)
    instance._identity_before_save = (
        sender.objects.filter(pk=instance.pk).values_list(*_IDENTITY_FIELDS).first()
        if instance.pk is not None and touches_identity
        else None
    )


@receiver(post_save, sender=get_user_model(), dispatch_uid="chat.revocation.user_changed")
def _user_changed(sender, instance, created, **kwargs):
    before = getattr(instance, "_identity_before_save", None)
    after = tuple(getattr(instance, field) for field in _IDENTITY_FIELDS)
    if created or before is None or before == after:
        return
    if before[_IDENTITY_FIELDS.index("is_active")] and not instance.is_active:
        account_deactivated(instance.pk)
    else:
        close_sockets_of(user_group(instance.pk), "account changed")


def account_deactivated(user_id) -> None:
    """Once the current transaction commits: sign the user out everywhere (chat.deactivation)
    and close their sockets on every process with 4412."""
    # Robust: the deactivation stands if the scan fails (logged); each session is then
    # refused and marked at its next request or handshake instead.
    transaction.on_commit(lambda: deactivation.sign_out_everywhere(user_id), robust=True)
    send_on_commit(user_group(user_id), protocol.account_deactivated_event())


@receiver(post_delete, sender=get_user_model(), dispatch_uid="chat.revocation.user_deleted")
def _user_deleted(sender, instance, **kwargs):
    close_sockets_of(user_group(instance.pk), "account deleted")


@receiver(post_delete, sender=ApiToken, dispatch_uid="chat.revocation.token_revoked")
def _token_revoked(sender, instance, **kwargs):
    close_sockets_of(token_group(instance.prefix), "API token revoked")
