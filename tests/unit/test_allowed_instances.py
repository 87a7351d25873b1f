"""The operator-wide allow-list of Infisical instance URLs, and that it is enforced before any
Secret is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from pydantic import ValidationError

from infisical_sync import cli
from infisical_sync.config import Settings
from infisical_sync.connection import ConnectionReconciler
from infisical_sync.infisical.client import ClientPool
from infisical_sync.infisical.transport import TransportOptions
from infisical_sync.instance_urls import AllowedInstances
from infisical_sync.kube import Kube, SecretData
from infisical_sync.sync import SyncEngine
from infisical_sync.testing.fake_infisical import FakeInfisical

CLIENT_ID = "33333333-3333-4333-8333-333333333333"
CANARY_SECRET = "canary-allowlist-secret-1f3870be"
FAST = TransportOptions(max_attempts=1, request_timeout=2)

# --- the matching rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("https://app.infisical.com", "https://app.infisical.com"),
        ("https://app.infisical.com", "https://app.infisical.com/"),
        ("https://app.infisical.com/", "https://app.infisical.com"),
        ("https://app.infisical.com", "HTTPS://App.Infisical.COM"),
        ("https://app.infisical.com", "https://app.infisical.com:443"),
        ("https://app.infisical.com", "https://app.infisical.com/any/path"),  # no path: any
        ("https://app.infisical.com:443/", "https://app.infisical.com"),
        ("http://127.0.0.1:8088", "http://127.0.0.1:8088/"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("https://infisical.example.com/base", "https://infisical.example.com/base/"),
        ("https://infisical.example.com/base/", "https://infisical.example.com/base/v2"),
    ],
)
def test_allowed(entry: str, url: str) -> None:
    assert AllowedInstances.from_urls([entry]).allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://app.infisical.com.evil.example",  # a longer host is another host
        "https://evil-app.infisical.com",
        "https://xapp.infisical.com",
        "https://app.infisical.com.",
        "https://app.infisical.com@evil.example",  # user info: the host is evil.example
        "https://app.infisical.com:443@evil.example",
        "https://evil.example/https://app.infisical.com",
        "https://evil.example?https://app.infisical.com",
        "https://evil.example#https://app.infisical.com",
        "https://app.infisical.com:8443",
        "http://app.infisical.com",
        "https://app.infisical.com\\.evil.example",
        "https://app.infisical.com%2eevil.example",
        "https://app.infisical.com\t.evil.example",
        "https://app.infisical.com /",
        "app.infisical.com",
        "",
    ],
)
def test_not_allowed(url: str) -> None:
    assert not AllowedInstances.from_urls(["https://app.infisical.com"]).allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://infisical.example.com",
        "https://infisical.example.com/",
        "https://infisical.example.com/basement",  # prefixes compare whole path segments
        "https://infisical.example.com/other/base",
        "https://infisical.example.com/base/../elsewhere",
        "https://infisical.example.com/base/%2e%2e/elsewhere",
        "https://infisical.example.com/base?x=1",
    ],
)
def test_path_prefix_is_by_segment(url: str) -> None:
    assert not AllowedInstances.from_urls(["https://infisical.example.com/base"]).allows(url)


def test_an_empty_list_allows_any_url() -> None:
    anything = AllowedInstances.from_urls([])
    assert anything.allows("https://anywhere.example") and anything.allows("not even a url")


@pytest.mark.parametrize(
    "entry",
    [
        "app.infisical.com",
        "ftp://app.infisical.com",
        "https://",
        "https://user@app.infisical.com",
        "https://app.infisical.com?x=1",
        "https://app.infisical.com#x",
        "https://app.infisical.com/a/../b",
        "https://app.infisical.com:99999",
        "https://*.infisical.com",
    ],
)
def test_a_bad_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed instance URL"):
        AllowedInstances.from_urls([entry])


# --- configuration: flag, environment ----------------------------------------------------------


def test_settings_from_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env(
        {"INFISICAL_SYNC_ALLOWED_INSTANCE_URLS": "https://app.infisical.com/, https://a.example"}
    )
    assert settings.allowed_instance_urls == ["https://app.infisical.com", "https://a.example"]
    assert settings.allowed_instances.allows("https://a.example/")
    assert Settings().allowed_instances.allows("https://anywhere.example")
    with pytest.raises(ValidationError, match="allowed instance URL"):
        Settings.from_env({"INFISICAL_SYNC_ALLOWED_INSTANCE_URLS": "app.infisical.com"})

    seen: list[Settings] = []
    monkeypatch.setattr("infisical_sync.app.run_operator", lambda s: seen.append(s) or 0)
    monkeypatch.setenv("INFISICAL_SYNC_ALLOWED_INSTANCE_URLS", "https://from-env.example")
    argv = ["run", "--allowed-instance-url", "https://b.example", "--allowed-instance-url"]
    assert cli.main([*argv, "https://c.example:8443/infisical"]) == 0
    assert seen[0].allowed_instance_urls == [
        "https://b.example",
        "https://c.example:8443/infisical",
    ]  # the flags replace the environment's list, as for --namespace
    with pytest.raises(SystemExit):
        cli.main(["run", "--allowed-instance-url", "https://app.infisical.com.evil/../x"])


# --- enforcement: before any Secret is read ----------------------------------------------------


class RecordingKube:
    """Secrets in memory; records every Secret read and status patch."""

    def __init__(self, secrets: dict[str, dict[str, bytes]]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []
        self.statuses: dict[str, dict[str, Any]] = {}

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        self.reads.append(name)
        data = self.secrets.get(name)
        return None if data is None else SecretData(name, dict(data), "1", {})

    async def list_secrets(self, namespace: str, label_selector: str) -> list[SecretData]:
        self.reads.append(f"selector {label_selector}")
        return []

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> bool:
        self.statuses[f"{plural}/{name}"] = status
        return True


def connection(url: str, secret: str = "identity") -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {
            "instanceUrl": url,
            "allowInsecureHttp": True,
            "credentials": {"secretRef": {"name": secret}},
        },
    }


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    pool = ClientPool(FAST)
    yield pool
    await pool.aclose()


def reconciler(kube: RecordingKube, pool: ClientPool, *allowed: str) -> ConnectionReconciler:
    return ConnectionReconciler(
        cast(Kube, kube),
        pool,
        post_event=lambda *_: None,
        allowed_instances=AllowedInstances.from_urls(allowed),
    )


async def test_a_connection_to_another_instance_reads_no_secret(pool: ClientPool) -> None:
    kube = RecordingKube({})  # the credentials Secret does not even exist
    connections = reconciler(kube, pool, "https://app.infisical.com")
    body = connection("https://app.infisical.com.evil.example")
    outcome, _ = await connections.reconcile("ns", "conn", body, force_login=True)
    assert (outcome.ready, outcome.reason) == (False, "InstanceNotAllowed")
    assert outcome.credentials_status == "Unknown"  # the credentials were never looked at
    assert "https://app.infisical.com.evil.example" in outcome.message
    assert "https://app.infisical.com" in outcome.message.split("allowed")[-1]
    assert kube.reads == []
    ready = {c["type"]: c for c in kube.statuses["infisicalconnections/conn"]["conditions"]}
    assert (ready["Ready"]["status"], ready["Ready"]["reason"]) == ("False", "InstanceNotAllowed")
    assert connections.session("ns", "conn") is None

    # An allowed URL goes on to read its credentials Secret.
    allowed = await connections.validate(
        "ns", "conn", connection("https://app.infisical.com/")["spec"], force_login=True
    )
    assert (allowed.reason, kube.reads) == ("SecretNotFound", ["identity"])


def sync_body(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1, "uid": "u-1"},
        "spec": {
            "source": source,
            "destination": {
                "connectionRef": {"name": "dest"},
                "projectId": "p-1",
                "environment": "prod",
            },
        },
    }


async def test_a_sync_to_a_connection_not_allowed_reads_no_source(pool: ClientPool) -> None:
    kube = RecordingKube(
        {"identity": {"clientId": b"id", "clientSecret": CANARY_SECRET.encode()}, "app": {}}
    )
    connections = reconciler(kube, pool, "https://app.infisical.com")
    await connections.reconcile(
        "ns", "dest", connection("https://exfiltrate.example"), force_login=True
    )
    engine = SyncEngine(cast(Kube, kube), connections, post_event=lambda *_: None, cluster_id="c")
    source = {"kubernetes": {"secrets": [{"name": "app"}], "selector": {"matchLabels": {"a": "b"}}}}
    result = await engine.run("ns", "sync", sync_body(source))
    assert kube.reads == []
    conditions = {c["type"]: (c["status"], c["reason"]) for c in result.status["conditions"]}
    assert conditions["DestinationReady"] == ("False", "ConnectionNotReady")
    assert "InstanceNotAllowed" in result.status["lastSyncMessage"]


async def test_an_infisical_source_on_a_connection_not_allowed_is_not_read(
    pool: ClientPool,
) -> None:
    async with FakeInfisical() as fake:
        fake.state.add_project("payments", project_id="p-1")
        fake.state.add_identity(CLIENT_ID, CANARY_SECRET, projects={"p-1": {}})
        kube = RecordingKube(
            {
                "identity": {
                    "clientId": CLIENT_ID.encode(),
                    "clientSecret": CANARY_SECRET.encode(),
                },
                "source-identity": {"clientId": b"x", "clientSecret": b"y"},
            }
        )
        connections = reconciler(kube, pool, fake.url)
        dest, _ = await connections.reconcile("ns", "dest", connection(fake.url), force_login=True)
        assert dest.ready, dest.message
        other = connection("https://other.example", secret="source-identity")
        await connections.reconcile("ns", "cloud", other, force_login=True)
        engine = SyncEngine(
            cast(Kube, kube), connections, post_event=lambda *_: None, cluster_id="c"
        )
        source = {
            "infisical": {
                "connectionRef": {"name": "cloud"},
                "projectSlug": "app",
                "environment": "prod",
            }
        }
        result = await engine.run("ns", "sync", sync_body(source))
        assert "source-identity" not in kube.reads
        conditions = {c["type"]: (c["status"], c["reason"]) for c in result.status["conditions"]}
        assert conditions["SourceReady"] == ("False", "ConnectionNotReady")
        assert fake.state.get_secrets("p-1", "prod", "/") == {}
