"""Container images for the local node tests, built with buildah and no registry at all.

Three images, each cached as a docker-archive tar (``ctr images import`` loads it) under
``cache_dir() / "images"``:

* the Debian base the Dockerfile's ``FROM`` lines name (``debian:13.8-slim``): made the way
  Debian's official images are, by debootstrap from the Debian archive and slimmed like the
  ``-slim`` variants, under the name the Dockerfile pins. It is only kept in buildah's storage.
* the operator image, from the repo's Dockerfile as is (``buildah bud --layers``);
* ``registry.k8s.io/pause``, the CRI sandbox image: a tiny static Go program FROM scratch.

buildah always runs on a private storage under the cache (``--root``/``--runroot``, vfs so no
mounts are left behind) with its own registries, storage, containers and policy files, so the
host's /etc/containers and /var/lib/containers are never used and nothing is ever pulled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from infisical_sync.testing.controlplane import REPO_ROOT, cache_dir

# Debian release numbers of the pins a Dockerfile may use (debian:13.8-slim), and their suites.
DEBIAN_CODENAMES = {"12": "bookworm", "13": "trixie", "14": "forky"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
OPERATOR_IMAGE = "localhost/infisical-sync:test"
BUILD_STAGE = "build"  # the Dockerfile's build stage, kept named as a layer cache
BUILD_STAGE_IMAGE = "localhost/infisical-sync-build:cache"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PAUSE_MODULE_DIR = REPO_ROOT / "tests" / "controlplane" / "pause"
# runc, with the host network for the Dockerfile's apt-get and pip (no CNI setup needed).
ISOLATION = "oci"
# What the operator image is built from (the Dockerfile's context is filtered by .dockerignore).
OPERATOR_INPUTS = (
    "Dockerfile",
    ".dockerignore",
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "operator",
)
# Directories on the machine that buildah and runc create whatever their flags say.
_HOST_STATE_DIRS = (
    Path("/run/containers"),
    Path("/run/runc"),
    Path("/etc/cni"),
    Path("/etc/containers/networks"),
    Path("/var/lib/containers"),  # the blob-info cache every push writes
)
# Left out of the image by .dockerignore (test fakes and the demo), so left out of its key too.
_NOT_IN_IMAGE = ("operator/infisical_sync/testing", "operator/infisical_sync/demo.py")
_IGNORED_PARTS = ("__pycache__",)
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".egg-info")
# Like debuerreotype-slimify, which makes the official -slim images.
_SLIM_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
)
_SLIM_INCLUDES = (
    "/usr/share/doc/*/copyright",
    "/usr/share/locale/locale.alias",
)
_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """A build step failed: the message names the command and ends with its output's tail."""


def images_dir() -> Path:
    return cache_dir() / "images"


# --- pure helpers -------------------------------------------------------------------------------


def _is_ignored(relative: Path) -> bool:
    if any(relative.parts[: len(Path(p).parts)] == Path(p).parts for p in _NOT_IN_IMAGE):
        return True
    return any(
        part in _IGNORED_PARTS or part.endswith(_IGNORED_SUFFIXES) for part in relative.parts
    )


def _tree_files(root: Path, names: Iterable[str]) -> list[Path]:
    """Every regular file (or symlink) among `names` under `root`, recursively, sorted."""
    found: list[Path] = []
    for name in names:
        top = root / name
        if top.is_file() or top.is_symlink():
            found.append(top)
            continue
        for path in top.rglob("*"):
            relative = path.relative_to(root)
            if not _is_ignored(relative) and (path.is_file() or path.is_symlink()):
                found.append(path)
    return sorted(found)


def source_digest(root: Path, names: Iterable[str], *extra: str) -> str:
    """A short hash of the paths and contents of `names` under `root` (bytecode and egg-info
    left out: they change without the sources changing), plus `extra` strings."""
    digest = hashlib.sha256()
    for path in _tree_files(root, names):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + os.readlink(path).encode())
        else:
            digest.update(path.read_bytes())
        digest.update(b"\0")
    for value in extra:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:12]


def operator_image_key(repo_root: Path = REPO_ROOT, tag: str = OPERATOR_IMAGE) -> str:
    """Changes whenever the Dockerfile, its context, the image name or the base's recipe
    changes."""
    bases = debian_bases(repo_root / "Dockerfile")
    recipes = sorted({base_recipe_key(base.suite) for base in bases})
    return source_digest(repo_root, OPERATOR_INPUTS, tag, *recipes)


def base_recipe_key(suite: str) -> str:
    """How the Debian base is made: a changed recipe rebuilds it (it is cached by name)."""
    import inspect

    digest = hashlib.sha256()
    for part in (
        suite,
        DEBIAN_MIRROR,
        debian_sources(suite),
        repr(_SLIM_EXCLUDES),
        repr(_SLIM_INCLUDES),
        inspect.getsource(_slim_rootfs),
        inspect.getsource(_ensure_debian_base),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:12]


def pause_image_key(module_dir: Path = PAUSE_MODULE_DIR, name: str = PAUSE_IMAGE) -> str:
    names = sorted(p.name for p in module_dir.iterdir() if p.suffix == ".go" or p.name == "go.mod")
    return source_digest(module_dir, names, name)


def archive_name(image: str, key: str) -> str:
    """`registry.k8s.io/pause:3.10` + key -> `registry.k8s.io_pause_3.10-<key>.tar`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image) + f"-{key}.tar"


def mounts_under(path: Path, proc_mounts: str) -> list[Path]:
    """Mount points at or below `path` in /proc/mounts text, deepest first."""
    top = str(path).rstrip("/") or "/"
    found: list[Path] = []
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        # /proc/mounts escapes blanks and backslashes as octal (\040).
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        if target == top or target.startswith(top + "/"):
            found.append(Path(target))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def debian_sources(suite: str) -> str:
    """/etc/apt/sources.list.d/debian.sources as in Debian's official images (deb822)."""
    return (
        f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {suite} {suite}-updates\n"
        f"Components: main\nSigned-By: {DEBIAN_KEYRING}\n\n"
        f"Types: deb\nURIs: {DEBIAN_SECURITY_MIRROR}\nSuites: {suite}-security\n"
        f"Components: main\nSigned-By: {DEBIAN_KEYRING}\n"
    )


@dataclasses.dataclass(frozen=True)
class DebianBase:
    """A Debian image a Dockerfile starts from, and how debootstrap makes it."""

    name: str  # fully qualified, as buildah resolves the Dockerfile's short name
    suite: str  # what debootstrap installs: trixie
    release: str  # the point release the tag pins ("13.8"), or "" when the tag names none


def from_images(dockerfile_text: str) -> list[str]:
    """The images a Dockerfile's FROM lines name, in order and once each; a FROM that names an
    earlier stage, or scratch, starts from no image."""
    stages: set[str] = set()
    images: list[str] = []
    for line in dockerfile_text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [word for word in words[1:] if not word.startswith("--")]  # --platform=...
        if not words:
            raise ImageBuildError(f"a FROM line without an image: {line.strip()!r}")
        image, alias = words[0], words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
        if image != "scratch" and image.lower() not in stages and image not in images:
            if "$" in image:
                raise ImageBuildError(f"FROM with a build argument is not supported here: {image}")
            images.append(image)
        if alias:
            stages.add(alias.lower())
    return images


def debian_base(image: str) -> DebianBase:
    """What `debian:<tag>` means for debootstrap. Tags as Debian's official images have them:
    `13.8-slim` (a point release), `13-slim`, `trixie-slim`, `trixie-20251117-slim` (a dated
    build). Only the -slim variant is made here."""
    match = re.fullmatch(
        r"(?:(?:docker\.io/)?library/|docker\.io/)?debian:([A-Za-z0-9._-]+)", image
    )
    if match is None:
        raise ImageBuildError(
            f"FROM {image}: only Debian's images (debian:<tag>) can be made without a registry"
        )
    tag = match.group(1)
    if not tag.endswith("-slim"):
        raise ImageBuildError(f"FROM {image}: only the -slim variant is made here")
    version = tag.removesuffix("-slim")
    release = ""
    numbered = re.fullmatch(r"(\d+)(?:\.(\d+))?", version)
    if numbered:
        suite = DEBIAN_CODENAMES.get(numbered.group(1), "")
        if not suite:
            raise ImageBuildError(
                f"FROM {image}: Debian {numbered.group(1)} is none of "
                f"{', '.join(f'{n} ({c})' for n, c in DEBIAN_CODENAMES.items())}"
            )
        release = version if numbered.group(2) is not None else ""
    else:
        dated = re.fullmatch(r"([a-z]+)(?:-\d{8})?", version)
        if dated is None or dated.group(1) not in DEBIAN_CODENAMES.values():
            raise ImageBuildError(f"FROM {image}: {version!r} names no known Debian release")
        suite = dated.group(1)
    return DebianBase(name=f"docker.io/library/debian:{tag}", suite=suite, release=release)


def debian_bases(dockerfile: Path) -> list[DebianBase]:
    """The Debian bases `dockerfile` starts from."""
    return [debian_base(image) for image in from_images(dockerfile.read_text())]


# --- running things -----------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run `argv` with its output in `log`; return the output, or raise with its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        start, started = out.tell(), time.monotonic()
        try:
            result = subprocess.run(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                check=False,
            )
        except OSError as exc:
            raise ImageBuildError(f"{shlex.join(argv)} could not start: {exc}") from exc
        out.write(f"# exit {result.returncode} after {time.monotonic() - started:.1f}s\n".encode())
    with open(log, "rb") as read:
        read.seek(start)
        output = read.read().decode(errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise ImageBuildError(
            f"{shlex.join(argv)} failed with exit code {result.returncode} "
            f"(full log: {log}):\n{tail}"
        )
    return output


def _require(tool: str, hint: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageBuildError(f"{tool} not found: {hint}")
    return found


class _Buildah:
    """buildah on the private storage under the cache, with config files of our own."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "storage"
        self.runroot = base / "run"
        self.config = base / "config"
        self.tmp = base / "tmp"
        self.logs = base / "logs"
        self.binary = _require("buildah", "install Debian's buildah (apt-get install buildah)")
        for directory in (self.root, self.runroot, self.config / "registries.conf.d", self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        files = {
            # Short names (FROM debian:trixie-slim) resolve to docker.io; nothing is pulled.
            "registries.conf": 'unqualified-search-registries = ["docker.io"]\n'
            'short-name-mode = "permissive"\n',
            "storage.conf": f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n',
            "containers.conf": f'[engine]\nimage_copy_tmp_dir = "{self.tmp}"\n',
            "policy.json": json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n",
        }
        for name, text in files.items():
            path = self.config / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)

    @property
    def policy(self) -> str:
        return f"--signature-policy={self.config / 'policy.json'}"

    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_REGISTRIES_CONF": str(self.config / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.config / "storage.conf"),
            "CONTAINERS_CONF": str(self.config / "containers.conf"),
            "TMPDIR": str(self.tmp),
        }

    def argv(self, *args: str) -> list[str]:
        return [
            self.binary,
            f"--root={self.root}",
            f"--runroot={self.runroot}",
            "--storage-driver=vfs",
            f"--registries-conf={self.config / 'registries.conf'}",
            f"--registries-conf-dir={self.config / 'registries.conf.d'}",
            *args,
        ]

    def fresh_log(self, log: str) -> None:
        (self.logs / f"{log}.log").unlink(missing_ok=True)

    def run(self, *args: str, log: str, cwd: Path | None = None) -> str:
        return _run(self.argv(*args), log=self.logs / f"{log}.log", env=self.env(), cwd=cwd)

    def has_image(self, name: str) -> bool:
        return self.labels(name) is not None

    def labels(self, name: str) -> dict[str, str] | None:
        """The image's labels, or None when the storage has no such image."""
        result = subprocess.run(
            self.argv("inspect", "--type=image", name),
            capture_output=True,
            env={**os.environ, **self.env()},
            check=False,
        )
        if result.returncode != 0:
            return None
        try:
            config = json.loads(result.stdout).get("OCIv1", {}).get("config", {})
        except ValueError:
            return {}
        return dict(config.get("Labels") or {})

    def remove_container(self, name: str) -> None:
        subprocess.run(
            self.argv("rm", name),
            capture_output=True,
            env={**os.environ, **self.env()},
            check=False,
        )

    @contextlib.contextmanager
    def scratch(self, name: str, log: str) -> Iterator[str]:
        """A working container FROM scratch, removed afterwards whatever happens."""
        self.remove_container(name)  # a leftover of an interrupted build
        self.run("from", self.policy, "--pull=never", f"--name={name}", "scratch", log=log)
        try:
            yield name
        finally:
            self.remove_container(name)

    def push_archive(self, image: str, target: Path, log: str) -> Path:
        """`image` as a docker-archive tar at `target` (written aside, then renamed)."""
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            self.run(
                "push", self.policy, "--quiet", image, f"docker-archive:{partial}:{image}", log=log
            )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target


@contextlib.contextmanager
def _build_lock() -> Iterator[_Buildah]:
    """One build at a time on this machine (a test run and `make` started together)."""
    base = images_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _clean_work_dirs(base / "work")  # what an interrupted build left behind
        absent = [path for path in _HOST_STATE_DIRS if not path.exists()]
        try:
            yield _Buildah(base)
        finally:
            # buildah's network layer makes its run directory even with --network=host.
            for path in absent:
                shutil.rmtree(path, ignore_errors=True)


def _remove_old_archives(base: Path, image: str, keep: Path) -> None:
    """Archives of `image` built from older inputs: never used again."""
    pattern = re.compile(re.escape(archive_name(image, "")[: -len(".tar")]) + r"[0-9a-f]{12}\.tar")
    for old in base.iterdir():
        if old != keep and pattern.fullmatch(old.name):
            old.unlink(missing_ok=True)


# --- mounts and temporary trees -----------------------------------------------------------------


def _release_mounts(path: Path) -> None:
    """Unmount everything at or below `path`; raise if something stays mounted."""
    real = path.resolve()
    for _ in range(3):
        mounted = mounts_under(real, Path("/proc/mounts").read_text())
        if not mounted:
            return
        for target in mounted:
            done = subprocess.run(["umount", str(target)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "--lazy", str(target)], capture_output=True, check=False)
    still = mounts_under(real, Path("/proc/mounts").read_text())
    if still:
        raise ImageBuildError(f"still mounted, not removing {path}: {', '.join(map(str, still))}")


def _remove_tree(path: Path) -> None:
    """rm -rf, but only once nothing is mounted below (never delete through a bind mount)."""
    if not path.exists():
        return
    _release_mounts(path)
    shutil.rmtree(path, ignore_errors=True)


def _clean_work_dirs(work: Path) -> None:
    if work.is_dir():
        for leftover in work.iterdir():
            _remove_tree(leftover)


# --- the Debian base ----------------------------------------------------------------------------


def ensure_debian_bases(dockerfile: Path = REPO_ROOT / "Dockerfile") -> list[str]:
    """Make (once) the Debian bases `dockerfile` names in the private buildah storage, from the
    Debian archive with debootstrap; return their names."""
    with _build_lock() as buildah:
        return _ensure_debian_bases(buildah, debian_bases(dockerfile))


BASE_RECIPE_LABEL = "dev.infisical-sync.base-recipe"


def _ensure_debian_bases(buildah: _Buildah, bases: Sequence[DebianBase]) -> list[str]:
    names = [_ensure_debian_base(buildah, base) for base in bases]
    _remove_other_bases(buildah, keep=names)
    return names


def _remove_other_bases(buildah: _Buildah, keep: Sequence[str]) -> None:
    """Bases an earlier Dockerfile pinned (a full rootfs each on vfs): untagged, so that the
    prune after the next build frees what no named image uses."""
    listing = subprocess.run(
        buildah.argv("images", "--json"),
        capture_output=True,
        env={**os.environ, **buildah.env()},
        check=False,
    )
    try:
        images = json.loads(listing.stdout or b"[]") if listing.returncode == 0 else []
    except ValueError:
        return
    for image in images:
        for name in image.get("names") or []:
            if name.startswith("docker.io/library/debian:") and name not in keep:
                try:
                    buildah.run("rmi", name, log="operator")
                except ImageBuildError as exc:  # housekeeping only: the build goes on
                    _progress(f"could not remove the old base {name}: {exc}")


def point_release_note(base: DebianBase, built: str) -> str:
    """What to tell when the archive's point release is not the one the tag pins (the archive
    keeps only the latest of a release): empty when they agree or the tag pins none."""
    if not base.release or built == base.release:
        return ""
    if built.split(".")[0] != base.release.split(".")[0]:
        raise ImageBuildError(f"{base.name}: debootstrap {base.suite} installed Debian {built}")
    return (
        f"{base.name} pins Debian {base.release}; the archive serves {built} now, so the local "
        f"base is {built} under the pinned name (update the Dockerfile's FROM to {built})"
    )


def _ensure_debian_base(buildah: _Buildah, base: DebianBase) -> str:
    name, suite = base.name, base.suite
    recipe = base_recipe_key(suite)
    if (buildah.labels(name) or {}).get(BASE_RECIPE_LABEL) == recipe:
        return name
    debootstrap = _require("debootstrap", "install Debian's debootstrap (apt-get install ...)")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root to build the Debian base image")
    work = buildah.base / "work"
    work.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"debian-{suite}-", dir=work))
    rootfs = workdir / "rootfs"
    log = f"debian-{suite}"
    buildah.fresh_log(log)
    _progress(f"building {name} with debootstrap from {DEBIAN_MIRROR} (first run only)...")
    started = time.monotonic()
    try:
        _run(
            [debootstrap, "--variant=minbase", suite, str(rootfs), DEBIAN_MIRROR],
            log=buildah.logs / f"{log}.log",
        )
        _release_mounts(rootfs)  # debootstrap unmounts on success; make sure of it
        built = (rootfs / "etc/debian_version").read_text().strip()
        note = point_release_note(base, built)
        if note:
            _progress(note)
        _slim_rootfs(rootfs, suite)
        archive = workdir / "rootfs.tar"
        _run(
            [
                "tar",
                "--create",
                f"--file={archive}",
                f"--directory={rootfs}",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                # Filled by the container runtime, not by the image.
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                ".",
            ],
            log=buildah.logs / f"{log}.log",
        )
        with buildah.scratch(f"infisical-sync-debian-{suite}", log) as container:
            buildah.run("add", container, str(archive), "/", log=log)
            buildah.run(
                "config",
                '--cmd=["bash"]',
                f"--env=PATH={_IMAGE_PATH}",
                f"--label=org.opencontainers.image.description=debootstrap {suite} minbase, slim",
                f"--label=org.opencontainers.image.version={built}",
                f"--label={BASE_RECIPE_LABEL}={recipe}",
                container,
                log=log,
            )
            buildah.run("commit", buildah.policy, "--quiet", container, name, log=log)
    finally:
        _remove_tree(workdir)
    _progress(f"built {name} in {time.monotonic() - started:.0f}s")
    return name


def _slim_rootfs(rootfs: Path, suite: str) -> None:
    """What debuerreotype does to the official -slim images: keep docs, man pages and locales
    out now and in later apt-get installs (dpkg path-exclude), apt caches clean, no services."""
    dpkg_cfg = rootfs / "etc/dpkg/dpkg.cfg.d"
    dpkg_cfg.mkdir(parents=True, exist_ok=True)
    (dpkg_cfg / "docker").write_text(
        '# The "slim" variant: files unnecessary in containers stay out.\n'
        + "".join(f"path-exclude {pattern}\n" for pattern in _SLIM_EXCLUDES)
        + "".join(f"path-include {pattern}\n" for pattern in _SLIM_INCLUDES)
    )
    (dpkg_cfg / "docker-apt-speedup").write_text("force-unsafe-io\n")
    apt_conf = rootfs / "etc/apt/apt.conf.d"
    apt_conf.mkdir(parents=True, exist_ok=True)
    clean = (
        '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true";'
    )
    (apt_conf / "docker-clean").write_text(
        f"DPkg::Post-Invoke {{ {clean} }};\nAPT::Update::Post-Invoke {{ {clean} }};\n"
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    (apt_conf / "docker-gzip-indexes").write_text('Acquire::GzipIndexes "true";\n')
    (apt_conf / "docker-no-languages").write_text('Acquire::Languages "none";\n')
    (apt_conf / "docker-autoremove-suggests").write_text(
        'Apt::AutoRemove::SuggestsImportant "false";\n'
    )
    policy_rc = rootfs / "usr/sbin/policy-rc.d"
    policy_rc.write_text("#!/bin/sh\n# No services start during image builds.\nexit 101\n")
    policy_rc.chmod(0o755)

    for pattern in _SLIM_EXCLUDES:
        _prune_matching(rootfs, pattern)

    sources_dir = rootfs / "etc/apt/sources.list.d"
    sources_dir.mkdir(parents=True, exist_ok=True)
    (sources_dir / "debian.sources").write_text(debian_sources(suite))
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    if not (rootfs / DEBIAN_KEYRING.lstrip("/")).exists():
        raise ImageBuildError(f"{DEBIAN_KEYRING} missing from the {suite} rootfs")

    # Host-specific or build-time files debootstrap leaves (the runtime provides its own).
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    for relative in (
        "var/log/dpkg.log",
        "var/log/bootstrap.log",
        "var/log/alternatives.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/cache/ldconfig/aux-cache",
        "run/mount/utab",
    ):
        (rootfs / relative).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (rootfs / "run/mount").rmdir()  # only when empty
    for relative in ("var/cache/apt", "var/lib/apt/lists"):
        for path in (rootfs / relative).rglob("*"):
            if path.is_file() or path.is_symlink():
                path.unlink()
    rootfs.chmod(0o755)


def _prune_matching(rootfs: Path, pattern: str) -> None:
    """Remove files matching an exclude pattern (`/dir/*`) but not an include, then the empty
    directories and dangling symlinks that leaves, like `find -path` with dpkg's filters."""
    top = rootfs / pattern.removesuffix("/*").lstrip("/")
    if not top.is_dir():
        return
    includes = [re.compile(_glob_regex(include)) for include in _SLIM_INCLUDES]

    def kept(path: Path) -> bool:
        inside = "/" + path.relative_to(rootfs).as_posix()
        return any(regex.fullmatch(inside) for regex in includes)

    for path in top.rglob("*"):
        if not path.is_symlink() and not path.is_dir() and not kept(path):
            path.unlink()
    changed = True
    while changed:
        changed = False
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() and not exists_in_root(rootfs, path):
                path.unlink()
                changed = True
            elif path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
                changed = True


def exists_in_root(root: Path, path: Path) -> bool:
    """Whether `path` (below `root`) exists when symlinks are followed as if `root` were `/`:
    an absolute link in a rootfs points into the rootfs, never to the host."""
    parts = list(path.relative_to(root).parts)
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current[:-1]
            continue
        host = root.joinpath(*current, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:  # a loop, like ELOOP
                return False
            target = os.readlink(host)
            if target.startswith("/"):
                current = []
            parts = [*target.split("/"), *parts]
            continue
        if not host.exists():
            return False
        current.append(part)
    return True


def _glob_regex(pattern: str) -> str:
    """A dpkg/find -path glob as a regex (`*` also matches `/`, as in both tools)."""
    return "".join(".*" if char == "*" else re.escape(char) for char in pattern)


# --- the operator image -------------------------------------------------------------------------


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's Python tools trust (it may hold a TLS-intercepting proxy's CA,
    which pip's own bundle in the build stage lacks)."""
    candidates = [os.environ.get(name) for name in ("PIP_CERT", "SSL_CERT_FILE")]
    candidates += [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _build_ca_args(directory: Path) -> list[str]:
    """bud flags handing the host's CA bundle to pip in the Dockerfile's build stage only (its
    `ARG PIP_CERT`), at /mnt: a directory every Debian image has, so no empty mount point is
    left in a layer."""
    bundle = host_ca_bundle()
    if bundle is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, directory / "ca.crt")
    return [f"--volume={directory}:/mnt:ro", "--build-arg=PIP_CERT=/mnt/ca.crt"]


def ensure_operator_image(tag: str = OPERATOR_IMAGE) -> Path:
    """Build the repo's Dockerfile (when its inputs changed) and return a docker-archive tar of
    it, named `tag`, for `ctr images import`."""
    base = images_dir()
    target = base / archive_name(tag, operator_image_key(REPO_ROOT, tag))
    if target.exists():
        return target
    with _build_lock() as buildah:
        if target.exists():
            return target
        _ensure_debian_bases(buildah, debian_bases(REPO_ROOT / "Dockerfile"))
        _progress(f"building {tag} from {REPO_ROOT / 'Dockerfile'} with buildah...")
        started = time.monotonic()
        buildah.fresh_log("operator")
        bud = [
            "bud",
            buildah.policy,
            *_build_ca_args(buildah.base / "build-ca"),
            "--layers",
            "--pull=never",
            "--force-rm",
            f"--isolation={ISOLATION}",
            # runc keeps its state under our run root, not in the machine's /run/runc.
            f"--runtime-flag=root={buildah.runroot / 'runc'}",
            "--network=host",
            f"--file={REPO_ROOT / 'Dockerfile'}",
        ]
        # The build stage gets a name of its own, so that pruning below keeps its cached layers
        # (the dependency install) for the next source change; the second run reuses them.
        buildah.run(
            *bud,
            f"--target={BUILD_STAGE}",
            f"--tag={BUILD_STAGE_IMAGE}",
            ".",
            log="operator",
            cwd=REPO_ROOT,
        )
        buildah.run(*bud, f"--tag={tag}", ".", log="operator", cwd=REPO_ROOT)
        buildah.push_archive(tag, target, log="operator")
        _remove_old_archives(base, tag, target)
        # Unnamed images (earlier builds, their layers) go; whatever a named image uses stays.
        buildah.run("rmi", "--prune", log="operator")
        _progress(f"built {tag} in {time.monotonic() - started:.0f}s: {target}")
    return target


# --- the pause image ----------------------------------------------------------------------------


def ensure_pause_image(name: str = PAUSE_IMAGE) -> Path:
    """Build (once) the CRI sandbox image `name` from tests/controlplane/pause and return its
    docker-archive tar."""
    base = images_dir()
    target = base / archive_name(name, pause_image_key(PAUSE_MODULE_DIR, name))
    if target.exists():
        return target
    with _build_lock() as buildah:
        if target.exists():
            return target
        go = _require("go", "the Go toolchain is needed to build the pause program")
        _progress(f"building {name} from {PAUSE_MODULE_DIR}...")
        started = time.monotonic()
        buildah.fresh_log("pause")
        work = buildah.base / "work"
        work.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="pause-", dir=work))
        try:
            binary = workdir / "pause"
            _run(
                [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
                log=buildah.logs / "pause.log",
                env={"CGO_ENABLED": "0"},
                cwd=PAUSE_MODULE_DIR,
            )
            with buildah.scratch("infisical-sync-pause", "pause") as container:
                buildah.run("copy", container, str(binary), "/pause", log="pause")
                buildah.run(
                    "config",
                    '--entrypoint=["/pause"]',
                    "--user=65535:65535",
                    container,
                    log="pause",
                )
                buildah.run("commit", buildah.policy, "--quiet", container, name, log="pause")
            buildah.push_archive(name, target, log="pause")
        finally:
            _remove_tree(workdir)
        _remove_old_archives(base, name, target)
        _progress(f"built {name} in {time.monotonic() - started:.0f}s: {target}")
    return target


def main() -> None:
    """`python -m infisical_sync.testing.images`: build all three, print the archives."""
    ensure_debian_bases()
    for archive in (ensure_operator_image(), ensure_pause_image()):
        print(archive)


if __name__ == "__main__":
    main()
