"""Leases, fencing tokens and the shared stop budget on a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from guardian.daemon.coordination import DbCoordinator, LeaseLost, UnitReport
from guardian.daemon.store import Store
from guardian.providers import Unit, UnitPlan

UNITS = tuple(Unit("aws", f"{n:012d}", r) for n in (1, 2) for r in ("us-east-1", "eu-west-1"))


def _replicas(url: str, count: int, lease_s: float = 2.0) -> list[DbCoordinator]:
    store = Store.open(url)
    return [
        DbCoordinator(store, timedelta(seconds=60), timedelta(seconds=lease_s))
        for _ in range(count)
    ]


def test_each_unit_is_claimed_by_one_replica_and_the_plan_is_made_once(pg_url: str) -> None:
    a, b = _replicas(pg_url, 2)
    now = datetime.now(UTC)
    plans: list[str] = []

    def planner(name: str) -> Callable[[], UnitPlan]:
        def make() -> UnitPlan:
            plans.append(name)
            return UnitPlan(UNITS)

        return make

    plan_a = a.plan(now, planner("a"))
    plan_b = b.plan(now, planner("b"))
    assert plans == ["a"]
    assert plan_a.cycle == plan_b.cycle
    assert not plan_b.planned_here
    claimed = []
    for replica, plan in ((a, plan_a), (b, plan_b), (a, plan_a), (b, plan_b), (a, plan_a)):
        lease = replica.claim(plan)
        if lease is not None:
            claimed.append(lease.unit)
    assert sorted(claimed) == sorted(UNITS)  # four units, four claims, the fifth gets none
    assert a.others_busy(plan_a)


def test_an_expired_lease_is_taken_over_and_the_old_token_is_fenced_out(pg_url: str) -> None:
    a, b = _replicas(pg_url, 2, lease_s=2.0)
    now = datetime.now(UTC)
    plan = a.plan(now, lambda: UnitPlan(UNITS[:1]))
    stale = a.claim(plan)
    assert stale is not None
    assert b.claim(plan) is None  # held
    time.sleep(2.2)  # a is paused past its lease
    fresh = b.claim(plan)
    assert fresh is not None
    assert fresh.token == stale.token + 1
    store = Store.open(pg_url)
    with pytest.raises(LeaseLost), store.transaction() as tx:
        a.fence(tx, stale)
    stale.held_until = time.monotonic() + 60  # even if its own clock says it still holds it
    stale.revoked.clear()
    with pytest.raises(LeaseLost, match="taken over"), store.transaction() as tx:
        a.fence(tx, stale)
    with store.transaction() as tx:
        b.fence(tx, fresh)  # the new holder writes
    a.finish(plan, stale, UnitReport(0, 0, 0.1))  # ignored: not its unit any more
    assert b.others_busy(plan)
    b.finish(plan, fresh, UnitReport(3, 0, 0.1))
    assert not b.others_busy(plan)


def test_the_stop_budget_is_shared_by_the_replicas_of_a_cycle(pg_url: str) -> None:
    a, b = _replicas(pg_url, 2)
    plan = a.plan(datetime.now(UTC), lambda: UnitPlan(UNITS))
    store = Store.open(pg_url)
    granted = []
    for replica in (a, b, a, b):
        with store.transaction() as tx:
            granted.append(replica.reserve_stop(tx, plan, limit=3))
    assert granted == [True, True, True, False]
