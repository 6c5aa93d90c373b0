"""The Images API's fields beyond the prompt: formats, background, edits' form fields, usage."""

from __future__ import annotations

import json

import pytest

from duotone_router.edits import EditImages
from duotone_router.images import (
    completed_event,
    error_event,
    generation_request,
    images_response,
    parse_edit_request,
    parse_images_request,
    partial_image_event,
    sse,
    usage,
)
from duotone_router.policy.reasons import Refused
from tests.support.builders import small_tier_route

pytestmark = pytest.mark.unit

TIER = small_tier_route()


def body(**fields: object) -> bytes:
    return json.dumps({"prompt": "a cat", **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"background": "transparent"}, "background", id="transparent background"),
        pytest.param({"output_format": "gif"}, "output_format", id="unknown format"),
        pytest.param({"output_compression": 101}, "output_compression", id="compression > 100"),
        pytest.param({"partial_images": 4}, "partial_images", id="too many partial images"),
        pytest.param({"moderation": "none"}, "moderation", id="unknown moderation"),
        pytest.param({"stream": True, "n": 2}, "n", id="several images streamed"),
        pytest.param({"stream": "yes"}, "stream", id="stream not a boolean"),
        pytest.param({"partial_images": -1}, "partial_images", id="negative partial images"),
    ],
)
def test_unsupported_values_are_refused_naming_the_field(
    fields: dict[str, object], param: str
) -> None:
    with pytest.raises(Refused) as refused:
        parse_images_request(body(**fields))
    assert refused.value.param == param


def test_opaque_and_auto_backgrounds_and_every_format_are_accepted() -> None:
    for background in ("auto", "opaque"):
        for fmt in ("png", "jpeg", "webp"):
            request = parse_images_request(
                body(background=background, output_format=fmt, output_compression=50)
            )
            served = generation_request(request, TIER, seed_if_missing=1)
            assert (served.output_format, served.output_compression) == (fmt, 50)


def test_edit_fields_arrive_as_text_and_are_read_as_numbers() -> None:
    request = parse_edit_request(
        {"prompt": "a cat", "n": "2", "seed": "7", "strength": "0.5", "output_compression": "40"}
    )
    assert (request.n, request.seed, request.strength, request.output_compression) == (
        2,
        7,
        0.5,
        40,
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"n": "two"}, "n", id="n not a number"),
        pytest.param({"strength": "0"}, "strength", id="strength zero"),
        pytest.param({"strength": "nan"}, "strength", id="strength nan"),
        pytest.param({"colour": "red"}, "colour", id="unknown field"),
    ],
)
def test_bad_edit_fields_name_the_field(fields: dict[str, str], param: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_edit_request({"prompt": "a cat", **fields})
    assert refused.value.param == param


def edit(width: int = 64, height: int = 64, *, sent: int = 1, largest: int = 100) -> EditImages:
    return EditImages(width, height, bytes(width * height * 3), b"", sent, largest)


def test_an_edit_takes_its_output_size_from_the_decoded_image() -> None:
    request = parse_edit_request({"prompt": "a cat", "steps": "4"})
    served = generation_request(request, TIER, seed_if_missing=1, edit=edit(128, 64))
    assert (served.width, served.height, served.mode, served.steps_run()) == (128, 64, "image", 3)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param(edit(sent=5), "5 files exceed the tier's limits.maxInputImages 4", id="count"),
        pytest.param(
            edit(largest=4 * 2**20 + 1),
            f"a file of {4 * 2**20 + 1} bytes exceeds the tier's limits.maxInputImageBytes",
            id="bytes",
        ),
    ],
)
def test_an_edit_beyond_the_tiers_file_limits_names_image(files: EditImages, message: str) -> None:
    request = parse_edit_request({"prompt": "a cat"})
    with pytest.raises(Refused) as refused:
        generation_request(request, TIER, seed_if_missing=1, edit=files)
    assert refused.value.param == "image"
    assert message in str(refused.value)


def test_edits_turned_off_name_image() -> None:
    closed = TIER.model_copy(
        update={"limits": TIER.limits.model_copy(update={"allow_edits": False})}
    )
    with pytest.raises(Refused) as refused:
        generation_request(
            parse_edit_request({"prompt": "x"}), closed, seed_if_missing=1, edit=edit()
        )
    assert refused.value.param == "image"


def test_the_response_says_what_was_made_and_its_usage() -> None:
    served = generation_request(
        parse_images_request(body(output_format="jpeg", n=2, steps=3)), TIER, seed_if_missing=1
    )
    answer = images_response(
        5, served, "flagship", [b"a", b"b"], prompt_tokens=7, image_steps=served.image_steps()
    )
    assert answer == {
        "created": 5,
        "data": [{"b64_json": "YQ=="}, {"b64_json": "Yg=="}],
        "background": "opaque",
        "output_format": "jpeg",
        "quality": "high",
        "size": "64x64",
        "usage": usage(7, 6),
    }
    assert usage(7, 6) == {
        "input_tokens": 7,
        "input_tokens_details": {"text_tokens": 7, "image_tokens": 0},
        "output_tokens": 6,
        "total_tokens": 13,
    }


def test_previews_are_asked_for_only_when_streaming() -> None:
    def partials(**fields: object) -> int:
        parsed = parse_images_request(body(**fields))
        return generation_request(parsed, TIER, seed_if_missing=1).partial_images

    assert partials(stream=True, partial_images=2) == 2
    assert partials(stream=True) == 0
    assert partials(partial_images=3) == 0
    assert partials(stream=False, partial_images=3) == 0


def test_streamed_events_have_openais_shape() -> None:
    served = generation_request(
        parse_images_request(body(output_format="webp", stream=True, partial_images=1)),
        TIER,
        seed_if_missing=1,
    )
    partial = partial_image_event("image_edit", 9, served, "efficient", b"p", index=0)
    assert partial == {
        "type": "image_edit.partial_image",
        "b64_json": "cA==",
        "background": "opaque",
        "created_at": 9,
        "output_format": "webp",
        "quality": "medium",
        "size": "64x64",
        "partial_image_index": 0,
    }
    done = completed_event(
        "image_generation", 10, served, "flagship", b"f", prompt_tokens=3, image_steps=4
    )
    assert done["type"] == "image_generation.completed"
    assert done["b64_json"] == "Zg=="
    assert done["usage"] == usage(3, 4)
    assert "partial_image_index" not in done
    assert (
        sse(partial)
        == b"event: image_edit.partial_image\ndata: "
        + json.dumps(partial, separators=(",", ":")).encode()
        + b"\n\n"
    )
    error = error_event({"error": {"message": "m", "type": "t", "param": None, "code": "c"}})
    assert error["type"] == "error"
    assert error["error"]["code"] == "c"
