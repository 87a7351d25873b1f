"""The architecture, enforced: kopf only in the composition root, a pure core without I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "operator" / "infisical_sync"
PURE = [
    "planner.py",
    "conditions.py",
    "durations.py",
    "selectors.py",
    "resources.py",
    "instance_urls.py",
    "sync_status.py",
    "approvals.py",
    "ledger.py",
    "lease.py",
    "fence.py",
    "shards.py",
    "references.py",
]
IO_LIBRARIES = {
    "kopf",
    "kubernetes",
    "httpx",
    "aiohttp",
    "asyncio",
    "socket",
    "subprocess",
    "urllib",
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_core_has_no_io(name: str) -> None:
    roots = {module.split(".")[0] for module in imports(PACKAGE / name)}
    assert not roots & IO_LIBRARIES
    assert not {m for m in imports(PACKAGE / name) if m.startswith("infisical_sync.")} - {
        f"infisical_sync.{p.removesuffix('.py')}" for p in PURE
    }


def test_kopf_is_imported_only_by_the_composition_root() -> None:
    users = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(module.split(".")[0] == "kopf" for module in imports(path))
    )
    assert users == ["app.py"]


def test_the_operator_does_not_import_the_test_doubles() -> None:
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("testing",) or relative.name in ("demo.py", "cli.py"):
            continue  # the CLI reaches the fake and the control plane lazily, by subcommand
        assert not [m for m in imports(path) if m.startswith("infisical_sync.testing")], relative


def test_kopf_handlers_run_on_the_event_loop() -> None:
    """kopf runs plain functions in threads; the runtime's asyncio objects need the loop."""
    tree = ast.parse((PACKAGE / "app.py").read_text())
    plain = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any("kopf." in ast.unparse(decorator) for decorator in node.decorator_list)
    ]
    assert plain == ["login"]  # reads kubeconfig files only


def test_test_modules_have_unique_names() -> None:
    """tests/unit and tests/integration are not packages: two modules of one name make a
    whole-suite run fail at collection (each directory alone still passes)."""
    names = [path.name for path in (PACKAGE.parents[1] / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
