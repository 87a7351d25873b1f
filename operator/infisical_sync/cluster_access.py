"""Which namespaces may use which ClusterInfisicalConnection, and who uses each. Pure.

A ClusterInfisicalConnection's `namespaceSelector` is matched against the labels of the
namespace a SecretSync is in. Both come from watch events (the connections' and the
Namespaces'), so a decision is a lookup, a change of either is known within a watch event, and
the SecretSyncs it concerns are found through an index, never by a scan. Every shard keeps the
users of every cluster connection (its status counts them all); the one owning a connection's
status writes the counts (`UsageReport`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from infisical_sync.references import ObjectKey, References, sync_connections
from infisical_sync.resources import CLUSTER_SCOPE, LabelSelector
from infisical_sync.selectors import selector_matches


class Access(Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    # Not seen yet: the connection (then it may not exist: the caller asks the API server), or
    # the namespace's labels (then the caller reads them).
    UNKNOWN_CONNECTION = "unknown connection"
    UNKNOWN_NAMESPACE = "unknown namespace"


@dataclass(frozen=True)
class Usage:
    """What a ClusterInfisicalConnection's status counts."""

    secret_syncs: int
    namespaces: int
    denied: int

    def status(self) -> dict[str, int]:
        return {
            "secretSyncs": self.secret_syncs,
            "namespaces": self.namespaces,
            "deniedSecretSyncs": self.denied,
        }


def _selector_of(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    selector = spec.get("namespaceSelector")
    return dict(selector) if isinstance(selector, Mapping) else None


class ClusterAccess:
    def __init__(self, *, served: bool = True) -> None:
        # False: this operator does not serve ClusterInfisicalConnections (no watch of them).
        self.served = served
        # connection name -> its namespaceSelector (None: no namespace may use it)
        self._selectors: dict[str, dict[str, Any] | None] = {}
        self._labels: dict[str, dict[str, str]] = {}
        # connection name -> its users (namespace, SecretSync name), across all shards
        self._users: References[str, ObjectKey] = References()
        # namespace -> the cluster connections its SecretSyncs use (one set per SecretSync)
        self._used_in: References[str, frozenset[str]] = References()
        self._uids: dict[ObjectKey, str] = {}
        # Connections whose counts may have changed since the last report.
        self.dirty: set[str] = set()

    # --- events ----------------------------------------------------------------------------------

    def connection_seen(self, change: str, name: str, spec: Mapping[str, Any]) -> bool:
        """A ClusterInfisicalConnection's event. True when who may use it changed."""
        if change == "DELETED":
            known = name in self._selectors
            self._selectors.pop(name, None)
            self.dirty.add(name)  # its counts were written: a new object of its name needs them
            return known
        selector = _selector_of(spec)
        changed = name not in self._selectors or self._selectors[name] != selector
        self._selectors[name] = selector
        if changed:
            self.dirty.add(name)
        return changed

    def namespace_seen(self, change: str, name: str, labels: Mapping[str, str]) -> bool:
        """A Namespace's event. True when its labels changed (or it is gone)."""
        if change == "DELETED":
            return self._labels.pop(name, None) is not None
        before = self._labels.get(name)
        self._labels[name] = dict(labels)
        if before == self._labels[name]:
            return False
        self.dirty.update(self.connections_used_in(name))
        return True

    def sync_seen(
        self, change: str | None, namespace: str, name: str, body: Mapping[str, Any]
    ) -> None:
        """A SecretSync's event, in every shard: the users of the cluster connections."""
        obj = (namespace, name)
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        deleting = change == "DELETED" or bool(meta.get("deletionTimestamp"))
        if deleting and uid and self._uids.get(obj) not in (None, uid):
            # The last events of a deleted earlier object of this name (`replace --force`):
            # the current one's use stands.
            return
        if change == "DELETED":
            self._uids.pop(obj, None)
            self.dirty.update(self._used_by(obj))
            self._users.drop(obj)
            self._used_in.drop(obj)
            return
        before = self._used_by(obj)
        used = {
            address[1]: obj
            for address in sync_connections(namespace, name, body.get("spec") or {})
            if address[0] == CLUSTER_SCOPE
        }
        # Only users' uids: at 10,000 SecretSyncs every shard keeps this map.
        if uid and used:
            self._uids[obj] = uid
        else:
            self._uids.pop(obj, None)
        self._users.put(obj, used)
        self._used_in.put(obj, {namespace: frozenset(used)} if used else {})
        self.dirty.update(before ^ set(used))

    # --- decisions -------------------------------------------------------------------------------

    def remember_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        """Labels read from the API server for a namespace no event has told of yet."""
        if name not in self._labels:
            self._labels[name] = dict(labels)
            self.dirty.update(self.connections_used_in(name))

    def known(self, connection: str) -> bool:
        return connection in self._selectors

    def decide(self, connection: str, namespace: str) -> Access:
        if connection not in self._selectors:
            return Access.UNKNOWN_CONNECTION
        selector = self._selectors[connection]
        if selector is None:
            return Access.DENIED
        labels = self._labels.get(namespace)
        if labels is None:
            return Access.UNKNOWN_NAMESPACE
        return Access.ALLOWED if selector_matches(selector, labels) else Access.DENIED

    def selector_text(self, connection: str) -> str:
        selector = self._selectors.get(connection)
        if selector is None:
            return "no namespaceSelector: no namespace may use it"
        return f"namespaceSelector {_describe(selector)}"

    def usage(self, connection: str) -> Usage:
        users = self._users.get(connection)
        denied = sum(
            1 for namespace, _ in users if self.decide(connection, namespace) == Access.DENIED
        )
        return Usage(len(users), len({namespace for namespace, _ in users}), denied)

    def users(self, connection: str) -> list[ObjectKey]:
        return sorted(self._users.get(connection))

    def connections_used_in(self, namespace: str) -> set[str]:
        return set().union(*self._used_in.get(namespace))

    def _used_by(self, obj: ObjectKey) -> set[str]:
        return self._users.keys_of(obj)


def _describe(selector: Mapping[str, Any]) -> str:
    text = LabelSelector.model_validate(dict(selector)).to_string()
    return f"{{{text}}}" if text else "{} (every namespace)"
