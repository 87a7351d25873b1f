"""Seed files for the standalone fake Infisical (YAML or JSON). Format documented in README.md."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import yaml

from infisical_sync.testing.fake_infisical import FakeInfisical, RateLimits
from infisical_sync.testing.fake_profiles import profile_named
from infisical_sync.testing.fake_state import FakeState, KubernetesAuthConfig, ProjectAccess


def load_seed(state: FakeState, seed: dict[str, Any]) -> None:
    slugs: dict[str, str] = {}
    for spec in seed.get("projects", []):
        project = state.add_project(
            spec["slug"],
            project_id=spec.get("id"),
            name=spec.get("name"),
            environments=spec.get("environments", ["dev", "staging", "prod"]),
        )
        slugs[project.slug] = project.id
        state.require_approval(project.id, *(spec.get("approvalEnvironments") or []))
        for env_slug, paths in (spec.get("folders") or {}).items():
            for path in paths:
                project.environments[env_slug].mkdir(path, state.clock.now())
        for env_slug, folders in (spec.get("secrets") or {}).items():
            for path, values in folders.items():
                for key, value in values.items():
                    state.put_secret(project.id, env_slug, path, key, str(value))
    for spec in seed.get("identities", []):
        access: dict[str, ProjectAccess] = {}
        for reference, grant in (spec.get("projects") or {}).items():
            grant = grant or {}
            access[slugs.get(reference, reference)] = ProjectAccess(
                environments=grant.get("environments"),
                read=grant.get("read", True),
                write=grant.get("write", True),
            )
        options: dict[str, Any] = {
            "access_token_ttl": spec.get("accessTokenTTL", 2592000),
            "access_token_max_ttl": spec.get("accessTokenMaxTTL", 2592000),
            "trusted_ips": spec.get("trustedIps", ["0.0.0.0/0", "::/0"]),
            "projects": access,
        }
        kubernetes = spec.get("kubernetesAuth")
        if kubernetes is not None:
            # The fields of Infisical's attach call (API review mode).
            state.add_kubernetes_identity(
                KubernetesAuthConfig(
                    kubernetes_host=kubernetes["kubernetesHost"],
                    ca_pem=kubernetes.get("caCert", ""),
                    token_reviewer_jwt=kubernetes.get("tokenReviewerJwt") or None,
                    allowed_namespaces=kubernetes.get("allowedNamespaces", ""),
                    allowed_names=kubernetes.get("allowedNames", ""),
                    allowed_audience=kubernetes.get("allowedAudience", ""),
                ),
                identity_id=spec.get("id"),
                name=spec.get("name", "kubernetes-identity"),
                **options,
            )
            continue
        state.add_identity(
            spec["clientId"],
            spec["clientSecret"],
            name=spec.get("name", spec["clientId"]),
            client_secret_ttl=spec.get("clientSecretTTL", 0),
            num_uses_limit=spec.get("numUsesLimit", 0),
            **options,
        )


def fake_from_seed(
    path: Path, host: str, port: int, tls: bool = False, profile: str | None = None
) -> FakeInfisical:
    """`profile`, when given, replaces the seed's `options.profile`."""
    seed = yaml.safe_load(path.read_text()) or {}
    options = dict(seed.get("options") or {})
    if profile:
        options["profile"] = profile
    limits = options.get("rateLimits") or {}
    server = profile_named(str(options.get("profile", "current")))
    # The switches from before profiles override single fields of the profile.
    overrides = {
        field: options[option]
        for option, field in (
            ("etag", "etag"),
            ("v4", "v4_routes"),
            ("metadata", "secret_metadata"),
        )
        if option in options
    }
    fake = FakeInfisical(
        host=host,
        port=port,
        tls=tls,
        profile=server.with_overrides(**overrides),
        rate_limits=RateLimits(
            enabled=limits.get("enabled", False),
            read=limits.get("read", 60),
            write=limits.get("write", 200),
            secrets=limits.get("secrets", 60),
        ),
    )
    load_seed(fake.state, seed)
    return fake


async def serve(
    path: Path, host: str, port: int, tls: bool = False, profile: str | None = None
) -> None:
    fake = fake_from_seed(path, host, port, tls, profile)
    await fake.start()
    print(f"fake Infisical ({fake.server.name}) listening on {fake.url}", flush=True)
    if tls:
        print(f"CA bundle: {fake.ca_file()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()
