"""Shards: parsing `i/N`, stable ownership by hash, and the finalizer names per configuration."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from infisical_sync import cli
from infisical_sync.config import Settings
from infisical_sync.shards import LEGACY_FINALIZER, Shard, ShardSpecError, _jump, slot_of

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63)


@pytest.mark.parametrize(
    ("text", "index", "count"),
    [("0/1", 0, 1), ("1/3", 1, 3), (" 2/3 ", 2, 3), ("0/64", 0, 64)],
)
def test_parses_index_and_count(text: str, index: int, count: int) -> None:
    shard = Shard.parse(text)
    assert (shard.index, shard.count) == (index, count)
    assert str(shard) == f"{index}/{count}"


@pytest.mark.parametrize("text", ["", "1", "3/3", "-1/2", "0/0", "a/b", "1/2/3", "1.0/2", "0/-1"])
def test_refuses_anything_but_i_of_n(text: str) -> None:
    with pytest.raises(ShardSpecError, match=r"i/N"):
        Shard.parse(text)


def test_the_default_is_one_shard_owning_everything_under_the_legacy_finalizer() -> None:
    shard = Shard()
    assert (shard.index, shard.count, shard.sharded) == (0, 1, False)
    assert shard.owns("any", "thing")
    assert shard.finalizer == LEGACY_FINALIZER == "infisical-sync.dev/finalizer"
    assert shard.lease_suffix == ""
    assert shard.annotation_prefix == "infisical-sync.dev"


def test_a_shard_has_its_own_finalizer_annotation_prefix_and_lease_suffix() -> None:
    shard = Shard.parse("1/3")
    assert shard.sharded
    assert shard.finalizer == "infisical-sync.dev/shard-1-of-3"
    assert shard.annotation_prefix == "shard-1-of-3.infisical-sync.dev"
    assert shard.lease_suffix == "-shard-1"
    # Each shard index competes for its own Lease; unsharded, the Lease is the one named.
    assert Settings(shard="1/3", lease_name="release").lease == "release-shard-1"
    assert Settings(lease_name="release").lease == "release"


@given(st.integers(min_value=1, max_value=64), names, names)
def test_every_object_is_owned_by_exactly_one_shard(count: int, namespace: str, name: str) -> None:
    owners = [i for i in range(count) if Shard(i, count).owns(namespace, name)]
    assert owners == [slot_of(namespace, name, count)]


@given(st.integers(min_value=1, max_value=63), names, names)
def test_one_more_shard_only_takes_objects_never_moves_them_between_the_others(
    count: int, namespace: str, name: str
) -> None:
    before, after = slot_of(namespace, name, count), slot_of(namespace, name, count + 1)
    assert after in (before, count)


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_objects_spread_evenly(count: int) -> None:
    total = 20_000
    owners = Counter(slot_of(f"team-{i % 37}", f"sync-{i}", count) for i in range(total))
    assert set(owners) == set(range(count))
    mean = total / count
    assert all(abs(n - mean) < 0.1 * mean for n in owners.values()), owners


def test_ownership_is_stable_across_processes_and_versions() -> None:
    # Pinned: a change here reshuffles every installed cluster's objects at an upgrade.
    assert [slot_of("default", "app", n) for n in (1, 2, 3, 4, 8)] == [0, 1, 1, 3, 7]
    assert [slot_of("team-a", "billing", n) for n in (2, 3, 8)] == [1, 1, 6]


def test_the_jump_hash_gives_the_published_reference_values() -> None:
    # Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (as in Go's ports).
    cases = [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)]
    assert [_jump(key, buckets) for key, buckets, _ in cases] == [slot for *_, slot in cases]


@pytest.mark.parametrize(
    ("shard", "finalizers", "stale"),
    [
        # one shard: every sharded name of ours is stale, foreign ones are never touched
        ("0/1", [LEGACY_FINALIZER, "example.com/keep"], []),
        ("0/1", ["infisical-sync.dev/shard-1-of-2", "example.com/keep"], ["shard-1-of-2"]),
        # sharded: the unsharded name and every other configuration's names are stale
        ("0/2", [LEGACY_FINALIZER], ["finalizer"]),
        ("1/2", ["infisical-sync.dev/shard-2-of-3", "infisical-sync.dev/shard-1-of-2"], ["2-of-3"]),
        # another shard of this configuration strips its own name itself (kopf does)
        ("0/2", ["infisical-sync.dev/shard-1-of-2"], []),
        ("0/2", ["infisical-sync.dev/shard-2-of-2", "infisical-sync.dev/shard-0-of-3"], ["2", "3"]),
        # look-alikes are not ours
        ("0/2", ["infisical-sync.dev/finalizer-x", "x.infisical-sync.dev/finalizer"], []),
        ("0/2", ["infisical-sync.dev/shard-1-of-2x", "infisical-sync.dev/shard--of-2"], []),
    ],
)
def test_stale_finalizers_are_ours_and_of_no_shard_of_this_configuration(
    shard: str, finalizers: list[str], stale: list[str]
) -> None:
    found = Shard.parse(shard).stale_finalizers(finalizers)
    assert len(found) == len(stale)
    assert all(f in finalizers and hint in f for f, hint in zip(found, stale, strict=True))


# --- configuration: flag, environment ----------------------------------------------------------


def test_the_shard_comes_from_the_environment_or_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Settings.from_env({}).shard == Shard(0, 1)
    assert Settings.from_env({"INFISICAL_SYNC_SHARD": "1/3"}).shard == Shard(1, 3)
    with pytest.raises(ValidationError, match="i/N"):
        Settings.from_env({"INFISICAL_SYNC_SHARD": "3/3"})

    seen: list[Settings] = []
    monkeypatch.setattr("infisical_sync.app.run_operator", lambda s: seen.append(s) or 0)
    monkeypatch.setenv("INFISICAL_SYNC_SHARD", "0/2")
    assert cli.main(["run", "--shard", "1/2"]) == 0
    assert seen[0].shard == Shard(1, 2)  # the flag wins over the environment
    assert cli.main(["run", "--shard", "2/2"]) == 2
    assert "shard" in capsys.readouterr().err
