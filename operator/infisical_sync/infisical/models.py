"""Typed shapes of the Infisical API that the operator reads and writes.

Secret values and tokens are `SecretStr`: their repr is masked, so a model never leaks a value
into a log line or exception by accident. `.get_secret_value()` is called only at the wire.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class LoginResult(_Wire):
    access_token: SecretStr = Field(alias="accessToken")
    expires_in: int = Field(alias="expiresIn", default=0)
    access_token_max_ttl: int = Field(alias="accessTokenMaxTTL", default=0)
    token_type: str = Field(alias="tokenType", default="Bearer")


class MetadataEntry(_Wire):
    key: str
    value: str = ""
    is_encrypted: bool = Field(alias="isEncrypted", default=False)


class RemoteSecret(_Wire):
    # Read by wire names only: older servers send a legacy `metadata` record (null, or a map)
    # that must not be taken for `secretMetadata`, the field this model calls `metadata`.
    model_config = ConfigDict(populate_by_name=False, extra="ignore", frozen=True)

    key: str = Field(alias="secretKey")
    value: SecretStr = Field(alias="secretValue", default=SecretStr(""))
    secret_path: str | None = Field(alias="secretPath", default=None)
    # None: the server did not return secretMetadata at all (old servers).
    metadata: list[MetadataEntry] | None = Field(alias="secretMetadata", default=None)
    version: int = 1
    value_hidden: bool = Field(alias="secretValueHidden", default=False)
    type: str = "shared"


class SecretImport(_Wire):
    secret_path: str = Field(alias="secretPath")
    environment: str
    secrets: list[RemoteSecret] = Field(default_factory=list)


class SecretListing(_Wire):
    secrets: list[RemoteSecret] = Field(default_factory=list)
    imports: list[SecretImport] = Field(default_factory=list)
    etag: str | None = None
    not_modified: bool = False


class Environment(_Wire):
    id: str = ""
    name: str = ""
    slug: str


class Project(_Wire):
    id: str = Field(validation_alias=AliasChoices("id", "_id"))
    slug: str = ""
    name: str = ""
    environments: list[Environment] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _unwrapped(cls, data: Any) -> Any:
        """The slug routes answer the project itself; read one wrapped in `project` or
        `workspace` too (the by-id and older workspace routes wrap it)."""
        if isinstance(data, dict) and "id" not in data and "_id" not in data:
            for wrapper in ("project", "workspace"):
                if isinstance(data.get(wrapper), dict):
                    return data[wrapper]
        return data


class ProjectList(_Wire):
    """`GET /api/v1/projects`: only its shape matters (it proves a token)."""

    projects: list[dict[str, object]]


class SecretWrite(_Wire):
    """One item of a batch create or update. An update without a value keeps the stored one
    (releasing ownership rewrites only the metadata)."""

    key: str
    value: SecretStr | None = None
    metadata: list[MetadataEntry] | None = None

    def wire(self) -> dict[str, object]:
        item: dict[str, object] = {"secretKey": self.key}
        if self.value is not None:
            item["secretValue"] = self.value.get_secret_value()
        if self.metadata is not None:
            item["secretMetadata"] = [
                {"key": entry.key, "value": entry.value}
                | ({"isEncrypted": True} if entry.is_encrypted else {})
                for entry in self.metadata
            ]
        return item


class SecretLocation(_Wire):
    """A project/environment/path on one instance."""

    project_id: str
    environment: str
    secret_path: str = "/"
