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
    assert sorted(referrers.syncs_by_connection.get(("ns", "dest"))) == [("ns", "a"), ("ns", "b")]
    assert referrers.syncs_by_connection.get(("ns", "cloud")) == [("ns", "c")]
    assert referrers.syncs_by_connection.get(("ns", "other")) == [("ns", "c")]
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
    assert referrers.syncs_by_connection.get(("ns", "new")) == [("ns", "a")]
    referrers.sync_seen("DELETED", "ns", "a", {})
    assert referrers.syncs_by_secret.get(("ns", "db")) == []
    assert referrers.syncs_by_connection.get(("ns", "new")) == []


def test_a_connection_is_found_by_its_credentials_and_ca_secrets() -> None:
    referrers = Referrers()
    spec = {"credentials": {"secretRef": {"name": "id"}}, "tls": {"caSecretRef": {"name": "ca"}}}
    address = ("ns", "dest")
    referrers.connection_seen("ADDED", address, spec, secrets_namespace="ns")
    assert referrers.connections_by_secret.get(("ns", "id")) == [address]
    assert referrers.connections_by_secret.get(("ns", "ca")) == [address]
    changed = {"credentials": {"secretRef": {}}}
    referrers.connection_seen("MODIFIED", address, changed, secrets_namespace="ns")
    assert referrers.connections_by_secret.get(("ns", "id")) == []
    referrers.connection_seen("DELETED", address, {}, secrets_namespace="ns")
    assert referrers.connections_by_secret.get(("ns", "ca")) == []


def test_a_cluster_connections_secrets_are_in_the_operators_namespace() -> None:
    referrers = Referrers()
    spec = {"credentials": {"secretRef": {"name": "id"}}}
    referrers.connection_seen("ADDED", ("", "shared"), spec, secrets_namespace="infisical-sync")
    assert referrers.connections_by_secret.get(("infisical-sync", "id")) == [("", "shared")]
    assert referrers.connections_by_secret.get(("", "id")) == []


def test_a_cluster_connection_is_addressed_apart_from_a_namespaced_one_of_its_name() -> None:
    referrers = Referrers()
    cluster_ref = {"kind": "ClusterInfisicalConnection", "name": "dest"}
    spec = sync_spec()
    spec["destination"]["connectionRef"] = cluster_ref
    referrers.sync_seen("ADDED", "team-a", "a", spec)
    referrers.sync_seen("ADDED", "team-b", "b", spec)
    referrers.sync_seen("ADDED", "team-a", "c", sync_spec())
    assert sorted(referrers.syncs_by_connection.get(("", "dest"))) == [
        ("team-a", "a"),
        ("team-b", "b"),
    ]
    assert referrers.syncs_by_connection.get(("team-a", "dest")) == [("team-a", "c")]
    assert referrers.cluster_users_by_namespace.get("team-a") == ["a"]
    referrers.sync_seen("MODIFIED", "team-a", "a", sync_spec())  # back to a namespaced one
    assert referrers.cluster_users_by_namespace.get("team-a") == []
    referrers.sync_seen("DELETED", "team-b", "b", {})
    assert referrers.syncs_by_connection.get(("", "dest")) == []


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
