"""Grouping a dynamic batch into pipeline calls (pure).

A diffusers call takes one width, height, step count and guidance scale, and one mode (a
generation, an image-to-image edit of one strength, an inpainting edit of one strength), so
Triton's batch is split by that shape; prompts, negative prompts, seeds and an edit's images
vary freely inside a call. Groups keep arrival order, and a group larger than
`max_images_per_call` is cut into several calls (one request is never split: its images stay
together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from duotone_contracts.limits import GenerationRequest


@dataclass(frozen=True, order=True)
class ShapeKey:
    """What one pipeline call has in common."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    mode: str = "generate"
    strength: float = 1.0

    @classmethod
    def of(cls, request: GenerationRequest) -> ShapeKey:
        strength = 1.0 if request.mode == "generate" else request.strength
        return cls(
            request.width,
            request.height,
            request.steps,
            request.guidance_scale,
            request.mode,
            strength,
        )


@dataclass(frozen=True)
class PipelineCall:
    """One pipeline call: the positions (in Triton's batch) of the requests it serves."""

    shape: ShapeKey
    members: tuple[int, ...]
    images: int


def plan_pipeline_calls(
    requests: Sequence[GenerationRequest | None], max_images_per_call: int
) -> list[PipelineCall]:
    """Group the valid requests (None marks a rejected one) into pipeline calls.

    e.g. shapes [A, B, A, A] with 1 image each and at most 2 images per call give the calls
    A:[0, 2], B:[1], A:[3].
    """
    if max_images_per_call < 1:
        raise ValueError(f"max_images_per_call must be at least 1, got {max_images_per_call}")
    open_calls: dict[ShapeKey, tuple[list[int], int]] = {}
    order: list[ShapeKey] = []
    calls: list[tuple[int, PipelineCall]] = []

    def close(key: ShapeKey) -> None:
        members, images = open_calls.pop(key)
        calls.append((members[0], PipelineCall(key, tuple(members), images)))

    for position, request in enumerate(requests):
        if request is None:
            continue
        key = ShapeKey.of(request)
        if key in open_calls and open_calls[key][1] + request.num_images > max_images_per_call:
            close(key)
        if key not in open_calls:
            open_calls[key] = ([], 0)
            order.append(key)
        members, images = open_calls[key]
        members.append(position)
        open_calls[key] = (members, images + request.num_images)
    for key in order:
        if key in open_calls:
            close(key)
    # Calls run in the order of their first request, so earlier arrivals finish first.
    return [call for _, call in sorted(calls, key=lambda item: item[0])]
