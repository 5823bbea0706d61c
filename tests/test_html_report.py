"""report.html: written by a real search and its refit, rebuilt by `ecg-tune report`, self-contained;
parameter importances on synthetic trials (a driving parameter, a conditional one, too few trials);
parameter kinds from space.json, or guessed for runs without one."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from ecg_tune.cli import main
from ecg_tune.reporting.analysis import NOT_APPLICABLE, declared_parameters, search_parameters
from ecg_tune.reporting.importance import parameter_importances
from ecg_tune.reporting.page import build_page, write_html_report
from ecg_tune.runs import BestConfig, RunFolder, TrialRecord, TrialTable
from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.space import SearchSpace

SEARCH_PLOTS = ("progress", "curves", "importance", "parallel", "slices")
TEST_PLOTS = ("test-metrics", "per-class", "confusion", "refit-curves")
PARETO_PLOTS = ("pareto-latency", "pareto-params")  # a run whose trials reported their costs



class _Page(HTMLParser):
    """The page's tags: every src/href, the trial table's body rows, the plot divs."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.plots: list[str] = []
        self.trial_rows = 0
        self._in_trials = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name) is not None:
                self.links.append((tag, name, str(values[name])))
        if tag == "div" and str(values.get("id", "")).startswith("plot-"):
            self.plots.append(str(values["id"]))
        if tag == "table" and "trials" in str(values.get("class", "")):
            self._in_trials = True
        if tag == "tr" and self._in_trials:
            self.trial_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_trials = False


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def assert_self_contained(page: str) -> None:
    """Nothing is loaded from elsewhere: every src/href is an anchor in the page (the plotly.js
    source itself holds "href=" strings, which the parser rightly reads as script text)."""
    links = parse(page).links
    assert all(link.startswith("#") for _, _, link in links), links
    assert "<script src" not in page and "<link" not in page
    assert "Plotly.newPlot" in page and "plotly.js v" in page  # the library is in the page


# --------------------------------------------------------------------------------------------
# A real search and refit (module-scoped: about 25 s here)


@pytest.fixture(scope="module")
def searched(refitted_smoke_run: tuple[Path, str]) -> tuple[Path, str]:
    return refitted_smoke_run  # conftest.py: one search + refit shared with the browser tests


def test_search_and_refit_leave_a_self_contained_report(searched: tuple[Path, str]) -> None:
    out, stdout = searched
    page = (out / "report.html").read_text()
    assert_self_contained(page)
    parsed = parse(page)
    assert parsed.plots == [f"plot-{name}" for name in SEARCH_PLOTS + PARETO_PLOTS + TEST_PLOTS]
    assert page.count("Plotly.newPlot(") == len(SEARCH_PLOTS + PARETO_PLOTS + TEST_PLOTS)
    trials = pd.read_csv(out / "trials.csv")
    assert parsed.trial_rows == 1 + len(trials)  # the header row, then one per trial
    best = json.loads((out / "best_config.json").read_text())
    assert f"{best['trial_id']}: {best['metric']}" in page
    assert "synthetic:60" in page and "higher is better" in page and "95 % interval" in page
    # The search printed where the page is and the importances (or why there are none),
    # and the refit rewrote the page with its test report.
    assert f"report: {out / 'report.html'}" in stdout
    assert "parameters that mattered most" in stdout or "parameter importances:" in stdout
    assert "report.html" in stdout.split("test (")[-1]
    # ecg-tune's own lines only: not Tune's experiment box, nor Optuna's study notices and warnings.
    for noise in ("Configuration for experiment", "A new study created", "Argument ``group``"):
        assert noise not in stdout, noise
    # Every trial ended, and an ended trial keeps its newest checkpoint only (search/checkpoints.py).
    folders = [trial for trial in (out / "experiment").iterdir() if trial.is_dir()]
    assert len(folders) == len(trials) and all(len(list(f.glob("checkpoint_*"))) == 1 for f in folders)


def test_report_command_rebuilds_a_run_without_report_json(searched: tuple[Path, str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A run made before report.html existed, never refitted: the search part only, the same
    per-epoch results read from the run's recorded storage."""
    out, _ = searched
    old = RunFolder(tmp_path / "old")
    source = RunFolder(out)
    old.write_best(source.best())
    (old.path / "trials.csv").write_text((out / "trials.csv").read_text())
    old.write_storage(source.storage())
    assert main(["report", "--run", str(old.path)]) == 0
    assert str(old.path / "report.html") in capsys.readouterr().out
    page = (old.path / "report.html").read_text()
    assert_self_contained(page)
    assert parse(page).plots == [f"plot-{name}" for name in SEARCH_PLOTS + PARETO_PLOTS]
    assert "not evaluated yet" in page and "seconds since the search started" in page


def test_report_on_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--run", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1 and "best_config.json" in error
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a lock file
    assert main(["report", "--run", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "missing").exists()
    # scripts/report.py is the same command (its help stops before anything heavy is imported).
    usage = run_script("report.py", "--help")
    assert usage.returncode == 0 and "--run" in usage.stdout


# --------------------------------------------------------------------------------------------
# Trials made by hand


def records(configs: list[dict], scores: list[float | None], metric: str = "val_macro_f1") -> list[TrialRecord]:
    """One trial per config; a None score is a trial that failed before reporting."""
    return [TrialRecord(trial_id=f"t{i:02d}", status="completed" if score is not None else "errored",
                        epochs=3 if score is not None else 0, config=config,
                        best={} if score is None else {metric: score, "train_loss": 1 - score},
                        best_epoch=None if score is None else 2)
            for i, (config, score) in enumerate(zip(configs, scores, strict=True))]


def table(configs: list[dict], scores: list[float | None], metric: str = "val_macro_f1") -> TrialTable:
    return TrialTable.from_frame(pd.DataFrame([r.flat() for r in records(configs, scores, metric)]))


def run_folder(path: Path, configs: list[dict], scores: list[float | None]) -> RunFolder:
    """A finished search's files with no Tune experiment behind them (as an old or moved run)."""
    run = RunFolder(path)
    run.write_trials(records(configs, scores))
    winner = int(np.nanargmax([np.nan if s is None else s for s in scores]))
    run.write_best(BestConfig(config={**configs[winner], "epochs": 3, "seed": 0},
                              metrics={"val_macro_f1": float(scores[winner] or 0)}, epoch=2,
                              trial_id=f"t{winner:02d}", metric="val_macro_f1", data="synthetic:100"))
    return run


def test_the_parameter_that_drives_the_score_ranks_first() -> None:
    rng = np.random.default_rng(0)
    configs = [{"lr": float(10 ** rng.uniform(-4, -2)), "dropout": float(rng.uniform(0, 0.5)),
                "augmentation": str(rng.choice(["all", "none", "warp_only"])), "batch_size": int(rng.choice([16, 32]))}
               for _ in range(30)]
    scores = [0.9 - 0.15 * abs(np.log10(c["lr"]) + 3) + rng.normal(0, 0.005) for c in configs]
    importances = parameter_importances(table(configs, scores), "val_macro_f1")
    assert list(importances.values)[0] == "lr", importances.values
    assert importances.values["lr"] > 0.5 and importances.trials == 30
    assert importances.basis == {name: 30 for name in ("lr", "dropout", "augmentation", "batch_size")}
    parameters, constant = search_parameters(table(configs, scores).config)
    kinds = {p.name: (p.kind, p.log) for p in parameters}
    assert kinds == {"lr": ("float", True), "dropout": ("float", False), "augmentation": ("categorical", False),
                     "batch_size": ("int", False)} and constant == {}
    # The direction comes from the metric: a loss that follows lr is driven by lr too.
    losses = [1 - s for s in scores]
    assert list(parameter_importances(table(configs, losses, "val_loss"), "val_loss").values)[0] == "lr"


def test_conditional_parameters_are_assessed_where_they_are_set(tmp_path: Path) -> None:
    """`levels` exists only for wavelet trials and drives their score there; the others show it as
    (n/a) in every view, and fANOVA assesses it on the wavelet trials alone."""
    rng = np.random.default_rng(1)
    configs = []
    for i in range(24):
        config = {"transform": "wavelet" if i % 2 else "none", "lr": float(10 ** rng.uniform(-4, -2))}
        if config["transform"] == "wavelet":
            config.update(levels=int(rng.integers(2, 7)), wavelet="db2")
        configs.append(config)
    scores = [0.5 + (0.06 * c["levels"] if "levels" in c else 0.24) + rng.normal(0, 0.005) for c in configs]
    run = run_folder(tmp_path / "run", configs, scores)
    importances = parameter_importances(run.trial_table(), "val_macro_f1")
    assert importances.basis == {"levels": 12, "transform": 24, "lr": 24}
    assert list(importances.values)[0] == "levels" and importances.values["levels"] > 0.5, importances.values
    # lr does nothing: the forest over all trials must not credit it with the levels' effect.
    assert importances.values["lr"] < 0.15, importances.values
    assert "wavelet" not in importances.values  # one value wherever set: a constant

    page, _ = build_page(run)
    assert_self_contained(page)
    parsed = parse(page)
    assert parsed.plots == [f"plot-{name}" for name in SEARCH_PLOTS]  # no report.json: no test part
    assert parsed.trial_rows == 1 + 24
    assert page.count(f'<td data-value="">{NOT_APPLICABLE}</td>') == 12  # levels in the table
    assert f'"ticktext":["{NOT_APPLICABLE.replace("/", chr(92) + "u002f")}"' in page  # the parallel axis
    assert "levels (12 trials)" in page and "levels (set in 12 of 24)" in page  # importance bar, slice
    assert "wavelet = db2 (in 12 of 24 trials)" in page
    assert "trial number" in page  # no per-epoch results: each trial's best in trial order


def test_too_few_trials_say_so_instead_of_importances(tmp_path: Path) -> None:
    configs = [{"model": "simple_cnn"}, {"model": "cnn_svm"}, {"model": "resnet1d"}]
    run = run_folder(tmp_path / "run", configs, [0.4, 0.6, None])  # the third trial failed
    written = write_html_report(run)
    assert written.importances.values == {} and written.importances.trials == 2
    assert "need at least 3 trials" in written.summary() and str(written.path) in written.summary()
    page = written.path.read_text()
    assert "Not computed: importances need at least 3 trials" in page
    assert parse(page).trial_rows == 1 + 3 and "1 failed" in page
    assert not list(tmp_path.glob("run/*.partial"))


def test_a_damaged_report_json_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_folder(tmp_path / "run", [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}], [0.4, 0.6, 0.5])
    run.report_path.write_text('{"test": {"accuracy": 0.5}}')
    assert main(["report", "--run", str(run.path)]) == 2
    assert "report.json: not a refit's report.json" in capsys.readouterr().err


def space_record(parameters: dict) -> dict:
    """space.json's content for a space of these parameters, adapted as a search adapts it."""
    space = SearchSpace.from_mapping(parameters)
    facts = DataFacts(n_records=100, min_length=200, median_length=300, max_length=400, classes=["N", "A"])
    return adapt(space, facts).to_record()


def test_kinds_and_log_scales_come_from_space_json(tmp_path: Path) -> None:
    """With space.json, a parameter is what the space declared: batch sizes from a choice are
    categories, a linear learning-rate range stays linear however its samples look, a log int range
    is on a log scale; a key the space does not declare (dropout here) is guessed, as every key of
    a run without space.json is."""
    rng = np.random.default_rng(2)
    configs = [{"lr": float(10 ** rng.uniform(-4, -2)), "batch_size": int(rng.choice([16, 32, 64])),
                "width": int(2 ** rng.integers(2, 8)), "dropout": float(rng.uniform(0, 0.5))} for _ in range(12)]
    scores = [0.5 + 0.1 * rng.random() for _ in configs]
    run = run_folder(tmp_path / "run", configs, scores)
    guessed = {p.name: (p.kind, p.log) for p in search_parameters(run.trial_table().config)[0]}
    assert guessed == {"lr": ("float", True), "batch_size": ("int", False), "width": ("int", True),
                       "dropout": ("float", False)}

    run.write_space(space_record({"lr": {"type": "float", "low": 1e-4, "high": 1e-2},
                                  "batch_size": {"type": "choice", "values": [16, 32, 64]},
                                  "width": {"type": "int", "low": 4, "high": 128, "log": True}}))
    page, importances = build_page(run)
    declared = {"lr": ("float", False), "batch_size": ("categorical", False), "width": ("int", True),
                "dropout": ("float", False)}
    found = search_parameters(run.trial_table().config, declared_parameters(run.space_record()))[0]
    assert {p.name: (p.kind, p.log) for p in found} == declared
    batch = next(p for p in found if p.name == "batch_size")
    assert batch.categories == ("16", "32", "64") and all(isinstance(v, str) for v in batch.values)
    assert set(importances.basis) == set(declared)
    assert "lr 0.0001" in page and "lr (log)" not in page and "width (log)" in page  # the parallel axes
    assert "batch_size: 16, 32, 64" in page  # a choice lists its values


def test_a_damaged_space_json_is_said_and_the_kinds_guessed(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = run_folder(tmp_path / "run", [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}], [0.4, 0.6, 0.5])
    record = space_record({"lr": {"type": "float", "low": 1e-3, "high": 0.1}})
    record["parameters"]["lr"]["low"] = 1.0  # above its high
    run.write_space(record)
    assert main(["report", "--run", str(run.path)]) == 0
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "space.json" in said[0] and "guessed" in said[0], said
    assert "lr (log)" in (run.path / "report.html").read_text()  # guessed, as for a run without the file
