"""Logging filters: one line, not a traceback, for failures that are expected and handled."""

import asyncio
import logging

from chat.redis_clients import OUTAGE_ERRORS

# Redis unreachable, or a clean-up cut short by shutdown: each is logged on one line.
EXPECTED_ERRORS = (*OUTAGE_ERRORS, OSError, asyncio.CancelledError)


class ExpectedErrorsOnOneLine(logging.Filter):
    """Turn a record whose exception is an expected one into one line naming it.

    channels_redis's pubsub layer logs the traceback of every failed read while Redis is
    down, once a second per process, and of an unsubscribe cut short by a shutdown.
    Those are outages and shutdowns, not bugs: the layer reconnects on its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, EXPECTED_ERRORS):
            named = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            record.msg = f"{record.getMessage()} {named}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
