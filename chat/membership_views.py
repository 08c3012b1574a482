"""HTTP views that change who is in a room: forms on the index and the room page.

Each answers with a redirect and a notice; a room the reader may not read is the same
404 page as one that does not exist (chat.permissions.room_for).

Explained in docs/protocol.md, 'Private rooms and direct messages'.
"""

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from . import identity, memberships, permissions, retention
from .models import Membership
from .views import room_not_found_page


@require_POST
def create_private_room(request):
    """Make a private room owned by the logged-in reader, then open it."""
    author = identity.author_for(request.user, request.session)
    if author.is_guest:
        return redirect_to_login("/chat/")
    try:
        room_key = memberships.create_private_room(author, request.POST.get("title", ""))
    except memberships.MembershipRefused as refusal:
        messages.error(request, refusal.detail)
        return redirect("chat:index")
    return redirect("chat:room", room_name=room_key)


@require_POST
def invite(request, room_name):
    """The owner adds a member by username."""
    return _change(request, room_name, memberships.invite, "{} is now a member.")


@require_POST
def remove(request, room_name):
    """The owner removes a member by username; their open pages are told so."""
    return _change(request, room_name, memberships.remove, "{} is no longer a member.")


@require_POST
def set_role(request, room_name):
    """The owner makes a member a moderator (role=moderator), or a member again."""
    role = request.POST.get("role", "")

    def change(author, room_key, username):
        if role not in (Membership.Role.MODERATOR, Membership.Role.MEMBER):
            raise memberships.MembershipRefused("invalid_role", "Choose moderator or member.")
        memberships.set_role(author, room_key, username, Membership.Role(role))

    return _change(request, room_name, change, f"{{}} is now a {role}.")


@require_POST
def leave(request, room_name):
    """A member leaves a private room; their open pages there are closed."""
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    try:
        memberships.leave(author, room_key)
    except memberships.MembershipRefused as refusal:
        messages.error(request, refusal.detail)
        return redirect("chat:room", room_name=room_name)
    messages.info(request, "You left the room.")
    return redirect("chat:index")


@require_POST
def resign(request, room_name):
    """A moderator gives up the role (chat.memberships.resign), in a public or private room."""
    return _change(
        request,
        room_name,
        lambda author, room_key, _: memberships.resign(author, room_key),
        "You are no longer a moderator here.",
    )


@require_POST
def set_retention(request, room_name):
    """The owner sets how many days the room keeps its messages (days=, "" for the default)."""
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    if not permissions.may_set_retention(author, room_key):
        messages.error(request, "Only the room's owner sets how long it keeps messages.")
        return redirect("chat:room", room_name=room_name)
    try:
        days = retention.set_room_days(room_key, request.POST.get("days", ""))
    except retention.InvalidPeriod as refusal:
        messages.error(request, str(refusal))
        return redirect("chat:room", room_name=room_name)
    days = retention.days_for(days)
    kept = f"for {days} days" if days else "for ever"
    messages.info(request, f"Messages here are now kept {kept}.")
    return redirect("chat:room", room_name=room_name)


def _change(request, room_name, change, done: str):
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    username = request.POST.get("username", "").strip()
    try:
        change(author, room_key, username)
    except memberships.MembershipRefused as refusal:
        messages.error(request, refusal.detail)
    else:
        messages.info(request, done.format(username))
    return redirect("chat:room", room_name=room_name)
