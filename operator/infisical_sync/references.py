"""Who refers to what: SecretSyncs to connections and Secrets, connections to Secrets. Pure.

kopf's own indexes would do this, but kopf holds every handler of every object until all
indexed objects are indexed, and each object indexed wakes every waiting handler: quadratic in
the number of objects at startup (10,000 SecretSyncs: no handler ran for over ten minutes). These
maps are filled by the objects' event handlers instead, as the events come. They can lag behind
at startup (an object not seen yet); a decision that must not miss a user (releasing a
connection) asks the API server when the map says nobody (`scheduler.remove_connection`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from infisical_sync.resources import CLUSTER_KIND, CLUSTER_SCOPE

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
ObjectKey = tuple[str, str]  # (namespace, name)


class References(Generic[K, V]):
    """key -> values, each value put there by one object; an object's put replaces its last."""

    def __init__(self) -> None:
        self._by_key: dict[K, dict[ObjectKey, V]] = defaultdict(dict)
        self._keys_of: dict[ObjectKey, set[K]] = {}

    def put(self, obj: ObjectKey, entries: Mapping[K, V]) -> None:
        self.drop(obj)
        for key, value in entries.items():
            self._by_key[key][obj] = value
        if entries:
            self._keys_of[obj] = set(entries)

    def drop(self, obj: ObjectKey) -> None:
        for key in self._keys_of.pop(obj, set()):
            found = self._by_key.get(key)
            if found is not None:
                found.pop(obj, None)
                if not found:
                    del self._by_key[key]

    def get(self, key: K) -> list[V]:
        return list(self._by_key.get(key, {}).values())

    def keys_of(self, obj: ObjectKey) -> set[K]:
        return set(self._keys_of.get(obj, set()))


def _spec_part(spec: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    part: Any = spec
    for name in path:
        part = part.get(name) if isinstance(part, Mapping) else None
    return part if isinstance(part, Mapping) else {}


def connection_secrets(
    secrets_namespace: str, address: ObjectKey, spec: Mapping[str, Any]
) -> dict[ObjectKey, ObjectKey]:
    """(namespace, Secret name) -> connection address, for the credentials and CA Secrets
    (in the connection's namespace; a cluster connection's in the operator's)."""
    credentials = _spec_part(spec, "credentials", "secretRef").get("name")
    ca = _spec_part(spec, "tls", "caSecretRef").get("name")
    return {(secrets_namespace, str(secret)): address for secret in {credentials, ca} - {None}}


def connection_address(namespace: str, ref: Mapping[str, Any]) -> ObjectKey | None:
    """The (namespace, name) a connectionRef of a SecretSync in `namespace` means: a
    ClusterInfisicalConnection's namespace is CLUSTER_SCOPE."""
    name = ref.get("name")
    if not name:
        return None
    cluster = ref.get("kind") == CLUSTER_KIND
    return (CLUSTER_SCOPE if cluster else namespace, str(name))


def sync_connections(
    namespace: str, name: str, spec: Mapping[str, Any]
) -> dict[ObjectKey, ObjectKey]:
    """connection address -> the SecretSync (namespace, name), for destination and Infisical
    source (the destination's first)."""
    refs = [
        _spec_part(spec, "destination", "connectionRef"),
        _spec_part(spec, "source", "infisical", "connectionRef"),
    ]
    addresses = [connection_address(namespace, ref) for ref in refs]
    return {address: (namespace, name) for address in addresses if address is not None}


def sync_secrets(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[ObjectKey, str]:
    """(namespace, Secret name) -> SecretSync name, for Secrets listed by name."""
    listed = _spec_part(spec, "source", "kubernetes").get("secrets") or []
    return {
        (namespace, str(item["name"])): name
        for item in listed
        if isinstance(item, Mapping) and item.get("name")
    }


def sync_selectors(
    namespace: str, name: str, spec: Mapping[str, Any]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """namespace -> (SecretSync name, label selector), for selector sources."""
    selector = _spec_part(spec, "source", "kubernetes").get("selector")
    return {namespace: (name, dict(selector))} if isinstance(selector, Mapping) else {}


class Referrers:
    """The operator's maps: filled from SecretSync and (Cluster)InfisicalConnection events."""

    def __init__(self) -> None:
        self.connections_by_secret: References[ObjectKey, ObjectKey] = References()
        self.syncs_by_connection: References[ObjectKey, ObjectKey] = References()
        self.syncs_by_secret: References[ObjectKey, str] = References()
        self.syncs_by_selector: References[str, tuple[str, dict[str, Any]]] = References()
        # namespace -> its SecretSyncs that use a ClusterInfisicalConnection: the ones a change
        # of the namespace's labels may allow or deny.
        self.cluster_users_by_namespace: References[str, str] = References()

    def connection_seen(
        self,
        change: str,
        address: ObjectKey,
        spec: Mapping[str, Any],
        *,
        secrets_namespace: str,
    ) -> None:
        if change == "DELETED":
            self.connections_by_secret.drop(address)
        else:
            self.connections_by_secret.put(
                address, connection_secrets(secrets_namespace, address, spec)
            )

    def sync_seen(
        self,
        change: str | None,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
    ) -> None:
        obj = (namespace, name)
        if change == "DELETED":
            self.syncs_by_connection.drop(obj)
            self.syncs_by_secret.drop(obj)
            self.syncs_by_selector.drop(obj)
            self.cluster_users_by_namespace.drop(obj)
            return
        connections = sync_connections(namespace, name, spec)
        self.syncs_by_connection.put(obj, connections)
        uses_cluster = any(address[0] == CLUSTER_SCOPE for address in connections)
        self.cluster_users_by_namespace.put(obj, {namespace: name} if uses_cluster else {})
        self.syncs_by_secret.put(obj, sync_secrets(namespace, name, spec))
        self.syncs_by_selector.put(obj, sync_selectors(namespace, name, spec))
