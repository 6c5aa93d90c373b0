"""Running one pipeline call for a group of same-shape requests, timed by stage.

Each image gets its own CPU `torch.Generator` seeded from its request (image j of a request
with seed s uses s + j), so the initial noise of an image never depends on its neighbours.
Stage times come from forward hooks on the text encoders and the VAE decoder; denoising is
the rest of the pipeline call. Imports torch: only the Triton model (and tests) import it.
"""

from __future__ import annotations

import contextlib
import io
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import ShapeKey
from duotone_runtime.cpu_threads import MODEL_THREADS_ENV

STAGES = ("text_encoding", "denoising", "vae_decode", "png_encode")


@dataclass
class StageSeconds:
    """Wall time of one pipeline call, split by stage."""

    text_encoding: float = 0.0
    denoising: float = 0.0
    vae_decode: float = 0.0
    png_encode: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {stage: getattr(self, stage) for stage in STAGES}


@dataclass(frozen=True)
class CallResult:
    """PNG files per request (in call order) and how the time was spent."""

    images: list[list[bytes]]
    stages: StageSeconds
    image_count: int
    denoising_steps: int
    """Image-steps computed: images x steps (guidance doubles the UNet work, not the steps)."""


@dataclass
class _StageClock:
    """Accumulates time spent inside hooked modules, per stage."""

    synchronize: Callable[[], None]
    seconds: dict[str, float] = field(default_factory=dict)
    _started: dict[int, float] = field(default_factory=dict)

    def attach(self, module: Any, stage: str) -> None:
        def before(mod: Any, _args: Any) -> None:
            self.synchronize()
            self._started[id(mod)] = time.perf_counter()

        def after(mod: Any, _args: Any, _output: Any) -> None:
            self.synchronize()
            started = self._started.pop(id(mod), None)
            if started is not None:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def make_batch_invariant(model: Any) -> int:
    """Run Conv2d, GroupNorm and Linear one contiguous sample at a time; returns layers changed.

    On CPU, oneDNN convolutions, GroupNorm (its kernel depends on the memory layout) and small
    matrix products (gemv for one row, gemm for several) round differently with the batch
    size, so a seed's pixels could change with its neighbours. Per-sample execution of these
    three layer types makes every image bitwise independent of its batch (checked by
    tests/integration/runtime/test_serving.py::test_seed_gives_the_same_bytes_in_any_batch).
    Attention, text encoding, the scheduler and Python overhead stay batched.
    """
    kinds = (torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.Linear)
    changed = 0
    for module in model.modules():
        if not isinstance(module, kinds):
            continue
        plain = type(module).forward

        def per_sample(self: Any, x: Any, *args: Any, _plain: Any = plain, **kwargs: Any) -> Any:
            if x.dim() < 2 or x.shape[0] == 1:
                return _plain(self, x.contiguous(), *args, **kwargs)
            return torch.cat(
                [_plain(self, x[i : i + 1].contiguous(), *args, **kwargs) for i in range(len(x))]
            )

        module.forward = types.MethodType(per_sample, module)  # type: ignore[method-assign]
        changed += 1
    return changed


@dataclass(frozen=True)
class TorchThreads:
    """torch's pool sizes after `apply_torch_threads`."""

    intra_op: int
    inter_op: int


def apply_torch_threads(environ: Mapping[str, str]) -> TorchThreads:
    """Size torch's pools from the launcher's count (`cpu_threads.MODEL_THREADS_ENV`); without
    it torch keeps its default of one thread per core of the node."""
    if value := environ.get(MODEL_THREADS_ENV):
        threads = int(value)
        torch.set_num_threads(threads)
        # Settable once, before any inter-op work; a pool already started keeps its size.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    return TorchThreads(torch.get_num_threads(), torch.get_num_interop_threads())


def encode_png(pixels: Any) -> bytes:
    """One HxWx3 uint8 array as a PNG file (fast compression: images are mostly entropy)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PipelineRunner:
    """Runs same-shape groups of requests through one loaded diffusers pipeline."""

    def __init__(self, pipeline: Any, *, device: str, batch_invariant: bool) -> None:
        self.pipeline = pipeline
        self.device = device
        synchronize: Callable[[], None] = (
            torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        )
        self._clock = _StageClock(synchronize)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipeline, name, None)
            if isinstance(encoder, torch.nn.Module):
                self._clock.attach(encoder, "text_encoding")
        vae = getattr(pipeline, "vae", None)
        decoder = getattr(vae, "decoder", None)
        if isinstance(decoder, torch.nn.Module):
            self._clock.attach(decoder, "vae_decode")
        self.batch_invariant_layers = 0
        if batch_invariant:
            for name in ("unet", "transformer", "vae"):
                part = getattr(pipeline, name, None)
                if isinstance(part, torch.nn.Module):
                    self.batch_invariant_layers += make_batch_invariant(part)

    def run(self, shape: ShapeKey, requests: Sequence[GenerationRequest]) -> CallResult:
        """Generate every image of `requests` (all of `shape`) in one pipeline call."""
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        for request in requests:
            for seed in request.image_seeds():
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt)
                generators.append(torch.Generator("cpu").manual_seed(seed))
        # diffusers applies classifier-free guidance only above 1; below that the negative
        # prompt has no effect and is left out so the text encoder runs once per image.
        guided = shape.guidance_scale > 1.0
        self._clock.take()
        started = time.perf_counter()
        output = self.pipeline(
            prompt=prompts,
            negative_prompt=negatives if guided else None,
            num_inference_steps=shape.steps,
            guidance_scale=shape.guidance_scale,
            width=shape.width,
            height=shape.height,
            generator=generators,
            output_type="np",
        )
        total = time.perf_counter() - started
        hooked = self._clock.take()
        stages = StageSeconds(
            text_encoding=hooked.get("text_encoding", 0.0),
            vae_decode=hooked.get("vae_decode", 0.0),
        )
        stages.denoising = max(0.0, total - stages.text_encoding - stages.vae_decode)

        started = time.perf_counter()
        pixels = (np.asarray(output.images) * 255).round().clip(0, 255).astype(np.uint8)
        pngs = [encode_png(image) for image in pixels]
        stages.png_encode = time.perf_counter() - started

        per_request: list[list[bytes]] = []
        offset = 0
        for request in requests:
            per_request.append(pngs[offset : offset + request.num_images])
            offset += request.num_images
        return CallResult(
            images=per_request,
            stages=stages,
            image_count=len(pngs),
            denoising_steps=len(pngs) * shape.steps,
        )
