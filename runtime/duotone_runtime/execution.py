"""Running one pipeline call for a group of same-shape requests, timed by stage.

Each image gets its own CPU `torch.Generator` seeded from its request (image j of a request
with seed s uses s + j), so the initial noise of an image never depends on its neighbours.
Stage times come from forward hooks on the text encoders and the VAE decoder; denoising is
the rest of the pipeline call. Imports torch: only the Triton model (and tests) import it.

Edits run through the image-to-image and inpainting pipelines that diffusers derives from the
loaded one (`from_pipe`): the same modules, so the weights are in memory once. An inpainting
result keeps the input's pixels outside the mask exactly (they are pasted back after decoding:
the VAE's round trip would otherwise blur them). Output files are encoded on a small thread pool
(Pillow's encoders release the GIL), one image per task.
"""

from __future__ import annotations

import contextlib
import io
import time
import types
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
from PIL import Image

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import ShapeKey
from duotone_runtime.cpu_threads import MODEL_THREADS_ENV

STAGES = ("text_encoding", "denoising", "vae_decode", "png_encode")
"""Stages of a call; `png_encode` is the output encoding in whatever format was asked."""

ENCODE_THREADS = 4
"""Images encoded at once (Pillow releases the GIL while it compresses)."""


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
    """Image-steps computed: images x steps run (guidance doubles the UNet work, not the
    steps)."""
    prompt_tokens: list[int] = field(default_factory=list)
    """Per request: the tokens its prompt (and, under guidance, negative prompt) occupy."""


@dataclass
class StageClock:
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
    return encode_image(pixels, "png", 100)


JPEG_FULL_CHROMA_QUALITY = 90
"""From this quality on JPEG keeps full chroma resolution (4:4:4), below it halves it (4:2:0)."""


def encode_image(pixels: Any, output_format: str, compression: int) -> bytes:
    """One HxWx3 uint8 array as a file: PNG (lossless, fast deflate; `compression` unused),
    JPEG or WebP at quality `compression` (0-100)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if output_format == "jpeg":
        subsampling = 0 if compression >= JPEG_FULL_CHROMA_QUALITY else 2
        image.save(buffer, format="JPEG", quality=compression, subsampling=subsampling)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=compression, method=4)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def to_pixels(images: Any) -> Any:
    """A pipeline's float images in [0, 1] (N x H x W x 3) as uint8 pixels."""
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


def count_prompt_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` the model reads: special tokens included, truncated to the tokenizer's
    context (CLIP: 77), padding excluded; 0 for a pipeline without a tokenizer."""
    if tokenizer is None or not text:
        return 0
    limit = getattr(tokenizer, "model_max_length", None)
    ids = tokenizer(text, truncation=limit is not None, max_length=limit).input_ids
    return len(ids)


def _derived(factory: Any, pipeline: Any) -> Any:
    """The pipeline `factory.from_pipe` derives from `pipeline` (same modules), or None when
    the model family has no such pipeline."""
    try:
        derived = factory.from_pipe(pipeline)
    except (ValueError, TypeError, KeyError):
        return None
    derived.set_progress_bar_config(disable=True)
    return derived


class PipelineRunner:
    """Runs same-shape groups of requests through one loaded diffusers pipeline."""

    def __init__(self, pipeline: Any, *, device: str, batch_invariant: bool) -> None:
        self.pipeline = pipeline
        self.device = device
        synchronize: Callable[[], None] = (
            torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        )
        self.clock = StageClock(synchronize)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipeline, name, None)
            if isinstance(encoder, torch.nn.Module):
                self.clock.attach(encoder, "text_encoding")
        vae = getattr(pipeline, "vae", None)
        decoder = getattr(vae, "decoder", None)
        if isinstance(decoder, torch.nn.Module):
            self.clock.attach(decoder, "vae_decode")
        self.edit_pipelines: dict[str, Any] = {
            "image": _derived(AutoPipelineForImage2Image, pipeline),
            "inpaint": _derived(AutoPipelineForInpainting, pipeline),
        }
        """Edit mode -> its pipeline over the same modules (None: the model cannot do it)."""
        self._encoder = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode")
        self.batch_invariant_layers = 0
        if batch_invariant:
            for name in ("unet", "transformer", "vae"):
                part = getattr(pipeline, name, None)
                if isinstance(part, torch.nn.Module):
                    self.batch_invariant_layers += make_batch_invariant(part)

    def encode(self, pixels: Any, formats: Sequence[tuple[str, int]]) -> list[bytes]:
        """Each HxWx3 array of `pixels` as a file in its (format, compression), in parallel."""
        return list(
            self._encoder.map(
                lambda item: encode_image(item[0], *item[1]), zip(pixels, formats, strict=True)
            )
        )

    def prompt_tokens(self, request: GenerationRequest, *, guided: bool) -> int:
        """The tokens a request's prompt (and, guided, its negative prompt) occupies."""
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        negative = count_prompt_tokens(tokenizer, request.negative_prompt) if guided else 0
        return count_prompt_tokens(tokenizer, request.prompt) + negative

    def supports(self, mode: str) -> bool:
        """Whether this model can serve requests of `mode` ("generate", "image", "inpaint")."""
        return mode == "generate" or self.edit_pipelines.get(mode) is not None

    def run(
        self,
        shape: ShapeKey,
        requests: Sequence[GenerationRequest],
        on_step: Callable[[int, Any], None] | None = None,
    ) -> CallResult:
        """Generate every image of `requests` (all of `shape`) in one pipeline call; `on_step`
        gets the steps done and the latents after each denoising step (read them, do not
        change them)."""
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        inputs: list[Any] = []
        masks: list[Any] = []
        for request in requests:
            source = _pixels(request.image, request.width, request.height, 3)
            mask = _pixels(request.mask, request.width, request.height, 1)
            for seed in request.image_seeds():
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt)
                generators.append(torch.Generator("cpu").manual_seed(seed))
                inputs.append(source)
                masks.append(mask)
        # diffusers applies classifier-free guidance only above 1; below that the negative
        # prompt has no effect and is left out so the text encoder runs once per image.
        guided = shape.guidance_scale > 1.0
        arguments: dict[str, Any] = {
            "prompt": prompts,
            "negative_prompt": negatives if guided else None,
            "num_inference_steps": shape.steps,
            "guidance_scale": shape.guidance_scale,
            "generator": generators,
            "output_type": "np",
        }
        pipeline = self.pipeline
        if shape.mode == "generate":
            arguments |= {"width": shape.width, "height": shape.height}
        else:
            pipeline = self.edit_pipelines[shape.mode]
            if pipeline is None:
                raise ValueError(f"this model cannot serve {shape.mode} edits")
            arguments |= {"image": [Image.fromarray(i) for i in inputs], "strength": shape.strength}
            if shape.mode == "inpaint":
                arguments |= {
                    "mask_image": [
                        Image.fromarray(np.where(m[..., 0] > 0, 255, 0).astype(np.uint8))
                        for m in masks
                    ],
                    "width": shape.width,
                    "height": shape.height,
                }
        if on_step is not None:

            def step_ended(_pipe: Any, index: int, _t: Any, tensors: dict[str, Any]) -> Any:
                on_step(index + 1, tensors["latents"])
                return tensors

            arguments |= {
                "callback_on_step_end": step_ended,
                "callback_on_step_end_tensor_inputs": ["latents"],
            }
        self.clock.take()
        started = time.perf_counter()
        output = pipeline(**arguments)
        total = time.perf_counter() - started
        hooked = self.clock.take()
        stages = StageSeconds(
            text_encoding=hooked.get("text_encoding", 0.0),
            vae_decode=hooked.get("vae_decode", 0.0),
        )
        stages.denoising = max(0.0, total - stages.text_encoding - stages.vae_decode)

        started = time.perf_counter()
        pixels = to_pixels(output.images)
        if shape.mode == "inpaint":
            # Outside the mask the result is the input, exactly.
            pixels = np.stack(
                [np.where(m > 0, p, i) for p, i, m in zip(pixels, inputs, masks, strict=True)]
            )
        formats = [
            (r.output_format, r.output_compression) for r in requests for _ in r.image_seeds()
        ]
        files = self.encode(pixels, formats)
        stages.png_encode = time.perf_counter() - started

        per_request: list[list[bytes]] = []
        offset = 0
        for request in requests:
            per_request.append(files[offset : offset + request.num_images])
            offset += request.num_images
        tokens = [self.prompt_tokens(r, guided=guided) for r in requests]
        return CallResult(
            images=per_request,
            stages=stages,
            image_count=len(files),
            denoising_steps=sum(r.image_steps() for r in requests),
            prompt_tokens=tokens,
        )


def _pixels(data: bytes, width: int, height: int, channels: int) -> Any:
    """Raw bytes as a height x width x channels uint8 array (None when empty)."""
    if not data:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
