"""Which namespaces may use which ClusterInfisicalConnection, and its users (cluster_access.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from hypothesis import given
from hypothesis import strategies as st

from infisical_sync.cluster_access import Access, ClusterAccess, Usage
from infisical_sync.cluster_usage import UsageReport
from infisical_sync.kube import KubeUnavailable
from infisical_sync.shards import Shard

TEAM = {"matchLabels": {"team": "payments"}}


def sync_body(connection: str = "shared", uid: str = "u1", *, cluster: bool = True) -> Any:
    ref: dict[str, str] = {"name": connection}
    if cluster:
        ref["kind"] = "ClusterInfisicalConnection"
    return {"metadata": {"uid": uid}, "spec": {"destination": {"connectionRef": ref}}}


def test_no_selector_allows_no_namespace_and_an_empty_one_every_namespace() -> None:
    access = ClusterAccess()
    access.namespace_seen("ADDED", "team-a", {"team": "payments"})
    access.connection_seen("ADDED", "shared", {"instanceUrl": "https://x"})
    assert access.decide("shared", "team-a") is Access.DENIED
    assert "no namespace may use it" in access.selector_text("shared")
    access.connection_seen("MODIFIED", "shared", {"namespaceSelector": {}})
    assert access.decide("shared", "team-a") is Access.ALLOWED
    assert "every namespace" in access.selector_text("shared")


def test_labels_and_selector_decide_and_changes_are_reported() -> None:
    access = ClusterAccess()
    assert access.connection_seen("ADDED", "shared", {"namespaceSelector": TEAM})
    assert not access.connection_seen("MODIFIED", "shared", {"namespaceSelector": TEAM})
    assert access.decide("shared", "team-a") is Access.UNKNOWN_NAMESPACE
    assert access.decide("other", "team-a") is Access.UNKNOWN_CONNECTION
    assert access.namespace_seen("ADDED", "team-a", {"team": "payments"})
    assert access.decide("shared", "team-a") is Access.ALLOWED
    assert not access.namespace_seen("MODIFIED", "team-a", {"team": "payments"})
    assert access.namespace_seen("MODIFIED", "team-a", {"team": "web"})
    assert access.decide("shared", "team-a") is Access.DENIED
    assert access.selector_text("shared") == "namespaceSelector {team=payments}"
    assert access.connection_seen("DELETED", "shared", {})
    assert access.decide("shared", "team-a") is Access.UNKNOWN_CONNECTION


def test_labels_read_from_the_api_server_never_override_a_watch_event() -> None:
    access = ClusterAccess()
    access.connection_seen("ADDED", "shared", {"namespaceSelector": TEAM})
    access.namespace_seen("ADDED", "team-a", {"team": "web"})
    access.remember_namespace("team-a", {"team": "payments"})  # an older read, answered late
    assert access.decide("shared", "team-a") is Access.DENIED
    access.remember_namespace("team-b", {"team": "payments"})
    assert access.decide("shared", "team-b") is Access.ALLOWED


def test_usage_counts_users_namespaces_and_the_denied() -> None:
    access = ClusterAccess()
    access.connection_seen("ADDED", "shared", {"namespaceSelector": TEAM})
    access.namespace_seen("ADDED", "team-a", {"team": "payments"})
    access.namespace_seen("ADDED", "team-b", {"team": "web"})
    access.sync_seen("ADDED", "team-a", "one", sync_body(uid="1"))
    access.sync_seen("ADDED", "team-a", "two", sync_body(uid="2"))
    access.sync_seen("ADDED", "team-b", "three", sync_body(uid="3"))
    access.sync_seen("ADDED", "team-b", "namespaced", sync_body(uid="4", cluster=False))
    assert access.usage("shared") == Usage(secret_syncs=3, namespaces=2, denied=1)
    assert access.usage("shared").status() == {
        "secretSyncs": 3,
        "namespaces": 2,
        "deniedSecretSyncs": 1,
    }
    assert access.connections_used_in("team-b") == {"shared"}
    access.namespace_seen("MODIFIED", "team-b", {"team": "payments"})
    assert access.usage("shared").denied == 0
    access.sync_seen("DELETED", "team-b", "three", sync_body(uid="3"))
    assert access.usage("shared") == Usage(secret_syncs=2, namespaces=1, denied=0)
    assert access.connections_used_in("team-b") == set()


def test_a_late_deletion_of_an_earlier_object_keeps_the_current_user() -> None:
    access = ClusterAccess()
    access.sync_seen("ADDED", "team-a", "one", sync_body(uid="old"))
    access.sync_seen("ADDED", "team-a", "one", sync_body(uid="new"))  # replaced (--force)
    access.sync_seen("DELETED", "team-a", "one", sync_body(uid="old"))
    assert access.users("shared") == [("team-a", "one")]


def test_changes_mark_the_connections_whose_counts_may_change() -> None:
    access = ClusterAccess()
    access.connection_seen("ADDED", "shared", {"namespaceSelector": TEAM})
    access.dirty.clear()
    access.sync_seen("ADDED", "team-a", "one", sync_body())
    assert access.dirty == {"shared"}
    access.dirty.clear()
    access.sync_seen("MODIFIED", "team-a", "one", sync_body())  # same connection
    assert access.dirty == set()
    access.namespace_seen("ADDED", "team-a", {"team": "web"})
    assert access.dirty == {"shared"}
    access.dirty.clear()
    access.sync_seen("MODIFIED", "team-a", "one", sync_body("other"))
    assert access.dirty == {"shared", "other"}


selectors = st.none() | st.fixed_dictionaries(
    {}, optional={"matchLabels": st.dictionaries(st.sampled_from("ab"), st.sampled_from("xy"))}
)
labels = st.dictionaries(st.sampled_from("ab"), st.sampled_from("xy"))


@given(selector=selectors, namespace_labels=labels)
def test_a_decision_is_the_selector_matched_against_the_labels(
    selector: dict[str, Any] | None, namespace_labels: dict[str, str]
) -> None:
    access = ClusterAccess()
    spec = {} if selector is None else {"namespaceSelector": selector}
    access.connection_seen("ADDED", "shared", spec)
    access.namespace_seen("ADDED", "ns", namespace_labels)
    wanted = (selector or {}).get("matchLabels") or {}
    allowed = selector is not None and all(namespace_labels.get(k) == v for k, v in wanted.items())
    assert access.decide("shared", "ns") is (Access.ALLOWED if allowed else Access.DENIED)


def test_late_events_of_a_replaced_object_leave_the_new_ones_use() -> None:
    access = ClusterAccess()
    access.sync_seen("ADDED", "team-a", "one", sync_body(uid="old"))
    access.sync_seen("ADDED", "team-a", "one", sync_body(uid="new"))
    late = sync_body(uid="old")
    late["metadata"]["deletionTimestamp"] = "2026-11-29T10:00:00Z"
    access.sync_seen("MODIFIED", "team-a", "one", late)  # its deletion, seen after the new one
    access.sync_seen("DELETED", "team-a", "one", late)
    assert access.users("shared") == [("team-a", "one")]


def test_a_deleted_connection_is_marked_for_its_successors_counts() -> None:
    access = ClusterAccess()
    access.connection_seen("ADDED", "shared", {})
    access.dirty.clear()
    access.connection_seen("DELETED", "shared", {})
    assert access.dirty == {"shared"}


class Statuses:
    def __init__(self, *, gone: set[str] | None = None) -> None:
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.gone = gone or set()
        self.failing = False

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        if self.failing:
            raise KubeUnavailable("the API server is away")
        self.patches.append((plural, namespace, name, status))
        return name not in self.gone


def test_usage_is_written_when_it_changes_and_again_for_a_new_object_of_the_name() -> None:
    access = ClusterAccess()
    statuses = Statuses()
    report = UsageReport(access, statuses, Shard(), "clusterinfisicalconnections")
    access.connection_seen("ADDED", "shared", {"namespaceSelector": {}})
    access.namespace_seen("ADDED", "team-a", {})
    access.sync_seen("ADDED", "team-a", "one", sync_body())
    access.sync_seen("ADDED", "team-b", "other", sync_body("not-seen-yet"))
    asyncio.run(report.report())
    assert statuses.patches == [
        (
            "clusterinfisicalconnections",
            "",
            "shared",
            {"secretSyncs": 1, "namespaces": 1, "deniedSecretSyncs": 0},
        )
    ]
    asyncio.run(report.report())  # nothing changed: nothing written
    access.sync_seen("MODIFIED", "team-a", "one", sync_body())
    asyncio.run(report.report())
    assert len(statuses.patches) == 1
    # Deleted and created again (GitOps): the new object gets its counts though they are equal.
    access.connection_seen("DELETED", "shared", {})
    asyncio.run(report.report())
    access.connection_seen("ADDED", "shared", {"namespaceSelector": {}})
    asyncio.run(report.report())
    assert len(statuses.patches) == 2 and statuses.patches[-1][2] == "shared"


def test_usage_not_written_is_tried_again_and_other_shards_connections_are_left() -> None:
    access = ClusterAccess()
    statuses = Statuses()
    owner = next(i for i in range(2) if Shard(i, 2).owns("", "shared"))
    report = UsageReport(access, statuses, Shard(owner, 2), "clusterinfisicalconnections")
    other = UsageReport(access, Statuses(), Shard(1 - owner, 2), "clusterinfisicalconnections")
    access.connection_seen("ADDED", "shared", {})
    statuses.failing = True
    asyncio.run(report.report())
    assert access.dirty == {"shared"}  # kept for the next report
    statuses.failing = False
    asyncio.run(report.report())
    assert [patch[2] for patch in statuses.patches] == ["shared"]
    access.connection_seen("MODIFIED", "shared", {"namespaceSelector": {}})
    asyncio.run(other.report())
    assert other.status.patches == []  # type: ignore[attr-defined]


def test_a_selector_change_alone_is_not_a_spec_change_to_validate() -> None:
    from infisical_sync.app import only_namespace_selector

    selector = kopf.Diff(
        [kopf.DiffItem(kopf.DiffOperation.CHANGE, ("namespaceSelector",), {}, None)]
    )
    assert only_namespace_selector(selector)
    deeper = kopf.DiffItem(
        kopf.DiffOperation.ADD, ("namespaceSelector", "matchLabels", "team"), None, "a"
    )
    assert only_namespace_selector(kopf.Diff([deeper]))
    url = kopf.DiffItem(kopf.DiffOperation.CHANGE, ("instanceUrl",), "https://a", "https://b")
    assert not only_namespace_selector(kopf.Diff([deeper, url]))
    assert not only_namespace_selector(kopf.Diff([]))
