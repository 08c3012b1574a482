"""HTTP views: choosing a room and a name, the room page, sign-up, and the messages API.

Explained in docs/protocol.md, 'HTTP endpoints'.
"""

import hashlib

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.utils.cache import get_conditional_response
from django.utils.encoding import iri_to_uri
from django.views import csrf
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import (
    activity,
    identity,
    limits,
    memberships,
    moderation,
    paced,
    permissions,
    protocol,
    retention,
    revocation,
    rooms,
    services,
    tokens,
)
from .forms import SignupForm
from .models import ApiToken, Room

# The views that answer JSON, and so answer their refusals (CSRF's too) in JSON.
JSON_ENDPOINTS = frozenset({"chat:room_messages", "room_list", "mark_read"})


def index(request):
    """Show the room chooser; a submitted valid name redirects to its room."""
    context = {"room_name": "", "error": None, "rooms": _active_rooms(request)}
    if "room" in request.GET:
        context["room_name"] = request.GET["room"]
        try:
            room_name = rooms.normalize_room_name(context["room_name"].strip())
        except rooms.InvalidRoomName as refusal:
            context["error"] = str(refusal)
        else:
            return redirect("chat:room", room_name=room_name)
    return render(request, "chat/index.html", _with_identity(request, context))


@require_POST
def set_display_name(request):
    """Keep a guest's chosen display name in the session."""
    raw = request.POST.get("display_name", "")
    try:
        name = identity.clean_guest_name(raw)
    except identity.InvalidDisplayName as refusal:
        context = {
            "room_name": "",
            "error": None,
            "name_error": str(refusal),
            "name_value": raw,
            "rooms": _active_rooms(request),
        }
        return render(request, "chat/index.html", _with_identity(request, context), status=400)
    if request.session.session_key is None:  # saving the name makes a session
        if refused := limits.http_refusal(limits.GUEST_SESSIONS, request):
            return refused
    request.session[identity.SESSION_KEY] = name
    if request.session.session_key:  # open sockets of this session speak under the old name
        revocation.close_sockets_of(
            revocation.session_group(request.session.session_key), "name changed"
        )
    return redirect("chat:index")


def room(request, room_name):
    """Show one room's page; the route already refused invalid addresses with a 404.

    A private room the reader may not read is the same 404 as a room that does not exist.
    A public room that does not exist but looks like one that does (`Lobby`, `lоbby` for
    `lobby`: services.lookalike_room) is that room: the page redirects there.
    """
    reader = identity.author_for(request.user, request.session)
    if permissions.must_log_in(reader, room_name):
        return redirect_to_login(request.get_full_path())
    room_key = permissions.room_for(reader, room_name)
    if room_key is None:
        return room_not_found_page(request)
    if (existing := services.lookalike_room(room_key)) is not None:
        return redirect("chat:room", room_name=existing)
    # The page checks a message against the server's own limits before sending it.
    message_limits = {
        "message_max_chars": settings.CHAT_MESSAGE_MAX_CHARS,
        "frame_max_chars": settings.CHAT_FRAME_MAX_CHARS,
        # And its heartbeat (mysite.settings): how long without a frame before it pings.
        "heartbeat_seconds": settings.CHAT_HEARTBEAT_SECONDS,
        "heartbeat_timeout_seconds": settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS,
        # And how long the room keeps messages, for the line where its history ends.
        "retention_days": retention.room_days(room_key),
    }
    context = _with_identity(request, {"room_name": room_name, "chat_limits": message_limits})
    # author_for has loaded the session: a cookie naming no stored session has no key now.
    if context["author"].is_guest and request.session.session_key is None:
        # Sockets tell guests apart by session (identity.guest_key): one made now keeps
        # this guest's client ids its own across reconnects, so its retries still dedupe.
        if refused := limits.http_refusal(limits.GUEST_SESSIONS, request):
            return refused
        request.session.create()
        context = _with_identity(request, context)  # the guest's key is the new session's
    author = context["author"]
    # Who reads the page, so it can mark the reader's own messages (display only, never
    # trusted), and the sign-in its socket must have (identity.sign_in_of): a socket that
    # speaks as someone else is closed with 4401 before it stores anything the page sends.
    context["chat_reader"] = {
        "name": author.name,
        "guest": author.is_guest,
        "sign_in": identity.sign_in_of(author),
        # Shows a Delete control on everyone's messages; the server decides (may_delete).
        "moderates": permissions.may_delete_others(author, room_key),
    }
    context["csrf_cookie_name"] = settings.CSRF_COOKIE_NAME
    context["room"] = _room_panel(author, room_name, room_key)
    # What the page's menus offer (chat/static/chat/moderation.js): the server decides anyway.
    context["chat_moderation"] = {
        "moderator": context["room"]["may_moderate"],
        "may_report": True,
        "me": author.name,
    }
    return render(request, "chat/room.html", context)


def _room_panel(author, address: str, room_key: str) -> dict:
    """What the page shows of a room besides its messages: its title, kind and members."""
    room_kind = rooms.kind(room_key)
    panel = {"kind": room_kind, "title": address, "private": room_kind == rooms.PRIVATE}
    if room_kind == rooms.PRIVATE:
        panel["title"] = services.room_title(room_key)
        panel["may_invite"] = permissions.may_invite(author, room_key)
        panel["may_leave"] = permissions.may_leave(author, room_key)
    if (gone := permissions.deactivated_partner(author, room_key)) is not None:
        panel["read_only"] = permissions.read_only_notice(gone)
    if room_kind != rooms.DIRECT and not author.is_guest:
        panel["may_appoint"] = permissions.may_appoint_moderators(author, room_key)
        if permissions.may_set_retention(author, room_key):
            panel["retention_days"] = Room.objects.get(name=room_key).retention_days
    panel["may_resign"] = permissions.may_resign(author, room_key)
    panel["may_moderate"] = permissions.may_moderate_room(author, room_key)
    if panel["may_moderate"]:
        panel["sanctions"] = moderation.in_force(room_key)
    if panel["private"] or panel.get("may_appoint"):  # a public room's: its owner's eyes only
        panel["members"] = memberships.members(room_key)
    return panel


def favicon(request):
    """Browsers ask for /favicon.ico whatever a page links to: send them to the static icon."""
    return redirect(static("chat/favicon.svg"), permanent=True)


def not_a_room(request, path):
    """The project's 404 page for a URL below chat/ that names no valid room, in DEBUG too;
    it says what the room name breaks, as the index does."""
    try:
        rooms.normalize_room_name(path.split("/", 1)[0])
    except rooms.InvalidRoomName as refusal:
        return render(request, "404.html", {"error": str(refusal)}, status=404)
    return render(request, "404.html", status=404)


def not_a_room_endpoint(request, path):
    """An endpoint's 404 for an address that names no valid room, in JSON as the endpoint's
    other answers, saying what the name breaks."""
    try:
        rooms.normalize_address(path.split("/", 1)[0])
    except rooms.InvalidRoomName as refusal:
        return protocol.http_error(404, "invalid_room_name", str(refusal))
    return _room_not_found()


def csrf_failure(request, reason: str = ""):
    """Django's CSRF refusal (CSRF_FAILURE_VIEW): a JSON 403 from an endpoint that speaks
    JSON, Django's page from any other."""
    match = request.resolver_match
    if match is None or match.view_name not in JSON_ENDPOINTS:
        return csrf.csrf_failure(request, reason)
    detail = f"CSRF check failed ({reason}): send the csrftoken cookie's value in X-CSRFToken."
    return protocol.http_error(403, "csrf_failed", detail)


def room_not_found_page(request):
    """The 404 page for a room address that is valid but leads nowhere for this reader: one
    answer for a private room they may not read and for one that does not exist."""
    return render(request, "404.html", {"private": True}, status=404)


@paced.paced  # read on the sockets' thread in turn with other pages, encoded on the loop
@require_GET
def room_messages(request, room_name):
    """A room's messages after ?after=<id> (default 0), oldest first, ?limit=<n> per page.

    With ?before=<id> instead, the newest `limit` messages before that id (older history,
    for a page scrolled up), still oldest first, and `next_before` to go on further back.
    """
    if refused := limits.http_refusal(limits.API, request, as_json=True):
        return refused
    address = room_name
    reader = identity.author_for(request.user, request.session)
    room_name = permissions.room_for(reader, address)
    if room_name is None:
        return _room_not_found()
    # Its look-alike and retention mark in one query, with SQL compiled once.
    room = services.room_on_join(room_name)
    if moved := to_lookalikes_room(request, room_name, room.lookalike):
        return moved
    refusal = permissions.sanction_refusal(reader, room_name, limits.client_network(request))
    if refusal is not None and refusal.code == "banned":
        return protocol.http_error(403, "banned", refusal.detail)
    try:
        page = services.read_page_rows(room_name, request.GET, address, room.gone_until)
    except services.InvalidPage as refusal:
        return protocol.http_error(400, "invalid_page", str(refusal))
    return paced.page_response(page)


def to_lookalikes_room(request, room_key: str, lookalike: str | None) -> HttpResponse | None:
    """For a room that does not exist but looks like one that does (`lookalike`, from
    services.room_on_join), a redirect to the same URL there, as the room page's; None for
    any other room."""
    if lookalike is None:
        return None
    segments = request.path.split("/")
    # The path's segment that names the room: the address, maybe in another normal form.
    at = next(n for n, part in enumerate(segments) if _names(part, room_key))
    segments[at] = lookalike
    query = request.META.get("QUERY_STRING", "")
    return HttpResponseRedirect(iri_to_uri("/".join(segments)) + (f"?{query}" if query else ""))


def _names(path_segment: str, room_key: str) -> bool:
    try:
        return rooms.normalize_address(path_segment) == room_key
    except rooms.InvalidRoomName:
        return False


def _active_rooms(request) -> list[dict]:
    room_list = activity.recent_rooms(settings.CHAT_ROOM_LIST_SIZE, user=request.user)
    return activity.summaries(room_list, request.user)


@require_GET
def room_list(request):
    """The rooms with recent activity, and those named in ?room= (the page's recent rooms).

    Each with its last message's id and time, the people online and, for a logged-in
    user, their read position: the page counts unread as last_id - read position.
    """
    if refused := limits.http_refusal(limits.ROOM_LIST, request, as_json=True):
        return refused
    named = request.GET.getlist("room")
    if len(named) > settings.CHAT_ROOM_LIST_SIZE:
        return protocol.http_error(
            400, "too_many_rooms", f"At most {settings.CHAT_ROOM_LIST_SIZE} rooms."
        )
    try:
        named = [rooms.normalize_address(name) for name in named]
    except rooms.InvalidRoomName as refusal:
        return protocol.http_error(400, "invalid_room_name", str(refusal))
    # A page names its direct conversations by address (@bob); the list has them anyway.
    named = [name for name in named if rooms.kind(name) != rooms.DIRECT]
    # ?online=0: the sidebar, which shows no presence. Its ETag is the list's version, read
    # before the list (so never newer than the body), and an unchanged list's 304 builds
    # nothing (activity.list_version). With presence, which changes without a trace in the
    # database, the ETag is the body's.
    online = request.GET.get("online") != "0"
    if not online:
        etag = f'"v-{activity.list_version(named, request.user)}"'
        if (unchanged := get_conditional_response(request, etag=etag)) is not None:
            return _private(unchanged, etag)
    room_list = activity.recent_rooms(settings.CHAT_ROOM_LIST_SIZE, named, request.user)
    response = JsonResponse({"rooms": activity.summaries(room_list, request.user, online)})
    if online:
        etag = f'"{hashlib.sha256(response.content).hexdigest()[:32]}"'
        if (
            unchanged := get_conditional_response(request, etag=etag, response=response)
        ) is not None:
            return _private(unchanged, etag)
    return _private(response, etag)


def _private(response, etag: str):
    response["ETag"] = etag
    # One reader's list (read positions): never in a shared cache; asked for again each time.
    response["Cache-Control"] = "private, no-cache"
    return response


@require_POST
def mark_read(request, room_name):
    """Move a logged-in user's read position in a room forward to POST up_to=<id>.

    With `as` (the page's sign-in tag, identity.sign_in_of), a session that now speaks as
    someone else (a logout or a login in another tab since the page was loaded) is refused
    with 409 sign_in_changed: the page's position is not the new sign-in's.
    """
    page_sign_in = request.POST.get("as")
    if page_sign_in is not None and page_sign_in != identity.sign_in_of(
        identity.author_for(request.user, request.session)
    ):
        return protocol.http_error(
            409, "sign_in_changed", "This page was loaded for another sign-in: reload it."
        )
    if not request.user.is_authenticated:
        return protocol.http_error(
            403, "not_logged_in", "Only logged-in users' read positions are kept on the server."
        )
    who = f"u:{request.user.pk}"
    if refused := limits.http_refusal(limits.READ_REPORTS, request, who, as_json=True):
        return refused
    room_key = permissions.room_for(identity.author_for(request.user, None), room_name)
    if room_key is None:
        return _room_not_found()
    try:
        up_to = protocol.parse_seq(request.POST.get("up_to", ""))
    except ValueError as refusal:
        return protocol.http_error(400, "invalid_up_to", f"up_to must be a message id: {refusal}.")
    position = activity.mark_read(request.user, room_key, up_to)
    if position is None:
        return protocol.http_error(
            404, "no_such_room", "This room has no messages: nothing to read."
        )
    return JsonResponse({"room": room_name, "read_up_to": position})


def _room_not_found() -> JsonResponse:
    # One answer for a room that does not exist and a private room the reader may not read.
    return protocol.http_error(404, "no_such_room", "There is no such room.")


def signup(request):
    """Create an account (Django's UserCreationForm and the name rules), then log it in."""
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if refused := limits.http_refusal(limits.SIGNUPS, request):
            return refused
        # Named: django-axes's backend stands first, and it only ever refuses.
        login(request, form.save(), backend="django.contrib.auth.backends.ModelBackend")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _with_identity(request, context: dict) -> dict:
    author = identity.author_for(request.user, request.session)
    return {**context, "author": author}


@never_cache  # a new token is on the page once: never from a cache
@login_required
def api_tokens(request):
    """A user's API tokens: POST name= makes one, shown once; POST revoke=<prefix> revokes one."""
    context = {"new_token": None, "error": None}
    status = 200
    if request.method == "POST":
        if "revoke" in request.POST:
            ApiToken.objects.filter(user=request.user, prefix=request.POST["revoke"]).delete()
            return redirect("api_tokens")
        name = request.POST.get("name", "").strip()
        try:
            context["new_token"] = tokens.create_token(request.user, name)[1]
        except tokens.InvalidToken as refusal:
            context["error"], status = str(refusal), 400
    context["tokens"] = ApiToken.objects.filter(user=request.user).order_by("-created")
    return render(request, "chat/tokens.html", context, status=status)
