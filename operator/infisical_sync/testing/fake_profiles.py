"""Server generations the fake can answer as (../shared/reference/infisical-api.md §8).

A profile is one consistent generation of the Infisical backend: every behaviour that differs
between generations is a field here, and the fake reads only these fields. A new generation is a
new table entry, not a new code path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ServerProfile:
    name: str
    # /api/v4/secrets* routes (absent before 2025: Fastify's unknown-route 404)
    v4_routes: bool = True
    # secretMetadata stored and returned (older servers: the legacy `metadata` record only)
    secret_metadata: bool = True
    # secrets in responses carry the legacy `"metadata": null`
    legacy_metadata_field: bool = False
    # a strong ETag on every JSON response (@fastify/etag)
    etag: bool = True
    # listing a path or environment that does not exist: 404 SecretPathNotFound (False: 200, empty)
    missing_path_not_found: bool = True
    # POST /api/v2/folders (mkdir -p, 400 on an existing leaf)
    folders_v2: bool = True
    # POST /api/v1/folders (workspaceId, environment, path, name)
    folders_v1: bool = True
    # creating a folder that exists: 400 (older: 200 with the existing folder)
    existing_folder_conflict: bool = True
    # an invalid folder name on /api/v1/folders: a validation error (older: 500 from the service)
    v1_folder_name_validated: bool = True
    # GET /api/v1/projects/slug/{slug} (GET /api/v2/workspace/{slug} is served by every profile)
    project_slug_v1: bool = True
    # PATCH /api/v3/secrets/batch/raw honours `mode` (older: dropped, so failOnNotFound)
    v3_batch_mode: bool = True
    # PATCH /api/v3/secrets/raw/{name} requires `secretValue` (current: optional)
    v3_update_requires_value: bool = False
    # the status of a request validation error (zod): 422, older servers 401
    validation_status: int = 422
    # `reqId` in error bodies
    request_ids: bool = True
    # a token renewal refused past the max TTL deletes the token
    refused_renewal_deletes_token: bool = True

    def with_overrides(self, **overrides: Any) -> ServerProfile:
        return replace(self, **overrides)


CURRENT = ServerProfile(name="current")

# Late 2024 (v3 generation), observed on loopback against the real backend.
GEN_2024 = ServerProfile(
    name="2024",
    v4_routes=False,
    secret_metadata=False,
    legacy_metadata_field=True,
    missing_path_not_found=False,
    folders_v2=False,
    existing_folder_conflict=False,
    v1_folder_name_validated=False,
    project_slug_v1=False,
    v3_batch_mode=False,
    v3_update_requires_value=True,
    validation_status=401,
    request_ids=False,
)

PROFILES: dict[str, ServerProfile] = {profile.name: profile for profile in (CURRENT, GEN_2024)}


def profile_named(name: str) -> ServerProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown fake server profile {name!r} (known: {', '.join(sorted(PROFILES))})"
        ) from None
