"""Runs the Argo CD health checks in deploy/argocd/ with a real Lua 5.1 (Argo CD's gopher-lua
is Lua 5.1): `obj` is the object as Argo CD hands it over, JSON turned into Lua tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

ARGOCD = Path(__file__).resolve().parents[1] / "deploy" / "argocd"
SCRIPTS = {
    "SecretSync": ARGOCD / "health-secretsync.lua",
    "InfisicalConnection": ARGOCD / "health-infisicalconnection.lua",
    "ClusterInfisicalConnection": ARGOCD / "health-clusterinfisicalconnection.lua",
}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({key: _to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, item) for item in value])
    return value


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of `obj` by the health check of its kind."""
    runtime = lua51.LuaRuntime()
    # Argo CD runs health checks without os, io or require: the scripts must not need them.
    for name in ("os", "io", "require", "dofile", "loadfile"):
        runtime.globals()[name] = None
    runtime.globals()["obj"] = _to_lua(runtime, obj)
    result = runtime.execute(SCRIPTS[obj["kind"]].read_text())
    return str(result["status"]), str(result["message"])
