"""Computing requests one denoising step at a time, for the step loop (`step_loop.py`).

`PipelineStepper` runs the Stable Diffusion family's denoising loop itself, the way diffusers'
`StableDiffusionPipeline.__call__` runs it, but with one state per request: its prompt
embeddings, its latents (initial noise from its own seeded generators), its own scheduler copy
and its position in its timesteps. A step is one UNet call over every running request of the
same image size, each at its own timestep, followed by each request's own scheduler step. With
the runtime's batch-invariant layers a request's pixels are bitwise the same whoever its
neighbours are and whenever it joined, and the same as a whole-pipeline call for its seed
(tests/integration/runtime/test_stepping.py).

Stage times are measured around the calls (not with the runner's forward hooks): decoding
runs on the loop's finisher thread while the next step runs, so the hooks' shared clock would
mix the two.

A preview (a streamed request's partial image) is the scheduler's current estimate of the
denoised latents (`pred_original_sample`, the noisy latents when the scheduler gives none)
projected to RGB by a fixed linear map (`LATENT_RGB_FACTORS`) and enlarged to the image's size:
a few thousand multiply-adds per latent pixel instead of a VAE decode, approximate by design.
Taking one reads the state and changes nothing, so the answer is the same with or without.
A request run as one call (below) gets its previews from the pipeline's step callback, while
the call runs, of its latents as they are (the pipeline exposes no denoised estimate; like the
stepped latents, each step's are a new tensor, so holding them is a snapshot).

Requests the loop cannot take apart run as one whole pipeline call when they are admitted
(between two steps): edits (image-to-image and inpainting) and pipelines outside the family
(`steps_by_step` is False: SDXL's extra conditioning, guidance-embedding UNets, transformers).
Imports torch: only the Triton model (and tests) import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import ShapeKey
from duotone_runtime.execution import CallResult, PipelineRunner, to_pixels
from duotone_runtime.step_loop import Finished, PreviewSink

LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
"""RGB of each of Stable Diffusion's 4 latent channels (a least-squares fit of the VAE's decode,
as used for latent previews); latents of another width are shown as their first 3 channels."""


def latent_preview(latents: Any, width: int, height: int) -> Any:
    """Approximate RGB pixels (N x height x width x 3, uint8) of scaled latents (N x C x h x w):
    the fixed linear projection, mapped from [-1, 1], enlarged (bilinear) to the image's size."""
    values = latents.detach().float().cpu()
    if values.shape[1] == len(LATENT_RGB_FACTORS):
        rgb = torch.einsum("nchw,cr->nhwr", values, torch.tensor(LATENT_RGB_FACTORS))
    else:
        rgb = values[:, :3].permute(0, 2, 3, 1)
    small = ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return np.stack(
        [
            np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
            for image in small
        ]
    )


def _denoised_estimate(output: Any) -> Any:
    """A scheduler step's estimate of the final latents (Euler, DDIM: pred_original_sample;
    LCM: denoised), or None when it gives none (DPM-Solver)."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


@dataclass
class RequestState:
    """One request between its admission and its answer."""

    request: GenerationRequest
    guided: bool
    embeddings: Any = None
    """Prompt embeddings (negative ones first under guidance), one row per image."""
    latents: Any = None
    denoised: Any = None
    """The scheduler's estimate of the final latents after the last step (for previews)."""
    scheduler: Any = None
    timesteps: Any = None
    index: int = 0
    generators: list[Any] = field(default_factory=list)
    extra_step: dict[str, Any] = field(default_factory=dict)
    whole: CallResult | None = None
    """The result of a request run as one pipeline call at admission."""
    stages: dict[str, float] = field(default_factory=dict)


def steps_by_step(pipeline: Any) -> bool:
    """Whether the stepper can run this pipeline's denoising loop step by step."""
    unet = getattr(pipeline, "unet", None)
    return (
        isinstance(pipeline, StableDiffusionPipeline)
        and unet is not None
        and unet.config.get("time_cond_proj_dim") is None
        and unet.config.get("addition_embed_type") is None
    )


class PipelineStepper:
    """The `step_loop.Stepper` over one loaded pipeline (through its `PipelineRunner`)."""

    def __init__(self, runner: PipelineRunner) -> None:
        self.runner = runner
        self.pipeline = runner.pipeline
        self.stepwise = steps_by_step(self.pipeline)

    def start(
        self, request: GenerationRequest, on_preview: PreviewSink | None = None
    ) -> RequestState:
        guided = request.guidance_scale > 1.0
        state = RequestState(request, guided)
        if request.mode != "generate" or not self.stepwise:
            if not self.runner.supports(request.mode):
                raise ValueError(f"this model cannot serve {request.mode} edits")
            on_step = None
            if on_preview is not None:

                def on_step(done: int, latents: Any) -> None:
                    on_preview(done, self._render(latents, request))

            state.whole = self.runner.run(ShapeKey.of(request), [request], on_step)
            return state
        pipeline = self.pipeline
        device = self.runner.device
        seeds = request.image_seeds()
        started = time.perf_counter()
        with torch.no_grad():
            positive, negative = pipeline.encode_prompt(
                [request.prompt] * len(seeds),
                device,
                1,
                guided,
                [request.negative_prompt] * len(seeds) if guided else None,
            )
        self.runner.clock.synchronize()
        state.stages = {"text_encoding": time.perf_counter() - started}
        state.embeddings = torch.cat([negative, positive]) if guided else positive
        scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        scheduler.set_timesteps(request.steps, device=device)
        state.scheduler = scheduler
        state.timesteps = scheduler.timesteps
        state.generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        # As the pipeline's prepare_latents, scaled by this request's own scheduler.
        factor = pipeline.vae_scale_factor
        shape = (
            len(seeds),
            pipeline.unet.config.in_channels,
            request.height // factor,
            request.width // factor,
        )
        noise = randn_tensor(
            shape, generator=state.generators, device=torch.device(device), dtype=positive.dtype
        )
        state.latents = noise * scheduler.init_noise_sigma
        state.extra_step = pipeline.prepare_extra_step_kwargs(state.generators, 0.0)
        return state

    def steps_left(self, state: RequestState) -> int:
        if state.whole is not None:
            return 0
        return len(state.timesteps) - state.index

    def step(self, states: Sequence[RequestState]) -> None:
        groups: dict[tuple[int, int], list[RequestState]] = {}
        for state in states:
            groups.setdefault((state.request.width, state.request.height), []).append(state)
        with torch.no_grad():
            for group in groups.values():
                self._step_group(group)

    def _step_group(self, group: Sequence[RequestState]) -> None:
        inputs, timesteps, embeddings = [], [], []
        for state in group:
            t = state.timesteps[state.index]
            doubled = torch.cat([state.latents] * 2) if state.guided else state.latents
            inputs.append(state.scheduler.scale_model_input(doubled, t))
            timesteps.append(t.expand(len(doubled)))
            embeddings.append(state.embeddings)
        noise = self.pipeline.unet(
            torch.cat(inputs),
            torch.cat(timesteps),
            encoder_hidden_states=torch.cat(embeddings),
            return_dict=False,
        )[0]
        offset = 0
        for state, given in zip(group, inputs, strict=True):
            predicted = noise[offset : offset + len(given)]
            offset += len(given)
            if state.guided:
                uncond, text = predicted.chunk(2)
                predicted = uncond + state.request.guidance_scale * (text - uncond)
            t = state.timesteps[state.index]
            output = state.scheduler.step(predicted, t, state.latents, **state.extra_step)
            state.latents = output.prev_sample
            state.denoised = _denoised_estimate(output)
            state.index += 1

    def preview(self, state: RequestState) -> Callable[[], list[bytes]]:
        """A preview of `state` now: its latents are taken here (the next step replaces them,
        it does not change them in place), rendered and encoded when called."""
        latents = state.latents if state.denoised is None else state.denoised
        if latents is None:
            raise ValueError("a request run as one call has no steps to preview")
        return self._render(latents, state.request)

    def _render(self, latents: Any, request: GenerationRequest) -> Callable[[], list[bytes]]:
        """Renders a preview of `latents` (taken as they are now) when called."""

        def render() -> list[bytes]:
            pixels = latent_preview(latents, request.width, request.height)
            formats = [(request.output_format, request.output_compression)] * len(pixels)
            return self.runner.encode(pixels, formats)

        return render

    def finish(self, states: Sequence[RequestState]) -> list[Finished]:
        """Decode the finished requests, one VAE call per image size, then encode every file
        on the runner's encoder pool."""
        answers: dict[int, Finished] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for position, state in enumerate(states):
            if state.whole is not None:
                answers[position] = Finished(
                    state.whole.images[0],
                    state.whole.prompt_tokens[0],
                    state.request.image_steps(),
                    state.whole.stages.as_dict(),
                )
            else:
                size = (state.request.width, state.request.height)
                groups.setdefault(size, []).append(position)
        for members in groups.values():
            group = [states[p] for p in members]
            for position, finished in zip(members, self._decode(group), strict=True):
                answers[position] = finished
        return [answers[p] for p in range(len(states))]

    def _decode(self, group: Sequence[RequestState]) -> list[Finished]:
        pipeline = self.pipeline
        started = time.perf_counter()
        with torch.no_grad():
            image = pipeline.vae.decode(
                torch.cat([s.latents for s in group]) / pipeline.vae.config.scaling_factor,
                return_dict=False,
                generator=[g for s in group for g in s.generators],
            )[0]
            image, nsfw = pipeline.run_safety_checker(
                image, self.runner.device, group[0].embeddings.dtype
            )
        denormalize = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
        images = pipeline.image_processor.postprocess(
            image, output_type="np", do_denormalize=denormalize
        )
        self.runner.clock.synchronize()
        decoded = time.perf_counter() - started
        started = time.perf_counter()
        formats = [
            (s.request.output_format, s.request.output_compression)
            for s in group
            for _ in range(s.request.num_images)
        ]
        files = self.runner.encode(to_pixels(images), formats)
        encoded = time.perf_counter() - started
        answers = []
        offset = 0
        for state in group:
            request = state.request
            # A request's share of the group's decode and encode time: its share of the images.
            share = request.num_images / len(files)
            stages = {
                **state.stages,
                "vae_decode": decoded * share,
                "png_encode": encoded * share,
            }
            answers.append(
                Finished(
                    files[offset : offset + request.num_images],
                    self.runner.prompt_tokens(request, guided=state.guided),
                    request.image_steps(),
                    stages,
                )
            )
            offset += request.num_images
        return answers
