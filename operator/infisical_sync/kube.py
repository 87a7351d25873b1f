"""Kubernetes reads and writes the operator makes itself (not kopf's own watch traffic).

The official client is synchronous: every call runs in a worker thread (asyncio.to_thread) so
the operator's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP = "infisical-sync.dev"
VERSION = "v1alpha1"


class WriteForbidden(Exception):
    """The API server refused a write (403): the operator's RBAC does not grant it."""


@dataclass(frozen=True)
class SecretData:
    name: str
    data: dict[str, bytes]
    resource_version: str
    labels: dict[str, str]

    def __repr__(self) -> str:  # never the values
        return f"SecretData(name={self.name!r}, keys={sorted(self.data)})"


def load_api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _decode(raw: dict[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (raw or {}).items()}


def _secret_data(body: dict[str, Any]) -> SecretData:
    meta = body["metadata"]
    return SecretData(
        name=meta["name"],
        data=_decode(body.get("data")),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=dict(meta.get("labels") or {}),
    )


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        """The Secret's decoded data, or None when it does not exist."""

        def read() -> SecretData | None:
            try:
                secret = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return _secret_data(json.loads(cast(Any, secret).data))

        return await asyncio.to_thread(read)

    async def list_secrets(self, namespace: str, label_selector: str) -> list[SecretData]:
        def read() -> list[SecretData]:
            response = self.core.list_namespaced_secret(
                namespace, label_selector=label_selector, _preload_content=False
            )
            body: dict[str, Any] = json.loads(cast(Any, response).data)
            return [_secret_data(item) for item in body.get("items", [])]

        return await asyncio.to_thread(read)

    async def write_secret_keys(
        self, namespace: str, name: str, values: dict[str, str], resource_version: str
    ) -> None:
        """Add or change keys of a Secret (import modes), guarded by its resourceVersion."""
        patch = {
            "metadata": {"resourceVersion": resource_version},
            "data": {
                key: base64.b64encode(value.encode()).decode() for key, value in values.items()
            },
        }

        def write() -> None:
            try:
                self.core.patch_namespaced_secret(name, namespace, patch)
            except ApiException as exc:
                if exc.status == 403:
                    raise WriteForbidden(
                        f"patching Secret {namespace}/{name} refused (403)"
                    ) from None
                raise

        await asyncio.to_thread(write)

    async def namespace_uid(self, name: str) -> str:
        namespace = await asyncio.to_thread(self.core.read_namespace, name)
        uid = namespace.metadata.uid if namespace.metadata else None
        if not uid:
            raise ValueError(f"namespace {name} has no UID")
        return str(uid)

    async def remove_annotation(self, plural: str, namespace: str, name: str, key: str) -> None:
        """Drop one annotation of our own resource (a merge patch with null)."""
        patch = {"metadata": {"annotations": {key: None}}}
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            patch,
        )

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        """Merge-patch our own status. False when the object is gone."""

        def patch() -> bool:
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": status}
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        return await asyncio.to_thread(patch)
