"""Grouping Triton's dynamic batch into pipeline calls by shape."""

from __future__ import annotations

import pytest

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import PipelineCall, ShapeKey, plan_pipeline_calls

pytestmark = pytest.mark.unit

A = ShapeKey(64, 64, 2, 0.0)
B = ShapeKey(128, 64, 2, 0.0)
A_GUIDED = ShapeKey(64, 64, 2, 5.0)
A_MORE_STEPS = ShapeKey(64, 64, 4, 0.0)


def req(shape: ShapeKey, images: int = 1) -> GenerationRequest:
    return GenerationRequest(
        "p", "", shape.steps, shape.guidance_scale, shape.width, shape.height, 0, images
    )


@pytest.mark.parametrize(
    ("batch", "cap", "calls"),
    [
        pytest.param([], 8, [], id="empty batch makes no call"),
        pytest.param(
            [req(A), req(A), req(A)], 8, [PipelineCall(A, (0, 1, 2), 3)], id="same shape: one call"
        ),
        pytest.param(
            [req(A), req(B), req(A)],
            8,
            [PipelineCall(A, (0, 2), 2), PipelineCall(B, (1,), 1)],
            id="two sizes: two calls, each in arrival order",
        ),
        pytest.param(
            [req(A), req(A_GUIDED), req(A_MORE_STEPS)],
            8,
            [
                PipelineCall(A, (0,), 1),
                PipelineCall(A_GUIDED, (1,), 1),
                PipelineCall(A_MORE_STEPS, (2,), 1),
            ],
            id="guidance and steps are part of the shape",
        ),
        pytest.param(
            [req(A), None, req(A), None],
            8,
            [PipelineCall(A, (0, 2), 2)],
            id="rejected requests are left out",
        ),
        pytest.param(
            [req(A), req(A), req(A), req(A)],
            2,
            [PipelineCall(A, (0, 1), 2), PipelineCall(A, (2, 3), 2)],
            id="a group over the image cap is cut into calls",
        ),
        pytest.param(
            [req(A, images=3), req(A, images=2)],
            4,
            [PipelineCall(A, (0,), 3), PipelineCall(A, (1,), 2)],
            id="a request's images never straddle two calls",
        ),
        pytest.param(
            [req(A, images=6)],
            4,
            [PipelineCall(A, (0,), 6)],
            id="one request over the cap runs whole",
        ),
        pytest.param(
            [req(A), req(B), req(A), req(A)],
            2,
            [PipelineCall(A, (0, 2), 2), PipelineCall(B, (1,), 1), PipelineCall(A, (3,), 1)],
            id="calls run in the order of their first request",
        ),
    ],
)
def test_plan_pipeline_calls(
    batch: list[GenerationRequest | None], cap: int, calls: list[PipelineCall]
) -> None:
    assert plan_pipeline_calls(batch, cap) == calls


def test_every_valid_request_is_in_exactly_one_call() -> None:
    shapes = [A, B, A_GUIDED, A, B, A, A_MORE_STEPS, A]
    batch = [req(shape, images=1 + i % 3) for i, shape in enumerate(shapes)]
    calls = plan_pipeline_calls(batch, 4)
    members = sorted(m for call in calls for m in call.members)
    assert members == list(range(len(batch)))
    for call in calls:
        assert {ShapeKey.of(batch[m]) for m in call.members} == {call.shape}


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_pipeline_calls([req(A)], 0)
