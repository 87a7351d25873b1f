"""Shared fixtures: the real local control plane (session-wide) and a namespace per test."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infisical_sync.testing.controlplane import (
    HELM_RELEASES,
    KUBERNETES_ENV,
    OPERATOR_USER,
    ControlPlane,
    ControlPlaneError,
    free_port,
    grant_operator_rbac,
    install_crds,
    kubernetes_release,
)
from infisical_sync.testing.processes import LoggedProcess, logged_process

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# What the API server said it runs, for the closing summary (CI runs one Kubernetes per pass).
SERVED_VERSION = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    chosen = os.environ.get(KUBERNETES_ENV) or "unset: the oldest"
    try:
        kubernetes = kubernetes_release().version
    except ControlPlaneError as exc:
        kubernetes = str(exc)
    helm = ", ".join(release.version for release in HELM_RELEASES.values())
    return [f"kubernetes: {kubernetes} ({KUBERNETES_ENV}={chosen}); helm: {helm}"]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    # Also under -q, which hides the header: each CI pass says which Kubernetes it tested.
    served = config.stash.get(SERVED_VERSION, None)
    if served is not None:
        terminalreporter.write_line(f"control plane: kube-apiserver {served} (/version)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e", action="store_true", help="run the kind + Docker end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--e2e"):
        return
    skip = pytest.mark.skip(reason="kind end-to-end tests are opt-in: pass --e2e (needs Docker)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    plane = ControlPlane()
    try:
        plane.start()
    except ControlPlaneError as exc:
        if IN_CI:
            raise  # under CI the control-plane tests run; they never skip
        pytest.skip(f"local control plane unavailable: {exc}")
    try:
        request.config.stash[SERVED_VERSION] = plane.server_version()
        install_crds(plane.kubeconfig)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Any:
    """An admin ApiClient for the local control plane."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture
def namespace(kube: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # No namespace controller runs here: the namespace stays Terminating, which is harmless.
    core.delete_namespace(name)


# --- the operator, running as a subprocess with least-privilege RBAC ---------------------------


@dataclass
class OperatorProcess:
    logged: LoggedProcess
    metrics_port: int
    health_port: int

    def log(self) -> str:
        return self.logged.log()

    def metric(self, name: str, /, **labels: str) -> float | None:
        """One sample of the operator's Prometheus metrics, None when it has no such series."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == name and found.labels == labels:
                    return float(found.value)
        return None


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready: str = "infisical-sync operator started",
    scope: tuple[str, ...] = ("-A",),
) -> Iterator[OperatorProcess]:
    """`infisical-sync run -A` (or `scope`, e.g. `-n a -n b`) at DEBUG with JSON logs, metrics
    and health endpoints, as the user of `kubeconfig`; `env` adds or overrides INFISICAL_SYNC_*
    settings, `args` adds flags; returns once `ready` is in its log."""
    environ = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "INFISICAL_SYNC_MAX_ATTEMPTS": "3",
        "INFISICAL_SYNC_BACKOFF_BASE": "0.2",
        "INFISICAL_SYNC_REQUEST_TIMEOUT": "5",
        "INFISICAL_SYNC_CONNECT_TIMEOUT": "2",
        **(env or {}),
    }
    metrics_port, health_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "infisical_sync",
        "run",
        *scope,
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
        "--metrics-port",
        str(metrics_port),
        "--health-port",
        str(health_port),
        *(args or []),
    ]
    with logged_process(argv, log_path, environ) as handle:
        handle.wait_for_line(ready)
        yield OperatorProcess(handle, metrics_port, health_port)


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane, kube: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator for the whole session, authenticated as a user holding only the chart's
    RBAC rules."""
    grant_operator_rbac(control_plane.kubeconfig)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    kubeconfig = control_plane.kubeconfig_for_user(OPERATOR_USER)
    with operator_process(kubeconfig, log_path) as process:
        yield process


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.2, message: str = "") -> Any:
    """Poll until predicate() is truthy; return its value, or fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s {message}; last: {last!r}")
