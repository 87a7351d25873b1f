"""Settings, durations, selectors, conditions."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from infisical_sync.conditions import Condition, condition_status, merge_conditions
from infisical_sync.config import Settings
from infisical_sync.durations import (
    jittered,
    parse_duration,
    retry_delay,
    sync_interval,
    validation_interval,
)
from infisical_sync.resources import LabelSelector
from infisical_sync.selectors import selector_matches


def test_settings_from_env_and_overrides() -> None:
    settings = Settings.from_env(
        {
            "INFISICAL_SYNC_NAMESPACES": "a, b",
            "INFISICAL_SYNC_ALL_NAMESPACES": "false",
            "INFISICAL_SYNC_LOG_FORMAT": "json",
            "INFISICAL_SYNC_CONCURRENCY_PER_CONNECTION": "7",
        },
        log_format=None,  # a flag that was not given does not override the environment
        metrics_port=0,
    )
    assert settings.namespaces == ["a", "b"] and settings.all_namespaces is False
    assert (settings.log_format, settings.concurrency_per_connection, settings.metrics_port) == (
        "json",
        7,
        0,
    )
    with pytest.raises(ValidationError):
        Settings.from_env({"INFISICAL_SYNC_LOG_FORMAT": "xml"})


def test_batch_requests_are_bounded_by_bytes_and_optionally_by_keys() -> None:
    default = Settings.from_env({})
    assert (default.batch_max_bytes, default.batch_chunk_size) == (900 * 1024, None)
    tuned = Settings.from_env(
        {"INFISICAL_SYNC_BATCH_MAX_BYTES": "65536", "INFISICAL_SYNC_BATCH_CHUNK_SIZE": "100"}
    )
    assert (tuned.batch_max_bytes, tuned.batch_chunk_size) == (65536, 100)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("90s", 90),
        ("500ms", 0.5),
        ("1.5h", 5400),
        ("", 42),
        ("5 minutes", 42),
        ("m", 42),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, 42) == seconds


@pytest.mark.parametrize(
    ("text", "sync_seconds", "validation_seconds"),
    [
        (None, 300, 300),  # the CRD default
        ("0s", 10, 30),  # stored before the CRD had minimums: clamped, never a hot loop
        ("500ms", 10, 30),
        ("10s", 10, 30),
        ("30s", 30, 30),
        ("1h", 3600, 3600),
        ("5 minutes", 300, 300),
    ],
)
def test_intervals_are_clamped_to_the_crd_minimums(
    text: str | None, sync_seconds: float, validation_seconds: float
) -> None:
    assert sync_interval({"syncInterval": text}) == sync_seconds
    assert validation_interval({"validationInterval": text}) == validation_seconds


def test_jitter_stays_within_ten_percent() -> None:
    values = [jittered(100) for _ in range(200)]
    assert all(90 <= v <= 110 for v in values) and len(set(values)) > 1


def test_selector_matching_and_rendering() -> None:
    selector = {
        "matchLabels": {"push": "true"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    assert selector_matches(selector, {"push": "true", "tier": "a"})
    assert not selector_matches(selector, {"push": "true", "tier": "c"})
    assert not selector_matches(selector, {"push": "true", "tier": "a", "legacy": "x"})
    assert not selector_matches(selector, {"tier": "a"})
    assert selector_matches(
        {"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["1"]}]}, {}
    )
    rendered = LabelSelector.model_validate(selector).to_string()
    assert rendered == "push=true,tier in (a,b),!legacy"


def test_conditions_keep_transition_time_until_status_changes() -> None:
    t0, t1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    first = merge_conditions(
        None, [Condition("Ready", "True", "Validated", "ok")], generation=1, now=t0
    )
    same = merge_conditions(
        first, [Condition("Ready", "True", "Validated", "still ok")], generation=2, now=t1
    )
    assert (
        same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
        and same[0]["observedGeneration"] == 2
    )
    flipped = merge_conditions(
        same, [Condition("Ready", "False", "InvalidCredentials", "no")], generation=2, now=t1
    )
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"
    assert (
        condition_status(flipped, "Ready") == "False" and condition_status(flipped, "Other") is None
    )


@pytest.mark.parametrize(
    ("failures", "retry_after", "expected"),
    [(1, None, 5), (2, None, 10), (5, None, 60), (1, 30, 30), (3, 2, 20)],
)
def test_retry_delay(failures: int, retry_after: float | None, expected: float) -> None:
    assert retry_delay(60, failures, retry_after) == expected


def test_namespaces_are_names_not_patterns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infisical_sync import cli

    assert Settings(namespaces=["team-a", "b2"]).namespaces == ["team-a", "b2"]
    for wrong in ("team-*", "!kube-system", "Team-A", "-a", "a" * 64, ""):
        with pytest.raises(ValidationError, match="not a namespace name"):
            Settings(namespaces=[wrong])
    with pytest.raises(ValidationError, match="not a namespace name"):
        Settings.from_env({"INFISICAL_SYNC_NAMESPACES": "team-a,team-*"})
    # The command line says what is wrong in one line instead of a traceback.
    monkeypatch.setattr("infisical_sync.app.run_operator", lambda settings: 0)
    assert cli.main(["run", "--namespace", "team-*"]) == 2
    error = capsys.readouterr().err
    assert "'team-*' is not a namespace name" in error and "Traceback" not in error
