"""Loading a diffusers text-to-image pipeline from a model source.

- `file:///<path>`: a directory written by `save_pretrained`.
- `pvc://<claim>/<path>`: the claim is mounted read-only at `<pvc_root>/<claim>`.
- `hf://<org>/<name>[@<revision>]`: a pre-pulled Hugging Face cache; offline unless the tier
  sets `model.allowDownload` (then the token, if any, comes from HF_TOKEN or HF_TOKEN_PATH).
- `builtin://tiny`: the project's tiny random-weight pipeline, written once under
  `cache_dir` and loaded from there, so it takes the same `from_pretrained` path as the others.

Imports torch and diffusers: only the Triton model (and tests) import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image

from duotone_contracts.api.sources import ModelSource, parse_model_source
from duotone_runtime.tiny import ensure_tiny_pipeline

DEFAULT_PVC_ROOT = Path("/models")


class ModelLoadError(RuntimeError):
    """The model source cannot be turned into a pipeline; the message says why."""


@dataclass(frozen=True)
class ResolvedSource:
    """Where `from_pretrained` reads a model source from."""

    location: str
    """A directory, or a Hugging Face repo id (hf:// only)."""
    revision: str | None = None
    offline: bool = True


def resolve_source(
    source: str, *, pvc_root: Path, cache_dir: Path, allow_download: bool = False
) -> ResolvedSource:
    """Turn a model source into a `from_pretrained` location (builds the tiny pipeline once)."""
    parsed: ModelSource = parse_model_source(source)
    if parsed.kind == "hf":
        return ResolvedSource(
            location=parsed.location,
            revision=parsed.revision or None,
            offline=not allow_download,
        )
    if parsed.kind == "builtin":
        return ResolvedSource(location=str(ensure_tiny_pipeline(cache_dir / "builtin")))
    if parsed.kind == "pvc":
        directory = pvc_root / parsed.location / parsed.path
    else:
        directory = Path("/" + parsed.location.lstrip("/"))
    if not (directory / "model_index.json").is_file():
        raise ModelLoadError(
            f"model source {source}: {directory} holds no diffusers pipeline "
            "(model_index.json is missing); is the volume mounted?"
        )
    return ResolvedSource(location=str(directory))


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (float32, float16, bfloat16)."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ModelLoadError(f"dtype {name!r} must be one of {', '.join(dtypes)}")
    return dtypes[name]


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype a pipeline runs in on `device`: the spec's `model.dtype` on a GPU (the field is
    the GPU dtype), float32 on the CPU. Most CPUs have no half-precision matrix units and
    emulate them: on an AVX2 core without bfloat16 instructions the tiny pipeline took 1.9 s to
    decode one 64x64 image in bfloat16 and 0.03 s in float32."""
    return dtype if device.startswith("cuda") else "float32"


def load_pipeline(resolved: ResolvedSource, *, dtype: str, device: str) -> Any:
    """`AutoPipelineForText2Image.from_pretrained` onto `device` in `dtype`, offline by default.

    Offline means `local_files_only`: a missing file is an error, never a download.

    Attention runs through PyTorch's scaled_dot_product_attention (diffusers' default
    processor on torch 2), which `attention_backends` reports.
    """
    try:
        pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            resolved.location,
            revision=resolved.revision,
            dtype=torch_dtype(dtype),
            local_files_only=resolved.offline,
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load a pipeline from {resolved.location}: {error}") from error
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def attention_backends(pipeline: Any) -> set[str]:
    """Class names of the denoiser's attention processors (AttnProcessor2_0 is SDPA)."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    processors = getattr(denoiser, "attn_processors", {})
    return {type(processor).__name__ for processor in processors.values()}
