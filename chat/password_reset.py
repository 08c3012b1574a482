"""Password reset that tells nobody who has an account, and mails nobody a hundred times.

Django's PasswordResetView renders and sends the mail inside the request, and only for
an address with an account: with a mail server configured it answered in 220 ms for
one and 6 ms for any other, which tells anyone which addresses have accounts. Here the
form only queues the mail, and a thread of the process renders and sends it after the
response, so both answers are the same page in the same time. Requests count per
client address (a 429, alike for every address asked about); mails count per account
where they are sent, out of the request, so a limit reached shows in no answer.

Explained in docs/security.md, 'Password reset'.
"""

import logging
import queue
import threading

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordResetForm

from . import limits, redis_clients

logger = logging.getLogger(__name__)

# Mails waiting for the sender thread: while a mail server does not answer, at most this
# many wait in memory (a few minutes of the per-address limits of a crowd); more are
# dropped, and logged. Queued mails are lost if the process stops.
MAILS_QUEUED_MAX = 100

_queue: queue.Queue = queue.Queue(MAILS_QUEUED_MAX)
_sender_started = threading.Lock()
_sender: threading.Thread | None = None


class QueuedPasswordResetForm(PasswordResetForm):
    """Django's form, whose mail is rendered and sent by the sender thread (send_later)."""

    def send_mail(
        self,
        subject_template_name,
        email_template_name,
        context,
        from_email,
        to_email,
        html_email_template_name=None,
    ):
        """Queue the mail: nothing of it is rendered or sent inside the request."""
        send_later(
            context["user"].pk,
            super().send_mail,
            subject_template_name,
            email_template_name,
            context,
            from_email,
            to_email,
            html_email_template_name,
        )


class PasswordResetView(auth_views.PasswordResetView):
    """Django's view, limited per client address, with the queued form."""

    form_class = QueuedPasswordResetForm

    def post(self, request, *args, **kwargs):
        """Count the request against the client address's limit, then Django's view."""
        if refused := limits.http_refusal(limits.PASSWORD_RESETS, request):
            return refused
        return super().post(request, *args, **kwargs)


def send_later(account, send, *args) -> None:
    """Have the sender thread call send(*args), within the account's mail limit."""
    _start_sender()
    try:
        _queue.put_nowait((account, send, args))
    except queue.Full:
        logger.error(
            "password reset mail to account %s dropped: %d waiting", account, MAILS_QUEUED_MAX
        )


def wait_for_sent_mails() -> None:
    """Return once every mail queued so far has been sent or dropped (for tests)."""
    _queue.join()


def _start_sender() -> None:
    global _sender
    with _sender_started:
        if _sender is None or not _sender.is_alive():
            _sender = threading.Thread(
                target=_send_forever, name="password-reset-mail", daemon=True
            )
            _sender.start()


def _send_forever() -> None:
    while True:
        account, send, args = _queue.get()
        try:
            _send_within_limit(account, send, args)
        except Exception:
            logger.exception("password reset mail to account %s failed", account)
        finally:
            _queue.task_done()


def _send_within_limit(account, send, args: tuple) -> None:
    try:
        wait = limits.retry_after(limits.PASSWORD_RESET_MAILS, f"u:{account}")
    except redis_clients.OUTAGE_ERRORS as error:  # as http_refusal does: sent, logged
        logger.warning(
            "%s not checked, Redis unreachable: %r", limits.PASSWORD_RESET_MAILS.setting, error
        )
        wait = None
    if wait is not None:
        logger.warning(
            "password reset mail to account %s not sent: %s",
            account,
            limits.describe(limits.PASSWORD_RESET_MAILS, wait),
        )
        return
    send(*args)
