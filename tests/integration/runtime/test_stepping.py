"""Step batching with the real tiny pipeline (torch on CPU, no Triton): a request's bytes do not
depend on its neighbours or on when it joined, and equal a whole-pipeline call's."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import ShapeKey
from duotone_runtime.execution import PipelineRunner
from duotone_runtime.step_loop import Entry, Finished, Refusal, StepLoop
from duotone_runtime.stepping import PipelineStepper, latent_preview, steps_by_step
from duotone_runtime.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def runner() -> PipelineRunner:
    return PipelineRunner(build_tiny_pipeline(), device="cpu", batch_invariant=True)


@dataclass
class Collect:
    answers: dict[str, Finished] = field(default_factory=dict)
    refusals: list[tuple[str, Refusal, str]] = field(default_factory=list)
    previews: list[tuple[str, int, int, list[bytes]]] = field(default_factory=list)
    """(handle, index, steps done, files) of each preview sent, in order."""
    order: list[tuple[str, str]] = field(default_factory=list)
    """(handle, "preview" or "answer") as they were sent."""

    def is_cancelled(self, handle: Any) -> bool:  # noqa: ARG002
        return False

    def answered(self, entry: Entry[Any], finished: Finished) -> None:
        self.answers[entry.handle] = finished
        self.order.append((entry.handle, "answer"))

    def previewed(self, entry: Entry[Any], index: int, steps_done: int, files: list[bytes]) -> None:
        self.previews.append((entry.handle, index, steps_done, files))
        self.order.append((entry.handle, "preview"))

    def refused(self, entry: Entry[Any], refusal: Refusal, message: str) -> None:
        self.refusals.append((entry.handle, refusal, message))

    def admitted(self, entry: Entry[Any], now: float) -> None:
        pass

    def stepped(self, images: int, seconds: float) -> None:
        pass


def request(
    prompt: str,
    seed: int,
    *,
    steps: int = 6,
    guidance: float = 0.0,
    size: int = 64,
    images: int = 1,
    output_format: str = "png",
    partial_images: int = 0,
) -> GenerationRequest:
    return GenerationRequest(
        prompt,
        "blurry" if guidance > 1 else "",
        steps,
        guidance,
        size,
        size,
        seed,
        images,
        output_format=output_format,
        partial_images=partial_images,
    )


def whole(runner: PipelineRunner, r: GenerationRequest) -> list[bytes]:
    return runner.run(ShapeKey.of(r), [r]).images[0]


def run_loop(loop: StepLoop[Any], rounds: int = 500) -> None:
    for _ in range(rounds):
        if not loop.run_once():
            return
    raise AssertionError("the loop did not become idle")


def new_loop(runner: PipelineRunner, events: Collect, capacity: int = 8) -> StepLoop[Any]:
    return StepLoop(
        PipelineStepper(runner), events, capacity=capacity, max_queued=64, clock=time.monotonic
    )


def submit(loop: StepLoop[Any], name: str, r: GenerationRequest) -> None:
    now = time.monotonic()
    assert loop.submit(r, name, arrival=now, deadline=now + 600)


def test_the_tiny_pipeline_is_stepped(runner: PipelineRunner) -> None:
    assert steps_by_step(runner.pipeline)


@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_stepped_alone_equals_a_whole_call(runner: PipelineRunner, guidance: float) -> None:
    events = Collect()
    loop = new_loop(runner, events)
    target = request("a cat on a mat", 7, guidance=guidance, images=2)
    submit(loop, "target", target)
    run_loop(loop)
    assert events.answers["target"].files == whole(runner, target)
    assert events.answers["target"].image_steps == 12
    assert events.answers["target"].prompt_tokens > 0


def test_bytes_do_not_depend_on_neighbours_or_join_time(runner: PipelineRunner) -> None:
    target = request("a cat on a mat", 7, guidance=5.0, steps=5)
    reference = whole(runner, target)
    events = Collect()
    loop = new_loop(runner, events)
    submit(loop, "long", request("a long one", 1, steps=12, guidance=5.0))
    submit(loop, "other-size", request("bigger", 2, steps=8, size=128))
    for _ in range(3):
        loop.run_once()
    submit(loop, "target", target)  # joins a running batch at its fourth step
    submit(loop, "unguided", request("plain", 3, steps=4))
    run_loop(loop)
    assert not events.refusals
    assert events.answers["target"].files == reference
    assert events.answers["other-size"].files == whole(
        runner, request("bigger", 2, steps=8, size=128)
    )
    assert events.answers["long"].files != reference


def test_output_formats_in_step_mode(runner: PipelineRunner) -> None:
    events = Collect()
    loop = new_loop(runner, events)
    submit(loop, "jpeg", request("x", 1, steps=2, output_format="jpeg"))
    submit(loop, "webp", request("x", 1, steps=2, output_format="webp"))
    run_loop(loop)
    assert events.answers["jpeg"].files[0][:3] == b"\xff\xd8\xff"
    assert events.answers["webp"].files[0][8:12] == b"WEBP"


def test_an_edit_runs_as_one_call_in_the_loop(runner: PipelineRunner) -> None:
    size = 64
    image = bytes(range(256)) * (size * size * 3 // 256)
    edit = GenerationRequest("edit it", "", 4, 0.0, size, size, 5, 1, strength=0.5, image=image)
    events = Collect()
    loop = new_loop(runner, events)
    submit(loop, "neighbour", request("n", 9, steps=4))
    submit(loop, "edit", edit)
    run_loop(loop)
    assert events.answers["edit"].files == whole(runner, edit)
    assert events.answers["edit"].image_steps == 2
    assert events.answers["neighbour"].files == whole(runner, request("n", 9, steps=4))


def test_previews_come_at_evenly_spaced_steps_and_leave_the_answer_unchanged(
    runner: PipelineRunner,
) -> None:
    """Two previews of a 6-step request come after steps 2 and 4, in order, before its answer;
    they are images of the requested size and format, they differ from each other and from the
    answer, and the answer's bytes are those of a request without previews."""
    target = request("a cat on a mat", 7, guidance=5.0, partial_images=2, output_format="jpeg")
    plain = request("a cat on a mat", 7, guidance=5.0, output_format="jpeg")
    events = Collect()
    loop = new_loop(runner, events)
    submit(loop, "target", target)
    submit(loop, "neighbour", request("n", 9, steps=6))
    run_loop(loop)
    assert [(h, i, s) for h, i, s, _ in events.previews] == [("target", 0, 2), ("target", 1, 4)]
    assert events.order.index(("target", "answer")) > 1
    first, second = (files[0] for *_, files in events.previews)
    assert first[:3] == second[:3] == b"\xff\xd8\xff"
    for preview in (first, second):
        assert Image.open(io.BytesIO(preview)).size == (64, 64)
    answer = events.answers["target"].files
    assert len({first, second, answer[0]}) == 3
    assert answer == whole(runner, plain)


def test_a_preview_is_one_file_per_image() -> None:
    """The latent projection: N latents give N images of the requested size; SD's 4 channels
    go through the fixed RGB map (a zero latent is mid-grey)."""
    pixels = latent_preview(torch.zeros(2, 4, 8, 8), 64, 48)
    assert pixels.shape == (2, 48, 64, 3)
    assert pixels.dtype == np.uint8
    assert set(np.unique(pixels).tolist()) == {128}
    bright = latent_preview(torch.full((1, 4, 8, 8), -1.0), 64, 64)
    assert bright[0, 0, 0].tolist() != [128, 128, 128]


def test_an_edit_run_whole_sends_its_previews_while_it_runs(runner: PipelineRunner) -> None:
    """An edit (one pipeline call in the loop) gets its previews from the call's step callback,
    before its answer, and the answer is the call's bytes without previews."""
    size = 64
    image = bytes(range(256)) * (size * size * 3 // 256)
    edit = GenerationRequest(
        "edit it", "", 8, 0.0, size, size, 5, 1, strength=0.5, image=image, partial_images=2
    )
    events = Collect()
    loop = new_loop(runner, events)
    submit(loop, "edit", edit)
    run_loop(loop)
    # 4 of 8 steps run (strength 0.5): previews after steps 1 and 3.
    assert [(h, i, s) for h, i, s, _ in events.previews] == [("edit", 0, 1), ("edit", 1, 3)]
    assert events.order == [("edit", "preview"), ("edit", "preview"), ("edit", "answer")]
    first, second = (files[0] for *_, files in events.previews)
    assert first != second
    assert Image.open(io.BytesIO(first)).size == (64, 64)
    plain = GenerationRequest("edit it", "", 8, 0.0, size, size, 5, 1, strength=0.5, image=image)
    assert events.answers["edit"].files == whole(runner, plain)
