"""The ImageModelDeployment CRD, generated from the pydantic models (pure).

pydantic's JSON schema is close to a Kubernetes structural schema; this module closes the gap:
inline `$ref`s, turn `anyOf[X, null]` into an optional X, restore defaults pydantic leaves out
for `default_factory` fields (in full, as the API server validates them as written), drop keywords
Kubernetes refuses (`title`, `additionalProperties: false`, `propertyNames`), and attach the
CEL rules. `hack/generate.py` writes the result to `crds/`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from duotone_contracts.api import v1alpha1 as api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"

_DROPPED_KEYWORDS = ("title", "propertyNames")
# Readers of the generated YAML see what a field is before its bounds and children.
_KEY_ORDER = ("description", "type", "default", "enum", "required", "properties", "items")

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {
        "name": "Efficient",
        "type": "string",
        "description": "Ready/desired replicas of the efficient tier",
        "jsonPath": ".status.tiers.efficient.readiness",
    },
    {
        "name": "Flagship",
        "type": "string",
        "description": "Ready/desired replicas of the flagship tier",
        "jsonPath": ".status.tiers.flagship.readiness",
    },
    {
        "name": "P50",
        "type": "string",
        "description": "Observed median latency per tier",
        "jsonPath": ".status.p50",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _model_types(arg)


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`, by class name (pydantic's `$defs` keys)."""
    found: dict[str, type[BaseModel]] = {}
    pending = [root]
    while pending:
        cls = pending.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            pending.extend(_model_types(field.annotation))
    return found


def _dumped(value: Any) -> Any:
    """A default as the API server stores it: models (also inside lists) as their JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_dumped(item) for item in value]
    return value


def _factory_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Defaults pydantic omits from the schema: fields built by `default_factory`."""
    defaults: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        # In full: the API server checks a default against its object's rules as written,
        # without filling in the inner defaults first.
        defaults[field.alias or name] = _dumped(value)
    return defaults


class _Converter:
    def __init__(self, root: type[BaseModel], schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.classes = _model_classes(root)
        self.root = root

    def convert(self, node: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[1]
            return {**self.convert(self.defs[name], model=name), **self._fields(node)}
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"unsupported union in schema: {options}")
            if node.get("default", ...) is None:
                del node["default"]
            return {**self.convert(options[0]), **self._fields(node)}
        out = self._fields(node)
        if "properties" in out:
            cls = self.classes[model] if model else self.root
            factory_defaults = _factory_defaults(cls)
            properties = {}
            for key, prop in out["properties"].items():
                converted = self.convert(prop)
                if key in factory_defaults:
                    converted["default"] = factory_defaults[key]
                properties[key] = converted
            out["properties"] = properties
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(out["additionalProperties"])
        if "items" in out:
            out["items"] = self.convert(out["items"])
        first = {k: out[k] for k in _KEY_ORDER if k in out}
        return {**first, **{k: v for k, v in out.items() if k not in first}}

    @staticmethod
    def _fields(node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if k not in _DROPPED_KEYWORDS and k != "$defs"}
        if out.get("additionalProperties") is False:
            del out["additionalProperties"]
        if "const" in out:
            out["enum"] = [out.pop("const")]
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in out and not isinstance(out[bound], bool):
                out[bound.replace("exclusiveM", "m")] = out[bound]
                out[bound] = True
        return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Kubernetes structural schema of a pydantic model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _Converter(model, schema).convert(schema)


def openapi_schema() -> dict[str, Any]:
    """`openAPIV3Schema` of the ImageModelDeployment."""
    status = structural_schema(api.ImageModelDeploymentStatus)
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": api.ImageModelDeployment.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": api.MAX_NAME_LENGTH,
                        "x-kubernetes-validations": [api.NAME_RULE.to_crd()],
                    }
                },
            },
            "spec": structural_schema(api.ImageModelDeploymentSpec),
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "duotone"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }
