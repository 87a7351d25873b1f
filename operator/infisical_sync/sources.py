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
from infisical_sync.sync_status import SourceFacts


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
    # The reason behind it where problem_reason only says where (ConnectionNotReady: the
    # connection's own reason), for Reconciling / Stalled.
    problem_cause: str = ""
    duplicates: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)
    import_target: ImportTarget | None = None
    retry_after: float | None = None
    etag: str | None = None  # Infisical source listing
    secret_names: set[str] = field(default_factory=set)  # Kubernetes Secrets that were read
    # Kubernetes Secrets read -> their resourceVersion: with the spec, what the values depend on.
    resource_versions: dict[str, str] = field(default_factory=dict)

    @property
    def certain(self) -> bool:
        return not self.problems

    def problem(self, reason: str, message: str) -> None:
        if not self.problems:
            self.problem_reason = reason
        self.problems.append(message)

    def facts(self) -> SourceFacts:
        return SourceFacts(
            keys_read=len(self.values),
            problems=tuple(self.problems),
            problem_reason=self.problem_reason,
            problem_cause=self.problem_cause,
            duplicates=tuple(self.duplicates),
            skipped=dict(self.skipped),
        )

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


@dataclass(frozen=True)
class SecretRead:
    """One Kubernetes source entry as read: the Secret, or why it could not be read."""

    origin: str  # "Secret a" / "selector x=y"
    secret: SecretData | None
    keys: list[str] | None = None  # the keys it was listed with (None: all of them)
    problem: tuple[str, str] | None = None  # (reason, message) when it could not be read


def merge_kubernetes(reads: list[SecretRead]) -> SourceResult:
    """Later entries win. Pure: the reads were made before.

    An entry that could not be read may hold any of its keys (all of them when it was not
    listed with `keys`), so a key whose value came from an earlier entry is held, not pushed:
    the unread entry might override it.
    """
    result = SourceResult()
    origins: dict[str, str] = {}
    winner: dict[str, int] = {}  # key -> index of the read its value comes from
    gaps: list[tuple[int, frozenset[str] | None, str]] = []  # (index, keys or all, origin)
    for index, read in enumerate(reads):
        if read.secret is None:
            reason, message = read.problem or ("SecretNotFound", f"{read.origin} not found")
            result.problem(reason, message)
            gaps.append((index, None if read.keys is None else frozenset(read.keys), read.origin))
            continue
        secret = read.secret
        result.secret_names.add(secret.name)
        result.resource_versions[secret.name] = secret.resource_version
        for key in read.keys if read.keys is not None else sorted(secret.data):
            raw = secret.data.get(key)
            if raw is None:
                result.problem("SecretKeyMissing", f"Secret {secret.name} has no key {key}")
                gaps.append((index, frozenset({key}), f"key {key} of Secret {secret.name}"))
                continue
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                # This Secret wins the key but cannot send it: an earlier value is not pushed.
                result.skipped[key] = f"Secret {secret.name}: value is not UTF-8 text"
                result.keep.add(key)
                result.values.pop(key, None)
                winner.pop(key, None)
                origins.pop(key, None)
                continue
            _merge(result, origins, f"secret/{secret.name}", key, value)
            winner[key] = index
    for key, index in sorted(winner.items()):
        for gap, keys, origin in gaps:
            if gap > index and (keys is None or key in keys):
                del result.values[key]
                result.keep.add(key)
                result.skipped[key] = f"held: {origin} could not be read and may override it"
                break
    return result


async def read_kubernetes(kube: Kube, namespace: str, source: KubernetesSource) -> SourceResult:
    reads: list[SecretRead] = []
    for selection in source.secrets:
        origin = f"Secret {namespace}/{selection.name}"
        try:
            secret = await kube.read_secret(namespace, selection.name)
        except ApiException as exc:
            problem = ("SourceError", f"reading {origin} failed: {exc.status} {exc.reason}")
            reads.append(SecretRead(origin, None, selection.keys, problem))
            continue
        reads.append(SecretRead(origin, secret, selection.keys))
    if source.selector is not None:
        selector = source.selector.to_string()
        try:
            matched = await kube.list_secrets(namespace, selector)
        except ApiException as exc:
            problem = (
                "SourceError",
                f"listing Secrets ({selector}) failed: {exc.status} {exc.reason}",
            )
            reads.append(SecretRead(f"selector {selector}", None, None, problem))
        else:
            for secret in sorted(matched, key=lambda item: item.name):
                reads.append(SecretRead(f"Secret {namespace}/{secret.name}", secret))
    result = merge_kubernetes(reads)
    if len(source.secrets) == 1 and source.selector is None and reads[0].secret is not None:
        secret = reads[0].secret
        result.import_target = KubernetesImportTarget(secret.name, secret.resource_version)
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
        result.problem("ConnectionNotReady", f"source {connection} is not Ready")
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
            expand_references=source.expand_secret_references,
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
        # It would override what an import or another path gave: that value is not pushed.
        result.keep.add(secret.key)
        result.values.pop(secret.key, None)
        origins.pop(secret.key, None)
        return
    if secret.type != "shared":
        return
    _merge(result, origins, origin, secret.key, secret.value.get_secret_value())
