from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from . import tokens
from .models import ApiToken, Membership, Message, MessageRevision, Room


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "title", "last_seq"]
    search_fields = ["name", "title"]
    inlines = [MembershipInline]


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
