"""Composition root: kopf settings and every kopf registration live here."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from infisical_sync.config import Settings

GROUP = "infisical-sync.dev"
PREFIX = "infisical-sync.dev"
registry = kopf.OperatorRegistry()


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Fixed on day one: changing these later makes every object look unhandled.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.posting.level = logging.WARNING


def run_operator(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=settings.all_namespaces or not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
        )
    )
    return 0
