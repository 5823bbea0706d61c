"""The kinds of search-space parameter, one pydantic model each, with its `when` condition.

    {type: choice, values: [...]}             each listed value          -> Choice
    {type: int, low: L, high: H}              whole numbers (step:, log:) -> IntRange
    {type: float, low: L, high: H, log: true} real numbers (step: w/o log) -> FloatRange
    {type: constant, value: x}  or just  x    always x                   -> Constant

`when: {param: value or [values], ...}` (all must hold) makes a parameter exist only when
earlier parameters took one of those values. The space that holds them is search/space.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None
KINDS = ("choice", "int", "float", "constant")


def fmt(value: object) -> str:
    """A parameter value as a space file would show it."""
    if value is None:
        return "null (training median)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ParameterBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: dict[str, tuple[Scalar, ...]] = Field(default_factory=dict)

    @field_validator("when", mode="before")
    @classmethod
    def _when_lists(cls, raw: object) -> object:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError(f"expected a mapping such as {{transform: wavelet}}, got {raw!r}")
        out = {}
        for key, allowed in raw.items():
            values = list(allowed) if isinstance(allowed, (list, tuple)) else [allowed]
            if not values:
                raise ValueError(f"{key}: the list of values is empty")
            out[key] = values
        return out

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the parameter exists given the values chosen so far (absent keys fail)."""
        return all(key in chosen and chosen[key] in allowed for key, allowed in self.when.items())

    def possible(self) -> list[Any]:
        """Every value a choice or constant can take (a range's two ends otherwise)."""
        raise NotImplementedError

    def can_take(self, value: object) -> bool:
        return value in self.possible()

    def shown(self) -> str:
        """The values as --dry-run shows them."""
        return ", ".join(fmt(v) for v in self.possible())


class Choice(ParameterBase):
    type: Literal["choice"] = "choice"
    values: tuple[Scalar, ...] = Field(min_length=1)

    @field_validator("values", mode="before")
    @classmethod
    def _a_list(cls, raw: object) -> object:
        if not isinstance(raw, (list, tuple)):
            raise ValueError(f"expected a list, e.g. [a, b], got {raw!r}")
        if not raw:
            raise ValueError("the list of choices is empty")
        if len({json.dumps(v) for v in raw}) != len(raw):
            raise ValueError(f"a value is listed twice in {list(raw)!r}")
        return raw

    def possible(self) -> list[Any]:
        return list(self.values)


class Constant(ParameterBase):
    type: Literal["constant"] = "constant"
    value: Scalar

    def possible(self) -> list[Any]:
        return [self.value]


class _Range(ParameterBase):
    """What IntRange and FloatRange share: two ends, a log scale, a `type` that each narrows to its
    own (declared here too so that the fields keep the order a space shows: type, low, high)."""

    log: StrictBool = False
    type: str
    low: int | float
    high: int | float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        low, high = self.low, self.high
        if low > high:
            raise ValueError(f"low {fmt(low)} is greater than high {fmt(high)}")
        if self.log and low <= 0:
            raise ValueError(f"log: a log range needs low > 0, got low {fmt(low)}")
        return self

    def possible(self) -> list[Any]:
        return [self.low, self.high]

    def can_take(self, value: object) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and self.low <= value <= self.high)

    def shown(self) -> str:
        text = f"{fmt(self.low)}..{fmt(self.high)}"
        step = getattr(self, "step", None)
        if self.log:
            text += " (log)"
        if step not in (None, 1):
            text += f" step {fmt(step)}"
        return text


class IntRange(_Range):
    type: Literal["int"] = "int"
    low: StrictInt
    high: StrictInt
    step: StrictInt = Field(1, ge=1)

    @model_validator(mode="after")
    def _log_step(self) -> IntRange:
        if self.log and self.step != 1:
            raise ValueError("step: Optuna cannot combine log with a step other than 1")
        return self


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


class FloatRange(_Range):
    type: Literal["float"] = "float"
    low: StrictInt | StrictFloat
    high: StrictInt | StrictFloat
    step: StrictInt | StrictFloat | None = Field(None, gt=0)

    _check_finite = field_validator("low", "high")(_finite)

    @model_validator(mode="after")
    def _log_step(self) -> FloatRange:
        if self.log and self.step is not None:
            raise ValueError("step: Optuna cannot combine log with a step")
        return self


Parameter = Annotated[Choice | IntRange | FloatRange | Constant, Field(discriminator="type")]


def fields_of(kind: str) -> list[str]:
    """The fields a parameter of this kind takes besides `type` and `when`."""
    models: dict[str, type[ParameterBase]] = {"choice": Choice, "int": IntRange, "float": FloatRange,
                                              "constant": Constant}
    return [f for f in models[kind].model_fields if f not in ("type", "when")]
