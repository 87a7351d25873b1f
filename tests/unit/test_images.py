"""The pure parts of the image builder: cache keys, archive names, mounts, the rootfs helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from infisical_sync.testing.images import (
    DebianBase,
    ImageBuildError,
    archive_name,
    debian_base,
    debian_bases,
    debian_sources,
    exists_in_root,
    from_images,
    mounts_under,
    operator_image_key,
    pause_image_key,
    point_release_note,
)

ROOT = Path(__file__).parents[2]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM debian:trixie-slim\n")
    (tmp_path / ".dockerignore").write_text("tests\n")
    (tmp_path / "requirements.lock").write_text("x==1 --hash=sha256:00\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "README.md").write_text("# x\n")
    package = tmp_path / "operator" / "infisical_sync"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("VALUE = 1\n")
    return tmp_path


def test_operator_key_changes_with_a_source_file(repo: Path) -> None:
    before = operator_image_key(repo)
    assert operator_image_key(repo) == before  # stable
    (repo / "operator" / "infisical_sync" / "app.py").write_text("VALUE = 2\n")
    assert operator_image_key(repo) != before


@pytest.mark.parametrize(
    "name", ["Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md"]
)
def test_operator_key_changes_with_the_build_files(repo: Path, name: str) -> None:
    before = operator_image_key(repo)
    with open(repo / name, "a") as file:
        file.write("\n# changed\n")
    assert operator_image_key(repo) != before


def test_operator_key_sees_new_and_renamed_files(repo: Path) -> None:
    package = repo / "operator" / "infisical_sync"
    before = operator_image_key(repo)
    (package / "new.py").write_text("")
    added = operator_image_key(repo)
    assert added != before
    (package / "new.py").rename(package / "other.py")
    assert operator_image_key(repo) not in (before, added)


def test_operator_key_ignores_bytecode_and_egg_info(repo: Path) -> None:
    before = operator_image_key(repo)
    cache = repo / "operator" / "infisical_sync" / "__pycache__"
    cache.mkdir()
    (cache / "app.cpython-313.pyc").write_bytes(b"\x00bytecode")
    (repo / "operator" / "infisical_sync" / "stray.pyc").write_bytes(b"\x00")
    egg = repo / "operator" / "infisical_sync.egg-info"
    egg.mkdir()
    (egg / "SOURCES.txt").write_text("operator/infisical_sync/app.py\n")
    assert operator_image_key(repo) == before


def test_operator_key_ignores_files_outside_the_context(repo: Path) -> None:
    before = operator_image_key(repo)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("")
    (repo / "Makefile").write_text("all:\n")
    assert operator_image_key(repo) == before


def test_operator_key_ignores_what_dockerignore_keeps_out_of_the_image(repo: Path) -> None:
    before = operator_image_key(repo)
    testing = repo / "operator" / "infisical_sync" / "testing"
    testing.mkdir()
    (testing / "fake.py").write_text("FAKE = 1\n")
    (repo / "operator" / "infisical_sync" / "demo.py").write_text("DEMO = 1\n")
    assert operator_image_key(repo) == before
    ignored = (Path(__file__).parents[2] / ".dockerignore").read_text().splitlines()
    assert "operator/infisical_sync/testing" in ignored
    assert "operator/infisical_sync/demo.py" in ignored


def test_operator_key_depends_on_the_tag(repo: Path) -> None:
    assert operator_image_key(repo, "localhost/a:1") != operator_image_key(repo, "localhost/a:2")


def test_pause_key_follows_the_go_sources(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module infisical-sync.dev/pause\n")
    (tmp_path / "main.go").write_text("package main\n")
    before = pause_image_key(tmp_path)
    (tmp_path / "notes.txt").write_text("not a build input")
    assert pause_image_key(tmp_path) == before
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    assert pause_image_key(tmp_path) != before
    assert pause_image_key(tmp_path, "registry.k8s.io/pause:3.9") != pause_image_key(tmp_path)


def test_archive_name_is_a_plain_file_name() -> None:
    assert archive_name("registry.k8s.io/pause:3.10", "abc") == "registry.k8s.io_pause_3.10-abc.tar"
    assert "/" not in archive_name("localhost/infisical-sync:test", "k")


def test_mounts_under_finds_nested_and_escaped_mount_points_deepest_first() -> None:
    proc_mounts = "\n".join(
        [
            "/dev/vda / ext4 rw 0 0",
            "proc /work/root/rootfs/proc proc rw 0 0",
            "sysfs /work/root/rootfs/sys sysfs rw 0 0",
            "devpts /work/root/rootfs/dev/pts devpts rw 0 0",
            r"tmpfs /work/root/rootfs/with\040space tmpfs rw 0 0",
            "tmpfs /work/root/rootfs-other tmpfs rw 0 0",
            "tmpfs /work/root tmpfs rw 0 0",
        ]
    )
    found = mounts_under(Path("/work/root/rootfs"), proc_mounts)
    assert found[0] == Path("/work/root/rootfs/dev/pts")
    assert set(found) == {
        Path("/work/root/rootfs/proc"),
        Path("/work/root/rootfs/sys"),
        Path("/work/root/rootfs/dev/pts"),
        Path("/work/root/rootfs/with space"),
    }
    assert mounts_under(Path("/elsewhere"), proc_mounts) == []


def test_exists_in_root_resolves_absolute_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc" / "alternatives").mkdir(parents=True)
    (root / "usr" / "share" / "man" / "man1").mkdir(parents=True)
    man1 = root / "usr" / "share" / "man" / "man1"
    # awk.1.gz -> /etc/alternatives/awk.1.gz -> /usr/share/man/man1/mawk.1.gz (deleted)
    (root / "etc" / "alternatives" / "awk.1.gz").symlink_to("/usr/share/man/man1/mawk.1.gz")
    (man1 / "awk.1.gz").symlink_to("/etc/alternatives/awk.1.gz")
    assert not exists_in_root(root, man1 / "awk.1.gz")
    (man1 / "mawk.1.gz").write_bytes(b"")
    assert exists_in_root(root, man1 / "awk.1.gz")
    # A relative link, and a loop.
    (man1 / "rel.1.gz").symlink_to("mawk.1.gz")
    assert exists_in_root(root, man1 / "rel.1.gz")
    (man1 / "loop").symlink_to("loop")
    assert not exists_in_root(root, man1 / "loop")
    # `..` never climbs out of the root.
    (man1 / "up").symlink_to("../../../../../../../../etc/alternatives")
    assert exists_in_root(root, man1 / "up")


def test_debian_sources_are_deb822_with_security_and_updates() -> None:
    text = debian_sources("trixie")
    stanzas = [stanza.splitlines() for stanza in text.strip().split("\n\n")]
    assert len(stanzas) == 2
    assert "Suites: trixie trixie-updates" in stanzas[0]
    assert "URIs: http://deb.debian.org/debian" in stanzas[0]
    assert "Suites: trixie-security" in stanzas[1]
    assert "URIs: http://deb.debian.org/debian-security" in stanzas[1]
    for stanza in stanzas:
        assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in stanza
        assert "Types: deb" in stanza


def test_slimming_keeps_copyrights_and_drops_docs_man_pages_and_apt_state(tmp_path: Path) -> None:
    from infisical_sync.testing.images import _slim_rootfs

    root = tmp_path / "rootfs"
    files = {
        "usr/share/keyrings/debian-archive-keyring.gpg": "keys",
        "usr/share/doc/bash/copyright": "GPL",
        "usr/share/doc/bash/README.gz": "docs",
        "usr/share/doc/bash/examples/x.sh": "docs",
        "usr/share/man/man1/mawk.1.gz": "man",
        "usr/share/locale/de/LC_MESSAGES/apt.mo": "de",
        "etc/apt/sources.list": "deb http://deb.debian.org/debian trixie main\n",
        "var/lib/apt/lists/deb.debian.org_dists_trixie_InRelease": "lists",
        "var/cache/apt/pkgcache.bin": "cache",
        "var/log/dpkg.log": "log",
        "usr/bin/bash": "ELF",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "etc/alternatives/awk.1.gz").symlink_to("/usr/share/man/man1/mawk.1.gz")
    (root / "usr/share/man/man1/awk.1.gz").symlink_to("/etc/alternatives/awk.1.gz")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var/lib/apt/lists/partial").mkdir()

    _slim_rootfs(root, "trixie")

    assert (root / "usr/share/doc/bash/copyright").read_text() == "GPL"
    assert sorted(p.name for p in (root / "usr/share/doc").rglob("*")) == ["bash", "copyright"]
    assert list((root / "usr/share/man").iterdir()) == []
    assert list((root / "usr/share/locale").iterdir()) == []
    assert (root / "usr/bin/bash").exists()
    assert not (root / "etc/apt/sources.list").exists()
    assert "trixie-security" in (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert not (root / "var/lib/apt/lists/deb.debian.org_dists_trixie_InRelease").exists()
    assert (root / "var/lib/apt/lists/partial").is_dir()
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert not (root / "var/log/dpkg.log").exists()
    dpkg_cfg = (root / "etc/dpkg/dpkg.cfg.d/docker").read_text()
    assert "path-exclude /usr/share/doc/*" in dpkg_cfg
    assert "path-include /usr/share/doc/*/copyright" in dpkg_cfg
    assert (root / "usr/sbin/policy-rc.d").stat().st_mode & 0o111


def test_from_images_skips_stages_and_scratch_and_reads_flags() -> None:
    dockerfile = """# syntax=docker/dockerfile:1
FROM --platform=linux/amd64 debian:13.8-slim AS build
RUN echo from debian:12-slim  # not a FROM line
from debian:13.8-slim as Runtime
FROM build AS again
FROM runtime
FROM scratch
FROM docker.io/library/debian:12.9-slim
"""
    assert from_images(dockerfile) == ["debian:13.8-slim", "docker.io/library/debian:12.9-slim"]


def test_from_images_refuses_what_it_cannot_resolve() -> None:
    with pytest.raises(ImageBuildError, match="build argument"):
        from_images("ARG BASE=debian:13.8-slim\nFROM ${BASE}\n")
    with pytest.raises(ImageBuildError, match="without an image"):
        from_images("FROM --platform=linux/amd64\n")


@pytest.mark.parametrize(
    ("image", "suite", "release"),
    [
        ("debian:13.8-slim", "trixie", "13.8"),
        ("debian:13-slim", "trixie", ""),
        ("debian:12.11-slim", "bookworm", "12.11"),
        ("debian:trixie-slim", "trixie", ""),
        ("debian:trixie-20251117-slim", "trixie", ""),
        ("docker.io/library/debian:13.8-slim", "trixie", "13.8"),
        ("library/debian:forky-slim", "forky", ""),
    ],
)
def test_debian_tags_map_to_a_debootstrap_suite(image: str, suite: str, release: str) -> None:
    base = debian_base(image)
    assert (base.suite, base.release) == (suite, release)
    # The name buildah gives the Dockerfile's short name, so that FROM finds the local base.
    assert base.name == "docker.io/library/debian:" + image.rsplit(":", 1)[1]


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("ubuntu:24.04", "only Debian"),
        ("quay.io/debian:13-slim", "only Debian"),
        ("debian:13.8", "-slim variant"),
        ("debian:99-slim", "Debian 99"),
        ("debian:sid-slim", "no known Debian release"),
        ("debian:trixie-2025-slim", "no known Debian release"),
    ],
)
def test_images_that_cannot_be_made_locally_are_refused(image: str, reason: str) -> None:
    with pytest.raises(ImageBuildError, match=reason):
        debian_base(image)


def test_the_dockerfile_pins_one_debian_point_release_for_both_stages() -> None:
    dockerfile = ROOT / "Dockerfile"
    assert len(from_images(dockerfile.read_text())) == 1, "both stages must name the same base"
    (base,) = debian_bases(dockerfile)
    assert base.release, f"{base.name}: pin a point release (debian:13.N-slim)"
    # trixie's python3 (3.13) is the Python `make lock` resolves for (tests/unit/test_release.py).
    assert base.suite == "trixie"


def test_a_point_release_newer_than_the_pin_is_told_not_failed() -> None:
    pinned = DebianBase("docker.io/library/debian:13.8-slim", "trixie", "13.8")
    assert point_release_note(pinned, "13.8") == ""
    note = point_release_note(pinned, "13.9")
    assert "13.9" in note and "13.8" in note
    assert (
        point_release_note(DebianBase("docker.io/library/debian:trixie-slim", "trixie", ""), "13.9")
        == ""
    )
    with pytest.raises(ImageBuildError, match=r"installed Debian 14\.1"):
        point_release_note(pinned, "14.1")


def test_a_changed_base_pin_changes_the_operator_key(repo: Path) -> None:
    before = operator_image_key(repo)
    (repo / "Dockerfile").write_text("FROM debian:12.11-slim\n")
    assert operator_image_key(repo) != before


def test_the_base_recipe_key_is_stable_and_per_suite() -> None:
    from infisical_sync.testing.images import base_recipe_key

    assert base_recipe_key("trixie") == base_recipe_key("trixie")
    assert base_recipe_key("trixie") != base_recipe_key("forky")


def test_a_changed_slimming_recipe_changes_both_keys(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infisical_sync.testing import images

    base, operator = images.base_recipe_key("trixie"), operator_image_key(repo)
    monkeypatch.setattr(images, "_SLIM_EXCLUDES", (*images._SLIM_EXCLUDES, "/usr/share/extra/*"))
    assert images.base_recipe_key("trixie") != base
    assert operator_image_key(repo) != operator
