"""HTTP routes of the chat app.

Explained in docs/protocol.md, 'HTTP endpoints'.
"""

from django.urls import path, re_path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("<room:room_name>/", views.room, name="room"),
    path("<room:room_name>/messages/", views.room_messages, name="room_messages"),
    # The messages endpoint of an address that names no room: a JSON 404, as its others.
    re_path(r"^(?P<path>[^/]+)/messages/$", views.not_a_room_endpoint),
    # Last: any other path with a trailing slash names an invalid room. The project's page
    # says so, in DEBUG too (Django's technical 404 would show instead); a path without
    # the slash still falls through to APPEND_SLASH's redirect.
    re_path(r"^(?P<path>.+)/$", views.not_a_room),
]
