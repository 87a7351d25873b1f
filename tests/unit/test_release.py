"""What a release is made of agrees with itself: the image's lock with pyproject.toml, the chart's
version with the project's, the Dockerfile with the lock."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from infisical_sync.testing.images import debian_bases

ROOT = Path(__file__).parents[2]
LOCK = ROOT / "requirements.lock"
RELOCK = "run `make lock` (it rewrites requirements.lock) and commit the result"
# The python3 of each Debian release the Dockerfile may start from: the lock is for that Python.
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13", "forky": "3.14"}
# Where the image's dependencies are installed: markers in pyproject.toml are judged for it.
IMAGE_ENVIRONMENT = {
    "python_version": "3.13",
    "python_full_version": "3.13.5",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass
class Pin:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """`name==version --hash=sha256:...` entries (continuation lines joined, comments dropped),
    and the problems found in their shape."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        requirement_text, *options = re.split(r"\s+(?=--)", line)
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            problems.append(f"{requirement_text}: not pinned with ==")
            continue
        hashes = [option.split("=", 1)[1] for option in options if option.startswith("--hash=")]
        if not hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes):
            problems.append(f"{requirement_text}: no sha256 hashes")
        name = canonicalize_name(requirement.name)
        if name in pins:
            problems.append(f"{requirement.name}: pinned twice")
        pins[name] = Pin(name, specifiers[0].version, hashes)
    return pins, problems


def lock_problems(pyproject_text: str, lock_text: str) -> list[str]:
    """What makes the lock stale for pyproject.toml: a runtime dependency or build requirement it
    does not pin, or pins at a version the specifier excludes; an entry without hashes."""
    project = tomllib.loads(pyproject_text)
    pins, problems = parse_lock(lock_text)
    wanted = [
        *(("dependency", text) for text in project["project"].get("dependencies", [])),
        *(("build requirement", text) for text in project["build-system"].get("requires", [])),
    ]
    for kind, text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue  # not installed in the image
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{kind} {text!r} is not in requirements.lock")
        elif not requirement.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{kind} {text!r}: requirements.lock pins {pin.name}=={pin.version}")
    return problems


def test_the_lock_is_in_step_with_pyproject() -> None:
    problems = lock_problems((ROOT / "pyproject.toml").read_text(), LOCK.read_text())
    assert not problems, "requirements.lock is stale: " + "; ".join(problems) + f"; {RELOCK}"


def test_the_lock_check_fails_on_a_stale_lock() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = LOCK.read_text()
    first, *_, last = tomllib.loads(pyproject)["project"]["dependencies"]
    name = Requirement(first).name
    raised = pyproject.replace(f'"{first}"', f'"{name}>=999"')
    assert raised != pyproject
    pinned = parse_lock(lock)[0][canonicalize_name(name)].version
    assert lock_problems(raised, lock) == [
        f"dependency '{name}>=999': requirements.lock pins {canonicalize_name(name)}=={pinned}"
    ]
    added = pyproject.replace(f'"{last}",', f'"{last}",\n    "rich>=13",')
    assert lock_problems(added, lock) == ["dependency 'rich>=13' is not in requirements.lock"]
    # A marker that excludes the image's platform needs no pin.
    windows_only = pyproject.replace(f'"{last}",', f'"{last}",\n    "pywin32; os_name == \'nt\'",')
    assert windows_only != pyproject
    assert lock_problems(windows_only, lock) == []
    backend = tomllib.loads(pyproject)["build-system"]["requires"][0]
    newer_backend = pyproject.replace(f'"{backend}"', '"setuptools>=999"')
    assert lock_problems(newer_backend, lock)[0].startswith("build requirement 'setuptools>=999'")
    unhashed = re.sub(
        r"(?m)^(sniffio==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+\n", r"\1\n", lock
    )
    assert unhashed != lock
    assert any(
        "sniffio" in p and "no sha256 hashes" in p for p in lock_problems(pyproject, unhashed)
    )


def test_the_lock_is_for_the_images_python() -> None:
    (base,) = debian_bases(ROOT / "Dockerfile")
    makefile = (ROOT / "Makefile").read_text()
    python = DEBIAN_PYTHON[base.suite]
    assert f"--python-version {python}" in makefile, (
        f"the image ({base.name}) runs Python {python}: make lock must resolve for it"
    )
    assert "x86_64-manylinux" in makefile and "aarch64-manylinux" in makefile


def test_the_lock_holds_only_what_the_image_installs() -> None:
    pins, problems = parse_lock(LOCK.read_text())
    assert not problems
    # The dev and testing extras stay out of the image (and so out of its lock).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        for text in extra:
            name = canonicalize_name(Requirement(text).name)
            if name != "infisical-sync" and name not in runtime:
                assert name not in pins, f"{name} (an extra) is in requirements.lock"


def test_the_dockerfile_installs_the_lock_with_hashes_and_the_project_without_deps() -> None:
    text = (ROOT / "Dockerfile").read_text()
    installs = [line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line]
    lock_install, project_install = installs
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:", "-r requirements.lock"):
        assert flag in lock_install
    for flag in ("--no-deps", "--no-build-isolation", "--no-index"):
        assert flag in project_install
    # With --no-deps an incomplete lock would still install: pip check fails the build instead,
    # while pip is still there.
    assert re.search(r"&&\s+pip check\s+&&", project_install)
    assert project_install.index("pip check") < project_install.index("pip uninstall")
    assert "ARG PIP_CERT" in text.split("pip install", 1)[0], "pip must see the proxy CA"


def test_the_chart_carries_the_projects_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "infisical-sync" / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (version, version), (
        "deploy/helm/infisical-sync/Chart.yaml's version and appVersion must be pyproject.toml's "
        f"version {version}"
    )


def test_workflow_actions_are_pinned_by_commit() -> None:
    # A tag can be moved to other code; a commit cannot. The comment says which release it is.
    uses = [
        line.strip()
        for path in sorted((ROOT / ".github" / "workflows").glob("*.yml"))
        for line in path.read_text().splitlines()
        if re.match(r"\s*(- )?uses:", line)
    ]
    assert uses
    unpinned = [
        line
        for line in uses
        if not re.fullmatch(r"(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line)
    ]
    assert not unpinned, f"pin these by full commit SHA with a `# vX.Y.Z` comment: {unpinned}"
