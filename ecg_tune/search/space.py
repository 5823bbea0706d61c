"""Search spaces as typed data: the settings and the space (its parameters: search/parameters.py).

A space is an ordered mapping of config keys (any `TrainConfig` key, part options included) to
parameters, plus the `search:` settings and a description. It can be written in Python

    SearchSpace.from_mapping({
        "model": {"type": "choice", "values": ["simple_cnn", "resnet1d"]},
        "depth": IntRange(low=2, high=8, when={"model": "resnet1d"}),
        "lr": FloatRange(low=1e-4, high=3e-3, log=True),
        "batch_size": 32,                       # a plain value is a constant
        "search": {"num_samples": 20},
    }, name="mine")

or read from a YAML file of the same shape (search/space_file.py). Parameter kinds (one pydantic
model each, in search/parameters.py): choice, int, float, constant.

A top-level `start:` list of partial configurations (keys of the space's parameters, values they
can take) runs first, in order; the keys a point leaves out are sampled as usual. `when: {param:
value or [values], ...}` (all must hold) makes a parameter exist only when
EARLIER parameters took one of those values; a parameter whose condition names an absent
parameter is absent too, and absent keys are left out of the trial's config (the config default
applies). Every value is validated by TrainConfig itself before any trial starts. An option a
transform limits by the input length (the wavelet's levels) must come after the parameters the
limit reads (input_length, wavelet).

Errors are one line naming the space (file) and the key. Fitting a space to the data is
search/adapt.py; the samplers are search/samplers.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ecg_tune.config import config_keys, is_whole_number, make_config
from ecg_tune.errors import ConfigError, problem_text
from ecg_tune.search.parameters import (
    KINDS,
    Choice,
    Constant,
    FloatRange,
    IntRange,
    Parameter,
    ParameterBase,
    Scalar,
    fields_of,
    fmt,
)
from ecg_tune.signal.transforms import TRANSFORMS

__all__ = ["Choice", "Constant", "CostCount", "FloatRange", "IntRange", "LatencyLimit", "Parameter", "ParameterBase",
           "SearchSettings", "SearchSpace", "check_grid", "check_value", "objective_names"]

RESERVED = ("description", "search", "start")

# The bounds of the search settings, declared once: the `search:` block of a space and the
# command-line options that override it (search/tuner.py's SearchOptions) both use these types.
MaxEpochs = Annotated[StrictInt, Field(ge=1)]  # epochs per trial = ASHA's max_t
GracePeriod = Annotated[StrictInt, Field(ge=1)]  # ASHA: epochs before a trial may be stopped
ReductionFactor = Annotated[StrictInt | StrictFloat, Field(gt=1)]  # ASHA keeps 1/this per rung
NumSamples = Annotated[StrictInt, Field(ge=1)]  # trials (a grid runs every config once)
TimeBudget = Annotated[StrictInt | StrictFloat, Field(gt=0)]  # seconds


def _whole(value: int | float) -> int:
    """A count given as 2e4 (a float on the command line) is the whole number it names."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected a whole number, got {value:g}")
    return int(value)


# Cost limits (training/costs.py): trials above them are not trained (parameters, MACs: checked on
# the config before training) or cannot be the best (latency: measured by the trial).
CostCount = Annotated[StrictInt | StrictFloat, Field(ge=1), AfterValidator(_whole)]
LatencyLimit = Annotated[StrictInt | StrictFloat, Field(gt=0)]  # milliseconds


def objective_names(value: object) -> object:
    """Objectives given as text ("val_cinc_f1,latency_ms") as a list of names; anything else as
    given (the field's type checks it). The names are checked against the data by search/plan.py."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


class SearchSettings(BaseModel):
    """The `search:` block: budget, scheduler, searcher (the command line may override them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: MaxEpochs = 8
    grace_period: GracePeriod = 1
    reduction_factor: ReductionFactor = 3
    num_samples: NumSamples = 20
    searcher: Literal["optuna", "grid"] = "optuna"
    time_budget: TimeBudget | None = None  # no new trials after it; running ones are stopped
    # ASHA's clock. "epochs": rungs at grace_period * reduction_factor**k epochs. "time": rungs at
    # grace_seconds * reduction_factor**k seconds of a trial's training (Tune's time_total_s), so a
    # configuration whose epoch costs ten times the median is compared with the others after the
    # same seconds, not after ten times as many; max_epochs still ends every trial.
    fidelity: Literal["epochs", "time"] = "epochs"
    grace_seconds: TimeBudget | None = None  # time fidelity; None: derived from the time budget (search/plan.py)
    # What ASHA's rungs rank trials by (a validation metric; None: the search's own metric). The
    # searcher, the best trial and the export always rank by the search's metric (search/rungs.py).
    rung_metric: str | None = None
    # TPE's random start-up trials (None: a quarter of a capped search, 2 to 10; 5 under a time
    # budget, where a laptop's few minutes start only a handful of trials on long records).
    startup_trials: NumSamples | None = None
    # Cost limits (None: none). The command line's --max-params, --max-macs, --max-latency-ms
    # override them.
    max_params: CostCount | None = None
    max_macs: CostCount | None = None
    max_latency_ms: LatencyLimit | None = None
    # Several objectives (a list, or "val_cinc_f1,latency_ms"): a multi-objective search, the first
    # a validation metric that ASHA's rungs and the best trial rank by (search/plan.py).
    objectives: tuple[str, ...] | None = None

    @field_validator("objectives", mode="before")
    @classmethod
    def _split_objectives(cls, value: object) -> object:
        return objective_names(value)

    @model_validator(mode="after")
    def _grace_within_budget(self) -> SearchSettings:
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period: {self.grace_period} is more than max_epochs {self.max_epochs}")
        return self


class SearchSpace(BaseModel):
    """A validated space, as declared; fitting it to the data (search/adapt.py) gives an `AdaptedSpace`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: dict[str, Parameter]  # in order: conditions and sampling follow it
    search: SearchSettings = Field(default_factory=SearchSettings)
    description: str = ""
    name: str = "space"
    where: str = "search space"  # how errors name the space (its file)
    shipped: bool = False  # shipped spaces shrink to fit the data; others are checked strictly
    # Partial configurations that run first, in order (keys left out are sampled).
    start: tuple[dict[str, Scalar], ...] = ()

    @property
    def is_grid(self) -> bool:
        return self.search.searcher == "grid"

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        known = config_keys()
        seen: dict[str, Any] = {}
        for key, p in self.parameters.items():
            if key not in known:
                raise ValueError(_unknown_parameter(key, known))
            if key == "epochs":
                # One budget, set in one place: ASHA's max_t is also the trainable's epoch count.
                raise ValueError("epochs: set the epochs per trial with `search: max_epochs`, not as a parameter")
            if isinstance(p, FloatRange) and is_whole_number(key):
                raise ValueError(f"{key}: type: {key} is a whole number; use type: int")
            _check_when(key, p, seen)
            for value in p.possible():
                check_value(key, value)
            seen[key] = p
        if not self.parameters:
            raise ValueError("defines no parameters")
        _check_limit_order(self.parameters)
        _check_start(self)
        if self.is_grid:
            check_grid(self)
        return self

    @classmethod
    def from_mapping(cls, raw: object, *, name: str = "space", where: str | None = None,
                     shipped: bool = False) -> SearchSpace:
        """A space from a plain mapping shaped like a space file (parameters, `search`,
        `description`); ConfigError naming `where` and the key for any problem."""
        where = where or name
        if raw is None:
            raise ConfigError(f"{where}: the file is empty; expected a mapping of parameters")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping of parameter names to definitions, "
                              f"got a {yaml_type(raw)}")
        parameters: dict[str, Any] = {}
        known = config_keys()
        for key, spec in raw.items():
            if key in RESERVED:
                continue
            if key not in known:  # whatever its value's shape: the name is what is wrong
                raise ConfigError(f"{where}: {_unknown_parameter(str(key), known)}")
            if isinstance(spec, list):
                raise ConfigError(f"{where}: {key}: a plain list is not a parameter; "
                                  f"write {{type: choice, values: [...]}}")
            if not isinstance(spec, (Mapping, ParameterBase)):
                spec = {"type": "constant", "value": spec}
            parameters[str(key)] = spec
        description = raw.get("description") or ""
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description: expected text, got a {yaml_type(description)}")
        try:
            return cls(parameters=parameters, search=raw.get("search") or {}, start=raw.get("start") or (),
                       description=description.strip(),
                       name=name, where=where, shipped=shipped)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {space_error(exc, parameters)}") from None


def yaml_type(value: object) -> str:
    return {list: "list", dict: "mapping", str: "text", bool: "true/false"}.get(type(value), type(value).__name__)


def _unknown_parameter(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown parameter{hint}; parameters are config keys, plus `description` and `search`"


def check_value(key: str, value: object) -> None:
    """Validate one value with TrainConfig's own rules (ValueError `key: problem`)."""
    try:
        make_config({key: value}, where="")
    except ConfigError as exc:
        message = str(exc).removeprefix(": ")
        # Field errors come back as "key: ..."; registry lookups (unknown model) with no key.
        message = message.removeprefix(f"{key}: ")
        raise ValueError(f"{key}: {message}") from None


def check_grid(space: SearchSpace) -> None:
    """A grid takes only choices and constants (ValueError naming the parameter)."""
    for key, p in space.parameters.items():
        if not isinstance(p, (Choice, Constant)):
            raise ValueError(f"{key}: a grid space (search: searcher: grid) takes only choices and "
                             f"constants, got type {p.type}")


def _check_when(key: str, p: ParameterBase, earlier: Mapping[str, ParameterBase]) -> None:
    for ref, allowed in p.when.items():
        if ref not in earlier:
            if ref in config_keys():
                why = "is not a parameter defined earlier (conditions may only name earlier parameters)"
            else:
                why = "is not a parameter of this space"
            raise ValueError(f"{key}: when: {ref}: {why}")
        for value in allowed:
            if not earlier[ref].can_take(value):
                raise ValueError(f"{key}: when: {ref}: {fmt(value)} is not a value {ref} can take "
                                 f"({earlier[ref].shown()})")


def _check_start(space: SearchSpace) -> None:
    """Start points name the space's parameters with values they can take, in conditions that hold."""
    if space.start and space.is_grid:
        raise ValueError("start: a grid space runs every point anyway; start points are for searcher optuna")
    for number, point in enumerate(space.start, 1):
        at = f"start: {number}"
        for key, value in point.items():
            p = space.parameters.get(key)
            if p is None:
                raise ValueError(f"{at}: {key}: not a parameter of this space (a start point only sets the "
                                 f"space's parameters)")
            if not p.can_take(value):
                raise ValueError(f"{at}: {key}: {fmt(value)} is not a value {key} can take ({p.shown()})")
            check_value(key, value)
            decided = all(ref in point for ref in p.when)
            if decided and not p.active(point):
                condition = " and ".join(f"{ref} in ({', '.join(fmt(v) for v in vs)})" for ref, vs in p.when.items())
                raise ValueError(f"{at}: {key}: exists only when {condition}")


def _check_limit_order(parameters: Mapping[str, ParameterBase]) -> None:
    # The samplers bound a limited option (levels) by the trial's input length and the options
    # its transform's limit reads, so those must already be chosen when it is reached.
    names = list(parameters)
    for name in TRANSFORMS.names():
        cls = TRANSFORMS.get(name)
        for option in cls.limited_options:
            if option not in parameters:
                continue
            for dep in ("input_length", *cls.limited_by):
                if dep in parameters and names.index(dep) > names.index(option):
                    raise ValueError(f"{option}: must come after {dep} (how far {option} can go "
                                     f"depends on it)")


# ----------------------------------------------------------------------------------------------
# pydantic's errors as one line naming the key


def space_error(exc: ValidationError, parameters: Mapping[str, Any]) -> str:
    """The first validation error as `key: problem`, in a space file's words."""
    errors = exc.errors()
    # An unknown field explains a "missing" one (`vals:` for `values:`): report it first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in error["loc"]]
    kind_of = None
    if loc[:1] == ["parameters"]:
        loc = loc[1:]
        if len(loc) >= 2 and loc[1] in KINDS:
            kind_of = loc.pop(1)
    # Union members (StrictInt | StrictFloat) show up as loc entries named after their type.
    loc = loc[:1] + [part for part in loc[1:] if part not in _UNION_MEMBERS]
    kind = error["type"]
    message = problem_text(error)
    given = error.get("input")
    if loc[:1] == ["search"] and kind == "extra_forbidden":
        known = list(SearchSettings.model_fields)
        close = difflib.get_close_matches(loc[1], known, n=1)
        # A close match is the likely fix; the whole list only when there is none (it is long).
        message = (f"unknown setting (did you mean {close[0]!r}?)" if close
                   else f"unknown setting; known: {', '.join(known)}")
    elif kind == "union_tag_not_found":
        message = f"missing `type:` (one of {', '.join(KINDS)})"
    elif kind == "union_tag_invalid":
        message = f"type: unknown type {error['ctx']['tag']!r}; expected one of {', '.join(KINDS)}"
    elif kind == "extra_forbidden" and kind_of is not None:
        allowed = ", ".join(["type", "when", *fields_of(kind_of)])
        message = f"unknown field for type {kind_of}; allowed: {allowed}"
    elif kind == "missing" and kind_of is not None:
        message = {"int": "a int range needs `low:` and `high:`", "float": "a float range needs `low:` and `high:`",
                   "constant": "a constant needs `value:`", "choice": "a choice needs `values:`"}[kind_of]
        loc = loc[:1]
    elif kind in ("int_type", "int_parsing", "float_type", "float_parsing") and kind_of in ("int", "float"):
        message = f"expected {'a whole number' if kind_of == 'int' else 'a number'}, got {given!r}"
    elif kind.startswith(("bool", "string", "none")) or kind == "is_instance_of":
        message = f"expected a single value (text, number, true/false), got a {yaml_type(given)}"
    elif kind == "literal_error" and loc[:1] == ["search"]:
        message = f"expected one of {error['ctx']['expected']}, got {given!r}"
    loc = [part for part in loc if not part.isdigit()]  # positions inside a list of values
    return ": ".join([*loc, message])


_UNION_MEMBERS = {"bool", "int", "float", "str", "none"}
