"""Cross-field rules, declared once and enforced twice.

Each `Rule` carries a CEL expression that the Kubernetes API server evaluates at admission
(`x-kubernetes-validations` in the generated CRD) and the same rule as a Python predicate
that pydantic evaluates, so the operator and the router reject exactly what `kubectl apply`
rejects. `tests/unit/test_crd_agreement.py` checks that the two halves agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

RULE_ERROR_TYPE = "duotone_rule"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Rule:
    """One validation rule of an object, in CEL (for the API server) and in Python."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str = ""
    """Where the error points, relative to the object declaring the rule (e.g. ".min")."""

    def to_crd(self) -> dict[str, str]:
        """The rule as one entry of `x-kubernetes-validations`."""
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def check_rules(obj: object, rules: tuple[Rule, ...]) -> None:
    """Raise the first rule `obj` breaks as a pydantic error that remembers the field path."""
    for rule in rules:
        if not rule.holds(obj):
            raise PydanticCustomError(
                RULE_ERROR_TYPE, rule.message, {"field_path": rule.field_path}
            )


def _add_rules_to_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_crd() for rule in rules]


class SpecModel(BaseModel):
    """Base of every spec object: camelCase on the wire, strict types, unknown fields refused.

    Strictness mirrors the API server: `"5"` is not an integer there, so it is not one here.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra=_add_rules_to_schema,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        check_rules(self, type(self).rules)
        return self


class LenientModel(BaseModel):
    """Base of what Duotone writes and reads back: camelCase, unknown fields ignored, so an
    older reader accepts a newer writer's output (status, the routing table)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


class StatusModel(LenientModel):
    """Base of status objects: written by the operator, read leniently."""


def with_defaults(**defaults: Any) -> Callable[[type[M]], type[M]]:
    """Decorate a subclass that differs from its base only in defaults (the flagship tier's).

    Each keyword names an inherited field: a plain value becomes its default; a model class
    becomes its type and its default factory (a nested object with other defaults). Bounds,
    descriptions and rules stay the base's, so a bound changes in one place.
    e.g. `@with_defaults(steps=30)` on `class FlagshipRequestDefaults(RequestDefaults)`.
    """

    def decorate(cls: type[M]) -> type[M]:
        fields = cls.__pydantic_fields__
        for name, default in defaults.items():
            if name not in fields:
                raise TypeError(f"{cls.__name__} has no field {name!r} to give a default")
            field = copy.copy(fields[name])
            if isinstance(default, type) and issubclass(default, BaseModel):
                field.annotation = default
                field.default_factory = default
            else:
                field.default = default
            fields[name] = field
        cls.model_rebuild(force=True)
        return cls

    return decorate
