"""HTTP routes of the chat app."""

from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("<room:room_name>/", views.room, name="room"),
    path("<room:room_name>/messages/", views.room_messages, name="room_messages"),
]
