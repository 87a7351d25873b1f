"""State of the fake Infisical: identities, tokens, projects, folders and secrets.

Plain data plus the rules the real server applies to it (value trimming, key rules, folder
creation). The HTTP layer in fake_infisical.py maps this onto routes, statuses and messages.
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets as random_tokens
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# JavaScript's String.prototype.trim() whitespace set (the server is Node.js).
_JS_WHITESPACE = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def js_trim(value: str) -> str:
    return value.strip(_JS_WHITESPACE)


def stored_value(value: str) -> str:
    """What the server stores for a written value: trimmed, one trailing newline kept."""
    trimmed = js_trim(value)
    return trimmed + "\n" if value.endswith("\n") else trimmed


def normalise_path(path: str | None) -> str:
    if not path:
        return "/"
    parts = [part for part in path.split("/") if part]
    return "/" + "/".join(parts)


@dataclass
class Clock:
    """Wall clock with an offset tests can advance (token TTLs, lockouts, rate windows)."""

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class ProjectAccess:
    environments: list[str] | None = None  # None: every environment
    read: bool = True
    write: bool = True

    def allows(self, environment: str, action: str) -> bool:
        if self.environments is not None and environment not in self.environments:
            return False
        return self.read if action == "read" else self.write


@dataclass
class KubernetesAuthConfig:
    """An identity's Kubernetes Auth (the fields of Infisical's attach call, API review mode).

    `token_reviewer_jwt` None: the client's own JWT reviews itself ("use the client's JWT as the
    reviewer"), so its service account needs TokenReview rights. The allow-lists are
    comma-separated (globs allowed); empty means any."""

    kubernetes_host: str  # URL of the API server, e.g. https://127.0.0.1:6443
    ca_pem: str = ""  # "" = the system roots
    token_reviewer_jwt: str | None = None
    allowed_namespaces: str = ""
    allowed_names: str = ""
    allowed_audience: str = ""

    def __repr__(self) -> str:  # never the reviewer's token
        return (
            f"KubernetesAuthConfig(kubernetes_host={self.kubernetes_host!r}, "
            f"allowed_namespaces={self.allowed_namespaces!r}, "
            f"allowed_names={self.allowed_names!r}, allowed_audience={self.allowed_audience!r})"
        )


@dataclass
class Identity:
    client_id: str
    client_secret: str
    name: str = "identity"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    access_token_ttl: int = 2592000
    access_token_max_ttl: int = 2592000
    client_secret_ttl: int = 0  # seconds after creation; 0 = never expires
    num_uses_limit: int = 0
    num_uses: int = 0
    trusted_ips: list[str] = field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    projects: dict[str, ProjectAccess] = field(default_factory=dict)  # project id -> access
    organization_slug: str | None = None
    created_at: float = field(default_factory=time.time)
    secret_revoked: bool = False
    failed_attempts: int = 0
    last_failure_at: float = 0.0
    locked_until: float = 0.0
    kubernetes_auth: KubernetesAuthConfig | None = None

    def ip_trusted(self, remote: str | None) -> bool:
        if remote is None:
            return False
        address = ipaddress.ip_address(remote)
        return any(address in ipaddress.ip_network(cidr) for cidr in self.trusted_ips)


@dataclass
class AccessToken:
    token: str
    identity_id: str
    created_at: float
    ttl: int
    max_ttl: int
    renewed_at: float
    revoked: bool = False

    def jwt_expired(self, now: float) -> bool:
        # The JWT itself is signed to live until the max TTL; the TTL is checked in the DB row.
        return self.max_ttl > 0 and now > self.created_at + self.max_ttl

    def ttl_expired(self, now: float) -> bool:
        return self.ttl > 0 and now > self.renewed_at + self.ttl


@dataclass
class Secret:
    key: str
    value: str
    comment: str = ""
    metadata: list[dict[str, Any]] = field(default_factory=list)
    skip_multiline_encoding: bool = False
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: int = 1
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass
class FolderRecord:
    """A folder's own row (what folder routes answer with), apart from its secrets."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: int = 1
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass
class Environment:
    slug: str
    name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # folder path -> key -> secret; "/" always exists
    folders: dict[str, dict[str, Secret]] = field(default_factory=lambda: {"/": {}})
    folder_records: dict[str, FolderRecord] = field(default_factory=lambda: {"/": FolderRecord()})
    # folder path -> [(environment slug, path)] imported into it
    imports: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def folder_ids(self) -> dict[str, str]:
        return {path: record.id for path, record in self.folder_records.items()}

    def mkdir(self, path: str, now: float | None = None) -> None:
        """Create every missing folder along `path` (the server's mkdir -p)."""
        created = time.time() if now is None else now
        parts = [part for part in path.split("/") if part]
        for depth in range(1, len(parts) + 1):
            current = "/" + "/".join(parts[:depth])
            if current not in self.folders:
                self.folders[current] = {}
                self.folder_records[current] = FolderRecord(created_at=created, updated_at=created)


@dataclass
class Project:
    id: str
    slug: str
    name: str
    org_id: str = "00000000-0000-4000-8000-000000000001"
    environments: dict[str, Environment] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "_id": self.id,
            "name": self.name,
            "slug": self.slug,
            "orgId": self.org_id,
            "type": "secret-manager",
            "environments": [
                {"name": env.name, "slug": env.slug, "id": env.id}
                for env in self.environments.values()
            ],
        }


@dataclass
class ApprovalRequest:
    """A write a change-approval policy held back: nothing is written until it is merged.

    `changes` are the items as the client sent them (values included: the fake keeps them to
    apply on merge, like the real server's request commits)."""

    project_id: str
    environment: str
    path: str
    folder_id: str
    policy_id: str
    committer_identity_id: str
    changes: list[tuple[str, dict[str, Any]]]  # (create | update | delete, item)
    created_at: float
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Infisical's alphaNumericNanoId(): 10 characters
    slug: str = field(
        default_factory=lambda: "".join(
            random_tokens.choice(string.ascii_letters + string.digits) for _ in range(10)
        )
    )
    status: str = "open"  # open | close
    has_merged: bool = False
    updated_at: float = 0.0

    @property
    def keys(self) -> list[str]:
        return [str(item.get("secretKey")) for _, item in self.changes]


@dataclass
class FakeState:
    clock: Clock = field(default_factory=Clock)
    identities: dict[str, Identity] = field(default_factory=dict)  # client id -> identity
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)  # id -> project
    # (project id, environment slug) -> the id of the change-approval policy covering it
    approval_policies: dict[tuple[str, str], str] = field(default_factory=dict)
    approval_requests: dict[str, ApprovalRequest] = field(default_factory=dict)  # by id
    # Every service account token a Kubernetes Auth login carried (leak tests look for them).
    kubernetes_jwts_seen: list[str] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- seeding -------------------------------------------------------------------------------

    def add_identity(self, client_id: str, client_secret: str, **options: Any) -> Identity:
        projects = options.pop("projects", {})
        identity = Identity(client_id=client_id, client_secret=client_secret, **options)
        identity.created_at = self.clock.now()
        for project_id, access in projects.items():
            identity.projects[project_id] = (
                access if isinstance(access, ProjectAccess) else ProjectAccess(**(access or {}))
            )
        self.identities[client_id] = identity
        return identity

    def add_kubernetes_identity(
        self, auth: KubernetesAuthConfig, *, identity_id: str | None = None, **options: Any
    ) -> Identity:
        """An identity that logs in with Kubernetes Auth only (its client secret is unguessable
        and never handed out)."""
        identity_id = identity_id or str(uuid.uuid4())
        identity = self.add_identity(
            identity_id, random_tokens.token_urlsafe(32), id=identity_id, **options
        )
        identity.kubernetes_auth = auth
        return identity

    def identity_by_id(self, identity_id: str) -> Identity | None:
        return next((i for i in self.identities.values() if i.id == identity_id), None)

    def add_project(
        self,
        slug: str,
        *,
        project_id: str | None = None,
        name: str | None = None,
        environments: list[str] | tuple[str, ...] = ("dev", "staging", "prod"),
    ) -> Project:
        project = Project(id=project_id or str(uuid.uuid4()), slug=slug, name=name or slug)
        for env_slug in environments:
            project.environments[env_slug] = Environment(slug=env_slug, name=env_slug.title())
        self.projects[project.id] = project
        return project

    def grant(self, client_id: str, project_id: str, **access: Any) -> None:
        self.identities[client_id].projects[project_id] = ProjectAccess(**access)

    def put_secret(
        self,
        project_id: str,
        environment: str,
        path: str,
        key: str,
        value: str,
        metadata: list[dict[str, Any]] | None = None,
    ) -> Secret:
        env = self.projects[project_id].environments[environment]
        path = normalise_path(path)
        env.mkdir(path, self.clock.now())
        if metadata is not None:
            metadata = [{"isEncrypted": False, **item} for item in metadata]
        existing = env.folders[path].get(key)
        now = self.clock.now()
        if existing:
            existing.value = value
            existing.version += 1
            existing.updated_at = now
            if metadata is not None:
                existing.metadata = metadata
            return existing
        secret = Secret(
            key=key, value=value, metadata=metadata or [], created_at=now, updated_at=now
        )
        env.folders[path][key] = secret
        return secret

    def get_secrets(self, project_id: str, environment: str, path: str = "/") -> dict[str, str]:
        env = self.projects[project_id].environments[environment]
        folder = env.folders.get(normalise_path(path), {})
        return {key: secret.value for key, secret in folder.items()}

    def folder(self, project_id: str, environment: str, path: str) -> dict[str, Secret] | None:
        env = self.projects[project_id].environments.get(environment)
        if env is None:
            return None
        return env.folders.get(normalise_path(path))

    # --- tokens --------------------------------------------------------------------------------

    def issue_token(self, identity: Identity) -> AccessToken:
        now = self.clock.now()
        # Shaped like a JWT so "malformed" can be told apart from "unknown".
        token = "eyJhbGciOiJIUzI1NiJ9." + random_tokens.token_urlsafe(24) + ".fake"
        record = AccessToken(
            token=token,
            identity_id=identity.client_id,
            created_at=now,
            ttl=identity.access_token_ttl,
            max_ttl=identity.access_token_max_ttl,
            renewed_at=now,
        )
        self.tokens[token] = record
        return record

    def next_serial(self) -> int:
        return next(self._serial)

    # --- change-approval policies --------------------------------------------------------------

    def require_approval(self, project_id: str, *environments: str) -> None:
        """Writes to these environments of the project open an approval request instead."""
        for environment in environments:
            self.approval_policies.setdefault((project_id, environment), str(uuid.uuid4()))

    def approval_policy(self, project_id: str, environment: str) -> str | None:
        return self.approval_policies.get((project_id, environment))

    def open_approvals(self) -> list[ApprovalRequest]:
        return [r for r in self.approval_requests.values() if r.status == "open"]
