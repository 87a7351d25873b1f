"""The operator's one settings object, from command-line flags and INFISICAL_SYNC_* variables."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from infisical_sync.instance_urls import AllowedInstances, parse_entry
from infisical_sync.lease import LeaseTimings
from infisical_sync.shards import Shard

ENV_PREFIX = "INFISICAL_SYNC_"
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class Settings(BaseModel):
    namespaces: list[str] = Field(default_factory=list, description="namespaces to watch")
    all_namespaces: bool = Field(default=False, description="watch every namespace")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables metrics")
    health_port: int = Field(default=8080, ge=0, le=65535, description="0 disables /healthz")
    concurrency_per_connection: int = Field(default=5, ge=1, le=100)
    request_timeout: float = Field(default=30.0, gt=0, description="seconds per remote call")
    connect_timeout: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20, description="tries per remote call")
    backoff_base: float = Field(default=0.5, gt=0, description="seconds, doubled per retry")
    backoff_cap: float = Field(default=30.0, gt=0)
    batch_max_bytes: int = Field(
        default=900 * 1024,
        ge=16 * 1024,
        description="JSON bytes per batch request (Infisical's body limit is 1 MiB)",
    )
    # Kept from when requests were chunked by count: an optional cap on top of the byte budget.
    batch_chunk_size: int | None = Field(
        default=None, ge=1, description="at most this many keys per batch request; default: any"
    )
    kube_request_timeout: float = Field(
        default=30.0, gt=0, description="seconds a Kubernetes API call may wait for its answer"
    )
    kube_connect_timeout: float = Field(default=10.0, gt=0)
    max_concurrent_syncs: int = Field(
        default=64, ge=1, le=10000, description="SecretSync cycles the operator runs at once"
    )
    kube_concurrency: int = Field(
        default=32, ge=1, le=256, description="Kubernetes API calls the operator makes at once"
    )
    # Refused (see the validator); kept so that a configuration still setting it says why.
    peering: bool = Field(default=False, description="kopf peering: no longer supported")
    leader_election: bool = Field(
        default=False, description="run only while holding a coordination.k8s.io Lease"
    )
    # A setting, not a constant: one Lease per shard later.
    lease_name: str = Field(default="infisical-sync", min_length=1, max_length=253)
    lease_namespace: str = Field(
        default="", max_length=63, description="empty: the pod's own namespace"
    )
    # After a SIGKILL the standby sees the last renewal within a retry period and takes the
    # Lease a duration later: within 12 s. The leader writes until 7 s after its last renewal
    # began, 3 s before any standby may take over.
    lease_duration: int = Field(default=10, ge=1, le=300, description="seconds")
    lease_renew_deadline: float = Field(default=7.0, gt=0, description="seconds")
    lease_retry_period: float = Field(default=2.0, gt=0, description="seconds")
    cluster_id: str = Field(
        default="",
        max_length=128,
        description="cluster identity in key ownership (empty: kube-system namespace UID)",
    )
    allowed_instance_urls: list[str] = Field(
        default_factory=list, description="Infisical instances connections may use; empty: any"
    )
    cluster_connections: bool = Field(
        default=True, description="serve ClusterInfisicalConnections (watches Namespaces)"
    )
    operator_namespace: str = Field(
        default="",
        max_length=63,
        description="ClusterInfisicalConnections' Secrets are here; empty: the pod's namespace",
    )
    shard: Shard = Field(
        default_factory=Shard, description="i/N: this replica owns the i-th of N hash slices"
    )

    @field_validator("namespaces")
    @classmethod
    def _namespace_names(cls, namespaces: list[str]) -> list[str]:
        # Names only: the Secret watch and the chart's Roles are per namespace, so a kopf-style
        # pattern (`team-*`, `!kube-system`) would be watched by kopf but not by them.
        for namespace in namespaces:
            if not NAMESPACE_NAME.fullmatch(namespace):
                raise ValueError(
                    f"{namespace!r} is not a namespace name (lowercase letters, digits and "
                    "'-', at most 63 characters; patterns are not supported)"
                )
        return namespaces

    @field_validator("allowed_instance_urls")
    @classmethod
    def _plain_urls(cls, urls: list[str]) -> list[str]:
        return [str(parse_entry(url)) for url in urls]

    @model_validator(mode="after")
    def _one_way_to_run_replicas(self) -> Settings:
        if self.peering:
            raise ValueError(
                "--peering is no longer supported: kopf peering pauses kopf's handlers, not the "
                "SecretSync timetable, and never fenced writes; run several replicas with "
                "--leader-election (a Lease with write fencing; the chart's default)"
            )
        self.lease_timings  # noqa: B018 - raises for timings that would let two replicas write
        return self

    @property
    def lease(self) -> str:
        """The Lease this replica competes for: one per shard index (`<lease_name>-shard-i`)."""
        return self.lease_name + self.shard.lease_suffix

    @property
    def lease_timings(self) -> LeaseTimings:
        return LeaseTimings(
            duration=self.lease_duration,
            renew_deadline=self.lease_renew_deadline,
            retry_period=self.lease_retry_period,
        )

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, value: object) -> object:
        return Shard.parse(value) if isinstance(value, str) else value

    @property
    def allowed_instances(self) -> AllowedInstances:
        return AllowedInstances.from_urls(self.allowed_instance_urls)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        for name, info in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if info.annotation in (bool, "bool"):
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif info.annotation == list[str]:  # comma-separated
                values[name] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                values[name] = raw
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(values)
