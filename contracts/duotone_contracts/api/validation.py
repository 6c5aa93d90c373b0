"""Turning manifests into typed values, with errors that name the field like the API server.

`parse_imd` is the one entry point the operator and the router use. Errors come back as
`FieldError`s whose text follows the API server's wording ("should be less than or equal to
100", "Required value", 'unknown field "spec.x"'), so a platform engineer sees the same words
from `kubectl apply`, from an operator condition, and from a unit test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from duotone_contracts.api.rules import RULE_ERROR_TYPE
from duotone_contracts.api.v1alpha1 import ImageModelDeployment

_JSON_TYPES = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "model_type": "object",
    "model_attributes_type": "object",
    "dict_type": "object",
    "list_type": "array",
}


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, e.g. `spec.tiers.efficient.replicas.min: ...`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidSpecError(ValueError):
    """A manifest that is not a valid ImageModelDeployment."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


def format_loc(loc: Sequence[int | str]) -> str:
    """`("spec", "tiers", "efficient")` -> `spec.tiers.efficient`; list indexes as `[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(error: ErrorDetails, field: str) -> str:  # noqa: PLR0911 - one return per kind
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == RULE_ERROR_TYPE:
        return str(error["msg"])
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return f'unknown field "{field}"'
    bounds = {
        "less_than_equal": ("less than or equal to", "le"),
        "greater_than_equal": ("greater than or equal to", "ge"),
        "less_than": ("less than", "lt"),
        "greater_than": ("greater than", "gt"),
        "multiple_of": ("a multiple of", "multiple_of"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"Invalid value: {error['input']!r}: should be {words} {ctx[key]}"
    if kind in ("literal_error", "enum"):
        return f"Unsupported value: {error['input']!r}: supported values: {ctx['expected']}"
    if kind == "string_too_long":
        return f"Too long: may not be more than {ctx['max_length']} bytes"
    if kind == "too_long":
        return f"Too many: must have at most {ctx['max_length']} items"
    if kind in _JSON_TYPES:
        return f"Invalid value: {error['input']!r}: must be of type {_JSON_TYPES[kind]}"
    return str(error["msg"])


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Translate a pydantic ValidationError into API-server style field errors."""
    errors = []
    for error in exc.errors():
        field = format_loc(error["loc"])
        if error["type"] == RULE_ERROR_TYPE:
            suffix = str((error.get("ctx") or {}).get("field_path", ""))
            field = (field + suffix) if field else suffix.lstrip(".")
        errors.append(FieldError(field=field, message=_message(error, field)))
    return errors


def parse_imd(manifest: Mapping[str, Any]) -> ImageModelDeployment:
    """Validate a manifest (as read from YAML or the API) into an ImageModelDeployment."""
    try:
        return ImageModelDeployment.model_validate(manifest)
    except ValidationError as exc:
        raise InvalidSpecError(field_errors(exc)) from None
