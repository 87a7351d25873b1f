"""Typed views of the two custom resources' specs (camelCase on the wire)."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class NameRef(_Spec):
    name: str


class CredentialsSecretRef(_Spec):
    name: str
    client_id_key: str = Field(default="clientId", alias="clientIdKey")
    client_secret_key: str = Field(default="clientSecret", alias="clientSecretKey")


class CredentialsSpec(_Spec):
    secret_ref: CredentialsSecretRef = Field(alias="secretRef")


class CaSecretRef(_Spec):
    name: str
    key: str = "ca.crt"


class TlsSpec(_Spec):
    ca_secret_ref: CaSecretRef | None = Field(default=None, alias="caSecretRef")


class KubernetesAuthSpec(_Spec):
    """Kubernetes Auth: log in with a short-lived token of a service account in the
    connection's namespace, requested afresh (TokenRequest) before every login."""

    identity_id: str = Field(alias="identityId")
    service_account_ref: NameRef = Field(alias="serviceAccountRef")
    # Empty: the API server's own audience (the identity then has no allowed audience).
    audiences: tuple[str, ...] = ()


UNIVERSAL_AUTH: Final = "machine-identity-universal-auth"
NAMESPACED_KIND: Final = "InfisicalConnection"
CLUSTER_KIND: Final = "ClusterInfisicalConnection"
# The namespace part of a ClusterInfisicalConnection's address (namespace, name): the operator
# keys both kinds of connection alike, cluster-scoped ones by an empty namespace.
CLUSTER_SCOPE: Final = ""
ConnectionKind = Literal["InfisicalConnection", "ClusterInfisicalConnection"]


def connection_kind(address: tuple[str, str]) -> str:
    return CLUSTER_KIND if address[0] == CLUSTER_SCOPE else NAMESPACED_KIND


def describe_connection(address: tuple[str, str]) -> str:
    """How messages name a connection: `InfisicalConnection ns/name` or
    `ClusterInfisicalConnection name`."""
    namespace, name = address
    return (
        f"{CLUSTER_KIND} {name}"
        if namespace == CLUSTER_SCOPE
        else f"{NAMESPACED_KIND} {namespace}/{name}"
    )


KUBERNETES_AUTH: Final = "kubernetes-auth"


class ConnectionSpec(_Spec):
    instance_url: str = Field(alias="instanceUrl")
    method: Literal["machine-identity-universal-auth", "kubernetes-auth"] = UNIVERSAL_AUTH
    # One of the two, by method (the CRD's CEL rules; validate() checks again).
    credentials: CredentialsSpec | None = None
    kubernetes_auth: KubernetesAuthSpec | None = Field(default=None, alias="kubernetesAuth")
    organization_slug: str | None = Field(default=None, alias="organizationSlug")
    tls: TlsSpec | None = None
    allow_insecure_http: bool = Field(default=False, alias="allowInsecureHttp")
    validation_interval: str = Field(default="5m", alias="validationInterval")

    def referenced_secrets(self) -> list[str]:
        names = [self.credentials.secret_ref.name] if self.credentials else []
        if self.tls and self.tls.ca_secret_ref:
            names.append(self.tls.ca_secret_ref.name)
        return names


class LabelSelectorRequirement(_Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Spec):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions"
    )

    def to_string(self) -> str:
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator == "In":
                parts.append(f"{req.key} in ({','.join(req.values)})")
            elif req.operator == "NotIn":
                parts.append(f"{req.key} notin ({','.join(req.values)})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts)


class ClusterConnectionSpec(ConnectionSpec):
    """A ClusterInfisicalConnection: a connection's spec (its Secrets and service account in
    the operator's namespace) and the namespaces whose SecretSyncs may use it."""

    # None: no namespace may (the default); an empty selector: every namespace.
    namespace_selector: LabelSelector | None = Field(default=None, alias="namespaceSelector")


class SecretSelection(_Spec):
    name: str
    keys: list[str] | None = None


class KubernetesSource(_Spec):
    secrets: list[SecretSelection] = Field(default_factory=list)
    selector: LabelSelector | None = None


class ConnectionRef(_Spec):
    name: str
    kind: ConnectionKind = NAMESPACED_KIND

    def address(self, namespace: str) -> tuple[str, str]:
        """(namespace, name) of the connection meant from a SecretSync in `namespace`."""
        return (CLUSTER_SCOPE if self.kind == CLUSTER_KIND else namespace, self.name)


class InfisicalLocationSpec(_Spec):
    connection_ref: ConnectionRef = Field(alias="connectionRef")
    project_id: str | None = Field(default=None, alias="projectId")
    project_slug: str | None = Field(default=None, alias="projectSlug")
    environment: str
    secret_path: str = Field(default="/", alias="secretPath")

    @property
    def project(self) -> str:
        return self.project_slug or self.project_id or "?"

    def describe(self) -> str:
        path = self.secret_path if self.secret_path == "/" else self.secret_path.rstrip("/")
        # A cluster connection's name is marked: status.destination tells the two kinds apart.
        ref = self.connection_ref
        connection = f"cluster:{ref.name}" if ref.kind == CLUSTER_KIND else ref.name
        return f"{connection}/{self.project}/{self.environment}:{path}"


class InfisicalSource(InfisicalLocationSpec):
    recursive: bool = False
    include_imports: bool = Field(default=False, alias="includeImports")
    # Read values as applications and Infisical's SDKs do: ${...} references resolved by the
    # server. False copies them raw, for a destination with the same environments and folders.
    expand_secret_references: bool = Field(default=True, alias="expandSecretReferences")


class SourceSpec(_Spec):
    kubernetes: KubernetesSource | None = None
    infisical: InfisicalSource | None = None

    def describe(self) -> str:
        if self.infisical:
            return "infisical:" + self.infisical.describe()
        assert self.kubernetes is not None
        names = [item.name for item in self.kubernetes.secrets]
        if self.kubernetes.selector:
            names.append(f"selector({self.kubernetes.selector.to_string()})")
        return "secret:" + ",".join(names)


InitialSyncBehavior = Literal[
    "overwrite-destination", "import-prioritize-source", "import-prioritize-destination"
]


class SyncOptions(_Spec):
    initial_sync_behavior: InitialSyncBehavior = Field(
        default="overwrite-destination", alias="initialSyncBehavior"
    )
    key_schema: str = Field(default="{{secretKey}}", alias="keySchema")
    disable_secret_deletion: bool = Field(default=False, alias="disableSecretDeletion")


class SecretSyncSpec(_Spec):
    source: SourceSpec
    destination: InfisicalLocationSpec
    sync_options: SyncOptions = Field(default_factory=SyncOptions, alias="syncOptions")
    auto_sync_enabled: bool = Field(default=True, alias="autoSyncEnabled")
    sync_interval: str = Field(default="5m", alias="syncInterval")
    deletion_policy: Literal["Retain", "Delete"] = Field(default="Retain", alias="deletionPolicy")
    dry_run: bool = Field(default=False, alias="dryRun")
    suspend: bool = False

    def connection_refs(self) -> list[ConnectionRef]:
        """The connections a cycle uses: the destination's first, then an Infisical source's."""
        refs = [self.destination.connection_ref]
        if self.source.infisical:
            refs.append(self.source.infisical.connection_ref)
        return refs

    def source_secret_names(self) -> list[str]:
        if self.source.kubernetes is None:
            return []
        return [item.name for item in self.source.kubernetes.secrets]


def parse_spec(model: type[_Spec], spec: Any) -> Any:
    return model.model_validate(dict(spec or {}))
