"""The release's tools on the real files: `make chart` packages the chart with the project's
version, and actionlint (with shellcheck) passes the GitHub Actions workflows."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from infisical_sync.testing.controlplane import ControlPlaneError, ensure_actionlint, ensure_helm

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _built(build: Callable[[], Path]) -> str:
    try:
        return str(build())
    except ControlPlaneError as exc:
        if IN_CI:
            raise  # under CI the Go-built tools are there: `make deps` builds them
        pytest.skip(f"cannot build the tool: {exc}")


@pytest.fixture(scope="module")
def helm() -> str:
    return _built(ensure_helm)


@pytest.fixture(scope="module")
def actionlint() -> str:
    return _built(ensure_actionlint)


@pytest.fixture(scope="module")
def shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        if IN_CI:
            pytest.fail("shellcheck is missing: `make deps` installs it")
        pytest.skip("shellcheck is not installed (`make deps` installs it)")
    return found


def make_chart(helm: str, dist: Path, *variables: str) -> Path:
    result = subprocess.run(
        ["make", "--no-print-directory", "chart", f"HELM={helm}", f"DIST={dist}", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (package,) = dist.glob("*.tgz")
    return package


def chart_members(package: Path) -> dict[str, bytes]:
    with tarfile.open(package) as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
            if member.isfile()
        }


def test_make_chart_packages_the_chart_at_the_projects_version(helm: str, tmp_path: Path) -> None:
    package = make_chart(helm, tmp_path)
    assert package.name == f"infisical-sync-{VERSION}.tgz"
    members = chart_members(package)
    chart = yaml.safe_load(members["infisical-sync/Chart.yaml"])
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)
    assert "infisical-sync/values.schema.json" in members
    crds = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
    assert crds
    for crd in crds:
        assert members[f"infisical-sync/crds/{crd.name}"] == crd.read_bytes()


def test_the_packaged_version_comes_from_the_make_variable_not_chart_yaml(
    helm: str, tmp_path: Path
) -> None:
    package = make_chart(helm, tmp_path, "VERSION=9.8.7-rc.1")
    chart = yaml.safe_load(chart_members(package)["infisical-sync/Chart.yaml"])
    assert (chart["version"], chart["appVersion"]) == ("9.8.7-rc.1", "9.8.7-rc.1")


def test_the_packaged_chart_points_at_the_image_repository_it_is_given(
    helm: str, tmp_path: Path
) -> None:
    """The release workflow's owner need not be the default's: the chart it pushes names the
    image it pushed. The source tree is left as it was."""
    values = ROOT / "deploy" / "helm" / "infisical-sync" / "values.yaml"
    before = values.read_bytes()
    package = make_chart(helm, tmp_path, "IMAGE_REPOSITORY=ghcr.io/someone-else/operator")
    packaged = yaml.safe_load(chart_members(package)["infisical-sync/values.yaml"])
    assert packaged["image"]["repository"] == "ghcr.io/someone-else/operator"
    assert packaged | {"image": None} == yaml.safe_load(before) | {"image": None}
    assert values.read_bytes() == before


def lint(actionlint: str, shellcheck: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint, "-no-color", "-oneline", f"-shellcheck={shellcheck}", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_workflows_pass_actionlint(actionlint: str, shellcheck: str) -> None:
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert {path.name for path in workflows} >= {"ci.yml", "release.yml"}
    result = lint(actionlint, shellcheck, *workflows)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow_and_a_shell_mistake(
    actionlint: str, shellcheck: str, tmp_path: Path
) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-24.04\n"
        "    needs: nowhere\n"
        "    steps:\n"
        "      - run: echo ${{ github.no_such_context_field }}\n"
        "      - run: rm -rf $UNQUOTED/\n"
    )
    result = lint(actionlint, shellcheck, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'needs job "nowhere" which does not exist' in result.stdout
    assert 'property "no_such_context_field" is not defined' in result.stdout
    assert "SC2086" in result.stdout  # shellcheck ran on the run: script
