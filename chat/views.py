"""HTTP views: the index page (choose a room) and the room page."""

from django.shortcuts import redirect, render

from . import rooms


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
    return render(request, "chat/index.html", context)


def room(request, room_name):
    """Show one room's page; the route already refused invalid names with a 404."""
    return render(request, "chat/room.html", {"room_name": room_name})
