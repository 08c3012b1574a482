"""HTTP views of moderators' actions and readers' reports: forms on the room page.

Each answers as the membership forms do (chat.membership_views): a redirect to the room
with a notice; a room the reader may not read is the same 404 page as one that does not
exist. A target is named by `message` (the id of a message they sent: how a guest is
named) or by `username`.

Explained in docs/protocol.md, 'Moderation'.
"""

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from . import identity, limits, moderation, permissions
from .models import Sanction
from .views import room_not_found_page


@require_POST
def mute(request, room_name):
    """Mute the target for POST duration (5m, 1h, 1d, or "" until lifted)."""

    def act(author, room_key, target):
        moderation.mute(author, room_key, target, *_duration_and_reason(request))
        return f"{target.label} is muted."

    return _act_on_target(request, room_name, act)


@require_POST
def kick(request, room_name):
    """Close the target's sockets in the room; they may rejoin."""

    def act(author, room_key, target):
        moderation.kick(author, room_key, target, request.POST.get("reason", ""))
        return f"{target.label} was removed from the room."

    return _act_on_target(request, room_name, act)


@require_POST
def ban(request, room_name):
    """Close the target's sockets and keep them out for POST duration."""

    def act(author, room_key, target):
        moderation.ban(author, room_key, target, *_duration_and_reason(request))
        return f"{target.label} is banned."

    return _act_on_target(request, room_name, act)


@require_POST
def unmute(request, room_name):
    """Lift POST sanction, a mute."""
    return _lift(request, room_name, Sanction.Kind.MUTE, "The mute is lifted.")


@require_POST
def unban(request, room_name):
    """Lift POST sanction, a ban."""
    return _lift(request, room_name, Sanction.Kind.BAN, "The ban is lifted.")


@require_POST
def report(request, room_name):
    """Queue POST message (its id) for staff, with an optional reason; limited per person."""
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    who = f"u:{author.user_id}" if author.user_id is not None else None  # guests: per address
    if refused := limits.http_refusal(limits.MESSAGE_REPORTS, request, who):
        return refused
    try:
        moderation.report(
            author, room_key, request.POST.get("message", ""), request.POST.get("reason", "")
        )
    except moderation.ModerationRefused as refusal:
        messages.error(request, refusal.detail)
    else:
        messages.info(request, "Thank you: the message is reported to the site's staff.")
    return redirect("chat:room", room_name=room_name)


def _duration_and_reason(request) -> tuple[str, str]:
    return request.POST.get("duration", ""), request.POST.get("reason", "")


def _act_on_target(request, room_name, act):
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    try:
        if "message" in request.POST:
            target = moderation.target_of_message(room_key, request.POST["message"])
        else:
            target = moderation.target_of_username(request.POST.get("username", ""))
        done = act(author, room_key, target)
    except moderation.ModerationRefused as refusal:
        messages.error(request, refusal.detail)
    else:
        messages.info(request, done)
    return redirect("chat:room", room_name=room_name)


def _lift(request, room_name, kind: Sanction.Kind, done: str):
    author = identity.author_for(request.user, request.session)
    room_key = permissions.room_for(author, room_name)
    if room_key is None:
        return room_not_found_page(request)
    try:
        moderation.lift(author, room_key, request.POST.get("sanction", ""), kind)
    except moderation.ModerationRefused as refusal:
        messages.error(request, refusal.detail)
    else:
        messages.info(request, done)
    return redirect("chat:room", room_name=room_name)
