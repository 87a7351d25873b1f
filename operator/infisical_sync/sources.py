"""Reading a SecretSync's source: Kubernetes Secrets or a path on an Infisical connection.

Reading never raises: whatever could not be read makes the source *uncertain* (no deletes
that cycle) and is reported with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException

from infisical_sync.infisical.client import InfisicalSession
from infisical_sync.infisical.errors import InfisicalError
from infisical_sync.infisical.models import RemoteSecret, SecretLocation
from infisical_sync.kube import Kube, SecretData
from infisical_sync.resources import InfisicalSource, KubernetesSource


@dataclass(frozen=True)
class KubernetesImportTarget:
    name: str
    resource_version: str


@dataclass(frozen=True)
class InfisicalImportTarget:
    session: InfisicalSession
    location: SecretLocation


ImportTarget = KubernetesImportTarget | InfisicalImportTarget


@dataclass
class SourceResult:
    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why the source is uncertain
    problem_reason: str = ""  # condition reason of the first problem
    duplicates: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)
    import_target: ImportTarget | None = None
    retry_after: float | None = None
    etag: str | None = None  # Infisical source listing
    secret_names: set[str] = field(default_factory=set)  # Kubernetes Secrets that were read

    @property
    def certain(self) -> bool:
        return not self.problems

    def problem(self, reason: str, message: str) -> None:
        if not self.problems:
            self.problem_reason = reason
        self.problems.append(message)

    def __repr__(self) -> str:  # never the values
        return f"SourceResult(keys={sorted(self.values)}, problems={self.problems})"


def _merge(
    result: SourceResult, origins: dict[str, str], origin: str, key: str, value: str
) -> None:
    previous = origins.get(key)
    if previous is not None and previous != origin:
        result.duplicates.append(f"{key} in {previous} and {origin} ({origin} wins)")
    result.values[key] = value
    origins[key] = origin


def _add_secret(
    result: SourceResult,
    origins: dict[str, str],
    secret: SecretData,
    keys: list[str] | None,
) -> None:
    for key in keys if keys is not None else sorted(secret.data):
        raw = secret.data.get(key)
        if raw is None:
            result.problem("SecretKeyMissing", f"Secret {secret.name} has no key {key}")
            continue
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            result.skipped[key] = f"Secret {secret.name}: value is not UTF-8 text"
            result.keep.add(key)
            continue
        _merge(result, origins, f"secret/{secret.name}", key, value)


async def read_kubernetes(kube: Kube, namespace: str, source: KubernetesSource) -> SourceResult:
    result = SourceResult()
    origins: dict[str, str] = {}
    try:
        for selection in source.secrets:
            secret = await kube.read_secret(namespace, selection.name)
            if secret is None:
                result.problem("SecretNotFound", f"Secret {namespace}/{selection.name} not found")
                continue
            _add_secret(result, origins, secret, selection.keys)
            result.secret_names.add(secret.name)
            if len(source.secrets) == 1 and source.selector is None:
                result.import_target = KubernetesImportTarget(secret.name, secret.resource_version)
        if source.selector is not None:
            matched = await kube.list_secrets(namespace, source.selector.to_string())
            for secret in sorted(matched, key=lambda item: item.name):
                _add_secret(result, origins, secret, None)
                result.secret_names.add(secret.name)
    except ApiException as exc:
        result.problem("SourceError", f"reading Secrets failed: {exc.status} {exc.reason}")
    return result


async def read_infisical(
    session: InfisicalSession | None,
    connection: str,
    source: InfisicalSource,
    *,
    etag: str | None,
    cached: dict[str, str] | None,
) -> SourceResult:
    result = SourceResult()
    if session is None:
        result.problem(
            "ConnectionNotReady", f"source InfisicalConnection {connection} is not Ready"
        )
        return result
    try:
        project_id = await session.project_id(
            project_id=source.project_id, project_slug=source.project_slug
        )
        location = SecretLocation(
            project_id=project_id, environment=source.environment, secret_path=source.secret_path
        )
        listing = await session.list_secrets(
            location,
            recursive=source.recursive,
            include_imports=source.include_imports,
            etag=etag if cached is not None else None,
        )
    except InfisicalError as exc:
        result.problem(exc.reason, f"reading the Infisical source failed: {exc}")
        result.retry_after = getattr(exc, "retry_after", None)
        return result
    if not source.recursive:
        result.import_target = InfisicalImportTarget(session, location)
    if listing.not_modified and cached is not None:
        result.values = dict(cached)
        result.etag = etag
        return result
    result.etag = listing.etag
    origins: dict[str, str] = {}
    # Imported secrets first: a folder's own secrets override what it imports, as in Infisical.
    for imported in listing.imports:
        for secret in imported.secrets:
            _add_remote(
                result, origins, f"import {imported.environment}:{imported.secret_path}", secret
            )
    for secret in listing.secrets:
        _add_remote(result, origins, f"path {secret.secret_path or source.secret_path}", secret)
    return result


def _add_remote(
    result: SourceResult, origins: dict[str, str], origin: str, secret: RemoteSecret
) -> None:
    if secret.value_hidden:
        result.problem(
            "Forbidden", "the source identity cannot read secret values (secretValueHidden)"
        )
        result.keep.add(secret.key)
        return
    if secret.type != "shared":
        return
    _merge(result, origins, origin, secret.key, secret.value.get_secret_value())
