"""Leader election: the decision core (lease.py), the write fence, and where it is enforced."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes import client
from pydantic import ValidationError

from infisical_sync.config import Settings
from infisical_sync.fence import Fence
from infisical_sync.infisical.errors import Fenced
from infisical_sync.infisical.transport import InstanceTransport, TransportOptions
from infisical_sync.kube import Kube, KubeFenced, KubeTimeouts, KubeUnavailable
from infisical_sync.leader import FamilyLease, LeaderElector, OtherConfigurations
from infisical_sync.lease import (
    SHARDS_ANNOTATION,
    UNKNOWN_CONFIGURATION,
    LeaseRecord,
    LeaseTimings,
    Observed,
    Step,
    acquired,
    configuration_of,
    decide,
    may_be_held,
    observe,
    released,
    renewed,
    wait_before_next,
)
from infisical_sync.testing.fake_infisical import FakeInfisical, Fault

TIMINGS = LeaseTimings(duration=10, renew_deadline=7, retry_period=2)
ME, OTHER = "me_1", "other_2"
AT = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held(by: str, renewed_at: str = "t1", duration: int = 10) -> LeaseRecord:
    return LeaseRecord(holder=by, duration_seconds=duration, renew_time=renewed_at)


def step(observed: Observed, now: float, leading_until: float | None = None) -> Step:
    return decide(observed, identity=ME, now=now, timings=TIMINGS, leading_until=leading_until)


# --- observe: when did this process last see the record change (its own clock) ---------------


def test_an_unchanged_record_keeps_the_time_it_was_first_seen() -> None:
    first = observe(None, held(OTHER), now=100)
    assert observe(first, held(OTHER), now=105) is first
    assert first.since == 100


@pytest.mark.parametrize(
    "change",
    [held(OTHER, renewed_at="t2"), held("third"), held(OTHER, duration=20), LeaseRecord(), None],
    ids=["renewed", "new-holder", "new-duration", "released", "deleted"],
)
def test_any_change_restarts_the_clock(change: LeaseRecord | None) -> None:
    first = observe(None, held(OTHER), now=100)
    assert observe(first, change, now=105) == Observed(change, 105)


def test_a_write_of_equal_content_is_a_change_too() -> None:
    """Two renewals in the same microsecond (or a clock standing still) differ in version."""
    first = observe(None, held(OTHER), now=100, version="7")
    assert observe(first, held(OTHER), now=105, version="7") is first
    assert observe(first, held(OTHER), now=105, version="8").since == 105


def test_no_lease_at_the_first_look_was_never_held_as_far_as_we_know() -> None:
    assert observe(None, None, now=100) == Observed(None, -math.inf)


# --- decide: a standby ----------------------------------------------------------------------


def test_a_standby_creates_a_lease_nobody_ever_held() -> None:
    assert step(observe(None, None, 100), now=100) is Step.CREATE


def test_a_lease_deleted_under_its_holder_is_waited_out_like_an_expiry() -> None:
    seen = observe(observe(None, held(OTHER), 100), None, now=101)
    assert step(seen, now=110.9) is Step.WAIT
    assert step(seen, now=111) is Step.CREATE


def test_a_released_lease_is_taken_at_once() -> None:
    assert step(observe(None, LeaseRecord(), 100), now=100) is Step.TAKE_RELEASED


def test_a_held_lease_expires_only_its_duration_after_the_last_change_we_saw() -> None:
    seen = observe(None, held(OTHER), now=100)
    assert step(seen, now=109.99) is Step.WAIT
    assert step(seen, now=110) is Step.TAKE_EXPIRED
    # A renewal seen meanwhile restarts the wait, whatever wall-clock times the record holds.
    renewed_seen = observe(seen, held(OTHER, renewed_at="t2"), now=108)
    assert step(renewed_seen, now=117.99) is Step.WAIT
    assert step(renewed_seen, now=118) is Step.TAKE_EXPIRED


def test_the_holders_announced_duration_is_waited_not_ours() -> None:
    seen = observe(None, held(OTHER, duration=30), now=100)
    assert step(seen, now=129) is Step.WAIT
    assert step(seen, now=130) is Step.TAKE_EXPIRED


def test_a_standby_never_renews_a_record_naming_it() -> None:
    """Its identity is unique per process: such a record is a leftover, and waited out."""
    seen = observe(None, held(ME), now=100)
    assert step(seen, now=105) is Step.WAIT


def test_a_standby_wakes_at_the_expiry_when_it_comes_before_the_next_retry() -> None:
    seen = observe(None, held(OTHER), now=100)
    assert wait_before_next(seen, now=100, timings=TIMINGS) == 2
    assert wait_before_next(seen, now=109.5, timings=TIMINGS) == pytest.approx(0.5)
    assert wait_before_next(seen, now=111, timings=TIMINGS) == 0


# --- decide: the leader ---------------------------------------------------------------------


def test_the_leader_renews_its_own_lease_before_its_deadline() -> None:
    seen = observe(None, held(ME), now=100)
    assert step(seen, now=106.9, leading_until=107) is Step.RENEW


@pytest.mark.parametrize(
    ("record", "now"),
    [(held(ME), 107), (held(OTHER), 101), (LeaseRecord(), 101), (None, 101)],
    ids=["past-the-deadline", "taken", "released-by-someone", "deleted"],
)
def test_the_leader_loses_and_never_fights_over_it(record: LeaseRecord | None, now: float) -> None:
    seen = observe(observe(None, held(ME), 99), record, now=100)
    assert step(seen, now=now, leading_until=107) is Step.LOST


# --- the records written ----------------------------------------------------------------------


def test_records_written_count_transitions_and_release_like_client_go() -> None:
    created = acquired(None, ME, TIMINGS, AT)
    assert created.to_spec() == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 10,
        "acquireTime": "2030-01-02T03:04:05.678901Z",
        "renewTime": "2030-01-02T03:04:05.678901Z",
        "leaseTransitions": 0,
    }
    later = AT + dt.timedelta(seconds=2)
    assert renewed(created, later).acquire_time == created.acquire_time
    assert renewed(created, later).renew_time == "2030-01-02T03:04:07.678901Z"
    taken = acquired(held(OTHER), ME, TIMINGS, later)
    assert (taken.holder, taken.transitions) == (ME, 1)
    gone = released(taken, later)
    assert (gone.holder, gone.duration_seconds, gone.transitions) == ("", 1, 1)
    assert gone.to_spec()["holderIdentity"] is None
    assert LeaseRecord.from_spec(gone.to_spec()) == gone


def test_timings_must_leave_the_fence_before_any_takeover() -> None:
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaseTimings(duration=8, renew_deadline=8, retry_period=2)
    with pytest.raises(ValueError, match="retry period < renew deadline"):
        LeaseTimings(duration=10, renew_deadline=2, retry_period=2)


# --- the fence ---------------------------------------------------------------------------------


def test_the_fence_closes_its_margin_before_the_deadline() -> None:
    clock = Clock(100)
    fence = Fence(closed=True, margin=1.0, clock=clock)
    assert not fence.allows()
    fence.open_until(107)
    assert fence.allows()
    clock.now = 105.99
    assert fence.allows()
    clock.now = 106
    assert not fence.allows()
    fence.open_until(109)
    assert fence.allows()
    fence.close()
    assert not fence.allows()
    assert Fence().allows()  # no leader election: always open


# --- settings ----------------------------------------------------------------------------------


def test_leader_election_settings() -> None:
    default = Settings.from_env({})
    assert default.leader_election is False
    # The standby takes over a lease killed right after a renewal within 15 s: it sees that
    # renewal within a retry period and takes the lease a duration later.
    assert default.lease_duration + default.lease_retry_period <= 15
    assert default.lease_timings.renew_deadline < default.lease_duration
    tuned = Settings.from_env(
        {
            "INFISICAL_SYNC_LEADER_ELECTION": "true",
            "INFISICAL_SYNC_LEASE_NAME": "sync-a",
            "INFISICAL_SYNC_LEASE_DURATION": "5",
            "INFISICAL_SYNC_LEASE_RENEW_DEADLINE": "3",
            "INFISICAL_SYNC_LEASE_RETRY_PERIOD": "0.5",
        },
        lease_namespace="ops",
    )
    assert (tuned.leader_election, tuned.lease_name, tuned.lease_namespace) == (
        True,
        "sync-a",
        "ops",
    )
    assert tuned.lease_timings == LeaseTimings(5, 3.0, 0.5)
    with pytest.raises(ValidationError, match="renew deadline < lease duration"):
        Settings.from_env({}, lease_duration=5, lease_renew_deadline=6)
    for election in (True, False):
        with pytest.raises(ValidationError, match="--peering is no longer supported"):
            Settings.from_env({}, peering=True, leader_election=election)


# --- where the fence is enforced -----------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeInfisical]:
    async with FakeInfisical() as server:
        yield server


async def test_the_transport_sends_no_write_once_fenced(fake: FakeInfisical) -> None:
    fence = Fence()
    options = TransportOptions(max_attempts=1, request_timeout=2, fence=fence)
    transport = InstanceTransport(fake.url, allow_http=True, options=options)
    try:
        await transport.send("POST", "/api/v1/auth/token/revoke", endpoint="revoke", json={})
        assert fake.count(method="POST") == 1  # open: sent
        fence.close()
        with pytest.raises(Fenced, match="not the leader") as raised:
            await transport.send("POST", "/api/v1/auth/token/revoke", endpoint="revoke", json={})
        assert raised.value.reason == "NotLeader" and not raised.value.retryable
        assert fake.count(method="POST") == 1  # fenced: never sent
        await transport.send("GET", "/api/status", endpoint="status")  # reads still go
        assert fake.count(method="GET") == 1
    finally:
        await transport.aclose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections, never answers: a request sent would time out, not be fenced."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


async def test_kubernetes_writes_are_fenced_and_reads_are_not(silent_port: int) -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{silent_port}"
    configuration.retries = 0
    kube = Kube(
        client.ApiClient(configuration),
        KubeTimeouts(connect=0.5, read=0.5),
        fence=Fence(closed=True),
    )
    try:
        writes = [
            kube.patch_status("secretsyncs", "ns", "app", {"syncStatus": "Running"}),
            kube.write_secret_keys("ns", "app", {"A": "1"}, "7"),
            kube.remove_annotation("secretsyncs", "ns", "app", "x/y"),
        ]
        for write in writes:
            with pytest.raises(KubeFenced, match="not the leader"):
                await write
        with pytest.raises(Exception, match="did not answer") as raised:  # a read is sent
            await kube.read_secret("ns", "app")
        assert not isinstance(raised.value, KubeFenced)
    finally:
        await kube.aclose()


# --- the elector against an in-memory Lease (resourceVersion concurrency) --------------------


class MemoryLease:
    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.down = False

    async def read(self) -> tuple[LeaseRecord | None, str]:
        if self.down:
            raise KubeUnavailable("the Kubernetes API server refused the connection (test)")
        return self.record, str(self.version) if self.record else ""

    async def write(self, record: LeaseRecord, resource_version: str) -> bool:
        if self.down:
            raise KubeUnavailable("the Kubernetes API server refused the connection (test)")
        if resource_version != (str(self.version) if self.record else ""):
            return False  # 409
        self.record, self.version = record, self.version + 1
        return True


def elector(store: MemoryLease, name: str, clock: Clock) -> LeaderElector:
    fence = Fence(closed=True, margin=TIMINGS.fence_margin, clock=clock)
    return LeaderElector(
        store, identity=name, timings=TIMINGS, fence=fence, clock=clock, wall=lambda: AT
    )


async def test_a_standby_takes_over_only_after_the_dead_leaders_fence_closed() -> None:
    clock, lease = Clock(100), MemoryLease()
    first, second = elector(lease, "first", clock), elector(lease, "second", clock)
    assert await first.attempt() is Step.CREATE and first.fence.allows()
    assert await second.attempt() is Step.WAIT and not second.fence.allows()
    clock.now = 102
    assert await first.attempt() is Step.RENEW  # its last renewal: then it dies
    assert await second.attempt() is Step.WAIT  # sees that renewal at 102
    clock.now = 111.99
    assert await second.attempt() is Step.WAIT
    clock.now = 112
    assert not first.fence.allows()  # closed since 102 + 7 - 1.0
    assert await second.attempt() is Step.TAKE_EXPIRED and second.fence.allows()
    assert lease.record is not None and (lease.record.holder, lease.record.transitions) == (
        "second",
        1,
    )
    assert await first.attempt() is Step.LOST  # were it alive after all


async def test_a_leader_that_cannot_renew_loses_at_its_renew_deadline() -> None:
    clock, lease = Clock(100), MemoryLease()
    leader = elector(lease, "leader", clock)
    await leader.attempt()
    lease.down = True
    clock.now = 105
    assert await leader.attempt() is Step.WAIT and leader.fence.allows()
    clock.now = 106  # 107 less the margin: no more writes, still trying to renew
    assert not leader.fence.allows()
    assert await leader.attempt() is Step.WAIT
    clock.now = 107
    assert await leader.attempt() is Step.LOST


async def test_a_release_is_taken_at_once_and_a_race_has_one_winner() -> None:
    clock, lease = Clock(100), MemoryLease()
    leader = elector(lease, "leader", clock)
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    await leader.attempt()
    assert await a.attempt() is Step.WAIT
    await leader.release()
    assert not leader.fence.allows()
    assert lease.record is not None and lease.record.holder == ""
    # Both read the released Lease; the first write wins, the other's version is stale.
    read_by_b = await lease.read()
    assert await a.attempt() is Step.TAKE_RELEASED
    assert await lease.write(LeaseRecord(holder="b"), read_by_b[1]) is False
    assert await b.attempt() is Step.WAIT and not b.leading


# --- stepping down: the Lease is released only once no write is under way ------------------


async def test_a_leader_releases_only_after_the_writes_under_way_finished() -> None:
    clock, lease = Clock(100), MemoryLease()
    leader = elector(lease, "leader", clock)
    await leader.attempt()
    with leader.fence.sending("a write sent before the signal", KubeFenced):
        stepping_down = asyncio.create_task(leader.step_down(writes_timeout=30))
        await asyncio.sleep(0)  # it runs until it waits for that write
        assert not leader.fence.allows()
        with pytest.raises(KubeFenced), leader.fence.sending("a new write", KubeFenced):
            pass
        # The renewals go on meanwhile (no standby takes over), the fence stays closed.
        clock.now = 102
        assert await leader.attempt() is Step.RENEW and not leader.fence.allows()
        assert not stepping_down.done()
    assert await stepping_down is True
    await leader.release()
    assert lease.record is not None and lease.record.holder == ""


async def test_a_write_still_under_way_at_the_bound_leaves_the_lease_to_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, lease = Clock(100), MemoryLease()
    leader = elector(lease, "leader", clock)
    await leader.attempt()
    with leader.fence.sending("a write that hangs", KubeFenced):
        assert await leader.step_down(writes_timeout=0.05) is False
    assert "1 write still under way" in caplog.text and "not released" in caplog.text


async def wait_until_sending(fence: Fence, count: int) -> None:
    for _ in range(1000):  # a deadlock guard, not a timing
        if fence.writes_under_way == count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never {count} writes under way")


async def test_kubernetes_writes_count_as_under_way(silent_port: int) -> None:
    """Kube.aclose() does not wait for the calls under way: the fence does, for the writes."""
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{silent_port}"
    configuration.retries = 0
    fence = Fence()
    kube = Kube(client.ApiClient(configuration), KubeTimeouts(connect=0.5, read=0.5), fence=fence)
    try:
        write = asyncio.create_task(kube.patch_status("secretsyncs", "ns", "app", {}))
        await wait_until_sending(fence, 1)
        fence.close()
        assert fence.wait_drained(0.01) is False
        with pytest.raises(KubeUnavailable, match="did not answer"):
            await write
        assert fence.wait_drained(0) is True
    finally:
        await kube.aclose()


async def test_infisical_writes_count_as_under_way(fake: FakeInfisical) -> None:
    fence = Fence()
    fake.inject(Fault("latency", r"/revoke$", method="POST", delay=0.5))
    options = TransportOptions(max_attempts=1, request_timeout=5, fence=fence)
    transport = InstanceTransport(fake.url, allow_http=True, options=options)
    try:
        write = asyncio.create_task(
            transport.send("POST", "/api/v1/auth/token/revoke", endpoint="revoke", json={})
        )
        await wait_until_sending(fence, 1)
        fence.close()
        assert fence.wait_drained(0.01) is False
        await write
        assert fence.wait_drained(0) is True
    finally:
        await transport.aclose()


# --- shard configurations: a resharding rollout never runs two at once -----------------------


@pytest.mark.parametrize(
    ("name", "annotations", "configuration"),
    [
        ("sync", {}, 1),  # written before the annotation existed: the unsharded operator
        ("sync", {SHARDS_ANNOTATION: "1"}, 1),
        ("sync-shard-1", {SHARDS_ANNOTATION: "3"}, 3),
        ("sync-shard-0", {}, UNKNOWN_CONFIGURATION),  # some earlier shard count
        ("sync-shard-0", {SHARDS_ANNOTATION: "two"}, UNKNOWN_CONFIGURATION),
        ("sync-shard-0", {SHARDS_ANNOTATION: "0"}, UNKNOWN_CONFIGURATION),
        ("sync-other", {SHARDS_ANNOTATION: "2"}, None),  # not of the family
        ("sync-shard-x", {}, None),
        ("syncs-shard-1", {}, None),
        ("other", {}, None),
    ],
)
def test_the_configuration_that_wrote_a_lease(
    name: str, annotations: dict[str, str], configuration: int | None
) -> None:
    assert configuration_of(name, "sync", annotations) == configuration


def test_another_configurations_lease_is_held_until_released_or_expired_on_our_clock() -> None:
    seen = observe(None, held(OTHER), now=100)
    assert may_be_held(seen, now=109.99, timings=TIMINGS)
    assert not may_be_held(seen, now=110, timings=TIMINGS)
    assert not may_be_held(observe(seen, LeaseRecord(), now=101), now=101, timings=TIMINGS)
    deleted = observe(seen, None, now=105)
    assert may_be_held(deleted, now=114.99, timings=TIMINGS)
    assert not may_be_held(deleted, now=115, timings=TIMINGS)


class MemoryFamily:
    def __init__(self) -> None:
        self.leases: dict[str, FamilyLease] = {}
        self.versions = 0

    def put(self, name: str, configuration: int | None, record: LeaseRecord) -> None:
        self.versions += 1
        self.leases[name] = FamilyLease(name, configuration, record, str(self.versions))

    async def family(self) -> list[FamilyLease]:
        return list(self.leases.values())


def others_of(family: MemoryFamily, clock: Clock, shards: int = 2) -> OtherConfigurations:
    return OtherConfigurations(
        family, own="sync-shard-0", shards=shards, timings=TIMINGS, namespace="ops", clock=clock
    )


async def test_a_new_configuration_waits_for_the_old_ones_lease_to_be_released() -> None:
    clock, family = Clock(100), MemoryFamily()
    family.put("sync", 1, held("old_1"))
    family.put("sync-shard-0", 2, held(ME))  # ours
    family.put("sync-shard-1", 2, held("sibling_2"))  # our configuration's other shard
    others = others_of(family, clock)
    found = await others.blocker()
    assert found is not None and found[:2] == ("sync", 1)
    clock.now = 108
    family.put("sync", 1, held("old_1", renewed_at="t2"))  # the old leader renews
    assert await others.blocker() is not None
    clock.now = 117.99  # unchanged since 108, not yet its duration on our clock
    assert await others.blocker() is not None
    family.put("sync", 1, LeaseRecord())  # SIGTERM: released
    assert await others.blocker() is None


async def test_another_configurations_lease_expires_on_our_clock() -> None:
    clock, family = Clock(100), MemoryFamily()
    family.put("sync-shard-2", 3, held("old_1"))
    others = others_of(family, clock)
    assert await others.blocker() is not None
    clock.now = 109.99
    assert await others.blocker() is not None
    clock.now = 110  # killed: not renewed for its duration since we first saw it
    assert await others.blocker() is None


async def test_unknown_configurations_are_waited_for_and_deletions_waited_out() -> None:
    clock, family = Clock(100), MemoryFamily()
    family.put("sync-shard-1", UNKNOWN_CONFIGURATION, held("older_1"))
    others = others_of(family, clock)
    assert await others.blocker() is not None
    del family.leases["sync-shard-1"]  # deleted by hand under its holder
    clock.now = 101
    assert await others.blocker() is not None
    clock.now = 111
    assert await others.blocker() is None
    assert others.seen == {}


async def test_waiting_says_once_which_lease_it_waits_for_and_ends_on_release(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="infisical_sync.leader")
    family = MemoryFamily()
    family.put("sync", 1, held("old_1"))
    others = OtherConfigurations(
        family,
        own="sync-shard-0",
        shards=2,
        timings=LeaseTimings(duration=10, renew_deadline=0.2, retry_period=0.01),
        namespace="ops",
    )
    stopping = asyncio.Event()
    waiting = asyncio.create_task(others.wait([stopping]))
    while len([r for r in caplog.records if "waits for Lease" in r.getMessage()]) < 1:
        await asyncio.sleep(0.01)
    family.put("sync", 1, held("old_1", renewed_at="t2"))
    family.put("sync", 1, LeaseRecord())
    assert await waiting is True
    lines = [r.getMessage() for r in caplog.records if "waits for Lease" in r.getMessage()]
    assert lines == [
        "this replica (shards=2) waits for Lease ops/sync of configuration shards=1 "
        "(held by old_1): it starts once that is released or expires"
    ]


async def test_waiting_ends_without_starting_on_a_signal() -> None:
    family = MemoryFamily()
    family.put("sync", 1, held("old_1"))
    stopping = asyncio.Event()
    others = others_of(family, Clock(100))
    waiting = asyncio.create_task(others.wait([stopping]))
    stopping.set()
    assert await waiting is False


async def test_a_paused_leader_renews_with_its_fence_closed() -> None:
    """Holding its Lease while another configuration runs: no replica of its own
    configuration takes it, and it writes nothing until resumed."""
    clock, lease = Clock(100), MemoryLease()
    leader = elector(lease, "leader", clock)
    leader.pause_writes()
    assert await leader.attempt() is Step.CREATE and leader.leading
    assert not leader.fence.allows()
    clock.now = 102
    assert await leader.attempt() is Step.RENEW and not leader.fence.allows()
    leader.resume_writes()
    assert leader.fence.allows()
    clock.now = 108.5  # past 102 + 7 - 1: renewals still open it when it is due
    assert not leader.fence.allows()
    assert await leader.attempt() is Step.RENEW and leader.fence.allows()
