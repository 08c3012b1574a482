from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from . import identity, moderation, tokens
from .models import (
    ApiToken,
    Membership,
    Message,
    MessageRevision,
    ModerationAction,
    Report,
    Room,
    Sanction,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    """Rooms' titles, retention and members: a room is made by its first message or the
    private room form (chat.rooms' name rule, look-alike keys), and its name is its key."""

    list_display = ["name", "title", "last_seq", "retention_days", "gone_until"]
    search_fields = ["name", "title"]
    # Counters the chat keeps: edited by hand, ids would repeat or leave gaps.
    readonly_fields = ["name", "last_seq", "last_change", "gone_until"]
    inlines = [MembershipInline]

    def has_add_permission(self, request):
        """None: a room is made by the chat's rules, never by hand."""
        return False


class MessageRevisionInline(admin.TabularInline):
    """A message's original text, its edits and its deletion, with who and when: read only."""

    model = MessageRevision
    fields = ["kind", "text", "by_name", "by", "change", "created"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages are read here and deleted as a moderator would (chat.posting.remove_message):
    a soft delete whose change reaches open pages, never a row gone that pages cannot learn of.
    Their text is not edited here: an edit is its author's."""

    list_display = ["room", "seq", "display_name", "author", "created", "short_text", "deleted"]
    # Not by room: the filter lists every room ever made (827 KiB at 3,003 rooms). Search
    # finds a room's messages by its name; ?room__name__exact=<name> filters by one.
    list_filter = ["created", ("author", admin.EmptyFieldListFilter)]
    search_fields = ["text", "display_name", "room__name", "author__username"]
    date_hierarchy = "created"
    raw_id_fields = ["author"]
    readonly_fields = ["room", "seq", "text", "client_id", "created", "edited", "deleted", "change"]
    inlines = [MessageRevisionInline]

    def has_add_permission(self, request):
        """None: a message is posted through the chat's path (chat.posting), not the admin."""
        return False

    @admin.display(description="text")
    def short_text(self, message):
        return message.text[:80]

    def delete_model(self, request, obj):
        """Delete as staff: blank its text, keep its revisions, tell open pages."""
        self._remove(request, [obj])

    def delete_queryset(self, request, queryset):
        """The bulk action: each message deleted as delete_model deletes one."""
        self._remove(request, queryset.filter(deleted=False).order_by("room", "seq"))

    def _remove(self, request, messages_to_remove):
        # Imported here: Django imports the admin while it sets up, before the tests' root
        # conftest turns on chat.sides's checks, which posting's functions are declared with.
        from . import posting

        for message in messages_to_remove:
            if message.deleted:
                continue
            try:
                posting.remove_message(message, request.user)
            except posting.PostRefused as refusal:
                self.message_user(request, f"{message}: {refusal.detail}", messages.ERROR)


class ApiTokenForm(forms.ModelForm):
    """A new token's user and name, refused as the user's page refuses them (chat.tokens)."""

    class Meta:
        model = ApiToken
        fields = ["user", "name"]

    def clean(self):
        """Refuse a name or a user's token count that create_token would refuse."""
        data = super().clean()
        if data.get("user") is not None:
            try:
                tokens.refuse_new_token(data["user"], data.get("name", ""))
            except tokens.InvalidToken as refusal:
                raise ValidationError(str(refusal)) from None
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Admins list and revoke (delete) tokens, and make one for a user, shown once."""

    form = ApiTokenForm

    list_display = ["prefix", "name", "user", "created", "last_used"]
    search_fields = ["prefix", "name", "user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["prefix", "created", "last_used"]

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        """Make the token (chat.tokens) and show it once, in the admin's message."""
        token, raw = tokens.create_token(obj.user, obj.name)
        obj.pk, obj.prefix, obj.created = token.pk, token.prefix, token.created
        messages.warning(request, f"The new token, shown once: copy it now. {raw}")


@admin.register(ModerationAction)
class ModerationActionAdmin(admin.ModelAdmin):
    """The moderation log: read-only, as it was done (chat.moderation)."""

    list_display = ["created", "room_name", "action", "moderator_name", "target", "until", "reason"]
    list_filter = ["action", "room_name", "created"]
    search_fields = ["room_name", "moderator_name", "target", "reason"]
    date_hierarchy = "created"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Sanction)
class SanctionAdmin(admin.ModelAdmin):
    """Mutes and bans in force, read here; deleting one lifts it as the room page does
    (chat.moderation.lift): logged, and heard at once by every process with a socket in
    the room. Not made or changed here: a sanction's target and end are a moderator's act."""

    list_display = ["room", "kind", "label", "until", "created"]
    list_filter = ["kind"]
    search_fields = ["room__name", "label"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_model(self, request, obj):
        """Lift it as staff: the moderation log keeps it, the room's sockets hear of it."""
        self._lift(request, [obj])

    def delete_queryset(self, request, queryset):
        """The bulk action: each sanction lifted as delete_model lifts one."""
        self._lift(request, queryset)

    def _lift(self, request, chosen):
        staff = identity.author_for(request.user, None)
        for sanction in chosen:
            try:
                moderation.lift(staff, sanction.room_id, str(sanction.pk), sanction.kind)
            except moderation.ModerationRefused as refusal:
                self.message_user(request, f"{sanction}: {refusal.detail}", messages.ERROR)


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    """The queue of reported messages: unresolved first; staff mark them resolved."""

    list_display = ["created", "room", "reported_text", "reporter_name", "reason", "resolved"]
    list_filter = ["resolved", "created"]
    search_fields = ["message__text", "message__room__name", "reporter_name", "reason"]
    raw_id_fields = ["message", "reporter"]
    actions = ["mark_resolved"]

    @admin.display(description="room")
    def room(self, report):
        return report.message.room_id

    @admin.display(description="message")
    def reported_text(self, report):
        return f"{report.message.display_name}: {report.message.text[:80]}"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("message")

    @admin.action(description="Mark the selected reports resolved")
    def mark_resolved(self, request, queryset):
        """Resolve the selected reports."""
        done = queryset.update(resolved=True)
        self.message_user(request, f"{done} reports resolved.", messages.SUCCESS)
