"""Identity follows the session: a socket lives only as long as the identity it speaks as.

Channels reads a socket's user and session once, at the handshake (channels#1324), so
without this a socket keeps speaking as a user who has since logged out. Each socket
also joins a channel-layer group for its session and, when logged in, one for its user.
A socket opened with an API token also joins one for the token. When that identity changes
anywhere (logout, a login in the session, a password change, deactivation or deletion of
the user, a guest's new display name, a revoked token), every process's sockets
of that session or user receive `chat.identity_changed` and close with
CLOSE_IDENTITY_CHANGED (4401); the page reloads as whoever the session now is. A session that
expires closes its sockets the same way, from a timer in the socket's process.

Explained in docs/architecture.md, 'Why each choice'.
"""

import hashlib
import logging
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model, user_logged_in, user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from . import protocol
from .models import ApiToken

logger = logging.getLogger(__name__)

# What changes who a user is, for open sockets: other sessions' auth hash, or the right to log in.
_IDENTITY_FIELDS = ("password", "is_active", "username")


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


def close_sockets_of(group: str, reason: str):
    """Once the current transaction commits, close every socket in group, on every process."""

    def send():
        try:
            async_to_sync(get_channel_layer().group_send)(
                group, protocol.identity_changed_event(reason)
            )
        except Exception as error:  # the change itself stands; the sockets go at reconnect
            logger.warning("could not close the sockets of %s (%s): %r", group, reason, error)

    transaction.on_commit(send)


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
    if not created and before is not None and before != after:
        close_sockets_of(user_group(instance.pk), "account changed")


@receiver(post_delete, sender=get_user_model(), dispatch_uid="chat.revocation.user_deleted")
def _user_deleted(sender, instance, **kwargs):
    close_sockets_of(user_group(instance.pk), "account deleted")


@receiver(post_delete, sender=ApiToken, dispatch_uid="chat.revocation.token_revoked")
def _token_revoked(sender, instance, **kwargs):
    close_sockets_of(token_group(instance.prefix), "API token revoked")
