"""Who refers to what, kept from events (references.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from infisical_sync.references import References, Referrers


def sync_spec(
    connection: str = "dest",
    secrets: list[str] | None = None,
    selector: dict[str, Any] | None = None,
    source_connection: str | None = None,
) -> dict[str, Any]:
    kubernetes: dict[str, Any] = {}
    if secrets is not None:
        kubernetes["secrets"] = [{"name": s} for s in secrets]
    if selector is not None:
        kubernetes["selector"] = selector
    source: dict[str, Any] = {"kubernetes": kubernetes}
    if source_connection:
        source = {"infisical": {"connectionRef": {"name": source_connection}}}
    return {"source": source, "destination": {"connectionRef": {"name": connection}}}


def test_a_secretsync_is_found_by_its_connections_secrets_and_selector() -> None:
    referrers = Referrers()
    referrers.sync_seen(None, "ns", "a", sync_spec(secrets=["app", "db"]))  # initial listing
    referrers.sync_seen("ADDED", "ns", "b", sync_spec(selector={"matchLabels": {"x": "1"}}))
    referrers.sync_seen(
        "ADDED", "ns", "c", sync_spec(connection="other", source_connection="cloud")
    )
    assert sorted(referrers.syncs_by_connection.get(("ns", "dest"))) == ["a", "b"]
    assert referrers.syncs_by_connection.get(("ns", "cloud")) == ["c"]
    assert referrers.syncs_by_connection.get(("ns", "other")) == ["c"]
    assert referrers.syncs_by_secret.get(("ns", "db")) == ["a"]
    assert referrers.syncs_by_selector.get("ns") == [("b", {"matchLabels": {"x": "1"}})]
    assert referrers.syncs_by_secret.get(("other-ns", "db")) == []


def test_a_spec_change_replaces_what_the_object_referred_to_and_deletion_forgets_it() -> None:
    referrers = Referrers()
    referrers.sync_seen("ADDED", "ns", "a", sync_spec(secrets=["app"]))
    referrers.sync_seen("MODIFIED", "ns", "a", sync_spec(connection="new", secrets=["db"]))
    assert referrers.syncs_by_secret.get(("ns", "app")) == []
    assert referrers.syncs_by_secret.get(("ns", "db")) == ["a"]
    assert referrers.syncs_by_connection.get(("ns", "dest")) == []
    assert referrers.syncs_by_connection.get(("ns", "new")) == ["a"]
    referrers.sync_seen("DELETED", "ns", "a", {})
    assert referrers.syncs_by_secret.get(("ns", "db")) == []
    assert referrers.syncs_by_connection.get(("ns", "new")) == []


def test_a_connection_is_found_by_its_credentials_and_ca_secrets() -> None:
    referrers = Referrers()
    spec = {"credentials": {"secretRef": {"name": "id"}}, "tls": {"caSecretRef": {"name": "ca"}}}
    referrers.connection_seen("ADDED", "ns", "dest", spec)
    assert referrers.connections_by_secret.get(("ns", "id")) == ["dest"]
    assert referrers.connections_by_secret.get(("ns", "ca")) == ["dest"]
    referrers.connection_seen("MODIFIED", "ns", "dest", {"credentials": {"secretRef": {}}})
    assert referrers.connections_by_secret.get(("ns", "id")) == []
    referrers.connection_seen("DELETED", "ns", "dest", {})
    assert referrers.connections_by_secret.get(("ns", "ca")) == []


def test_malformed_specs_refer_to_nothing() -> None:
    referrers = Referrers()
    for spec in ({}, {"source": None}, {"source": {"kubernetes": {"secrets": [{}, "x"]}}}):
        referrers.sync_seen("ADDED", "ns", "a", spec)
        assert referrers.syncs_by_secret.get(("ns", "x")) == []
        assert referrers.syncs_by_selector.get("ns") == []


# Each event: (object, keys it refers to now; None = deleted).
events = st.lists(
    st.tuples(st.sampled_from("abcd"), st.none() | st.sets(st.sampled_from("wxyz"))),
    max_size=30,
)


@given(events)
def test_references_answer_what_the_last_event_of_each_object_said(
    history: list[tuple[str, set[str] | None]],
) -> None:
    references: References[str, str] = References()
    last: dict[str, set[str]] = {}
    for obj, keys in history:
        if keys is None:
            references.drop(("ns", obj))
            last.pop(obj, None)
        else:
            references.put(("ns", obj), {key: obj for key in keys})
            last[obj] = keys
    for key in "wxyz":
        expected = sorted(obj for obj, keys in last.items() if key in keys)
        assert sorted(references.get(key)) == expected
