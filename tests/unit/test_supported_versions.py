"""The Kubernetes and Helm versions the suite builds and selects, and the chart's declared range."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from infisical_sync.testing import controlplane
from infisical_sync.testing.controlplane import (
    HELM_RELEASES,
    KUBERNETES_ENV,
    KUBERNETES_RELEASES,
    ControlPlaneError,
    helm_ldflags,
    kube_binaries_dir,
    kubernetes_ldflags,
    kubernetes_release,
)

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "infisical-sync"
OLDEST, NEWEST = KUBERNETES_RELEASES[0], KUBERNETES_RELEASES[-1]


def _minor_number(minor: str) -> tuple[int, int]:
    major, number = minor.split(".")
    return int(major), int(number)


def test_the_oldest_release_is_the_default() -> None:
    assert kubernetes_release({}) == OLDEST
    assert kubernetes_release({KUBERNETES_ENV: ""}) == OLDEST
    assert kubernetes_release({KUBERNETES_ENV: "  "}) == OLDEST


@pytest.mark.parametrize("spelling", ["1.37", "v1.37", "1.37.2", "v1.37.2", " 1.37 "])
def test_a_release_is_chosen_by_minor_or_full_version(spelling: str) -> None:
    chosen = kubernetes_release({KUBERNETES_ENV: spelling})
    assert chosen.version == "v1.37.2"
    assert chosen.module_dir.name == "gobuild-1.37"


@pytest.mark.parametrize("spelling", ["1.35", "1.37.1", "1.3", "latest"])
def test_an_unbuilt_release_is_refused_with_the_choices(spelling: str) -> None:
    with pytest.raises(ControlPlaneError) as raised:
        kubernetes_release({KUBERNETES_ENV: spelling})
    assert str(raised.value) == f"{KUBERNETES_ENV}={spelling.strip()!r} is not one of: 1.34, 1.37"


def test_releases_run_oldest_to_newest_one_per_minor() -> None:
    minors = [_minor_number(release.minor) for release in KUBERNETES_RELEASES]
    assert minors == sorted(set(minors))
    assert len(KUBERNETES_RELEASES) >= 2  # CI tests both ends of the supported range


@pytest.mark.parametrize("release", KUBERNETES_RELEASES, ids=lambda release: release.minor)
def test_each_go_module_pins_its_release_and_matching_staging_modules(
    release: controlplane.KubernetesRelease,
) -> None:
    go_mod = (release.module_dir / "go.mod").read_text()
    assert f"require k8s.io/kubernetes {release.version}\n" in go_mod
    staging = re.findall(r"^\t(k8s\.io/\S+) => (\S+) (\S+)$", go_mod, re.MULTILINE)
    assert len(staging) > 25
    # Kubernetes v1.N.P's staging modules are tagged v0.N.P: one left behind breaks the build.
    expected = "v0." + release.version.removeprefix("v1.")
    assert all(module == target and version == expected for module, target, version in staging)


def test_the_chart_declares_the_tested_range() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    major, after_newest = _minor_number(NEWEST.minor)
    # "-0" so that providers' builds (v1.35.2-eks-1a2b3c) are inside the range.
    assert chart["kubeVersion"] == f">={OLDEST.minor}.0-0 <{major}.{after_newest + 1}.0-0"


def test_ci_runs_the_oldest_and_the_newest() -> None:
    makefile = (CHART.parents[2] / "Makefile").read_text()
    assert f"KUBERNETES_OLDEST := {OLDEST.minor}\n" in makefile
    assert f"KUBERNETES_NEWEST := {NEWEST.minor}\n" in makefile
    passes = re.findall(r"INFISICAL_SYNC_KUBERNETES=\$\((\w+)\) \S+/pytest", makefile)
    assert sorted(passes) == ["KUBERNETES_NEWEST", "KUBERNETES_OLDEST", "KUBERNETES_OLDEST"]
    # GitHub's CI runs the oldest Python's pass itself (make test-image-python the other): it
    # must name the oldest Kubernetes, not rely on the default.
    workflow = yaml.safe_load((CHART.parents[2] / ".github" / "workflows" / "ci.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    suites = [step for step in steps if re.search(r"(^|\s)\S*pytest\s", step.get("run", ""))]
    assert [step.get("env", {}).get(KUBERNETES_ENV) for step in suites] == [OLDEST.minor]
    assert [step["run"] for step in steps if "test-image-python" in step.get("run", "")] == [
        "make test-image-python"
    ]


def test_binaries_are_stamped_with_their_release() -> None:
    flags = kubernetes_ldflags("v1.37.2")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.37.2" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=37" in flags


def test_each_release_has_its_own_cache_keyed_by_its_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directories = {kube_binaries_dir(release) for release in KUBERNETES_RELEASES}
    assert len(directories) == len(KUBERNETES_RELEASES)
    assert all(
        kube_binaries_dir(release).name.startswith(f"kubernetes-{release.version}-")
        for release in KUBERNETES_RELEASES
    )
    # A changed go.mod (say a bumped dependency) builds anew instead of reusing old binaries.
    copy = tmp_path / "gobuild"
    shutil.copytree(NEWEST.module_dir, copy)
    edited = controlplane.KubernetesRelease(NEWEST.version, copy)
    assert kube_binaries_dir(edited) == kube_binaries_dir(NEWEST)
    (copy / "go.mod").write_text((copy / "go.mod").read_text() + "\n// bumped\n")
    assert kube_binaries_dir(edited) != kube_binaries_dir(NEWEST)


def test_the_chosen_release_is_what_a_control_plane_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KUBERNETES_ENV, NEWEST.minor)
    plane = controlplane.ControlPlane()
    try:
        assert plane.release == NEWEST
    finally:
        shutil.rmtree(plane.workdir, ignore_errors=True)


@pytest.mark.parametrize("major", sorted(HELM_RELEASES))
def test_each_helm_module_pins_its_major(major: int) -> None:
    release = HELM_RELEASES[major]
    assert release.major == major
    assert release.package == f"helm.sh/helm/v{major}"
    go_mod = (release.module_dir / "go.mod").read_text()
    assert f"require {release.package} {release.version}\n" in go_mod
    tools = (release.module_dir / "tools.go").read_text()
    assert f'"{release.package}/cmd/helm"' in tools


def test_helm_three_assumes_the_kubernetes_of_its_client_go() -> None:
    """Unstamped, Helm 3 renders for v1.20.0 and the chart's kubeVersion refuses it."""
    flags = helm_ldflags(HELM_RELEASES[3])
    assert "-X helm.sh/helm/v3/internal/version.version=v3.19.5" in flags
    for package in ("pkg/chartutil", "pkg/lint/rules"):
        assert f"-X helm.sh/helm/v3/{package}.k8sVersionMajor=1" in flags
        assert f"-X helm.sh/helm/v3/{package}.k8sVersionMinor=34" in flags  # client-go v0.34.2
    assert helm_ldflags(HELM_RELEASES[4]) == ["-X helm.sh/helm/v4/internal/version.version=v4.3.1"]
