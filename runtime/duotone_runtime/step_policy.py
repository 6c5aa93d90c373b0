"""Who runs the next denoising step in a step-batched tier (pure; time is passed in).

In `batching.mode: step` the runtime keeps a running batch of requests and computes one
denoising step for all of them at a time; between two steps it retires finished requests and
admits queued ones (`step_loop.py`). This module makes that decision from plain values:

- **Order**: higher `priority` first, then earliest deadline first, then arrival.
- **Capacity**: the running batch holds at most `capacity` images (the tier's
  `batching.maxBatchSize`); admission is strict in order (a request that does not fit is not
  overtaken by a smaller one behind it, so priorities and deadlines hold).
- **Deadlines**: a running request whose deadline has passed is dropped before the next step
  (its neighbours continue); a queued one whose deadline has passed, or that cannot finish in
  time given the work ahead of it, is refused before any step is computed. The estimate uses
  the recent step time: a request admitted now finishes after its steps x the step time; one
  that waits starts when enough running (or earlier-queued) requests have finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One request as the step scheduler sees it."""

    key: int
    arrival: float
    """Seconds (monotonic) when it reached the pod."""
    deadline: float
    """Seconds (monotonic) by which it must be answered."""
    priority: int
    steps_left: int
    """Denoising steps still to compute (all of them while it is queued)."""
    images: int
    """Slots it takes in the running batch (its images)."""


def admission_order(job: Job) -> tuple[int, float, float, int]:
    """Sort key: priority (higher first), deadline (earlier first), arrival, key."""
    return (-job.priority, job.deadline, job.arrival, job.key)


@dataclass(frozen=True)
class StepPlan:
    """What happens before the next step."""

    admit: tuple[int, ...] = ()
    """Queued jobs that join the running batch now, in admission order."""
    refuse: tuple[int, ...] = ()
    """Queued jobs refused before any step: they cannot finish by their deadline."""
    expired: tuple[int, ...] = ()
    """Queued or running jobs whose deadline has passed: dropped now."""


def _finish_estimate(
    occupied: list[tuple[float, int]], free: int, images: int, now: float
) -> float:
    """When `images` slots are free, given running jobs as (finish time, images) and `free`
    slots free now."""
    if images <= free:
        return now
    for finish, held in sorted(occupied):
        free += held
        if images <= free:
            return max(now, finish)
    return float("inf")


def plan_step(
    queued: Sequence[Job],
    running: Sequence[Job],
    *,
    capacity: int,
    now: float,
    step_seconds: float,
) -> StepPlan:
    """The admissions, refusals and expiries before the next step.

    `step_seconds` is the recent time of one step of the running batch (0 when unknown: no
    request is refused as infeasible until a step was measured). A job wider than `capacity`
    is admitted alone when the batch is empty (it could never fit otherwise).

    e.g. capacity 2, one running job with 10 steps left at 1 s a step, queued B (3 steps,
    deadline now + 5) and C (3 steps, deadline now + 20): B is admitted, C waits; a queued D
    with 30 steps and deadline now + 20 is refused (it would finish after now + 30).
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    expired = [j.key for j in running if j.deadline <= now]
    live = [j for j in running if j.deadline > now]
    free = capacity - sum(j.images for j in live)
    occupied = [(now + j.steps_left * step_seconds, j.images) for j in live]
    admit: list[int] = []
    refuse: list[int] = []
    blocked = False
    for job in sorted(queued, key=admission_order):
        if job.deadline <= now:
            expired.append(job.key)
            continue
        fits = not blocked and (job.images <= free or (free == capacity and not admit))
        start = now if fits else _finish_estimate(occupied, free, job.images, now)
        finish = start + job.steps_left * step_seconds
        if step_seconds > 0 and finish > job.deadline:
            refuse.append(job.key)
            continue
        if fits:
            admit.append(job.key)
        else:
            blocked = True
        # Its slots are taken from its start until its finish.
        free -= job.images
        occupied.append((finish, job.images))
    return StepPlan(tuple(admit), tuple(refuse), tuple(expired))


def preview_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """After which of its `steps` a request asking for `partial_images` previews gets each one:
    evenly spaced (step s x i / (partial_images + 1), rounded), never after the last step (the
    answer comes then) and never two after the same step, so a request of few steps may get
    fewer previews than it asked for (as OpenAI allows).

    e.g. 30 steps, 2 previews: after steps 10 and 20; 4 steps, 2 previews: after 1 and 3;
    2 steps, 3 previews: after step 1 only.
    """
    spaced = (
        (2 * steps * i + partial_images + 1) // (2 * (partial_images + 1))
        for i in range(1, partial_images + 1)
    )
    return tuple(sorted({s for s in spaced if 1 <= s < steps}))
