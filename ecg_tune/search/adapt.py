"""Fitting a search space to the data: what the data allows, asked of the registered parts.

The data decides two things a space file cannot know in advance: how long an input can be (the
longest record), and how far an option that a transform limits by the input length can go (the
wavelet's levels: `TRANSFORMS[...].option_limits`, keeping at least as many samples as the
space's models accept, `min_input_length`). This module knows no transform or model by name.

* Shipped spaces shrink to fit: input lengths capped at the longest record, limited options at
  the largest value any listed input length and option allows; the samplers then cap each
  trial at its own (search/samplers.py, through `trial_limits`).
* A user's own space is checked instead: a value that cannot work is a ConfigError naming the
  file and the key.

`adapt()` runs once per search (the pipeline calls it) and returns an `AdaptedSpace`: the declared
space, the effective one, the data facts and a note per changed parameter. The samplers,
`describe`, `make_plan` and the benchmarks take that value; the run folder keeps it as space.json
(`to_record` / `from_record`), so a report reads the real parameter kinds and scales.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ecg_tune.config import default_value
from ecg_tune.data import Dataset
from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS
from ecg_tune.search.parameters import Choice, Constant, IntRange, Parameter, ParameterBase, fmt
from ecg_tune.search.space import SearchSettings, SearchSpace, check_value
from ecg_tune.signal.transforms import TRANSFORMS, BatchTransform

# The trial's length when a space has no input_length: TrainConfig's None means the training
# median, and the training loop never goes below 16 samples.
_MIN_INPUT_LENGTH = 16


@dataclass(frozen=True)
class DataFacts:
    """What adapting a space needs to know about the data (lengths in samples).

    `median_length` is the training split's median: the input length TrainConfig's default
    (None) resolves to in the training loop; min and max are over all records.
    """

    n_records: int
    min_length: int
    median_length: int
    max_length: int
    classes: list[str]

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.median_length <= self.max_length:
            raise ValueError(
                f"DataFacts lengths must satisfy 1 <= min <= median <= max, got "
                f"{self.min_length}, {self.median_length}, {self.max_length}"
            )

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> DataFacts:
        lengths = dataset.records.lengths
        return cls(n_records=len(dataset.records), min_length=int(lengths.min()),
                   median_length=int(np.median(lengths[dataset.index("train")])),
                   max_length=int(lengths.max()), classes=list(dataset.records.classes))

    @property
    def default_input_length(self) -> int:
        return max(_MIN_INPUT_LENGTH, self.median_length)


# space.json's layout version: a reader refuses a record newer than it knows.
RECORD_FORMAT = 1


@dataclass(frozen=True)
class AdaptedSpace:
    """A space fitted to one data set (see the module docstring); made only by `adapt()`.

    `space` is the effective space: the declared one with its parameters and start points capped
    for this data; the samplers read its parameters, conditions and settings.
    """

    declared: SearchSpace
    space: SearchSpace
    facts: DataFacts
    notes: Mapping[str, str] = field(default_factory=dict)  # how adapting changed each parameter

    @property
    def parameters(self) -> Mapping[str, Parameter]:
        return self.space.parameters

    @property
    def search(self) -> SearchSettings:
        return self.space.search

    @property
    def start(self) -> tuple[dict[str, Any], ...]:
        return self.space.start

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def where(self) -> str:
        return self.space.where

    @property
    def is_grid(self) -> bool:
        return self.space.is_grid

    @property
    def min_input(self) -> int:
        """The shortest transform output every model the space may pick accepts."""
        return space_min_input(self.space.parameters)

    def to_record(self) -> dict[str, Any]:
        """space.json's content: the effective space as a space file would say it (each parameter
        with its kind, values or range, log scale and condition), the declared space, the facts and
        the notes."""
        return {"format": RECORD_FORMAT, **self.space.model_dump(mode="json"),
                "declared": self.declared.model_dump(mode="json"), "facts": asdict(self.facts),
                "notes": dict(self.notes)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str = "space.json") -> AdaptedSpace:
        """The value `to_record` wrote (ConfigError naming `where` when it is not one)."""
        from pydantic import ValidationError

        from ecg_tune.errors import validation_message

        if not isinstance(record.get("format"), int) or record["format"] > RECORD_FORMAT:
            raise ConfigError(f"{where}: format {record.get('format')!r}: not a space record this version "
                              f"reads (format {RECORD_FORMAT} or older)")
        def space(dumped: Mapping[str, Any]) -> SearchSpace:
            fields = {key: value for key, value in dumped.items() if key in SearchSpace.model_fields}
            # A dump writes every parameter's `when`, {} included, which a space file may not say.
            fields["parameters"] = {key: {k: v for k, v in p.items() if k != "when" or v}
                                    for key, p in fields["parameters"].items()}
            return SearchSpace.model_validate(fields)

        try:
            return cls(declared=space(record["declared"]), space=space(record), facts=DataFacts(**record["facts"]),
                       notes=dict(record.get("notes") or {}))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {validation_message(exc)}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not a space record ({type(exc).__name__}: {exc})") from None


def adapt(space: SearchSpace, facts: DataFacts) -> AdaptedSpace:
    """The space fitted to this data. See the module docstring."""
    params: dict[str, ParameterBase] = dict(space.parameters)
    notes: dict[str, str] = {}
    where = space.where
    min_input = space_min_input(params)
    if space.shipped:
        if "input_length" in params:
            params["input_length"], note = _cap(params["input_length"], facts.max_length)
            if note:
                notes["input_length"] = f"capped at the longest record ({facts.max_length} samples)"
        for option, limits in _limit_table(params, facts, min_input).items():
            cap, lowest, at = max(limits), min(limits), limits[min(limits)]
            params[option], capped = _cap(params[option], cap)
            per_trial = (f"each trial capped at the deepest value its input length and options allow, as low as "
                         f"{lowest} ({at})") if lowest < max(params[option].possible()) else ""
            if capped or option not in notes:
                notes[option] = "; ".join(part for part in (f"capped at {cap}" if capped else "", per_trial) if part)
        for key, p in params.items():
            for value in p.possible():
                if value is not None:
                    try:
                        check_value(key, value)  # e.g. an input length capped below 16
                    except ValueError as exc:
                        raise ConfigError(f"{where}: {exc}") from None
    else:
        _check_user_space(space, params, facts, min_input)
    start = tuple(_fit_start(point, facts, space) for point in space.start)
    effective = space.model_copy(update={"parameters": params, "start": start})
    return AdaptedSpace(declared=space, space=effective, facts=facts, notes={k: v for k, v in notes.items() if v})


def _fit_start(point: dict[str, Any], facts: DataFacts, space: SearchSpace) -> dict[str, Any]:
    """A start point for this data: a shipped space's input length capped like the space's."""
    length = point.get("input_length")
    if length is None or length <= facts.max_length:
        return point
    if space.shipped:
        return {**point, "input_length": facts.max_length}
    raise ConfigError(f"{space.where}: start: input_length: {length} is longer than every record of this data "
                      f"(longest {facts.max_length} samples)")


def trial_limits(chosen: Mapping[str, Any], facts: DataFacts, min_input: int) -> dict[str, int]:
    """The largest usable value of each option the trial's transform limits, for the trial's
    input length and the values chosen so far (defaults for the rest)."""
    cls = _transform(chosen.get("transform", default_value("transform")))
    if not cls.limited_options:
        return {}
    length = chosen.get("input_length") or facts.default_input_length
    options = {key: chosen.get(key, default_value(key)) for key in cls.limited_by}
    return cls.option_limits(int(length), options, min_input)


def space_min_input(params: Mapping[str, ParameterBase]) -> int:
    """The shortest transform output every model the space may pick accepts."""
    models = _values_or_default(params, "model", None)
    return max(MODELS.get(str(name)).min_input_length for name in models)


# ----------------------------------------------------------------------------------------------


def _transform(name: object) -> type[BatchTransform]:
    return TRANSFORMS.get(str(name))


def _limit_table(params: Mapping[str, ParameterBase], facts: DataFacts, min_input: int) -> dict[str, dict[int, str]]:
    """Per limited option in the space: its limit for every combination of input length and
    the options the limit reads that a trial with the option present may use -> where."""
    table: dict[str, dict[int, str]] = {}
    for name in _values_or_default(params, "transform", None):
        cls = _transform(name)
        for option in cls.limited_options:
            if option not in params:
                continue
            target = params[option]
            lengths = [n if n is not None else facts.default_input_length
                       for n in _values_or_default(params, "input_length", target)]
            others = [_values_or_default(params, key, target) for key in cls.limited_by]
            for length, *values in itertools.product(lengths, *others):
                options = dict(zip(cls.limited_by, values, strict=False))
                limit = cls.option_limits(int(length), options, min_input)[option]
                where = ", ".join([*(f"{k} {fmt(v)}" for k, v in options.items()), f"{length} samples"])
                table.setdefault(option, {}).setdefault(limit, where)
    return table


def _check_user_space(space: SearchSpace, params: Mapping[str, ParameterBase], facts: DataFacts,
                      min_input: int) -> None:
    where = space.where
    p = params.get("input_length")
    if p is not None:
        longest = max((v for v in p.possible() if v is not None), default=None)
        if longest is not None and longest > facts.max_length:
            raise ConfigError(
                f"{where}: input_length: {longest} is longer than every record of this data "
                f"(longest {facts.max_length} samples); use at most {facts.max_length}")
    for name in _values_or_default(params, "transform", None):
        cls = _transform(name)
        for option in cls.limited_options:
            target = params.get(option)
            # A trial without the option uses its default, which must fit too.
            deepest = max(target.possible()) if target is not None else default_value(option)
            lengths = [n if n is not None else facts.default_input_length
                       for n in _values_or_default(params, "input_length", target)]
            others = [_values_or_default(params, key, target) for key in cls.limited_by]
            combos = [(int(n), dict(zip(cls.limited_by, values, strict=False)))
                      for n, *values in itertools.product(lengths, *others)]
            n, options = min(combos, key=lambda c: cls.option_limits(c[0], c[1], min_input)[option])
            allowed = cls.option_limits(n, options, min_input)[option]
            if deepest > allowed:
                source = "" if target is not None else " (the default; add it to the space)"
                shown = "".join(f" with {k} {fmt(v)}" for k, v in options.items())
                raise ConfigError(
                    f"{where}: {option}: {deepest}{source} is more than this data allows: at most "
                    f"{allowed} for input length {n}{shown} (transform {name}, keeping at least "
                    f"{min_input} samples for the models)")


def _cap(p: ParameterBase, cap: int) -> tuple[ParameterBase, bool]:
    """The parameter with its values capped at `cap` (duplicates removed), and whether it changed."""
    if isinstance(p, Choice):
        capped = list(dict.fromkeys(v if v is None else min(v, cap) for v in p.values))
        if capped != list(p.values):
            return p.model_copy(update={"values": tuple(capped)}), True
    elif isinstance(p, Constant) and p.value is not None and p.value > cap:  # type: ignore[operator]
        return p.model_copy(update={"value": cap}), True
    elif isinstance(p, IntRange) and p.high > cap:
        return p.model_copy(update={"low": min(p.low, cap), "high": cap}), True
    return p, False


def _values_or_default(params: Mapping[str, ParameterBase], key: str, target: ParameterBase | None) -> list[Any]:
    """The values `key` may take in a trial where `target` is present (None: any trial): its
    possible values, plus its default when it may be absent then."""
    p = params.get(key)
    if p is None:
        return [default_value(key)]
    values = p.possible()
    if p.when and not (target is not None and _implies(target.when, p.when)):
        values.append(default_value(key))
    return list(dict.fromkeys(values))


def _implies(a: Mapping[str, tuple[Any, ...]], b: Mapping[str, tuple[Any, ...]]) -> bool:
    """Whether condition `a` holding guarantees condition `b` holds."""
    return all(key in a and set(a[key]) <= set(b[key]) for key in b)
