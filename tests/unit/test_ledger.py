"""The ownership ledger kept in a ConfigMap: its name, encoding, digest check, and the status
that names it."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import re
from typing import Any

import pytest

from infisical_sync import ledger
from infisical_sync.ledger import LedgerRef
from infisical_sync.planner import Plan
from infisical_sync.sync_status import SourceFacts, succeeded_status

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KEYS = [f"KEY_{i:04d}" for i in range(300)]


def body(keys: list[str], vouched: list[str] | None = None) -> dict[str, Any]:
    return ledger.configmap(
        namespace="ns",
        secretsync="sync",
        uid="uid-1",
        keys=keys,
        vouched=vouched,
        belongs_to="http://infisical p/prod:/",
    )


def ref_of(keys: list[str]) -> LedgerRef:
    return LedgerRef("sync-ledger", len(keys), ledger.digest(keys))


@pytest.mark.parametrize(
    "name",
    [
        "sync",
        "a" * 246,
        "a" * 247,
        "a" * 253,
        "a." * 120 + "bcdefghijklm",
        "x" * 242 + "-.-abcdefghij",
    ],
)
def test_configmap_names_are_deterministic_dns_subdomains(name: str) -> None:
    made = ledger.configmap_name(name)
    assert made == ledger.configmap_name(name) and len(made) <= 253
    assert DNS_SUBDOMAIN.match(made) and made.endswith("-ledger")
    if len(name) <= 246:
        assert made == f"{name}-ledger"


def test_long_names_that_share_a_prefix_get_different_configmaps() -> None:
    assert ledger.configmap_name("a" * 250 + "x") != ledger.configmap_name("a" * 250 + "y")


def test_the_configmap_holds_the_names_compressed_and_is_owned_by_the_secretsync() -> None:
    made = body(KEYS[::-1])
    packed = base64.b64decode(made["binaryData"][ledger.KEYS])
    assert json.loads(gzip.decompress(packed)) == KEYS  # sorted
    assert made["data"] == {
        "format": "1",
        "count": "300",
        "digest": ledger.digest(KEYS),
        "destination": "http://infisical p/prod:/",
    }
    (owner,) = made["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("SecretSync", "sync", "uid-1")
    assert made["metadata"]["labels"][ledger.LEDGER_LABEL] == "true"
    assert ledger.owned_by_us(made, "uid-1") and not ledger.owned_by_us(made, "uid-2")
    assert body(KEYS) == made  # the same list: the same bytes (no spurious writes)


def test_a_configmap_with_the_digest_status_names_is_read() -> None:
    assert ledger.read(ref_of(KEYS), body(KEYS)).keys == frozenset(KEYS)


def test_names_with_newlines_stay_unambiguous() -> None:
    odd = ["A\nB", "A", "B"]
    assert ledger.read(ref_of(odd), body(odd)).keys == frozenset(odd)
    assert ledger.digest(["A\nB"]) != ledger.digest(["A", "B"])


def test_a_missing_or_edited_configmap_is_never_believed() -> None:
    missing = ledger.read(ref_of(KEYS), None)
    assert missing.keys is None and "does not exist" in missing.problem
    edited = body(KEYS)
    # Someone adds a key to the list: its digest no longer is the one status names.
    edited["binaryData"][ledger.KEYS] = body([*KEYS, "THEIRS"])["binaryData"][ledger.KEYS]
    found = ledger.read(ref_of(KEYS), edited)
    assert found.keys is None and "does not hold the list" in found.problem
    garbled = body(KEYS)
    garbled["binaryData"][ledger.KEYS] = "bm90IGd6aXA="
    assert ledger.read(ref_of(KEYS), garbled).keys is None
    other_format = body(KEYS)
    other_format["data"]["format"] = "2"
    assert ledger.read(ref_of(KEYS), other_format).keys is None


def test_a_newer_configmap_than_status_yields_the_list_status_vouches_for() -> None:
    """A crash between the ConfigMap write and the status write: the list status names is
    rebuilt from the change the ConfigMap carries; the newer one is not believed."""
    before = KEYS[:200]
    after = KEYS[50:300]
    newer = body(after, vouched=before)
    assert ledger.read(ref_of(before), newer).keys == frozenset(before)
    assert ledger.read(ref_of(after), newer).keys == frozenset(after)
    # Without the change (or for any other list) nothing is believed.
    assert ledger.read(ref_of(before), body(after)).keys is None
    assert ledger.read(ref_of(KEYS[:10]), newer).keys is None
    # A hand edit of the change cannot smuggle a key in: the rebuilt list has another digest.
    forged = body(after, vouched=before)
    change = {"added": [], "removed": ["THEIRS"]}
    packed = gzip.compress(json.dumps(change).encode())
    forged["binaryData"][ledger.PREVIOUS] = base64.b64encode(packed).decode()
    assert ledger.read(ref_of(before), forged).keys is None


def test_status_names_the_ledger_only_past_what_it_shows() -> None:
    assert not ledger.kept_apart(KEYS[:100], "Ledger")
    assert ledger.kept_apart(KEYS[:101], "Ledger") and ledger.kept_apart(KEYS[:101], None)
    assert not ledger.kept_apart(KEYS, "Metadata")  # every key carries its owner
    assert ledger.status_fields(KEYS[:3], None) == {"managedKeys": KEYS[:3], "ledger": None}
    ref = ref_of(KEYS)
    fields = ledger.status_fields(KEYS, ref)
    assert fields["managedKeys"] == KEYS[:100]
    assert fields["ledger"] == {"configMap": "sync-ledger", "count": 300, "digest": ref.digest}
    assert ledger.shown_ref({"ledger": fields["ledger"]}) == ref
    assert ledger.shown_ref({"managedKeys": KEYS}) is None


def test_ledger_status_stays_small_at_ten_thousand_long_keys() -> None:
    """10,000 keys of 60 characters on a server without secretMetadata: status names the
    ConfigMap; the ConfigMap stays well under its 1 MiB."""
    names = [f"SERVICE_{i:05d}_" + "X" * 46 for i in range(10_000)]
    assert {len(name) for name in names} == {60}
    result = Plan(
        create={name: "v" for name in names[:4000]},
        update={name: "v" for name in names[4000:8000]},
        conflicts={name: "exists and is not managed" for name in names[8000:9000]},
        managed_after=names[:8000] + names[9000:],
        metadata_tracking=False,
    )
    status = succeeded_status({}, 1, NOW, result, SourceFacts(keys_read=10_000), dry_run=False)
    keys = status["managedKeys"]
    assert ledger.kept_apart(keys, status["ownershipTracking"])
    ref = LedgerRef(ledger.configmap_name("sync"), len(keys), ledger.digest(keys))
    status.update(ledger.status_fields(keys, ref))
    assert len(json.dumps(status)) <= 64 * 1024
    assert status["keyCounts"]["managed"] == status["ledger"]["count"] == 9000
    made = body(keys, vouched=names[:5000])
    assert len(json.dumps(made)) < 1024 * 1024
    assert ledger.read(ref, made).keys == frozenset(keys)


def test_the_held_plans_keys_are_kept_next_to_the_ledger_and_read_by_their_digest() -> None:
    held = [f"NEW_{i:04d}" for i in range(150)]
    made = ledger.configmap(
        namespace="ns",
        secretsync="sync",
        uid="uid-1",
        keys=KEYS,
        vouched=None,
        approval=held,
        approval_vouched=None,
        belongs_to="",
    )
    ref = ref_of(held)
    assert ledger.read(ref, made, ledger.APPROVAL).keys == frozenset(held)
    assert ledger.read(ref_of(KEYS), made).keys == frozenset(KEYS)
    # The ledger's digest does not open the held list, nor the other way round.
    assert ledger.read(ref_of(KEYS), made, ledger.APPROVAL).keys is None
    assert ledger.read(ref, made).keys is None
    edited = ledger.read(ref_of([*held, "THEIRS"]), made, ledger.APPROVAL)
    assert edited.keys is None and "pendingApproval.keyList.digest" in edited.problem
    # Without a ledger kept apart, only the held list is there.
    alone = body(KEYS)
    assert ledger.APPROVAL_KEYS not in alone["binaryData"]


def test_the_held_plans_keys_in_status_past_what_it_shows() -> None:
    held = [f"NEW_{i:04d}" for i in range(150)]
    pending = {"id": "cr-1", "ids": ["cr-1"], "keys": held, "keyCount": 150, "planId": "p"}
    ref = ledger.wanted_ref("sync-ledger", held, "Ledger")
    assert ref is not None and ref.count == 150
    assert ledger.wanted_ref("sync-ledger", held, "Metadata") is None
    assert ledger.wanted_ref("sync-ledger", held[:100], "Ledger") is None
    shown = ledger.approval_fields(pending, ref)
    assert shown["keys"] == held[:100] and shown["keyList"] == ref.status()
    assert ledger.approval_ref({"pendingApproval": shown}) == ref
    whole = ledger.approval_fields(pending, None)
    assert whole["keys"] == held and whole["keyList"] is None
    assert ledger.approval_ref({"pendingApproval": whole}) is None
    message = ledger.approval_unavailable_message("change request cr-1", "gone", held)
    assert "NEW_0099" in message and "and 50 more" in message and "NEW_0100" not in message


def test_our_finalizer_is_kept_with_others_and_released_alone() -> None:
    made = body(KEYS)
    assert made["metadata"]["finalizers"] == [ledger.FINALIZER]
    read_back = {
        **made,
        "metadata": {
            **made["metadata"],
            "finalizers": ["example.com/other", ledger.FINALIZER],
            "resourceVersion": "7",
            "managedFields": [{"manager": "x"}],
        },
    }
    assert ledger.others_finalizers(read_back) == ["example.com/other"]
    again = ledger.configmap(
        namespace="ns",
        secretsync="sync",
        uid="uid-1",
        keys=KEYS,
        vouched=None,
        belongs_to="",
        finalizers=ledger.others_finalizers(read_back),
    )
    assert again["metadata"]["finalizers"] == [ledger.FINALIZER, "example.com/other"]
    released = ledger.released(read_back)
    assert released is not None and released["metadata"]["finalizers"] == ["example.com/other"]
    assert "managedFields" not in released["metadata"]
    assert released["binaryData"] == made["binaryData"]  # its lists stay
    assert ledger.released(released) is None  # nothing of ours left: no write
