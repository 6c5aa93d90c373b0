"""The Images API through the official SDK against real tiers: output formats, usage, edits
(image-to-image and inpainting), invalid edits and moderation.

The stack is the package's (tiny pipeline on CPU, 64x64 by default); every refused request is
checked against Triton's own request counters, so "never reached a backend" is measured.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image
from transformers import CLIPTokenizer

from duotone_runtime.tiny import MAX_TOKENS, byte_level_vocab
from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import reconfigure, router_metric, triton_requests

MAGIC = {
    "png": lambda data: data.startswith(b"\x89PNG\r\n\x1a\n"),
    "jpeg": lambda data: data.startswith(b"\xff\xd8\xff"),
    "webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
}


def client(stack: LocalStack) -> openai.OpenAI:
    assert stack.router is not None
    return openai.OpenAI(base_url=f"{stack.router.url}/v1", api_key="unused", max_retries=0)


def png(pixels: np.ndarray[Any, Any], mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def noise(height: int, width: int, seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def decoded(b64: str | None) -> bytes:
    assert b64 is not None
    return base64.b64decode(b64)


def tokens(prompt: str) -> int:
    """The prompt's tokens as the tiny pipeline's tokenizer counts them."""
    vocab, merges = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    return len(tokenizer(prompt, truncation=True, max_length=MAX_TOKENS).input_ids)


@pytest.mark.parametrize(
    ("output_format", "compression"), [("png", None), ("jpeg", 80), ("webp", 60)]
)
def test_each_output_format_with_its_fields_and_usage(
    stack: LocalStack, output_format: str, compression: int | None
) -> None:
    before = router_metric(
        stack, "duotone_router_usage_tokens_total", tier="efficient", kind="output"
    )
    extra: dict[str, Any] = {"output_compression": compression} if compression else {}
    result = client(stack).images.generate(
        prompt="a lighthouse at dusk",
        n=2,
        size="128x64",  # type: ignore[arg-type]
        output_format=output_format,  # type: ignore[arg-type]
        quality="low",
        background="opaque",
        moderation="low",
        extra_body={"seed": 5, "steps": 3},
        **extra,
    )
    assert result.data is not None
    files = [decoded(d.b64_json) for d in result.data]
    assert len(files) == 2
    assert all(MAGIC[output_format](f) for f in files)
    assert {Image.open(io.BytesIO(f)).size for f in files} == {(128, 64)}
    assert (result.output_format, result.size, result.quality) == (
        output_format,
        "128x64",
        "medium",
    )
    assert result.created > 0
    assert result.usage is not None
    assert result.usage.input_tokens == tokens("a lighthouse at dusk")
    assert result.usage.output_tokens == 2 * 3  # two images, three steps each
    assert result.usage.total_tokens == result.usage.input_tokens + 6
    after = router_metric(
        stack, "duotone_router_usage_tokens_total", tier="efficient", kind="output"
    )
    assert after - before == 6


def test_compression_changes_lossy_bytes_and_a_seed_repeats_them(stack: LocalStack) -> None:
    def jpeg(quality: int) -> bytes:
        result = client(stack).images.generate(
            prompt="a red kite",
            size="128x128",  # type: ignore[arg-type]
            output_format="jpeg",
            output_compression=quality,
            extra_body={"seed": 9, "tier": "efficient", "steps": 2},
        )
        assert result.data is not None
        return decoded(result.data[0].b64_json)

    high, low, again = jpeg(95), jpeg(10), jpeg(95)
    assert high == again
    assert len(low) < len(high)


def test_an_image_to_image_edit_keeps_size_format_and_seed(stack: LocalStack) -> None:
    source = png(noise(96, 96, seed=1))

    def edit() -> Any:
        return client(stack).images.edit(
            image=("photo.png", source, "image/png"),
            prompt="make it a watercolour",
            size="64x64",  # type: ignore[arg-type]
            output_format="webp",
            extra_body={"seed": 4, "steps": 4, "tier": "efficient"},
        )

    first, second = edit(), edit()
    assert first.data is not None
    assert second.data is not None
    image = decoded(first.data[0].b64_json)
    assert MAGIC["webp"](image)
    assert Image.open(io.BytesIO(image)).size == (64, 64)
    assert image == decoded(second.data[0].b64_json)  # same seed, same bytes
    assert first.size == "64x64"
    assert first.usage is not None
    assert first.usage.output_tokens == int(4 * 0.8)  # strength 0.8 redoes 3 of 4 steps


def test_inpainting_changes_only_the_masked_area(stack: LocalStack) -> None:
    pixels = noise(64, 64, seed=2)
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[16:48, 16:48] = 0  # the transparent square is the area to change
    mask = np.dstack([np.zeros((64, 64, 3), dtype=np.uint8), alpha])
    result = client(stack).images.edit(
        image=("photo.png", png(pixels), "image/png"),
        mask=("mask.png", png(mask, "RGBA"), "image/png"),
        prompt="a window",
        extra_body={"seed": 8, "steps": 3, "tier": "flagship"},
    )
    assert result.data is not None
    edited = np.asarray(Image.open(io.BytesIO(decoded(result.data[0].b64_json))).convert("RGB"))
    assert edited.shape == (64, 64, 3)
    keep = alpha == 255
    # PNG is lossless: outside the mask the pixels are the input's, with tolerance 0.
    assert np.array_equal(edited[keep], pixels[keep])
    changed = np.abs(edited[~keep].astype(int) - pixels[~keep].astype(int)).mean()
    assert changed > 10, f"inside the mask the image should change (mean difference {changed})"
    assert result.usage is not None
    assert result.usage.output_tokens == 3  # a mask redoes every step


@pytest.mark.parametrize(
    ("files", "fields", "param"),
    [
        pytest.param({"image": b"not an image at all"}, {}, "image", id="not-an-image"),
        pytest.param(
            {"image": png(noise(64, 64, 3)), "mask": png(np.zeros((32, 32, 4), np.uint8), "RGBA")},
            {},
            "mask",
            id="mask-of-the-wrong-size",
        ),
        pytest.param(
            {"image": png(noise(64, 64, 3)), "mask": png(noise(64, 64, 4))},
            {},
            "mask",
            id="mask-without-alpha",
        ),
        pytest.param({"images": [png(noise(16, 16, s)) for s in range(5)]}, {}, "image", id="5"),
        pytest.param({"image": png(noise(64, 64, 3))}, {"size": "60x64"}, "width", id="size"),
        pytest.param({"image": png(noise(64, 64, 3))}, {"steps": 1}, "strength", id="no-step"),
    ],
)
def test_invalid_edits_are_refused_naming_the_field_before_any_backend(
    stack: LocalStack, files: dict[str, Any], fields: dict[str, Any], param: str
) -> None:
    before = triton_requests(stack)
    image: Any = files.get("image") or [("i.png", f, "image/png") for f in files["images"]]
    if isinstance(image, bytes):
        image = ("i.png", image, "image/png")
    mask = ("m.png", files["mask"], "image/png") if "mask" in files else openai.NOT_GIVEN
    with pytest.raises(openai.APIStatusError) as refused:
        client(stack).images.edit(
            image=image,
            mask=mask,
            prompt="anything",
            extra_body={"tier": "efficient", **fields},
        )
    assert 400 <= refused.value.status_code < 500
    body: Any = refused.value.body
    assert body["param"] == param, body
    assert triton_requests(stack) == before  # nothing reached a tier


def efficient_limits(stack: LocalStack, **limits: Any) -> dict[str, Any]:
    """The router's tiers with the efficient tier's limits changed."""
    assert stack.router is not None
    tiers = stack.router.table["tiers"]
    efficient = tiers["efficient"]
    return {**tiers, "efficient": {**efficient, "limits": {**efficient["limits"], **limits}}}


def test_an_image_beyond_the_tiers_byte_limit_is_refused(stack: LocalStack) -> None:
    assert stack.router is not None
    original = stack.router.table["tiers"]
    reconfigure(stack, tiers=efficient_limits(stack, maxInputImageBytes=8192))
    try:
        before = triton_requests(stack)
        large = png(noise(64, 64, 5))  # noise does not compress: 12 KiB
        assert len(large) > 8192
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client(stack).images.edit(
                image=("i.png", large, "image/png"),
                prompt="anything",
                extra_body={"tier": "efficient", "steps": 4},
            )
        body: Any = refused.value.body
        assert body["param"] == "image"
        assert "limits.maxInputImageBytes 8192" in body["message"]
        assert triton_requests(stack) == before
    finally:
        reconfigure(stack, tiers=original)


def test_edits_switched_off_on_a_tier_are_refused(stack: LocalStack) -> None:
    assert stack.router is not None
    original = stack.router.table["tiers"]
    reconfigure(stack, tiers=efficient_limits(stack, allowEdits=False))
    try:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client(stack).images.edit(
                image=("i.png", png(noise(64, 64, 6)), "image/png"),
                prompt="anything",
                extra_body={"tier": "efficient", "steps": 4},
            )
        body: Any = refused.value.body
        assert (body["param"], "limits.allowEdits" in body["message"]) == ("image", True)
    finally:
        reconfigure(stack, tiers=original)


def test_moderation_blocks_before_any_backend_and_counts_per_key(stack: LocalStack) -> None:
    reconfigure(stack, moderation={"blockedTerms": ["forbidden thing", "nope"]})
    try:
        before = triton_requests(stack)
        blocked = router_metric(stack, "duotone_router_moderation_blocked_total", key="anonymous")
        for prompt in ("a FORBIDDEN   thing at night", "\uff2e\uff4f\uff50\uff45"):
            with pytest.raises(openai.BadRequestError) as refused:
                client(stack).images.generate(prompt=prompt, moderation="low")
            assert refused.value.code == "moderation_blocked"
            body: Any = refused.value.body
            assert body["param"] == "prompt"
        with pytest.raises(openai.BadRequestError):
            client(stack).images.edit(
                image=("i.png", png(noise(64, 64, 7)), "image/png"), prompt="nope"
            )
        # Whole words only: "nopes" and "forbidden things" are other words.
        allowed = client(stack).images.generate(prompt="nopes and forbidden things")
        assert allowed.data is not None
        assert triton_requests(stack) == before + 1
        after = router_metric(stack, "duotone_router_moderation_blocked_total", key="anonymous")
        assert after - blocked == 3
    finally:
        reconfigure(stack, moderation={"blockedTerms": []})
