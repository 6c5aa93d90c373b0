"""`builtin://tiny`: a tiny random-weight Stable Diffusion pipeline, built offline.

Every part is a real diffusers/transformers class (UNet 32/64 channels, 2-layer CLIP text
encoder, small VAE, a byte-level CLIP tokenizer built in memory), so the serving path is the
real one; only the weights are random. Weights come from a fixed seed, so two builds are
identical. The pipeline is written with `save_pretrained` and served through `from_pretrained`,
exactly like a model on a volume. A 64x64 image at 2 steps takes tens of milliseconds on CPU.
Imports torch: import this module only where the pipeline is needed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_SEED = 0
TINY_VERSION = "1"
"""Bump when the recipe changes so cached copies are rebuilt."""

MAX_TOKENS = 77
"""CLIP's context length: prompts are padded or truncated to it, as in real SD checkpoints."""


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP byte-level BPE vocabulary with no merges: every byte is a token.

    CLIP maps bytes to printable characters (GPT-2's table) and marks word ends with `</w>`, so
    the vocabulary is 256 byte tokens, 256 word-final byte tokens and the two special tokens.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in byte_chars:
            byte_chars[b] = chr(256 + extra)
            extra += 1
    chars = [byte_chars[b] for b in range(256)]
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, []


def build_tiny_pipeline() -> Any:
    """Build the tiny pipeline in memory (float32, CPU) with weights from a fixed seed."""
    vocab, merges = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(  # type: ignore[no-untyped-call]
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
                layer_norm_eps=1e-5,
            )
        )
    # Euler (not ancestral) adds no noise after the initial latents: the seed alone fixes
    # the image.
    scheduler = EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ensure_tiny_pipeline(cache_dir: Path) -> Path:
    """Write the tiny pipeline under `cache_dir` once and return its directory."""
    target = cache_dir / f"tiny-v{TINY_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".tiny-v{TINY_VERSION}.{_unique_suffix()}"
    build_tiny_pipeline().save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished first; its copy is identical (same seed), keep it.
        _remove_tree(staging)
    return target


def _unique_suffix() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
