"""The CLI's output and guards, without a cluster (tests/integration/test_cli.py runs it)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from infisical_sync.cli import _timeout, build_parser
from infisical_sync.cli_commands import (
    CommandError,
    PlanReport,
    _LoginOnly,
    _NoWrites,
    outcome_lines,
    parse_target,
    plan_lines,
    status_lines,
)
from infisical_sync.infisical.errors import InfisicalError
from infisical_sync.planner import NOT_MANAGED, Plan

VALUES = ("value-create-1", "value-update-2", "value-import-3")


def obj(name: str, conditions: list[dict[str, str]] | None, **status: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "team-a", "generation": status.pop("generation", 1)}
    body: dict[str, Any] = {"metadata": meta}
    if conditions is not None:
        body["status"] = {"conditions": conditions, "observedGeneration": 1, **status}
    return body


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_status_lines_align_columns_and_say_what_has_no_status_yet() -> None:
    lines = status_lines(
        [obj("dest", [cond("Ready", "True", "Validated", "logged in")])],
        [
            obj("b", None),
            obj(
                "a",
                [
                    cond("Ready", "False", "ConnectionNotReady", "x " * 80),
                    cond("Synced", "False", "ConnectionNotReady"),
                ],
            ),
            obj("c", [cond("Ready", "True", "Synced", "ok")], generation=2),
        ],
        all_namespaces=False,
    )
    assert lines[0].split() == ["NAME", "READY", "SYNCED", "REASON", "MESSAGE"]
    assert lines[1].split()[:4] == ["infisicalconnection/dest", "True", "-", "Validated"]
    assert [line.split()[0] for line in lines[2:]] == [
        "secretsync/a",
        "secretsync/b",
        "secretsync/c",
    ]
    # Columns line up: every REASON starts where the header's does.
    at = lines[0].index("REASON")
    assert {line[at - 1] for line in lines} == {" "} and lines[2][at:].startswith("Connection")
    long = lines[2].split("ConnectionNotReady", 1)[1].strip()
    assert len(long) == 100 and long.endswith("...")
    assert lines[3].split()[1:] == [
        "-",
        "-",
        "Pending",
        "not",
        "handled",
        "by",
        "the",
        "operator",
        "yet",
    ]
    assert "(of generation 1; the spec is at 2) ok" in lines[4]
    assert status_lines([], [], all_namespaces=True) == []
    wide = status_lines([], [obj("b", None)], all_namespaces=True)
    assert wide[1].split()[:2] == ["team-a", "secretsync/b"]


def report(result: Plan, status: dict[str, Any] | None = None, **spec: Any) -> PlanReport:
    body = {
        "spec": {
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectSlug": "payments",
                "environment": "prod",
                "secretPath": "/apps",
            },
            **spec,
        },
        "status": status or {},
    }
    return PlanReport("team-a", "sync", body, result)


def test_plan_lines_name_keys_and_never_values() -> None:
    result = Plan(
        create={"NEW": VALUES[0]},
        update={"CHANGED": VALUES[1], "STAMPED": "v", "ADOPTED": "w"},
        metadata_only={"STAMPED"},
        adopt=["ADOPTED"],
        import_to_source={"FROM_DEST": VALUES[2]},
        unchanged=["SAME"],
        conflicts={"HAND": NOT_MANAGED, "THEIRS": "owned by SecretSync x/y of another cluster (c)"},
        skipped={"bad:key": "contains ':' or '/' (destination key 'bad:key')"},
    )
    lines = plan_lines(report(result, dryRun=True))
    assert lines[0] == "SecretSync team-a/sync -> dest/payments/prod:/apps"
    assert "spec.dryRun is true: the operator only reports this plan (status.plan)" in lines
    assert lines[lines.index("import into the source first (1):") + 1] == "  < FROM_DEST"
    assert "  + NEW" in lines
    assert "  ~ ADOPTED  (adopted: not owned by anyone yet)" in lines
    assert "  ~ STAMPED  (ownership metadata only, the value is unchanged)" in lines
    assert "create 1, update 3, delete 0, unchanged 1" in lines
    assert "  ? HAND" in lines
    assert "  ! THEIRS: owned by SecretSync x/y of another cluster (c)" in lines
    assert "  if the operator runs with --cluster-id, pass the same value to `plan`" in lines
    assert "  x bad:key: contains ':' or '/' (destination key 'bad:key')" in lines
    assert not any(value in line for value in VALUES for line in lines)


def test_plan_lines_say_how_to_let_held_deletes_go_only_with_the_id_status_shows() -> None:
    held = Plan(held_deletes=["A", "B"], held_id="abc123", hold_reason="would delete 2 of 3")
    shown = plan_lines(report(held, {"heldDeletes": {"id": "abc123"}}))
    assert "deletes held (2): would delete 2 of 3" in shown
    assert [line for line in shown if line.startswith("  ! ")] == ["  ! A", "  ! B"]
    assert (
        "  to let them go: kubectl annotate secretsync -n team-a sync "
        "infisical-sync.dev/allow-mass-delete=abc123"
    ) in shown
    new = plan_lines(report(held, {"heldDeletes": {"id": "older"}}))
    assert not any("kubectl annotate" in line for line in new)
    assert "  the operator shows the id that lets them go in status.heldDeletes" in new
    assert "nothing to write" in plan_lines(report(Plan()))
    waiting = plan_lines(report(Plan(), {"pendingApproval": {"ids": ["cr-1", "cr-2"]}}))
    assert any("change requests cr-1, cr-2" in line for line in waiting)


def test_outcome_lines_count_a_dry_run_as_done_and_a_failure_as_failed() -> None:
    ok, lines = outcome_lines(
        "ns",
        "s",
        {"syncStatus": "Succeeded", "conditions": [cond("Synced", "True", "Synced", "m")]},
    )
    assert ok and lines == ["SecretSync ns/s: Succeeded (Synced)", "  m"]
    dry, _ = outcome_lines("ns", "s", {"conditions": [cond("Synced", "False", "DryRun", "m")]})
    assert dry
    failed, lines = outcome_lines(
        "ns",
        "s",
        {
            "syncStatus": "Failed",
            "conditions": [cond("Synced", "False", "DeletionHeld", "held")],
            "heldDeletes": {"id": "h1"},
        },
    )
    assert not failed
    assert lines[-1] == "  held deletes: infisical-sync.dev/allow-mass-delete=h1"


def test_targets_and_timeouts_are_checked() -> None:
    assert parse_target("ns/name", "default") == ("ns", "name")
    assert parse_target("name", "here") == ("here", "name")
    for bad in ("ns/", "a/b/c", ""):
        with pytest.raises(CommandError):
            parse_target(bad, "default")
    assert _timeout("90") == 90.0 and _timeout("2m") == 120.0 and _timeout("1.5") == 1.5
    for bad in ("0", "soon", "-1s"):
        with pytest.raises(argparse.ArgumentTypeError):
            _timeout(bad)
    parsed = build_parser().parse_args(["status", "-A", "--context", "prod"])
    assert parsed.all_namespaces and parsed.context == "prod"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["status", "-A", "-n", "x"])


def test_the_fences_of_plan_let_no_write_through() -> None:
    refused: list[str] = []

    def refuse(message: str) -> Exception:
        refused.append(message)
        return InfisicalError(message)

    login_only = _LoginOnly()
    for allowed in ("POST auth.login to i", "POST auth.revoke to i", "POST auth.renew to i"):
        with login_only.sending(allowed, refuse):
            pass
    for write in ("POST secrets.batch_create to i", "PATCH secrets.batch_update to i"):
        with pytest.raises(InfisicalError), login_only.sending(write, refuse):
            pass
    with pytest.raises(InfisicalError), _NoWrites().sending("patching status", refuse):
        pass
    assert refused[-1] == "patching status not sent: `plan` writes nothing"
    assert len(refused) == 3
