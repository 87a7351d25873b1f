"""Small helpers for tests that drive the operator through the real API server."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client

GROUP, VERSION = "infisical-sync.dev", "v1alpha1"


def put_secret(
    kube: Any, namespace: str, name: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> None:
    core = client.CoreV1Api(kube)
    body = {
        "metadata": {"name": name, "labels": labels or {}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    try:
        core.create_namespaced_secret(namespace, body)
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def read_secret(kube: Any, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(kube).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def create(
    kube: Any, namespace: str, plural: str, kind: str, name: str, spec: dict[str, Any], **meta: Any
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "spec": spec,
    }
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )


def get(kube: Any, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def patch(kube: Any, namespace: str, plural: str, name: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, body
    )


def delete(kube: Any, namespace: str, plural: str, name: str) -> None:
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )


def status(kube: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    found = get(kube, namespace, plural, name)
    return dict((found or {}).get("status") or {})


def condition(
    kube: Any, namespace: str, plural: str, name: str, type_: str
) -> tuple[str, str] | None:
    for item in status(kube, namespace, plural, name).get("conditions", []):
        if item["type"] == type_:
            return item["status"], item["reason"]
    return None


def event_reasons(kube: Any, namespace: str, name: str) -> list[str]:
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    ours = [e for e in events if e.involved_object.name == name]
    for event in ours:  # what `kubectl describe` finds them by
        involved = event.involved_object
        assert involved.api_version == f"{GROUP}/{VERSION}", involved
        assert involved.kind in ("SecretSync", "InfisicalConnection"), involved
        assert involved.uid, involved
    return [e.reason for e in sorted(ours, key=lambda e: e.metadata.creation_timestamp)]
