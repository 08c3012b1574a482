"""Forms: sign-up with Django's username rule plus the chat's rules for names.

Explained in docs/security.md, 'Look-alike names'.
"""

from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError

from . import identity


class SignupForm(UserCreationForm):
    """UserCreationForm that also refuses invisible characters and look-alike usernames."""

    def clean_username(self):
        """Django's checks (its validator, an existing username), then the chat's."""
        username = super().clean_username()
        if username is None:
            return username  # Django refused it (taken) and recorded why: nothing to add
        try:
            identity.refuse_hidden_characters(username)
            identity.refuse_lookalike(username)
        except identity.InvalidDisplayName as refusal:
            raise ValidationError(str(refusal), code="unsafe_username") from None
        return username
