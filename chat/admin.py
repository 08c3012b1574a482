from django.contrib import admin

from .models import Membership, Message, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "title", "last_seq"]
    search_fields = ["name", "title"]
    inlines = [MembershipInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["room", "seq", "display_name", "author", "created", "short_text"]
    # Not by room: the filter lists every room ever made (827 KiB at 3,003 rooms). Search
    # finds a room's messages by its name; ?room__name__exact=<name> filters by one.
    list_filter = ["created", ("author", admin.EmptyFieldListFilter)]
    search_fields = ["text", "display_name", "room__name", "author__username"]
    date_hierarchy = "created"
    raw_id_fields = ["author"]
    readonly_fields = ["room", "seq", "client_id", "created"]

    @admin.display(description="text")
    def short_text(self, message):
        return message.text[:80]
