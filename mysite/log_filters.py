"""Logging filters: one line, not a traceback, for failures that are expected and handled."""

import asyncio
import logging

from chat.redis_clients import OUTAGE_ERRORS

# Redis unreachable, or a clean-up cut short by shutdown: each is logged on one line.
EXPECTED_ERRORS = (*OUTAGE_ERRORS, OSError, asyncio.CancelledError)
# channels_redis's pubsub receive unsubscribes its channel when it is cancelled; cancelled
# again meanwhile (daphne cancels a consumer still busy 10 s after its client left, and a
# stopping server cancels them all), that clean-up is cut short and logged as unexpected.
# PubSubLayer.clean_channel, which every consumer awaits as it stops, unsubscribes the
# channel anyway (mysite.channel_layers): there is nothing to report.
CUT_SHORT_CLEAN_UP = "Unexpected exception while cleaning-up channel"


class ExpectedErrorsOnOneLine(logging.Filter):
    """Turn a record whose exception is an expected one into one line naming it.

    channels_redis's pubsub layer logs the traceback of every failed read while Redis is
    down, once a second per process: an outage, not a bug; the layer reconnects on its
    own. A channel clean-up cut short by a cancellation is dropped (CUT_SHORT_CLEAN_UP).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError) and str(record.msg).startswith(
            CUT_SHORT_CLEAN_UP
        ):
            return False
        if isinstance(error, EXPECTED_ERRORS):
            named = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            record.msg = f"{record.getMessage()} {named}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
