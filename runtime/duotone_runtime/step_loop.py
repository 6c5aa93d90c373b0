"""The step loop of a step-batched tier: one denoising step at a time over a changing batch.

`StepLoop` owns the requests of a tier pod in `batching.mode: step`. Triton's `execute` hands
each checked request to `submit` and returns at once (the model is decoupled); a thread calls
`run_once` again and again, and each call:

1. takes the requests submitted since the last call into the queue;
2. drops the ones whose client went away (cancelled), running or queued;
3. asks `step_policy.plan_step` what to do: drops running and queued requests past their
   deadline, refuses the queued ones that cannot finish in time before any step is computed,
   and admits queued ones into the running batch (the `Stepper` encodes their prompts and draws
   their initial noise);
4. computes one step for the whole running batch, and hands the requests that finished to the
   `finisher` (decoded together, one VAE call per image size, encoded and answered there while
   the loop computes the next step), and so the previews due after this step (a streamed
   request's `partial_images`, at `step_policy.preview_steps`): rendered and sent on the
   finisher too, so they leave in order, before the answer, and never after it.

What computes a step is a `Stepper` (`stepping.py` for diffusers pipelines; tests use fakes),
and what answers a request is a `LoopEvents` (the Triton adapter sends responses and counts
metrics), so this module has no torch and no Triton in it. Time comes from the `clock` given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from duotone_contracts.limits import GenerationRequest
from duotone_contracts.triton import DEADLINE_REFUSAL
from duotone_runtime.step_policy import Job, plan_step, preview_steps

STEP_TIME_WEIGHT = 0.3
"""Weight of the newest step in the step-time estimate (an exponential moving average)."""

State = TypeVar("State")


@dataclass(frozen=True)
class Finished:
    """A request's answer: its image files and what they cost."""

    files: list[bytes]
    prompt_tokens: int
    image_steps: int
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each stage (`execution.STAGES`) on this request's behalf."""


PreviewSink = Callable[[int, Callable[[], list[bytes]]], None]
"""Takes the steps a request run whole has done and the function that would render a preview
of it now; sends it if one is due then."""


class Stepper(Protocol[State]):
    """Computes requests step by step."""

    def start(self, request: GenerationRequest, on_preview: PreviewSink | None = None) -> State:
        """Prepare a request to join the running batch (encode its prompt, draw its noise). A
        request it runs whole, here, is offered to `on_preview` after each step."""
        ...

    def steps_left(self, state: State) -> int:
        """Steps it still needs (0: ready to finish)."""
        ...

    def step(self, states: Sequence[State]) -> None:
        """Advance every state by one denoising step (one batched model call where it can)."""
        ...

    def finish(self, states: Sequence[State]) -> list[Finished]:
        """Decode and encode requests whose steps are done (batched where it can), in order."""
        ...

    def preview(self, state: State) -> Callable[[], list[bytes]]:
        """A preview of where the state's denoising stands now: a function (called later, on
        the finisher) that renders one cheap approximate image file per image of the request.
        It must not change the state: the answer stays the same with or without previews."""
        ...


class Refusal(Enum):
    """Why a request was answered with an error instead of images."""

    CANCELLED = "cancelled"
    """Its client went away: it stopped at the next step."""
    DEADLINE = "deadline"
    """Its deadline passed while it was queued or running."""
    INFEASIBLE = "infeasible"
    """It could not finish by its deadline given the work ahead: refused before any step."""
    QUEUE_FULL = "queue_full"
    """The pod already held its most requests."""
    FAILED = "failed"
    """Computing it raised an error."""


REFUSAL_MESSAGES = {
    Refusal.CANCELLED: "request cancelled",
    Refusal.DEADLINE: "request timeout expired: its deadline passed after {steps} step(s)",
    Refusal.INFEASIBLE: (
        f"{DEADLINE_REFUSAL}: it cannot finish in time given the work ahead of it "
        "(refused before any step)"
    ),
    Refusal.QUEUE_FULL: "Exceeds maximum queue size",
}
"""The error text of each refusal: a missed deadline says "timeout", a full pod "queue size"
and an infeasible deadline `DEADLINE_REFUSAL`, the words the router classifies a Triton refusal
by (`duotone_router.backends.classify`)."""


@dataclass
class Entry(Generic[State]):
    """One request in the loop."""

    request: GenerationRequest
    handle: Any
    """The adapter's handle for answering it (Triton's response sender)."""
    job: Job
    state: State | None = None
    steps_done: int = 0
    joined_at_step: int | None = None
    """The loop's step count when it joined the running batch."""
    previews: tuple[int, ...] = ()
    """After which of its steps a preview is sent (`step_policy.preview_steps`)."""
    closed: bool = False
    """Its final answer (images or refusal) was sent: nothing more goes to its handle."""


class LoopEvents(Protocol):
    """How the loop answers requests and reports what it did."""

    def is_cancelled(self, handle: Any) -> bool: ...

    def answered(self, entry: Entry[Any], finished: Finished) -> None: ...

    def refused(self, entry: Entry[Any], refusal: Refusal, message: str) -> None: ...

    def admitted(self, entry: Entry[Any], now: float) -> None: ...

    def stepped(self, images: int, seconds: float) -> None: ...

    def previewed(self, entry: Entry[Any], index: int, steps_done: int, files: list[bytes]) -> None:
        """Send preview `index` of `entry`, taken after `steps_done` of its steps."""
        ...


class StepLoop(Generic[State]):
    """The step-batched scheduler of one model instance."""

    def __init__(
        self,
        stepper: Stepper[State],
        events: LoopEvents,
        *,
        capacity: int,
        max_queued: int,
        clock: Callable[[], float],
        finisher: Executor | None = None,
    ) -> None:
        self.stepper = stepper
        self.events = events
        self.capacity = capacity
        self.max_queued = max_queued
        self.clock = clock
        self.finisher = finisher
        """Where finished requests are decoded and answered (one worker keeps their order);
        None: on the loop's own thread, before the next step."""
        self.finishing = 0
        self.queued: list[Entry[State]] = []
        self.running: list[Entry[State]] = []
        self.steps = 0
        """Steps computed so far (one per `run_once` with a running batch)."""
        self.step_seconds = 0.0
        """The recent time of one step (0 until one was measured)."""
        self._inbox: list[Entry[State]] = []
        self._next_key = 0
        self._wake = threading.Condition()
        self._answering = threading.Lock()
        """Held while a request's handle is written to (the loop and the finisher both do)."""

    @property
    def held(self) -> int:
        """Requests in the loop, queued or running (what the autoscaler counts as executing)."""
        with self._wake:
            return len(self._inbox) + len(self.queued) + len(self.running) + self.finishing

    def submit(
        self, request: GenerationRequest, handle: Any, *, arrival: float, deadline: float
    ) -> bool:
        """Queue a checked request (any thread); False (and refused) when the pod is full."""
        with self._wake:
            full = len(self._inbox) + len(self.queued) >= self.max_queued
            if not full:
                self._next_key += 1
                job = Job(
                    key=self._next_key,
                    arrival=arrival,
                    deadline=deadline,
                    priority=request.priority,
                    steps_left=request.steps_run(),
                    images=request.num_images,
                )
                self._inbox.append(Entry(request, handle, job))
                self._wake.notify()
        if full:
            entry: Entry[State] = Entry(request, handle, Job(0, arrival, deadline, 0, 0, 0))
            self._refuse(entry, Refusal.QUEUE_FULL, REFUSAL_MESSAGES[Refusal.QUEUE_FULL])
        return not full

    def wait_for_work(self, timeout_s: float) -> None:
        """Block until a request is submitted (or `timeout_s` passes) when the loop is idle."""
        with self._wake:
            if not self._inbox and not self.queued and not self.running:
                self._wake.wait(timeout_s)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def run_once(self) -> bool:
        """One round: take, drop, plan, admit, step, answer. False when there was nothing to do."""
        with self._wake:
            self.queued.extend(self._inbox)
            self._inbox.clear()
        if not self.queued and not self.running:
            return False
        self._drop_cancelled()
        self._plan()
        if self.running:
            self._step()
        return True

    def _drop_cancelled(self) -> None:
        for group in (self.queued, self.running):
            for entry in [e for e in group if self.events.is_cancelled(e.handle)]:
                group.remove(entry)
                self._refuse(entry, Refusal.CANCELLED, REFUSAL_MESSAGES[Refusal.CANCELLED])

    def _plan(self) -> None:
        now = self.clock()
        running = [_with_steps(e.job, self._steps_left(e)) for e in self.running]
        plan = plan_step(
            [e.job for e in self.queued],
            running,
            capacity=self.capacity,
            now=now,
            step_seconds=self.step_seconds,
        )
        by_key = {e.job.key: e for e in (*self.queued, *self.running)}
        for key in plan.expired:
            entry = by_key[key]
            self._forget(entry)
            message = REFUSAL_MESSAGES[Refusal.DEADLINE].format(steps=entry.steps_done)
            self._refuse(entry, Refusal.DEADLINE, message)
        for key in plan.refuse:
            entry = by_key[key]
            self._forget(entry)
            self._refuse(entry, Refusal.INFEASIBLE, REFUSAL_MESSAGES[Refusal.INFEASIBLE])
        for key in plan.admit:
            entry = by_key[key]
            self.queued.remove(entry)
            entry.previews = preview_steps(entry.request.steps_run(), entry.request.partial_images)
            try:
                entry.state = self.stepper.start(entry.request, self._preview_sink(entry))
            except Exception as error:  # one request's failure must not stop the loop
                self._refuse(entry, Refusal.FAILED, _failure(error))
                continue
            entry.joined_at_step = self.steps
            self.running.append(entry)
            self.events.admitted(entry, self.clock())
        self._answer_finished()

    def _steps_left(self, entry: Entry[State]) -> int:
        if entry.state is None:
            return entry.job.steps_left
        return self.stepper.steps_left(entry.state)

    def _forget(self, entry: Entry[State]) -> None:
        if entry in self.queued:
            self.queued.remove(entry)
        if entry in self.running:
            self.running.remove(entry)
        entry.state = None

    def _step(self) -> None:
        stepping = [e for e in self.running if e.state is not None and self._steps_left(e) > 0]
        if stepping:
            started = self.clock()
            try:
                self.stepper.step([e.state for e in stepping if e.state is not None])
            except Exception as error:  # the batch failed: answer its requests, keep going
                for entry in stepping:
                    self._forget(entry)
                    self._refuse(entry, Refusal.FAILED, _failure(error))
                return
            seconds = self.clock() - started
            self.steps += 1
            for entry in stepping:
                entry.steps_done += 1
            self.step_seconds = (
                seconds
                if self.step_seconds == 0
                else STEP_TIME_WEIGHT * seconds + (1 - STEP_TIME_WEIGHT) * self.step_seconds
            )
            self.events.stepped(sum(e.request.num_images for e in stepping), seconds)
            for entry in stepping:
                if entry.steps_done in entry.previews and entry.state is not None:
                    render = self._preview_of(entry.state)
                    if render is not None:
                        self._offer_preview(entry, entry.steps_done, render)
        self._answer_finished()

    def _hand_over(self, work: Callable[..., None], *args: Any) -> None:
        """Run `work` on the finisher (in order with the answers), or here without one."""
        if self.finisher is None:
            work(*args)
        else:
            self.finisher.submit(work, *args)

    def _preview_sink(self, entry: Entry[State]) -> PreviewSink | None:
        if not entry.previews:
            return None

        def sink(steps_done: int, render: Callable[[], list[bytes]]) -> None:
            self._offer_preview(entry, steps_done, render)

        return sink

    def _offer_preview(
        self, entry: Entry[State], steps_done: int, render: Callable[[], list[bytes]]
    ) -> None:
        """Send the preview after `steps_done` steps if one is due then (on the finisher)."""
        if steps_done in entry.previews:
            index = entry.previews.index(steps_done)
            self._hand_over(self._send_preview, entry, index, steps_done, render)

    def _preview_of(self, state: State) -> Callable[[], list[bytes]] | None:
        try:
            return self.stepper.preview(state)
        except Exception:  # a preview is best effort: the request goes on without it
            return None

    def _send_preview(
        self, entry: Entry[State], index: int, steps_done: int, render: Callable[[], list[bytes]]
    ) -> None:
        try:
            files = render()
        except Exception:  # a preview is best effort: the request goes on without it
            return
        with self._answering:
            if not entry.closed:
                self.events.previewed(entry, index, steps_done, files)

    def _refuse(self, entry: Entry[State], refusal: Refusal, message: str) -> None:
        with self._answering:
            entry.closed = True
            self.events.refused(entry, refusal, message)

    def _answer_finished(self) -> None:
        done = [
            e for e in self.running if e.state is not None and self.stepper.steps_left(e.state) == 0
        ]
        if not done:
            return
        with self._wake:
            for entry in done:
                self.running.remove(entry)
            self.finishing += len(done)
        self._hand_over(self._finish, done)

    def _finish(self, done: list[Entry[State]]) -> None:
        try:
            answers = self.stepper.finish([e.state for e in done if e.state is not None])
        except Exception as error:
            for entry in done:
                entry.state = None
                self._refuse(entry, Refusal.FAILED, _failure(error))
        else:
            for entry, finished in zip(done, answers, strict=True):
                entry.state = None
                with self._answering:
                    entry.closed = True
                    self.events.answered(entry, finished)
        finally:
            with self._wake:
                self.finishing -= len(done)


def _with_steps(job: Job, steps_left: int) -> Job:
    return Job(job.key, job.arrival, job.deadline, job.priority, steps_left, job.images)


def _failure(error: Exception) -> str:
    return f"generation failed: {type(error).__name__}: {error}"
