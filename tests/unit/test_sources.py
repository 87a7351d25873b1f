"""Reading sources: Infisical (imports, recursion, duplicates, hidden values, ETag reuse) and
merging Kubernetes Secrets (order, duplicates, what an unreadable Secret holds)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from infisical_sync.infisical.client import Credentials, InfisicalSession
from infisical_sync.infisical.models import RemoteSecret
from infisical_sync.infisical.transport import InstanceTransport
from infisical_sync.kube import SecretData
from infisical_sync.resources import InfisicalSource
from infisical_sync.sources import (
    InfisicalImportTarget,
    SecretRead,
    SourceResult,
    _add_remote,
    merge_kubernetes,
    read_infisical,
)
from infisical_sync.testing.fake_infisical import FakeInfisical


@pytest.fixture
async def session() -> AsyncIterator[tuple[FakeInfisical, InfisicalSession]]:
    async with FakeInfisical() as fake:
        fake.state.add_project("app", project_id="p-1")
        fake.state.add_identity("id", "secret", projects={"p-1": {}})
        transport = InstanceTransport(fake.url, allow_http=True)
        try:
            yield fake, InfisicalSession(transport, Credentials("id", SecretStr("secret")))
        finally:
            await transport.aclose()


def source(**extra: object) -> InfisicalSource:
    return InfisicalSource.model_validate(
        {"connectionRef": {"name": "cloud"}, "projectSlug": "app", "environment": "prod", **extra}
    )


async def test_imports_are_overridden_by_own_secrets(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.put_secret("p-1", "prod", "/", "OWN", "own")
    fake.state.put_secret("p-1", "prod", "/", "BOTH", "own-wins")
    fake.state.put_secret("p-1", "dev", "/shared", "BOTH", "imported")
    fake.state.put_secret("p-1", "dev", "/shared", "IMPORTED", "i")
    fake.state.projects["p-1"].environments["prod"].imports["/"] = [("dev", "/shared")]
    result = await read_infisical(
        client, "ns/cloud", source(includeImports=True), etag=None, cached=None
    )
    assert result.values == {"OWN": "own", "BOTH": "own-wins", "IMPORTED": "i"}
    assert result.certain and isinstance(result.import_target, InfisicalImportTarget)
    assert result.duplicates == ["BOTH in import dev:/shared and path / (path / wins)"]


async def test_recursive_reports_duplicates_and_cannot_import(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.put_secret("p-1", "prod", "/", "K", "root")
    fake.state.put_secret("p-1", "prod", "/a", "K", "nested")
    result = await read_infisical(
        client, "ns/cloud", source(recursive=True), etag=None, cached=None
    )
    assert result.values == {"K": "nested"}
    assert result.duplicates and result.import_target is None


async def test_etag_reuses_the_cached_source(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.put_secret("p-1", "prod", "/", "K", "v")
    first = await read_infisical(client, "ns/cloud", source(), etag=None, cached=None)
    again = await read_infisical(client, "ns/cloud", source(), etag=first.etag, cached=first.values)
    assert again.values == {"K": "v"}
    assert fake.count(r"/api/v4/secrets$", status=304) == 1


async def test_unreadable_source_is_uncertain(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    _, client = session
    missing = await read_infisical(
        client, "ns/cloud", source(secretPath="/nope"), etag=None, cached=None
    )
    assert not missing.certain and missing.problem_reason == "NotFound"
    not_ready = await read_infisical(None, "ns/cloud", source(), etag=None, cached=None)
    assert not_ready.problem_reason == "ConnectionNotReady" and not not_ready.values


async def test_references_are_read_expanded_by_default(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.put_secret("p-1", "prod", "/", "URL", "https://${HOST}/${prod.apps.payments.DB}")
    fake.state.put_secret("p-1", "prod", "/", "HOST", "api.internal")
    fake.state.put_secret("p-1", "prod", "/apps/payments", "DB", "db1")
    result = await read_infisical(client, "ns/cloud", source(), etag=None, cached=None)
    assert result.values["URL"] == "https://api.internal/db1"
    assert fake.log[-1].query["expandSecretReferences"] == "true"


async def test_references_are_copied_raw_when_expansion_is_off(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.put_secret("p-1", "prod", "/", "URL", "https://${HOST}")
    fake.state.put_secret("p-1", "prod", "/", "HOST", "api.internal")
    raw = source(expandSecretReferences=False)
    result = await read_infisical(client, "ns/cloud", raw, etag=None, cached=None)
    assert result.values["URL"] == "https://${HOST}"
    assert fake.log[-1].query["expandSecretReferences"] == "false"


async def test_a_reference_the_source_identity_may_not_read_makes_the_source_uncertain(
    session: tuple[FakeInfisical, InfisicalSession],
) -> None:
    fake, client = session
    fake.state.grant("id", "p-1", environments=["prod"])
    fake.state.put_secret("p-1", "prod", "/", "K", "${dev.K}")
    fake.state.put_secret("p-1", "dev", "/", "K", "canary-dev-value")
    result = await read_infisical(client, "ns/cloud", source(), etag=None, cached=None)
    assert not result.certain and result.problem_reason == "Forbidden" and not result.values
    assert "canary-dev-value" not in repr(result.problems)
    raw = source(expandSecretReferences=False)
    result = await read_infisical(client, "ns/cloud", raw, etag=None, cached=None)
    assert result.certain and result.values == {"K": "${dev.K}"}


# --- Kubernetes sources: merging what was read (pure) ------------------------------------------


def secret(name: str, **data: str) -> SecretData:
    return SecretData(name, {k: v.encode() for k, v in data.items()}, "1", {})


def test_later_secrets_win_and_duplicates_are_reported() -> None:
    result = merge_kubernetes(
        [
            SecretRead("Secret ns/a", secret("a", K="a", A="1")),
            SecretRead("Secret ns/b", secret("b", K="b")),
        ]
    )
    assert result.values == {"K": "b", "A": "1"} and result.certain
    assert result.duplicates == ["K in secret/a and secret/b (secret/b wins)"]


def test_an_unreadable_later_secret_holds_the_keys_it_may_override() -> None:
    result = merge_kubernetes(
        [SecretRead("Secret ns/a", secret("a", K="stale", A="1")), SecretRead("Secret ns/b", None)]
    )
    # b (all keys) could hold K or A: neither earlier value is pushed, and neither is deleted.
    assert result.values == {} and not result.certain
    assert result.keep == {"K", "A"}
    assert "Secret ns/b could not be read" in result.skipped["K"]
    assert result.problem_reason == "SecretNotFound"


def test_an_unreadable_secret_listed_with_keys_holds_only_those() -> None:
    result = merge_kubernetes(
        [
            SecretRead("Secret ns/a", secret("a", K="stale", A="1")),
            SecretRead(
                "Secret ns/b", None, ["K"], ("SourceError", "reading Secret ns/b failed: 500")
            ),
        ]
    )
    assert result.values == {"A": "1"} and result.keep == {"K"}
    assert result.problems == ["reading Secret ns/b failed: 500"]


def test_a_missing_listed_key_holds_the_earlier_value() -> None:
    result = merge_kubernetes(
        [
            SecretRead("Secret ns/a", secret("a", K="stale")),
            SecretRead("Secret ns/b", secret("b", OTHER="x"), ["K"]),
        ]
    )
    assert result.values == {} and result.keep == {"K"}
    assert result.problem_reason == "SecretKeyMissing"


def test_an_unreadable_earlier_secret_does_not_hold_later_winners() -> None:
    result = merge_kubernetes(
        [SecretRead("Secret ns/a", None), SecretRead("Secret ns/b", secret("b", K="b"))]
    )
    assert result.values == {"K": "b"} and not result.certain and not result.keep


def test_a_later_unsendable_value_does_not_let_an_earlier_one_through() -> None:
    result = merge_kubernetes(
        [
            SecretRead("Secret ns/a", secret("a", K="old")),
            SecretRead("Secret ns/b", SecretData("b", {"K": b"\xff\xfe"}, "1", {})),
        ]
    )
    assert result.values == {} and result.keep == {"K"}
    assert "not UTF-8" in result.skipped["K"]


def test_a_hidden_value_does_not_let_an_imported_one_through() -> None:
    result, origins = SourceResult(), {}  # type: ignore[var-annotated]
    imported = RemoteSecret.model_validate({"secretKey": "K", "secretValue": "imported"})
    own = RemoteSecret.model_validate(
        {"secretKey": "K", "secretValue": "<hidden>", "secretValueHidden": True}
    )
    _add_remote(result, origins, "import dev:/shared", imported)
    _add_remote(result, origins, "path /", own)
    assert "K" not in result.values and "K" in result.keep and not result.certain
