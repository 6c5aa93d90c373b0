"""The step scheduler's decisions: order, capacity, deadlines (pure)."""

from __future__ import annotations

import pytest

from duotone_runtime.step_policy import (
    Job,
    StepPlan,
    admission_order,
    plan_step,
    preview_steps,
)


def job(
    key: int,
    *,
    steps: int = 4,
    deadline: float = 100.0,
    priority: int = 0,
    arrival: float = 0.0,
    images: int = 1,
) -> Job:
    return Job(key, arrival, deadline, priority, steps, images)


def test_priority_then_deadline_then_arrival() -> None:
    jobs = [
        job(1, deadline=50, arrival=0),
        job(2, deadline=20, arrival=1),
        job(3, deadline=90, priority=5, arrival=2),
        job(4, deadline=20, arrival=0.5),
    ]
    assert [j.key for j in sorted(jobs, key=admission_order)] == [3, 4, 2, 1]


def test_admits_up_to_capacity_in_order() -> None:
    plan = plan_step(
        [job(1, deadline=30), job(2, deadline=10), job(3, deadline=20)],
        [],
        capacity=2,
        now=0,
        step_seconds=0.5,
    )
    assert plan == StepPlan(admit=(2, 3))


def test_running_jobs_take_slots() -> None:
    plan = plan_step([job(2)], [job(1, images=2)], capacity=2, now=0, step_seconds=0.1)
    assert plan.admit == ()


def test_strict_order_no_backfill() -> None:
    # A 2-image job first in order waits for two slots; a 1-image job behind it does not
    # overtake it.
    plan = plan_step(
        [job(2, images=2, deadline=10), job(3, deadline=50)],
        [job(1, steps=2)],
        capacity=2,
        now=0,
        step_seconds=0.1,
    )
    assert plan.admit == ()


def test_an_oversized_job_runs_alone() -> None:
    plan = plan_step([job(1, images=4)], [], capacity=2, now=0, step_seconds=0.1)
    assert plan.admit == (1,)


def test_expired_running_and_queued_are_dropped() -> None:
    plan = plan_step(
        [job(3, deadline=5)],
        [job(1, deadline=5), job(2, deadline=50)],
        capacity=4,
        now=5,
        step_seconds=0.1,
    )
    assert plan.expired == (1, 3)
    assert plan.admit == ()


def test_infeasible_is_refused_before_any_step() -> None:
    # 30 steps at 1 s cannot finish within 20 s.
    plan = plan_step([job(1, steps=30, deadline=20)], [], capacity=4, now=0, step_seconds=1.0)
    assert plan.refuse == (1,)
    assert plan.admit == ()


def test_unknown_step_time_refuses_nothing() -> None:
    plan = plan_step([job(1, steps=30, deadline=20)], [], capacity=4, now=0, step_seconds=0.0)
    assert plan.admit == (1,)


def test_waiting_counts_the_work_ahead() -> None:
    # One slot, held for 10 more steps at 1 s: B (3 steps) would finish at 13.
    running = [job(1, steps=10)]
    late = plan_step([job(2, steps=3, deadline=12)], running, capacity=1, now=0, step_seconds=1)
    in_time = plan_step([job(2, steps=3, deadline=14)], running, capacity=1, now=0, step_seconds=1)
    assert late.refuse == (2,)
    assert in_time == StepPlan()


def test_queued_ahead_counts_too() -> None:
    # B waits for A (finishing at 10), then runs 3 steps (13); C waits for B: 16 > 15.
    plan = plan_step(
        [job(2, steps=3, deadline=14), job(3, steps=3, deadline=15)],
        [job(1, steps=10)],
        capacity=1,
        now=0,
        step_seconds=1,
    )
    assert plan.refuse == (3,)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        plan_step([], [], capacity=0, now=0, step_seconds=0)


@pytest.mark.parametrize(
    ("steps", "partial_images", "expected"),
    [
        (30, 2, (10, 20)),
        (30, 3, (8, 15, 23)),
        (4, 2, (1, 3)),
        (2, 3, (1,)),
        (1, 3, ()),
        (30, 0, ()),
        (6, 1, (3,)),
    ],
)
def test_previews_are_evenly_spaced_before_the_last_step(
    steps: int, partial_images: int, expected: tuple[int, ...]
) -> None:
    assert preview_steps(steps, partial_images) == expected
