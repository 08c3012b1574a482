"""mysite.log_filters: expected failures on one line, the unexpected with their traceback."""

import asyncio
import logging

import redis

from mysite.log_filters import ExpectedErrorsOnOneLine


def record_of(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException as raised:
        exc_info = (type(raised), raised, raised.__traceback__)
    return logging.LogRecord(
        "channels_redis.pubsub", logging.ERROR, __file__, 1, "Unexpected %s", ("trouble",), exc_info
    )


def test_an_outage_is_one_warning_line_naming_the_error():
    record = record_of(redis.exceptions.ConnectionError("Error 111 connecting"))
    assert ExpectedErrorsOnOneLine().filter(record)
    assert record.exc_info is None
    assert record.levelname == "WARNING"
    assert record.getMessage() == "Unexpected trouble ConnectionError: Error 111 connecting"


def test_an_unexpected_error_keeps_its_traceback_and_level():
    record = record_of(KeyError("surprise"))
    assert ExpectedErrorsOnOneLine().filter(record)
    assert record.exc_info is not None
    assert record.levelname == "ERROR"


def test_a_cancelled_clean_up_is_named_without_an_empty_detail():
    record = record_of(asyncio.CancelledError())
    assert ExpectedErrorsOnOneLine().filter(record)
    assert record.getMessage() == "Unexpected trouble CancelledError"


def test_a_channel_clean_up_cut_short_by_a_cancellation_is_not_reported():
    """PubSubLayer.clean_channel completes it; a stopping server logged one per socket."""
    record = record_of(asyncio.CancelledError())
    record.msg, record.args = "Unexpected exception while cleaning-up channel:", ()
    assert not ExpectedErrorsOnOneLine().filter(record)
