"""Search-space files: shipped spaces on short and long data, Optuna define-by-run, the seed
grid, and one test per kind of bad file. No Ray: the define-by-run function is driven by a
real Optuna study, as OptunaSearch would drive it."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import optuna
import pytest

from ecg_tune.config import make_config
from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import AdaptedSpace, DataFacts, adapt
from ecg_tune.search.describe import describe
from ecg_tune.search.samplers import define_by_run, grid, optuna_trial_values
from ecg_tune.search.space_file import load_space, shipped_names, shipped_spaces
from ecg_tune.signal.transforms import max_wavelet_level

UCR_LIKE = DataFacts(n_records=200, min_length=96, median_length=96, max_length=96, classes=["-1", "1"])
CINC_LIKE = DataFacts(n_records=1000, min_length=2714, median_length=9000, max_length=18286,
                      classes=["N", "A", "O", "~"])
TINY = DataFacts(n_records=100, min_length=40, median_length=40, max_length=40, classes=["a", "b"])
FACTS = {"ucr96": UCR_LIKE, "cinc9000": CINC_LIKE}


def _check_config(config: dict, facts: DataFacts) -> None:
    """The conditions of the shipped spaces hold and every value is usable on this data."""
    make_config(config)
    wavelet_keys = {"wavelet", "levels", "wavelet_output"}
    if config.get("transform") != "wavelet":
        assert not wavelet_keys & config.keys(), config
    else:
        length = config.get("input_length") or facts.median_length
        assert config["levels"] <= max_wavelet_level(length, config.get("wavelet", "db2")), config
    if config.get("transform") != "fourier":
        assert "fourier_log" not in config
    if config.get("model") != "cnn_svm":
        assert not {"svm_c", "svm_gamma"} & config.keys(), config
    if config.get("model") not in ("simple_cnn", "cnn_svm"):
        assert "feature_size" not in config
    if config.get("model") not in ("ecg_cnn", "resnet1d"):
        assert "width" not in config
    if config.get("model") != "resnet1d":
        assert not {"depth", "dropout"} & config.keys(), config
    assert config.get("input_length") is None or config["input_length"] <= facts.max_length


# ----------------------------------------------------------------------------------------------
# Shipped spaces


def test_shipped_spaces_are_the_three() -> None:
    assert shipped_names() == ["full", "seed_grid", "smoke"]


@pytest.mark.parametrize("facts", FACTS.values(), ids=FACTS.keys())
@pytest.mark.parametrize("name", ["full", "seed_grid", "smoke"])
def test_shipped_space_adapts(name: str, facts: DataFacts) -> None:
    space = load_space(name)
    assert space.shipped and space.name == name and space.description
    eff = adapt(space, facts)
    assert eff.declared == space
    assert adapt(eff.space, facts).space == eff.space  # idempotent
    # space.json: the record gives back the same value (kinds, ranges, log scales, notes, facts)
    assert AdaptedSpace.from_record(json.loads(json.dumps(eff.to_record()))) == eff
    for key, p in eff.parameters.items():
        for v in p.possible():
            make_config({key: v})
    if "input_length" in eff.parameters:
        assert max(eff.parameters["input_length"].possible()) <= facts.max_length
    text = describe(eff)
    assert name in text and "levels" in text


def test_shipped_space_caps_for_short_data() -> None:
    full = adapt(load_space("full"), UCR_LIKE)
    assert full.parameters["input_length"].values == (96,)
    levels = full.parameters["levels"]
    # The space's models need at least 10 samples (minirocket's minimum, the longest of them):
    # sym4, the longest filter, keeps a 12-sample approximation of 96 samples at level 4 (db2 an
    # 8-sample one: each trial's levels are bounded again by its own wavelet).
    assert (levels.low, levels.high) == (1, 4)
    assert "capped" in describe(adapt(load_space("full"), UCR_LIKE))
    smoke = adapt(load_space("smoke"), UCR_LIKE)
    assert smoke.parameters["input_length"].value == 96


def test_shipped_space_loaded_by_path_is_shipped() -> None:
    space = load_space(str(shipped_spaces() / "smoke.yaml"))
    assert space.shipped and space.where == "search_spaces/smoke.yaml"


def test_settings_and_defaults() -> None:
    full = load_space("full").search
    assert full.searcher == "optuna" and full.grace_period <= full.max_epochs
    assert full.time_budget is not None and full.time_budget > 0
    assert load_space("seed_grid").search.max_epochs == 1


def test_settings_defaults_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("model: simple_cnn\nlr: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    space = load_space(str(path))
    s = space.search
    assert (s.max_epochs, s.grace_period, s.reduction_factor, s.num_samples, s.searcher) == (8, 1, 3, 20, "optuna")
    assert not space.shipped and s.time_budget is None
    assert space.parameters["lr"].low == 1e-4  # `1e-4` is a number, not YAML 1.1's string


# ----------------------------------------------------------------------------------------------
# Optuna define-by-run


def _run_study(space_name: str, facts: DataFacts, sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    fn = define_by_run(adapt(load_space(space_name), facts))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    configs = []
    for _ in range(n):
        trial = study.ask()
        returned = fn(trial)  # before reading trial.params: fn is what suggests them
        config = optuna_trial_values(trial.params, returned)
        _check_config(config, facts)
        configs.append(config)
        # A score that depends on several keys, so TPE has something to model.
        score = -abs(config.get("lr", 1e-3) - 1e-3) * 100 + (config.get("transform") == "wavelet") \
            + 0.1 * config.get("levels", 0)
        study.tell(trial, score)
    return configs


@pytest.mark.parametrize("facts", FACTS.values(), ids=FACTS.keys())
@pytest.mark.parametrize("multivariate", [False, True], ids=["tpe", "tpe-group"])
def test_full_define_by_run(facts: DataFacts, multivariate: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=8, multivariate=multivariate,
                                             group=multivariate)
        configs = _run_study("full", facts, sampler, 30)
    wavelet_trials = [c for c in configs if c["transform"] == "wavelet"]
    assert wavelet_trials, "no wavelet trial in 30: the condition was never exercised"
    assert {c["model"] for c in configs} >= {"simple_cnn", "cnn_svm"}
    if facts is UCR_LIKE:
        assert all(c["input_length"] == 96 for c in configs)


def test_define_by_run_returns_constants_not_suggested() -> None:
    fn = define_by_run(adapt(load_space("smoke"), CINC_LIKE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    returned = fn(trial)
    assert returned["input_length"] == 1500 and returned["lr"] == 1e-3
    assert "input_length" not in trial.params and "model" in trial.params


def test_levels_choice_clamped_per_trial() -> None:
    # seed_grid's levels is a categorical [6, 4]; Optuna forbids changing a categorical's
    # choices between trials, so a too-deep level is clamped in the returned dict instead.
    fn = define_by_run(adapt(load_space("seed_grid"), TINY))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        returned = fn(trial)  # before reading trial.params: fn is what suggests them
        config = optuna_trial_values(trial.params, returned)
        _check_config(config, TINY)
        if config["transform"] == "wavelet":
            seen.add((config["wavelet"], config["levels"]))
        study.tell(trial, 0.0)
    # 40 samples: pywt allows db2 at most level 3 (a 7-sample approximation, enough for
    # simple_cnn's 5): deeper choices are clamped to 3.
    assert ("db2", 3) in seen and all(lv <= 3 for w, lv in seen if w == "db2")


# ----------------------------------------------------------------------------------------------
# Grid


def test_seed_grid_has_72_configs() -> None:
    rows = grid(adapt(load_space("seed_grid"), CINC_LIKE))
    assert len(rows) == 72
    assert len({tuple(sorted(r.items())) for r in rows}) == 72
    for row in rows:
        _check_config(row, CINC_LIKE)
        assert row["input_length"] == 9000
    assert sum(r["transform"] == "wavelet" for r in rows) == 48
    assert "Grid: 72 configs" in describe(adapt(load_space("seed_grid"), CINC_LIKE))


def test_seed_grid_on_short_data_drops_duplicates() -> None:
    # 96 samples, keeping the 5 samples simple_cnn needs: haar's levels 6 and 4 both become 4,
    # so its two grid points collapse into one; db2's become 5 and 4 and stay apart. On 40
    # samples both wavelets collapse (db2 and haar at most level 3).
    assert len(grid(adapt(load_space("seed_grid"), UCR_LIKE))) == 60
    rows = grid(adapt(load_space("seed_grid"), TINY))
    assert len(rows) == 48
    for row in rows:
        _check_config(row, TINY)
    assert "Grid: 48 configs" in describe(adapt(load_space("seed_grid"), TINY))


def test_grid_refuses_ranges() -> None:
    with pytest.raises(ConfigError, match=r"full\.yaml: depth: a grid space \(search: searcher: grid\) takes only choices"):
        grid(adapt(load_space("full"), CINC_LIKE))


# ----------------------------------------------------------------------------------------------
# User spaces are checked against the data


def _user_space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_user_input_length_too_long(tmp_path: Path) -> None:
    path = _user_space(tmp_path, "input_length: {type: choice, values: [3000, 9000]}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: input_length: 9000 is longer than every record"):
        adapt(load_space(path), UCR_LIKE)
    adapt(load_space(path), CINC_LIKE)  # fine on long records


def test_user_copy_of_shipped_space_is_strict(tmp_path: Path) -> None:
    copy = tmp_path / "seed_grid.yaml"
    shutil.copy(shipped_spaces() / "seed_grid.yaml", copy)
    with pytest.raises(ConfigError, match=r"seed_grid\.yaml: input_length:"):
        adapt(load_space(str(copy)), UCR_LIKE)
    assert adapt(load_space("seed_grid"), UCR_LIKE).parameters["input_length"].value == 96


def test_user_levels_too_deep(tmp_path: Path) -> None:
    path = _user_space(tmp_path, (
        "input_length: 96\n"
        "transform: wavelet\n"
        "wavelet: {type: choice, values: [haar, db4]}\n"
        "levels: {type: int, low: 2, high: 4}\n"
    ))
    with pytest.raises(ConfigError, match=r"levels: 4 is more than this data allows: at most 3 for input length 96 with wavelet db4"):
        adapt(load_space(path), UCR_LIKE)


def test_user_default_levels_too_deep(tmp_path: Path) -> None:
    path = _user_space(tmp_path, "input_length: 40\ntransform: wavelet\n")
    with pytest.raises(ConfigError, match=r"levels: 6 \(the default; add it to the space\) is more than this data allows"):
        adapt(load_space(path), TINY)


# ----------------------------------------------------------------------------------------------
# Bad files: each a one-line ConfigError naming the file and the key

BAD = {
    "acceptance_unknown_model": ("model:\n  type: choice\n  values: [no_such_model]\n",
                                 r"model: unknown model 'no_such_model'; known: cnn_svm"),
    "unknown_parameter": ("modle: simple_cnn\n", r"modle: unknown parameter \(did you mean 'model'\?\)"),
    "unknown_setting": ("search: {max_epoch: 3}\nmodel: simple_cnn\n", r"search: max_epoch: unknown setting"),
    "bad_setting_value": ("search: {searcher: bayes}\nmodel: simple_cnn\n", r"search: searcher: expected one of"),
    "grace_over_max": ("search: {max_epochs: 2, grace_period: 3}\nmodel: simple_cnn\n", r"search: grace_period"),
    "unknown_field": ("model: {type: choice, vals: [simple_cnn]}\n", r"model: vals: unknown field"),
    "unknown_type": ("model: {type: categorical, values: [simple_cnn]}\n", r"model: type: unknown type"),
    "missing_type": ("model: {values: [simple_cnn]}\n", r"model: missing `type:`"),
    "low_not_number": ("lr: {type: float, low: small, high: 0.1}\n", r"lr: low: expected a number"),
    "int_not_whole": ("depth: {type: int, low: 2.5, high: 8}\n", r"depth: low: expected a whole number"),
    "values_not_list": ("model: {type: choice, values: simple_cnn}\n", r"model: values: expected a list"),
    "empty_choices": ("model: {type: choice, values: []}\n", r"model: values: the list of choices is empty"),
    "duplicate_choice": ("batch_size: {type: choice, values: [16, 16]}\n", r"batch_size: values: a value is listed twice"),
    "low_above_high": ("lr: {type: float, low: 0.1, high: 0.01}\n", r"lr: low 0.1 is greater than high 0.01"),
    "log_low_zero": ("weight_decay: {type: float, low: 0, high: 1e-3, log: true}\n", r"weight_decay: log: a log range needs low > 0"),
    "when_unknown": ("levels: {type: int, low: 2, high: 4, when: {transfrom: wavelet}}\n",
                     r"levels: when: transfrom: is not a parameter of this space"),
    "when_later": ("levels: {type: int, low: 2, high: 4, when: {transform: wavelet}}\ntransform: {type: choice, values: [none, wavelet]}\n",
                   r"levels: when: transform: is not a parameter defined earlier"),
    "when_impossible_value": ("transform: {type: choice, values: [none, wavelet]}\nlevels: {type: int, low: 2, high: 4, when: {transform: wavelets}}\n",
                              r"levels: when: transform: wavelets is not a value transform can take"),
    "unknown_wavelet": ("wavelet: {type: choice, values: [db2, nosuch]}\n", r"wavelet: 'nosuch' is not a discrete wavelet"),
    "unknown_transform": ("transform: {type: choice, values: [none, stft]}\n", r"transform: unknown transform 'stft'"),
    "unknown_augmentation": ("augmentation: everything\n", r"augmentation: unknown augmentation 'everything'"),
    "value_out_of_range": ("dropout: {type: float, low: 0.0, high: 1.0}\n", r"dropout: must be less than 1.0, got 1.0"),
    "wrong_value_type": ("batch_size: {type: constant, value: big}\n", r"batch_size: Input should be a valid integer"),
    "float_for_int_key": ("levels: {type: float, low: 2, high: 4}\n", r"levels: type: levels is a whole number; use type: int"),
    "plain_list": ("model: [simple_cnn, cnn_svm]\n", r"model: a plain list is not a parameter"),
    "epochs_parameter": ("epochs: {type: int, low: 1, high: 5}\n", r"epochs: set the epochs per trial with `search: max_epochs`"),
    "grid_with_range": ("search: {searcher: grid}\nlr: {type: float, low: 1e-4, high: 1e-2}\n",
                        r"lr: a grid space \(search: searcher: grid\) takes only choices and constants"),
    "levels_before_wavelet": ("levels: {type: int, low: 2, high: 4}\nwavelet: {type: choice, values: [db2, haar]}\n",
                              r"levels: must come after wavelet"),
    "duplicate_key": ("model: simple_cnn\nlr: 0.001\nmodel: cnn_svm\n", r"model: defined twice \(lines 1 and 3\)"),
    "yaml_syntax": ("model: {type: choice, values: [simple_cnn\n", r"not valid YAML at line"),
    "not_a_mapping": ("- model\n- lr\n", r"expected a mapping of parameter names to definitions, got a list"),
    "empty_file": ("# nothing\n", r"the file is empty"),
    "no_parameters": ("description: nothing to search\n", r"defines no parameters"),
}


@pytest.mark.parametrize("text, pattern", BAD.values(), ids=BAD.keys())
def test_bad_space_file(tmp_path: Path, text: str, pattern: str) -> None:
    path = _user_space(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < 300, message
    assert re.search(pattern, message), message


def test_unknown_shipped_name_lists_the_shipped() -> None:
    with pytest.raises(ConfigError, match=r"unknown search space 'ful'; shipped spaces: full, seed_grid, smoke"):
        load_space("ful")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: search space file not found"):
        load_space(str(tmp_path / "nope.yaml"))


# ----------------------------------------------------------------------------------------------
# Spaces built in Python


def test_a_space_built_in_python_equals_its_file(tmp_path: Path) -> None:
    from ecg_tune.search.space import Choice, FloatRange, IntRange, SearchSpace

    built = SearchSpace.from_mapping({
        "input_length": 600,
        "transform": Choice(values=("none", "wavelet")),
        "levels": IntRange(low=2, high=4, when={"transform": "wavelet"}),
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "search": {"num_samples": 3, "max_epochs": 2},
    }, name="mine", where="mine.yaml")
    path = _user_space(tmp_path, "input_length: 600\ntransform: {type: choice, values: [none, wavelet]}\n"
                                 "levels: {type: int, low: 2, high: 4, when: {transform: wavelet}}\n"
                                 "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                                 "search: {num_samples: 3, max_epochs: 2}\n")
    read = load_space(path)
    assert built.parameters == read.parameters and built.search == read.search
    assert isinstance(built.parameters["lr"], FloatRange) and built.parameters["levels"].when == {"transform": ("wavelet",)}
    assert re.search(r"levels +int +2\.\.4 +when transform = wavelet", describe(adapt(built, CINC_LIKE)))
    with pytest.raises(ConfigError, match=r"^mine\.yaml: levels: when: transform: bands is not a value"):
        SearchSpace.from_mapping({"transform": Choice(values=("none", "wavelet")),
                                  "levels": IntRange(low=2, high=4, when={"transform": "bands"})}, where="mine.yaml")


# ----------------------------------------------------------------------------------------------
# Start points


START = """
model: {type: choice, values: [simple_cnn, cnn_svm]}
transform: {type: choice, values: [none, wavelet]}
levels: {type: int, low: 2, high: 4, when: {transform: wavelet}}
augmentation: none
lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def test_start_points_are_checked_and_shown(tmp_path: Path) -> None:
    path = _user_space(tmp_path, "start:\n  - {model: cnn_svm, lr: 0.000777}\n  - {transform: wavelet, levels: 3}\n" + START)
    space = load_space(path)
    assert space.start == ({"model": "cnn_svm", "lr": 0.000777}, {"transform": "wavelet", "levels": 3})
    text = describe(adapt(space, CINC_LIKE))
    assert "Start point 1 (runs first; keys left out are sampled): model=cnn_svm, lr=0.000777" in text


BAD_START = {
    "not_a_parameter": ("start:\n  - {width: 8}\n", r"start: 1: width: not a parameter of this space"),
    "out_of_range": ("start:\n  - {lr: 0.5}\n", r"start: 1: lr: 0.5 is not a value lr can take \(0.0001..0.01 \(log\)\)"),
    "condition_fails": ("start:\n  - {transform: none, levels: 3}\n", r"start: 1: levels: exists only when transform in \(wavelet\)"),
    "constant_differs": ("start:\n  - {augmentation: all}\n", r"start: 1: augmentation: all is not a value"),
    "grid": ("search: {searcher: grid}\nstart:\n  - {model: cnn_svm}\nmodel: {type: choice, values: [simple_cnn, cnn_svm]}\n",
             r"start: a grid space runs every point anyway"),
}


@pytest.mark.parametrize("text, pattern", BAD_START.values(), ids=BAD_START.keys())
def test_bad_start_points(tmp_path: Path, text: str, pattern: str) -> None:
    body = "" if "searcher: grid" in text else START
    with pytest.raises(ConfigError, match=pattern):
        load_space(_user_space(tmp_path, text + body))


def test_start_points_of_a_shipped_space_follow_its_caps() -> None:
    from ecg_tune.search.space import SearchSpace

    space = SearchSpace.from_mapping({"start": [{"input_length": 9000}],
                                      "input_length": {"type": "choice", "values": [3000, 9000]}},
                                     shipped=True)
    assert adapt(space, UCR_LIKE).start == ({"input_length": 96},)
    mine = space.model_copy(update={"shipped": False})
    with pytest.raises(ConfigError, match="input_length: 9000 is longer than every record"):
        adapt(mine, UCR_LIKE)

