"""Search-space files: loading, validation, adaptation to the data, and what the searchers take.

This module owns the YAML search-space format (top-level `search_spaces/*.yaml` are the shipped
spaces), the typed `SearchSpace` read from it, and the four views a search needs of it:

* `adapt(space, facts)`: the effective space for one dataset. Shipped spaces shrink to fit
  (input lengths capped at the longest record, wavelet levels at the deepest feasible level);
  a user's own file is checked instead, and a value that cannot work is a `ConfigError`.
* `define_by_run(space, facts)`: the function `OptunaSearch(space=fn)` calls per trial, which
  asks Optuna only for the parameters whose conditions hold.
* `grid(space, facts)`: every combination of the choices (the `seed_grid` space).
* `describe(space, facts)`: the text `--dry-run` prints.

File format (one mapping; parameters in order, each a `TrainConfig` field):

    description: free text shown by --dry-run
    search:                      # all optional
      max_epochs: 8              # epochs per trial = ASHA's max_t
      grace_period: 1            # ASHA: epochs before a trial may be stopped
      reduction_factor: 3        # ASHA: keep 1/reduction_factor at each rung
      num_samples: 20            # trials (optuna); a grid runs every config once
      searcher: optuna           # optuna | grid
    model: {type: choice, values: [simple_cnn, resnet1d]}
    depth: {type: int, low: 2, high: 8, step: 1, log: false, when: {model: resnet1d}}
    lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    batch_size: 32               # a plain scalar is a constant ({type: constant, value: 32})

`when: {param: value or [values], ...}` (all must hold) makes a parameter exist only when
earlier parameters took one of those values; a parameter whose condition names an absent
parameter is absent too, and absent keys are left out of the trial's config (TrainConfig's
default applies). Every value is validated by TrainConfig itself before any trial starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pywt
import yaml

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.errors import ConfigError
from ecg_tune.signal.transforms import max_wavelet_level

if TYPE_CHECKING:  # optuna is only needed by the caller that runs a study
    import optuna

__all__ = [
    "DataFacts",
    "Parameter",
    "SearchSettings",
    "SearchSpace",
    "SHIPPED_DIR",
    "adapt",
    "define_by_run",
    "describe",
    "grid",
    "load_space",
    "parse_space",
    "shipped_names",
    "optuna_trial_values",
]

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
RESERVED = ("description", "search")
KINDS = ("choice", "int", "float", "constant")
SEARCHERS = ("optuna", "grid")
# Fields each parameter type accepts besides `type` and `when`.
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "choice": ("values",),
    "int": ("low", "high", "log", "step"),
    "float": ("low", "high", "log", "step"),
    "constant": ("value",),
}
# The trial's length when a space has no input_length: TrainConfig's None means the training
# median, and training/loop.py never goes below 16 samples.
_MIN_INPUT_LENGTH = 16
# The `where` given to make_config when checking one value, stripped from its message again.
_PROBE = "<space value>"

Scalar = str | int | float | bool | None
Kind = Literal["choice", "int", "float", "constant"]


# ----------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class DataFacts:
    """What adapting a space needs to know about the data (lengths in samples).

    `median_length` should be the training split's median: it is the input length TrainConfig's
    default (None) resolves to in the training loop.
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
    def from_lengths(cls, lengths: Sequence[int], classes: Sequence[str]) -> "DataFacts":
        """Facts from the record lengths (use the training split's for the median)."""
        ordered = sorted(int(n) for n in lengths)
        if not ordered:
            raise ValueError("DataFacts needs at least one record length")
        mid = len(ordered) // 2
        # numpy's median (what TensorData.median_length uses), truncated to int like it.
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return cls(len(ordered), ordered[0], int(median), ordered[-1], [str(c) for c in classes])

    @property
    def default_input_length(self) -> int:
        return max(_MIN_INPUT_LENGTH, self.median_length)


@dataclass(frozen=True)
class Parameter:
    """One searchable TrainConfig key.

    Only the fields of its `kind` are meaningful: `values` (choice), `low`/`high`/`log`/`step`
    (int, float; step None = continuous float), `value` (constant). `when` maps earlier
    parameter names to the values that make this one exist. `note` says how adapt() changed it.
    """

    name: str
    kind: Kind
    values: tuple[Scalar, ...] = ()
    value: Scalar = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    note: str = ""

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether the parameter exists given the values chosen so far (absent keys fail)."""
        return all(key in chosen and chosen[key] in allowed for key, allowed in self.when.items())

    def possible(self) -> list[Scalar]:
        """Every value a choice or constant can take (a range's two ends otherwise)."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "constant":
            return [self.value]
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSettings:
    """The `search:` block: scheduler budget and searcher."""

    max_epochs: int = 8
    grace_period: int = 1
    reduction_factor: float = 3
    num_samples: int = 20
    searcher: Literal["optuna", "grid"] = "optuna"
    time_budget: float | None = None  # seconds; no new trials after it, running ones stopped


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated space file. `facts` is set on the result of adapt()."""

    name: str
    path: Path
    shipped: bool
    parameters: dict[str, Parameter]  # in file order, which conditions and sampling follow
    settings: SearchSettings
    description: str = ""
    where: str = ""  # how errors name the file
    facts: DataFacts | None = None

    @property
    def is_grid(self) -> bool:
        return self.settings.searcher == "grid"


# ----------------------------------------------------------------------------------------------
# Loading and validation


class _DuplicateKey(Exception):
    def __init__(self, key: object, first_line: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


class _SpaceLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads `1e-4` as a number.

    PyYAML silently keeps the last of two equal keys, so a parameter written twice would lose
    one definition without a word; and YAML 1.1 reads `1e-4` (no dot) as a string, the way
    most people write a learning rate.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are overrides by design
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def shipped_names() -> list[str]:
    """Names of the spaces in the repository's `search_spaces/` folder."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (`full`), or a space file by path (anything with a slash or a
    .yaml/.yml suffix). Raises ConfigError naming the file and key for any problem."""
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if not is_path:
        path = SHIPPED_DIR / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown search space {text!r}; shipped spaces: {', '.join(shipped_names())} "
                f"(or give the path of a .yaml file)"
            )
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{text}: search space file not found")
    shipped = path.resolve().parent == SHIPPED_DIR.resolve()
    where = f"search_spaces/{path.name}" if shipped else text
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpaceLoader)
    except _DuplicateKey as dup:
        raise ConfigError(
            f"{where}: {dup.key}: defined twice (lines {dup.first_line} and {dup.line})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read search space file ({exc})") from None
    return parse_space(raw, name=path.stem, path=path, shipped=shipped, where=where)


def parse_space(raw: object, *, name: str, path: Path, shipped: bool, where: str) -> SearchSpace:
    """Validate the parsed YAML of a space file (load_space reads the file)."""
    if raw is None:
        raise ConfigError(f"{where}: the file is empty; expected a mapping of parameters")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of parameter names to definitions, got a "
            f"{_yaml_type(raw)}"
        )
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description: expected text, got a {_yaml_type(description)}")
    settings = _parse_settings(raw.get("search"), where)

    parameters: dict[str, Parameter] = {}
    for key, spec in raw.items():
        if key in RESERVED:
            continue
        if not isinstance(key, str) or key not in TrainConfig.model_fields:
            raise ConfigError(
                f"{where}: {key}: unknown parameter{_did_you_mean(key, _field_names())}; "
                f"parameters are TrainConfig keys, plus `description` and `search`"
            )
        if key == "epochs":
            # One budget, set in one place: ASHA's max_t is also the trainable's epoch count.
            raise ConfigError(
                f"{where}: epochs: set the epochs per trial with `search: max_epochs`, "
                f"not as a parameter"
            )
        parameters[key] = _parse_parameter(where, key, spec, parameters)
    if not parameters:
        raise ConfigError(f"{where}: defines no parameters")

    _check_levels_order(where, parameters)
    if settings.searcher == "grid":
        for p in parameters.values():
            if p.kind not in ("choice", "constant"):
                raise ConfigError(
                    f"{where}: {p.name}: a grid space (search: searcher: grid) takes only "
                    f"choices and constants, got type {p.kind}"
                )
    return SearchSpace(name, path, shipped, parameters, settings, description.strip(), where)


def _parse_settings(raw: object, where: str) -> SearchSettings:
    if raw is None:
        return SearchSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: search: expected a mapping of settings, got a {_yaml_type(raw)}")
    known = [f.name for f in dataclasses.fields(SearchSettings)]
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{where}: search: {key}: unknown setting{_did_you_mean(key, known)}; "
                f"known: {', '.join(known)}"
            )
    for key in ("max_epochs", "grace_period", "num_samples"):
        if key in raw and (not _is_int(raw[key]) or raw[key] < 1):
            raise ConfigError(f"{where}: search: {key}: expected a whole number >= 1, got {raw[key]!r}")
    if "reduction_factor" in raw:
        rf = raw["reduction_factor"]
        if not _is_number(rf) or not rf > 1:
            raise ConfigError(f"{where}: search: reduction_factor: expected a number > 1, got {rf!r}")
    if "time_budget" in raw and raw["time_budget"] is not None and (
            not _is_number(raw["time_budget"]) or raw["time_budget"] <= 0):
        raise ConfigError(f"{where}: search: time_budget: expected seconds > 0, got {raw['time_budget']!r}")
    if "searcher" in raw and raw["searcher"] not in SEARCHERS:
        raise ConfigError(
            f"{where}: search: searcher: expected one of {', '.join(SEARCHERS)}, got {raw['searcher']!r}"
        )
    settings = SearchSettings(**raw)
    if settings.grace_period > settings.max_epochs:
        raise ConfigError(
            f"{where}: search: grace_period: {settings.grace_period} is more than "
            f"max_epochs {settings.max_epochs}"
        )
    return settings


def _parse_parameter(where: str, key: str, spec: object, earlier: dict[str, Parameter]) -> Parameter:
    at = f"{where}: {key}"
    if isinstance(spec, list):
        raise ConfigError(
            f"{at}: a plain list is not a parameter; write {{type: choice, values: [...]}}"
        )
    if not isinstance(spec, dict):
        _check_scalar(at, spec)
        _check_value(where, key, spec)
        return Parameter(key, "constant", value=spec)

    kind = spec.get("type")
    if kind is None:
        raise ConfigError(f"{at}: missing `type:` (one of {', '.join(KINDS)})")
    if kind not in KINDS:
        raise ConfigError(f"{at}: type: unknown type {kind!r}; expected one of {', '.join(KINDS)}")
    allowed = ("type", "when", *_KIND_FIELDS[kind])
    for name in spec:
        if name not in allowed:
            raise ConfigError(
                f"{at}: {name}: unknown field for type {kind}; allowed: {', '.join(allowed)}"
            )
    when = _parse_when(where, key, spec.get("when"), earlier)

    if kind == "constant":
        if "value" not in spec:
            raise ConfigError(f"{at}: a constant needs `value:`")
        _check_scalar(at, spec["value"])
        _check_value(where, key, spec["value"])
        return Parameter(key, "constant", value=spec["value"], when=when)

    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list):
            raise ConfigError(f"{at}: values: expected a list, e.g. [a, b], got {values!r}")
        if not values:
            raise ConfigError(f"{at}: values: the list of choices is empty")
        for v in values:
            _check_scalar(f"{at}: values", v)
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{at}: values: a value is listed twice in {values!r}")
        for v in values:
            _check_value(where, key, v)
        return Parameter(key, "choice", values=tuple(values), when=when)

    # int and float ranges
    for end in ("low", "high"):
        if end not in spec:
            raise ConfigError(f"{at}: a {kind} range needs `low:` and `high:`")
        v = spec[end]
        if kind == "int" and not _is_int(v):
            raise ConfigError(f"{at}: {end}: expected a whole number, got {v!r}")
        if not _is_number(v) or not math.isfinite(v):
            raise ConfigError(f"{at}: {end}: expected a number, got {v!r}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise ConfigError(f"{at}: low {low} is greater than high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{at}: log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{at}: log: a log range needs low > 0, got low {low}")
    step = spec.get("step")
    if step is not None:
        if kind == "int" and (not _is_int(step) or step < 1):
            raise ConfigError(f"{at}: step: expected a whole number >= 1, got {step!r}")
        if kind == "float" and (not _is_number(step) or not step > 0):
            raise ConfigError(f"{at}: step: expected a number > 0, got {step!r}")
        if log and step != 1:
            raise ConfigError(f"{at}: step: Optuna cannot combine log with a step other than 1")
    if kind == "int" and step is None:
        step = 1
    if kind == "float" and log:
        step = None
    if kind == "float" and key in _int_fields():
        raise ConfigError(f"{at}: type: {key} is a whole number; use type: int")
    _check_value(where, key, low)
    _check_value(where, key, high)
    return Parameter(key, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(where: str, key: str, raw: object, earlier: dict[str, Parameter]) -> dict[str, tuple[Scalar, ...]]:
    at = f"{where}: {key}: when"
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{at}: expected a mapping such as {{transform: wavelet}}, got {raw!r}")
    when: dict[str, tuple[Scalar, ...]] = {}
    for ref, allowed in raw.items():
        if ref not in earlier:
            if isinstance(ref, str) and ref in TrainConfig.model_fields:
                why = "is not a parameter defined earlier in the file (conditions may only name earlier parameters)"
            else:
                why = "is not a parameter of this space"
            raise ConfigError(f"{at}: {ref}: {why}")
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values:
            raise ConfigError(f"{at}: {ref}: the list of values is empty")
        target = earlier[ref]
        for v in values:
            _check_scalar(f"{at}: {ref}", v)
            if not _can_take(target, v):
                shown = ", ".join(_fmt(x) for x in target.possible())
                raise ConfigError(f"{at}: {ref}: {_fmt(v)} is not a value {ref} can take ({shown})")
        when[ref] = tuple(values)
    return when


def _can_take(p: Parameter, v: Scalar) -> bool:
    if p.kind in ("choice", "constant"):
        return v in p.possible()
    return _is_number(v) and p.low <= v <= p.high


def _check_levels_order(where: str, parameters: dict[str, Parameter]) -> None:
    # define_by_run bounds `levels` by the trial's input length and wavelet, so those must
    # already be chosen when it is reached.
    names = list(parameters)
    if "levels" not in parameters:
        return
    for dep in ("input_length", "wavelet"):
        if dep in parameters and names.index(dep) > names.index("levels"):
            raise ConfigError(
                f"{where}: levels: must come after {dep} in the file (the feasible number of "
                f"levels depends on it)"
            )


def _check_scalar(at: str, v: object) -> None:
    if not isinstance(v, (str, int, float, bool)) and v is not None:
        raise ConfigError(f"{at}: expected a single value (text, number, true/false), got a {_yaml_type(v)}")


def _check_value(where: str, key: str, value: object) -> None:
    """Validate one value with TrainConfig's own rules; the error names the file and the key."""
    try:
        make_config({key: value}, where=_PROBE)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{_PROBE}: ")
        # Field errors come back as "key: ...", whole-model checks as "config: ...", and
        # registry lookups (unknown model, transform, ...) with no key at all.
        for prefix in (f"{key}: ", "config: "):
            if message.startswith(prefix):
                message = message[len(prefix):]
                break
        raise ConfigError(f"{where}: {key}: {message}") from None


# ----------------------------------------------------------------------------------------------
# Adapting to the data


def adapt(space: SearchSpace, facts: DataFacts) -> SearchSpace:
    """The effective space for this data.

    Shipped spaces: input_length values capped at the longest record (duplicates removed; an
    int range's high capped and its low kept <= high), levels capped at the deepest level any
    listed (input length, wavelet) allows; define_by_run and grid then cap each trial's levels
    at its own input length and wavelet. A user's space is checked instead: an input length
    longer than every record, or levels deeper than the shortest input length and every listed
    wavelet allow, is a ConfigError. Idempotent.
    """
    params = dict(space.parameters)
    where = space.where
    if space.shipped:
        if "input_length" in params:
            params["input_length"] = _cap_input_length(params["input_length"], facts)
        if "levels" in params:
            lengths, wavelets = _candidates(params, facts, params["levels"])
            cap = max(_feasible_levels(n, w) for n in lengths for w in wavelets)
            params["levels"] = _cap_levels(params["levels"], cap, lengths, wavelets)
        for p in params.values():
            for v in p.possible():
                if v is not None:
                    _check_value(where, p.name, v)  # e.g. an input length capped below 16
    else:
        _check_user_space(where, params, facts)
    return dataclasses.replace(space, parameters=params, facts=facts)


def _cap_input_length(p: Parameter, facts: DataFacts) -> Parameter:
    longest = facts.max_length
    note = f"capped at the longest record ({longest} samples)"
    if p.kind == "choice":
        capped = _unique(v if v is None else min(v, longest) for v in p.values)
        if capped != list(p.values):
            return dataclasses.replace(p, values=tuple(capped), note=note)
    elif p.kind == "constant" and p.value is not None and p.value > longest:
        return dataclasses.replace(p, value=longest, note=note)
    elif p.kind == "int" and p.high > longest:
        return dataclasses.replace(p, low=min(p.low, longest), high=longest, note=note)
    return p


def _cap_levels(p: Parameter, cap: int, lengths: list[int], wavelets: list[str]) -> Parameter:
    per_trial = _per_trial_note(lengths, wavelets, p)
    if p.kind == "choice":
        capped = _unique(min(v, cap) for v in p.values)
        if capped != list(p.values):
            return dataclasses.replace(p, values=tuple(capped), note=_join(f"capped at {cap}", per_trial))
    elif p.kind == "constant" and p.value > cap:
        return dataclasses.replace(p, value=cap, note=_join(f"capped at {cap}", per_trial))
    elif p.kind == "int" and p.high > cap:
        return dataclasses.replace(p, low=min(p.low, cap), high=cap, note=_join(f"capped at {cap}", per_trial))
    # Unchanged: keep a note an earlier adapt() wrote, so adapting twice gives the same space.
    return p if p.note else dataclasses.replace(p, note=per_trial)


def _per_trial_note(lengths: list[int], wavelets: list[str], p: Parameter) -> str:
    top = max(p.possible())
    n, w = min(((n, w) for n in lengths for w in wavelets), key=lambda nw: _feasible_levels(*nw))
    lowest = _feasible_levels(n, w)
    if lowest >= top:
        return ""
    return (f"each trial capped at the deepest level its input length and wavelet allow, "
            f"as low as {lowest} ({w} at {n} samples)")


def _check_user_space(where: str, params: dict[str, Parameter], facts: DataFacts) -> None:
    p = params.get("input_length")
    if p is not None:
        longest = max((v for v in p.possible() if v is not None), default=None)
        if longest is not None and longest > facts.max_length:
            raise ConfigError(
                f"{where}: input_length: {longest} is longer than every record of this data "
                f"(longest {facts.max_length} samples); use at most {facts.max_length}"
            )
    levels = params.get("levels")
    if levels is not None:
        lengths, wavelets = _candidates(params, facts, levels)
        deepest = max(levels.possible())
    elif _may_be_wavelet(params):
        # Trials use TrainConfig's default levels, which must fit too.
        lengths, wavelets = _candidates(params, facts, None)
        deepest = TrainConfig.model_fields["levels"].default
    else:
        return
    n = min(lengths)
    w = min(wavelets, key=lambda name: _feasible_levels(n, name))
    feasible = _feasible_levels(n, w)
    if deepest > feasible:
        source = "" if levels is not None else " (TrainConfig's default; add levels to the space)"
        raise ConfigError(
            f"{where}: levels: {deepest}{source} is deeper than this data allows: at most "
            f"{feasible} for input length {n} with wavelet {w} (pywt's maximum, keeping at least "
            f"{MIN_MODEL_INPUT} approximation samples for the models)"
        )


def _candidates(params: dict[str, Parameter], facts: DataFacts, target: Parameter | None) -> tuple[list[int], list[str]]:
    """Input lengths and wavelets a trial with `target` present may use (defaults included
    when the parameter may be absent while `target` is present)."""
    # None (a listed `null`, or input_length absent) is the training median.
    lengths = [n if n is not None else facts.default_input_length
               for n in _values_or_default(params.get("input_length"), target, None)]
    wavelets = [str(w) for w in _values_or_default(
        params.get("wavelet"), target, TrainConfig.model_fields["wavelet"].default)]
    return lengths, wavelets


def _values_or_default(p: Parameter | None, target: Parameter | None, default: Scalar) -> list[Scalar]:
    if p is None:
        return [default]
    values = p.possible()
    if p.when and not (target is not None and _implies(target.when, p.when)):
        values.append(default)
    return values


def _implies(a: dict[str, tuple[Scalar, ...]], b: dict[str, tuple[Scalar, ...]]) -> bool:
    """Whether condition `a` holding guarantees condition `b` holds."""
    return all(key in a and set(a[key]) <= set(b[key]) for key in b)


def _may_be_wavelet(params: dict[str, Parameter]) -> bool:
    p = params.get("transform")
    return p is not None and "wavelet" in p.possible()


# The shortest transform output every model accepts (SimpleCNN's two convolutions need 5).
MIN_MODEL_INPUT = 8


def _feasible_levels(input_length: int, wavelet: str) -> int:
    """The deepest level pywt allows whose approximation still feeds every model."""
    level = max_wavelet_level(input_length, wavelet)
    while level > 1 and _approx_length(input_length, wavelet, level) < MIN_MODEL_INPUT:
        level -= 1
    # At least 1: TrainConfig needs levels >= 1; only wavelets far longer than the input reach 0.
    return max(1, level)


def _approx_length(input_length: int, wavelet: str, level: int) -> int:
    length, filter_length = input_length, pywt.Wavelet(wavelet).dec_len
    for _ in range(level):
        length = pywt.dwt_coeff_len(length, filter_length, "symmetric")
    return length


# ----------------------------------------------------------------------------------------------
# What the searchers take


class _DefineByRun:
    """The define-by-run function for `OptunaSearch(space=...)`; a class so it pickles.

    Calls `trial.suggest_*` for each present parameter, in file order, and returns the
    constants (Ray merges the returned dict over the suggested values).

    Levels: Optuna 5.0 accepts an int parameter whose low/high change from trial to trial
    (storage only checks the distribution's kind and log flag; TPE fits its Parzen estimator
    within the range asked now), so an int `levels` is suggested in
    [min(low, cap), min(high, cap)] with cap = max_wavelet_level(the trial's input length,
    its wavelet): every suggestion is feasible and is what Optuna records. A categorical's
    choices must NOT change between trials (Optuna raises), so a `levels` choice or constant
    is suggested from the fixed list and, if too deep for this trial, clamped in the returned
    dict (Optuna then records the unclamped value; the trial runs the clamped one).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: "optuna.trial.Trial") -> dict[str, Any]:
        facts = self.space.facts
        assert facts is not None
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for p in self.space.parameters.values():
            if not p.active(chosen):
                continue
            if p.kind == "constant":
                chosen[p.name] = constants[p.name] = p.value
            elif p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.values))
            elif p.kind == "int":
                low, high = p.low, p.high
                if p.name == "levels":
                    high = min(high, _trial_level_cap(chosen, facts))
                    low = min(low, high)
                chosen[p.name] = trial.suggest_int(p.name, low, high, step=p.step, log=p.log)
            else:
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
        clamped = _clamp_levels(chosen, facts)
        if clamped is not None:
            constants["levels"] = clamped
        return constants


def define_by_run(space: SearchSpace, facts: DataFacts) -> Callable[["optuna.trial.Trial"], dict[str, Any]]:
    """The `space=` argument of OptunaSearch for this space on this data.

    A trial's config is `{**trial.params, **returned}`; keys whose condition failed are absent.
    """
    return _DefineByRun(adapt(space, facts))


def optuna_trial_values(params: dict[str, Any], returned: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's config as Ray builds it: suggested values, then the returned dict over them."""
    return {**params, **(returned or {})}


def grid(space: SearchSpace, facts: DataFacts) -> list[dict[str, Any]]:
    """Every combination of the choice values, conditions respected, constants included.

    A parameter whose condition fails does not multiply the grid. Each config's levels are
    capped for its input length and wavelet; configs that become equal (short data) are kept
    once, so a grid may have fewer points than on long data (describe() says how many).
    """
    return _grid(space, facts)[0]


def _grid(space: SearchSpace, facts: DataFacts) -> tuple[list[dict[str, Any]], int]:
    space = adapt(space, facts)
    for p in space.parameters.values():
        if p.kind not in ("choice", "constant"):
            raise ConfigError(
                f"{space.where}: {p.name}: a grid takes only choices and constants, got type {p.kind}"
            )
    rows: list[dict[str, Any]] = [{}]
    for p in space.parameters.values():
        grown: list[dict[str, Any]] = []
        for row in rows:
            if p.active(row):
                grown.extend({**row, p.name: v} for v in p.possible())
            else:
                grown.append(row)
        rows = grown
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        clamped = _clamp_levels(row, facts)
        if clamped is not None:
            row = {**row, "levels": clamped}
        unique.setdefault(json.dumps(row, sort_keys=True), row)
    return list(unique.values()), len(rows) - len(unique)


def _trial_level_cap(chosen: dict[str, Any], facts: DataFacts) -> int:
    length = chosen.get("input_length") or facts.default_input_length
    wavelet = chosen.get("wavelet", TrainConfig.model_fields["wavelet"].default)
    return _feasible_levels(length, wavelet)


def _clamp_levels(chosen: dict[str, Any], facts: DataFacts) -> int | None:
    """The feasible levels for this trial if its (chosen or default) levels is too deep."""
    if chosen.get("transform", TrainConfig.model_fields["transform"].default) != "wavelet":
        return None
    levels = chosen.get("levels", TrainConfig.model_fields["levels"].default)
    cap = _trial_level_cap(chosen, facts)
    return cap if levels > cap else None


# ----------------------------------------------------------------------------------------------
# Description for --dry-run


def describe(space: SearchSpace, facts: DataFacts) -> str:
    """Parameters with their effective values and conditions, the settings, the grid size."""
    eff = adapt(space, facts)
    origin = "shipped, adapted to the data" if eff.shipped else "user file, checked against the data"
    lines = [f"Search space '{eff.name}' ({eff.where}; {origin})"]
    if eff.description:
        lines += [f"  {line}" for line in eff.description.splitlines() if line.strip()]
    lines.append(
        f"Data: {facts.n_records} records, {facts.min_length}..{facts.max_length} samples "
        f"(median {facts.median_length}), classes {', '.join(facts.classes)}"
    )
    lines.append("Parameters (in order; 'when' = exists only if):")
    width = max(len(name) for name in eff.parameters)
    for p in eff.parameters.values():
        text = f"  {p.name:<{width}}  {p.kind:<8}  {_fmt_range(p)}"
        if p.when:
            text += "   when " + " and ".join(
                f"{k} in ({', '.join(_fmt(v) for v in vs)})" if len(vs) > 1 else f"{k} = {_fmt(vs[0])}"
                for k, vs in p.when.items()
            )
        if p.note:
            text += f"   [{p.note}]"
        lines.append(text)
    if "input_length" not in eff.parameters:
        lines.append(f"  input_length not searched: the training median ({facts.default_input_length})")
    s = eff.settings
    if eff.is_grid:
        rows, dropped = _grid(space, facts)
        extra = (f" ({dropped} duplicate configs removed: levels capped for this data's length)"
                 if dropped else "")
        lines.append(f"Grid: {len(rows)} configs, each run once{extra}")
        lines.append(f"Settings: searcher grid, max_epochs {s.max_epochs} (epochs per trial, ASHA max_t), "
                     f"grace_period {s.grace_period}, reduction_factor {_fmt(s.reduction_factor)}")
    else:
        lines.append(f"Settings: searcher optuna, num_samples {s.num_samples}, max_epochs {s.max_epochs} "
                     f"(epochs per trial, ASHA max_t), grace_period {s.grace_period}, "
                     f"reduction_factor {_fmt(s.reduction_factor)}")
    return "\n".join(lines)


def _fmt_range(p: Parameter) -> str:
    if p.kind == "choice":
        return ", ".join(_fmt(v) for v in p.values)
    if p.kind == "constant":
        return _fmt(p.value)
    text = f"{_fmt(p.low)}..{_fmt(p.high)}"
    if p.log:
        text += " (log)"
    if p.step not in (None, 1):
        text += f" step {_fmt(p.step)}"
    return text


# ----------------------------------------------------------------------------------------------
# Small helpers


def _fmt(v: object) -> str:
    if v is None:
        return "null (training median)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _unique(values: Iterable[Scalar]) -> list[Scalar]:
    out: list[Scalar] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _yaml_type(v: object) -> str:
    return {list: "list", dict: "mapping", str: "text", bool: "true/false"}.get(type(v), type(v).__name__)


def _field_names() -> list[str]:
    return list(TrainConfig.model_fields)


def _int_fields() -> set[str]:
    return {name for name, f in TrainConfig.model_fields.items() if f.annotation in (int, int | None)}


def _did_you_mean(key: object, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
