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


class SecretSelection(_Spec):
    name: str
    keys: list[str] | None = None


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


class KubernetesSource(_Spec):
    secrets: list[SecretSelection] = Field(default_factory=list)
    selector: LabelSelector | None = None


class InfisicalLocationSpec(_Spec):
    connection_ref: NameRef = Field(alias="connectionRef")
    project_id: str | None = Field(default=None, alias="projectId")
    project_slug: str | None = Field(default=None, alias="projectSlug")
    environment: str
    secret_path: str = Field(default="/", alias="secretPath")

    @property
    def project(self) -> str:
        return self.project_slug or self.project_id or "?"

    def describe(self) -> str:
        path = self.secret_path if self.secret_path == "/" else self.secret_path.rstrip("/")
        return f"{self.connection_ref.name}/{self.project}/{self.environment}:{path}"


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

    def connection_names(self) -> set[str]:
        names = {self.destination.connection_ref.name}
        if self.source.infisical:
            names.add(self.source.infisical.connection_ref.name)
        return names

    def source_secret_names(self) -> list[str]:
        if self.source.kubernetes is None:
            return []
        return [item.name for item in self.source.kubernetes.secrets]


def parse_spec(model: type[_Spec], spec: Any) -> Any:
    return model.model_validate(dict(spec or {}))
