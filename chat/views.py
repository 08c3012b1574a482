"""HTTP views: choosing a room and a name, the room page, sign-up, and the messages API."""

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import identity, protocol, rooms, services


def index(request):
    """Show the room chooser; a submitted valid name redirects to its room."""
    context = {"room_name": "", "error": None}
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
        request.session[identity.SESSION_KEY] = identity.clean_display_name(raw)
    except identity.InvalidDisplayName as refusal:
        context = {"room_name": "", "error": None, "name_error": str(refusal), "name_value": raw}
        return render(request, "chat/index.html", _with_identity(request, context), status=400)
    return redirect("chat:index")


def room(request, room_name):
    """Show one room's page; the route already refused invalid names with a 404."""
    # The page checks a message against the server's own limits before sending it.
    limits = {
        "message_max_chars": settings.CHAT_MESSAGE_MAX_CHARS,
        "frame_max_chars": settings.CHAT_FRAME_MAX_CHARS,
    }
    context = {"room_name": room_name, "chat_limits": limits}
    return render(request, "chat/room.html", _with_identity(request, context))


@require_GET
def room_messages(request, room_name):
    """A room's messages after ?after=<id> (default 0), oldest first, ?limit=<n> per page."""
    try:
        after = int(request.GET.get("after", "0"))
        limit = int(request.GET.get("limit", settings.CHAT_API_PAGE_SIZE))
    except ValueError:
        return HttpResponseBadRequest("after and limit must be whole numbers")
    if after < 0 or not 1 <= limit <= settings.CHAT_API_PAGE_MAX:
        return HttpResponseBadRequest(f"after >= 0 and 1 <= limit <= {settings.CHAT_API_PAGE_MAX}")
    page = services.messages_after(room_name, after, limit + 1)
    has_more = len(page) > limit
    page = page[:limit]
    return JsonResponse(
        {
            "room": room_name,
            "messages": [protocol.message_fields(message) for message in page],
            "next_after": page[-1].seq if has_more else None,
        }
    )


def signup(request):
    """Create an account with Django's UserCreationForm, then log it in."""
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.save())
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _with_identity(request, context: dict) -> dict:
    author = identity.author_for(request.user, request.session)
    return {**context, "author": author}
