"""What the operator does to kopf's log levels (app.py)."""

from __future__ import annotations

import io
import json
import logging

from kopf._core.actions.loggers import LogFormat, make_formatter

from infisical_sync.app import RetriesAreWarnings


def logged(message: str, level: int) -> dict[str, object]:
    """One record through a handler as kopf.configure sets it up (JSON), with the filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(log_format=LogFormat.JSON))
    handler.addFilter(RetriesAreWarnings())
    logger = logging.getLogger(f"test-log-levels-{message[:12]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(handler)
    return dict(json.loads(stream.getvalue()))


def test_a_request_kopf_will_retry_is_a_warning() -> None:
    record = logged(
        "Request attempt #1/9 failed; will retry: PATCH https://x/apis -> APITooManyRequestsError",
        logging.ERROR,
    )
    assert record["severity"] == "warn"


def test_a_final_failure_and_other_errors_stay_errors() -> None:
    assert (
        logged("Request attempt #9/9 failed; escalating: GET x", logging.ERROR)["severity"]
        == "error"
    )
    assert (
        logged("Handler 'x' failed with an exception. Will retry.", logging.ERROR)["severity"]
        == "error"
    )
    assert (
        logged("Request attempt #1/9 failed; will retry: GET x", logging.INFO)["severity"] == "info"
    )
