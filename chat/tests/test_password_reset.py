"""Password reset: one answer for every address, the mail out of the request, and limits."""

import threading

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from django.urls import reverse

from chat import password_reset

# Every request and mail is counted (chat.limits), in the session's Redis, from zero.
pytestmark = pytest.mark.usefixtures("limits_count_from_zero")

# How long the held mail backend waits to be let go: a mail sent inside the request
# would hold the response this long before the test could see it.
HELD_SECONDS = 2.0


class HeldBackend(EmailBackend):
    """A mail backend that sends only once the test lets it, and notes on which thread."""

    release = threading.Event()
    threads: list[str] = []

    def send_messages(self, messages):
        self.release.wait(HELD_SECONDS)
        self.threads.append(threading.current_thread().name)
        return super().send_messages(messages)


@pytest.fixture
def held_mail(settings, mailoutbox):
    settings.EMAIL_BACKEND = f"{__name__}.HeldBackend"
    HeldBackend.release.clear()
    HeldBackend.threads.clear()
    yield mailoutbox
    HeldBackend.release.set()
    password_reset.wait_for_sent_mails()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "old-Secret-42")


def _ask_reset(client, email: str, address: str = "203.0.113.5"):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)


def test_addresses_with_and_without_an_account_get_one_answer_and_no_mail_inside_it(
    client, alice, held_mail
):
    with_account = _ask_reset(client, "alice@example.com")
    without = _ask_reset(client, "nobody@example.com")

    # Both answered while the mail server still holds the mail: no request waited for it.
    assert HeldBackend.threads == [] and held_mail == []
    assert with_account.status_code == without.status_code == 302
    assert with_account["Location"] == without["Location"] == reverse("password_reset_done")
    assert with_account.content == without.content
    HeldBackend.release.set()
    password_reset.wait_for_sent_mails()
    assert [message.to for message in held_mail] == [["alice@example.com"]]
    assert HeldBackend.threads == ["password-reset-mail"]


def test_reset_requests_are_limited_per_client_address_whoever_is_asked_about(
    client, alice, settings, mailoutbox
):
    settings.CHAT_LIMIT_PASSWORD_RESETS_PER_ADDRESS = "2/hour"
    assert _ask_reset(client, "nobody@example.com").status_code == 302
    assert _ask_reset(client, "alice@example.com").status_code == 302
    for email in ["alice@example.com", "nobody@example.com"]:
        refused = _ask_reset(client, email)
        assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert _ask_reset(client, "alice@example.com", address="198.51.100.7").status_code == 302


def test_reset_mails_are_limited_per_account_from_any_address_and_the_answer_does_not_say(
    client, alice, settings, mailoutbox
):
    settings.CHAT_LIMIT_PASSWORD_RESET_MAILS_PER_ACCOUNT = "2/hour"
    answers = [
        _ask_reset(client, email, address=f"198.51.100.{n}")
        for n, email in enumerate(["alice@example.com", "ALICE@example.com", "alice@example.com"])
    ]
    password_reset.wait_for_sent_mails()

    assert {(answer.status_code, answer["Location"]) for answer in answers} == {
        (302, reverse("password_reset_done"))
    }
    assert len(mail.outbox) == 2
