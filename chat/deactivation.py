"""A deactivated account is signed out everywhere, and its browsers stay refused as guests.

When a user's "Active" goes from true to false (the admin, or any save), every stored
session of that user is kept under its key with its contents replaced by a marker naming
the user (DEACTIVATED_KEY): signed out, so a reactivation needs a new login, and marked,
so that the same browser is not let back in as a guest. Every socket of the
user, on every process, closes with CLOSE_ACCOUNT_DEACTIVATED (4412). While the user stays
inactive, a marked session meets a 403 page ("This account has been deactivated.") at the
chat's pages, a 403 `account_deactivated` error at its HTTP endpoints, and 4412 at the
socket. A deactivation without signals (QuerySet.update) is caught at the session's next
request or handshake: Django keeps the inactive user's id in the session, and that counts
as the marker (the request converts it). A browser that clears its cookies is a new visitor.

Explained in docs/security.md, 'Deactivated accounts'.
"""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.utils import timezone

from . import protocol

# The session marker: the id of the deactivated user the session was signed in as.
DEACTIVATED_KEY = "chat_deactivated_user"
# Sessions decoded per database round trip when a deactivation looks for the user's.
SESSIONS_SCANNED_PER_QUERY = 2000
DETAIL = "This account has been deactivated."
# The views that answer in JSON: a refusal there is the endpoints' error shape, not a page.
JSON_VIEWS = frozenset({"room_messages", "room_list", "mark_read"})
# The modules of the views a marked session is refused at: the chat's pages and endpoints.
GUARDED_MODULES = frozenset({"chat.views", "chat.membership_views"})


def deactivated_user(user, session) -> int | None:
    """The id of the deactivated account a guest's session was signed in as, or None.

    A logged-in user is never refused here. A session that names no user costs no query;
    one that does costs one: refused only while that user exists and is inactive.
    """
    if session is None or (user is not None and user.is_authenticated):
        return None
    user_id = session.get(DEACTIVATED_KEY) or session.get(SESSION_KEY)
    if user_id is None:
        return None
    model = get_user_model()
    try:
        pk = model._meta.pk.to_python(user_id)
    except ValidationError:  # not an id of this user model: nothing to refuse for
        return None
    inactive = model._default_manager.filter(pk=pk, is_active=False).exists()
    return pk if inactive else None


def sign_out_everywhere(user_id) -> int:
    """Replace each stored session of the user by the marker; returns how many.

    Django keeps no index of sessions by user: every unexpired session is decoded, in
    batches. A deactivation is rare; this runs once for it, after its commit.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):  # not a database session: caught at next use
        return 0
    model, decoder, wanted = store.get_model_class(), store(), str(user_id)
    marked = decoder.encode({DEACTIVATED_KEY: user_id})
    found = [
        session.session_key
        for session in model.objects.filter(expire_date__gt=timezone.now())
        .only("session_key", "session_data")
        .iterator(chunk_size=SESSIONS_SCANNED_PER_QUERY)
        if str(decoder.decode(session.session_data).get(SESSION_KEY)) == wanted
    ]
    return model.objects.filter(session_key__in=found).update(session_data=marked)


def refusal(request, view_name: str):
    """The 403 a marked session gets: JSON at an endpoint, the page elsewhere."""
    if view_name in JSON_VIEWS:
        return protocol.http_error(403, "account_deactivated", DETAIL)
    return render(request, "chat/deactivated.html", {"detail": DETAIL}, status=403)


class DeactivatedSessionMiddleware:
    """Refuse the chat's pages and endpoints to a session of a deactivated account."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        """A 403 for a marked session at a chat view; None lets the view run."""
        if view_func.__module__ not in GUARDED_MODULES:
            return None
        user_id = deactivated_user(request.user, request.session)
        if user_id is None:
            return None
        if DEACTIVATED_KEY not in request.session:  # deactivated without signals: mark it now
            request.session.clear()
            request.session[DEACTIVATED_KEY] = user_id
        return refusal(request, view_func.__name__)
