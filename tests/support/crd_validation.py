"""A local stand-in for the API server's validation of custom resources (test oracle).

It applies structural-schema defaults, checks the OpenAPI keywords the generated CRD uses, and
evaluates the `x-kubernetes-validations` CEL rules with cel-python, reporting errors in the API
server's words. Unit tests use it to check the pydantic models against the generated CRD in
milliseconds; `tests/e2e/test_crd_admission.py` checks the same cases against a real
kube-apiserver, which remains the authority.
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Callable
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from duotone_contracts.api.validation import FieldError

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_multiple(value: Any, factor: Any) -> bool:
    return bool(value % factor == 0)


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill defaults the way the API server does for structural schemas (in place)."""
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                value[key] = apply_defaults(prop, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _cel_input(schema: dict[str, Any], value: Any) -> Any:
    """Values as the API server hands them to CEL: `number` fields are doubles."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _cel_input(props.get(k, extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_cel_input(schema.get("items", {}), v) for v in value]
    return value


class CRDValidator:
    """Validates manifests against one CRD version's openAPIV3Schema."""

    def __init__(self, crd: dict[str, Any]) -> None:
        self.schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def program(self, expression: str) -> Any:
        """Compile a CEL expression once."""
        if expression not in self._programs:
            self._programs[expression] = self._env.program(self._env.compile(expression))
        return self._programs[expression]

    def validate(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
        """The defaulted object and every error, like a create request would see them."""
        obj = apply_defaults(self.schema, copy.deepcopy(manifest))
        errors: list[FieldError] = []
        self._check(self.schema, obj, "", errors)
        return obj, errors

    def _check(
        self, schema: dict[str, Any], value: Any, path: str, errors: list[FieldError]
    ) -> None:
        before = len(errors)
        kind = schema.get("type")
        if kind and (
            not isinstance(value, _PY_TYPES[kind])
            or (isinstance(value, bool) and kind in ("integer", "number"))
        ):
            errors.append(FieldError(path, f"Invalid value: {value!r}: must be of type {kind}"))
            return
        if isinstance(value, dict):
            self._check_object(schema, value, path, errors)
        elif isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                errors.append(
                    FieldError(path, f"Too many: must have at most {schema['maxItems']} items")
                )
            for i, item in enumerate(value):
                self._check(schema.get("items", {}), item, f"{path}[{i}]", errors)
        else:
            self._check_scalar(schema, value, path, errors)
        if len(errors) == before:
            self._check_rules(schema, value, path, errors)

    def _check_object(
        self, schema: dict[str, Any], value: dict[str, Any], path: str, errors: list[FieldError]
    ) -> None:
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(FieldError(_join(path, key), "Required value"))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(
                FieldError(path, f"Too many: must have at most {schema['maxProperties']} items")
            )
        for key, item in value.items():
            child = _join(path, key)
            if props is not None and key in props:
                self._check(props[key], item, child, errors)
            elif isinstance(extra, dict):
                self._check(extra, item, child, errors)
            elif props is not None and path != "metadata":  # the server owns metadata's fields
                errors.append(FieldError(child, f'unknown field "{child}"'))

    @staticmethod
    def _check_scalar(
        schema: dict[str, Any], value: Any, path: str, errors: list[FieldError]
    ) -> None:
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(f'"{v}"' for v in schema["enum"])
            errors.append(
                FieldError(path, f'Unsupported value: "{value}": supported values: {allowed}')
            )
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errors.append(
                    FieldError(path, f"Too long: may not be more than {schema['maxLength']} bytes")
                )
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errors.append(FieldError(path, f"should match '{schema['pattern']}'"))
            return
        checks: tuple[tuple[str, Callable[[Any, Any], bool], str], ...] = (
            ("maximum", operator.le, "less than or equal to"),
            ("minimum", operator.ge, "greater than or equal to"),
            ("multipleOf", _is_multiple, "a multiple of"),
        )
        for keyword, ok, words in checks:
            if keyword in schema and not ok(value, schema[keyword]):
                errors.append(
                    FieldError(
                        path, f"Invalid value: {value!r}: should be {words} {schema[keyword]}"
                    )
                )

    def _check_rules(
        self, schema: dict[str, Any], value: Any, path: str, errors: list[FieldError]
    ) -> None:
        rules = schema.get("x-kubernetes-validations", [])
        if not rules:
            return
        activation = {"self": json_to_cel(_cel_input(schema, value))}
        for rule in rules:
            field = (
                path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".")
            )
            try:
                result = self.program(rule["rule"]).evaluate(activation)
            except CELEvalError as exc:  # the API server reports these as invalid too
                errors.append(FieldError(field, f"rule {rule['rule']!r} failed to evaluate: {exc}"))
                continue
            if isinstance(result, CELEvalError):
                errors.append(
                    FieldError(field, f"rule {rule['rule']!r} failed to evaluate: {result}")
                )
            elif not bool(result):
                errors.append(FieldError(field, f'Invalid value: "object": {rule["message"]}'))
