"""The step loop with a fake stepper and a fake clock: joining, ordering, deadlines,
cancellation, failures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.step_loop import Entry, Finished, Refusal, StepLoop

STEP_SECONDS = 1.0


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeState:
    request: GenerationRequest
    left: int
    computed: int = 0


@dataclass
class FakeStepper:
    """Each step takes STEP_SECONDS of the fake clock; records which prompts each step ran."""

    clock: Clock
    steps: list[list[str]] = field(default_factory=list)
    on_step: Callable[[int], None] | None = None
    fail_on: str | None = None
    finished_together: list[list[str]] = field(default_factory=list)

    def start(
        self,
        request: GenerationRequest,
        on_preview: Callable[[int, Callable[[], list[bytes]]], None] | None = None,  # noqa: ARG002
    ) -> FakeState:
        return FakeState(request, request.steps)

    def steps_left(self, state: FakeState) -> int:
        return state.left

    def step(self, states: Sequence[FakeState]) -> None:
        if self.fail_on is not None and any(s.request.prompt == self.fail_on for s in states):
            raise RuntimeError("boom")
        self.clock.now += STEP_SECONDS
        self.steps.append([s.request.prompt for s in states])
        for state in states:
            state.left -= 1
            state.computed += 1
        if self.on_step is not None:
            self.on_step(len(self.steps))

    def finish(self, states: Sequence[FakeState]) -> list[Finished]:
        self.finished_together.append([s.request.prompt for s in states])
        return [Finished([s.request.prompt.encode()], 3, s.computed) for s in states]

    def preview(self, state: FakeState) -> Callable[[], list[bytes]]:
        computed = state.computed  # taken now, rendered later
        return lambda: [f"{state.request.prompt}@{computed}".encode()]


@dataclass
class Events:
    cancelled: set[str] = field(default_factory=set)
    answers: list[str] = field(default_factory=list)
    refusals: list[tuple[str, Refusal, int]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    """Everything sent to any handle, in order: previews as their file, answers as the prompt."""
    preview_steps: list[int] = field(default_factory=list)
    """The steps done each preview says it was taken after, in the order they were sent."""

    def is_cancelled(self, handle: Any) -> bool:
        return handle in self.cancelled

    def answered(self, entry: Entry[Any], finished: Finished) -> None:  # noqa: ARG002
        self.answers.append(entry.request.prompt)
        self.sent.append(entry.request.prompt)

    def previewed(self, entry: Entry[Any], index: int, steps_done: int, files: list[bytes]) -> None:  # noqa: ARG002
        self.sent.append(f"{index}:{files[0].decode()}")
        self.preview_steps.append(steps_done)

    def refused(self, entry: Entry[Any], refusal: Refusal, message: str) -> None:  # noqa: ARG002
        self.refusals.append((entry.request.prompt, refusal, entry.steps_done))

    def admitted(self, entry: Entry[Any], now: float) -> None:
        pass

    def stepped(self, images: int, seconds: float) -> None:  # noqa: ARG002
        self.batch_sizes.append(images)


def request(
    prompt: str, steps: int, *, priority: int = 0, images: int = 1, partial_images: int = 0
) -> GenerationRequest:
    return GenerationRequest(
        prompt, "", steps, 1.0, 64, 64, 7, images, priority=priority, partial_images=partial_images
    )


def make_loop(
    capacity: int = 4, max_queued: int = 16, finisher: Executor | None = None
) -> tuple[StepLoop[Any], FakeStepper, Events]:
    clock = Clock()
    stepper = FakeStepper(clock)
    events = Events()
    loop: StepLoop[Any] = StepLoop(
        stepper, events, capacity=capacity, max_queued=max_queued, clock=clock, finisher=finisher
    )
    return loop, stepper, events


def submit(
    loop: StepLoop[Any], prompt: str, steps: int, *, deadline_s: float = 1000, **kw: Any
) -> None:
    now = loop.clock()
    assert loop.submit(request(prompt, steps, **kw), prompt, arrival=now, deadline=now + deadline_s)


def drain(loop: StepLoop[Any], rounds: int = 200) -> None:
    for _ in range(rounds):
        if not loop.run_once():
            return
    raise AssertionError("the loop did not become idle")


def first_step(stepper: FakeStepper, prompt: str) -> int:
    return next(i for i, ran in enumerate(stepper.steps, 1) if prompt in ran)


def test_a_request_arriving_mid_batch_starts_within_two_steps() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "long", 30)
    arrived_after: list[int] = []

    def arrive(step: int) -> None:
        if step == 5:
            submit(loop, "late", 4)
            arrived_after.append(step)

    stepper.on_step = arrive
    drain(loop)
    assert arrived_after == [5]
    assert first_step(stepper, "late") <= 5 + 2
    # It ran beside the long one and finished long before it.
    assert events.answers == ["late", "long"]
    assert max(events.batch_sizes) == 2


def test_earliest_deadline_first_under_contention() -> None:
    loop, _stepper, events = make_loop(capacity=1)
    submit(loop, "running", 3)
    loop.run_once()
    submit(loop, "d30", 2, deadline_s=30)
    submit(loop, "d10", 2, deadline_s=10)
    submit(loop, "d20", 2, deadline_s=20)
    drain(loop)
    assert events.answers == ["running", "d10", "d20", "d30"]


def test_higher_priority_overtakes_queued_lower_priority() -> None:
    loop, _stepper, events = make_loop(capacity=1)
    submit(loop, "running", 3)
    loop.run_once()
    submit(loop, "low-a", 2, deadline_s=20)
    submit(loop, "low-b", 2, deadline_s=30)
    submit(loop, "urgent", 2, deadline_s=100, priority=10)
    drain(loop)
    assert events.answers == ["running", "urgent", "low-a", "low-b"]


def test_an_infeasible_deadline_is_refused_before_any_step() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "measure", 2)
    drain(loop)  # now a step time is known (1 s)
    steps_before = len(stepper.steps)
    submit(loop, "hopeless", 30, deadline_s=10)
    drain(loop)
    assert events.refusals == [("hopeless", Refusal.INFEASIBLE, 0)]
    assert len(stepper.steps) == steps_before


def test_a_deadline_passing_mid_run_drops_only_that_request() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "neighbour", 10)
    submit(loop, "short-lived", 10, deadline_s=4.5)
    drain(loop)
    # Past its deadline (4.5 s) after the fifth step (5 s): dropped before the sixth.
    assert events.refusals == [("short-lived", Refusal.DEADLINE, 5)]
    assert events.answers == ["neighbour"]
    assert stepper.steps[-1] == ["neighbour"]


def test_a_cancelled_request_stops_at_the_next_step() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "neighbour", 10)
    submit(loop, "gone", 30)

    def disconnect(step: int) -> None:
        if step == 3:
            events.cancelled.add("gone")

    stepper.on_step = disconnect
    drain(loop)
    assert events.refusals == [("gone", Refusal.CANCELLED, 3)]
    assert sum("gone" in ran for ran in stepper.steps) == 3
    assert events.answers == ["neighbour"]


def test_a_full_pod_refuses_at_once() -> None:
    loop, _stepper, events = make_loop(max_queued=1)
    submit(loop, "first", 2)
    assert not loop.submit(request("second", 2), "second", arrival=0, deadline=100)
    assert events.refusals == [("second", Refusal.QUEUE_FULL, 0)]
    drain(loop)
    assert events.answers == ["first"]


def test_a_failed_step_answers_its_batch_and_the_loop_goes_on() -> None:
    loop, stepper, events = make_loop()
    stepper.fail_on = "bad"
    submit(loop, "bad", 2)
    submit(loop, "neighbour", 2)
    drain(loop)
    assert {(p, r) for p, r, _ in events.refusals} == {
        ("bad", Refusal.FAILED),
        ("neighbour", Refusal.FAILED),
    }
    stepper.fail_on = None
    submit(loop, "after", 2)
    drain(loop)
    assert events.answers == ["after"]


def test_held_counts_queued_and_running() -> None:
    loop, _stepper, _events = make_loop(capacity=1)
    submit(loop, "a", 2)
    submit(loop, "b", 2)
    assert loop.held == 2
    loop.run_once()
    assert loop.held == 2
    drain(loop)
    assert loop.held == 0


def test_requests_finishing_together_are_finished_in_one_call() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "a", 3)
    submit(loop, "b", 3)
    submit(loop, "c", 5)
    drain(loop)
    assert stepper.finished_together == [["a", "b"], ["c"]]
    assert events.answers == ["a", "b", "c"]


def test_a_finisher_thread_answers_in_finishing_order() -> None:
    with ThreadPoolExecutor(1) as finisher:
        loop, _stepper, events = make_loop(finisher=finisher)
        for name, steps in (("a", 3), ("b", 1), ("c", 2)):
            submit(loop, name, steps)
        drain(loop)
    assert events.answers == ["b", "c", "a"]
    assert loop.held == 0


def test_previews_are_sent_in_order_before_the_answer_on_the_finisher() -> None:
    with ThreadPoolExecutor(1) as finisher:
        loop, _stepper, events = make_loop(finisher=finisher)
        submit(loop, "a", 9, partial_images=2)
        submit(loop, "b", 4)
        drain(loop)
    # a's previews show its state after steps 3 and 6 (taken then, rendered on the finisher).
    assert events.sent == ["0:a@3", "b", "1:a@6", "a"]


class LaterExecutor(Executor):
    """Runs submitted work only when told to (a finisher that fell behind)."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.waiting.append(lambda: fn(*args, **kwargs))
        return Future()

    def run_all(self) -> None:
        for work in self.waiting:
            work()
        self.waiting.clear()


def test_no_preview_is_sent_after_the_final_answer() -> None:
    """A preview still waiting for the finisher when its request was dropped is never sent."""
    finisher = LaterExecutor()
    loop, _stepper, events = make_loop(finisher=finisher)
    submit(loop, "a", 12, partial_images=3, deadline_s=3.5)
    drain(loop)
    # The preview after step 3 was handed over; the deadline passed during step 4.
    assert len(finisher.waiting) == 1
    assert events.refusals == [("a", Refusal.DEADLINE, 4)]
    finisher.run_all()
    assert events.sent == []


def test_a_preview_sent_late_says_after_which_step_it_was_taken() -> None:
    """The finisher fell behind while the loop went on stepping: each preview is still sent
    with the steps done when it was taken, not those done when it left."""
    finisher = LaterExecutor()
    loop, _stepper, events = make_loop(finisher=finisher)
    submit(loop, "a", 9, partial_images=2)
    for _ in range(8):
        loop.run_once()
    assert len(finisher.waiting) == 2  # both previews wait; the loop is past step 6
    finisher.run_all()
    assert events.sent == ["0:a@3", "1:a@6"]
    assert events.preview_steps == [3, 6]


def test_a_cancelled_request_gets_no_more_previews() -> None:
    loop, stepper, events = make_loop()
    submit(loop, "a", 8, partial_images=3)

    def hang_up(step: int) -> None:
        if step == 3:
            events.cancelled.add("a")

    stepper.on_step = hang_up
    drain(loop)
    assert events.sent == ["0:a@2"]
    assert events.refusals == [("a", Refusal.CANCELLED, 3)]
