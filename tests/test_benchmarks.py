"""Benchmark helpers: best-so-far curves, the strategy summary, the --quick subset, the quality
baselines; the Ray-backed subcommands end to end are marked slow (run them by hand)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_tune.benchmarks.common import best_so_far, thin, value_at
from ecg_tune.benchmarks.search import summarise, table
from ecg_tune.cli import main
from ecg_tune.data import prepare
from ecg_tune.data.split import load_split, save_split


@pytest.fixture(scope="module")
def small():
    return prepare("synthetic:300", seed=0)


def test_best_so_far_keeps_only_improvements_in_time_order() -> None:
    histories = {
        "a": pd.DataFrame({"timestamp": [105, 110, 130], "time_total_s": [3, 8, 28], "val_cinc_f1": [0.3, 0.2, 0.6]}),
        "b": pd.DataFrame({"timestamp": [108, 120], "time_total_s": [4, 16], "val_cinc_f1": [0.4, np.nan]}),
        "c": pd.DataFrame({"timestamp": [109], "time_total_s": [1]}),  # errored before reporting the metric
    }
    times, best = best_so_far(histories, "val_cinc_f1", started=100.0)
    assert times.tolist() == [5, 8, 30]
    assert best.tolist() == [0.3, 0.4, 0.6]
    # By default the clock starts with the first trial (a: 105 - 3 = 102).
    assert best_so_far(histories, "val_cinc_f1")[0].tolist() == [3, 6, 28]
    assert np.isnan(value_at(times, best, 4.0))
    assert value_at(times, best, 8.0) == 0.4
    assert value_at(times, best, 29.9) == 0.4
    assert value_at(times, best, 1e9) == 0.6
    # A loss improves downwards: the curve keeps the lowest so far.
    losses = {k: h.rename(columns={"val_cinc_f1": "val_loss"}) for k, h in histories.items()}
    assert best_so_far(losses, "val_loss", started=100.0)[1].tolist() == [0.3, 0.2]


def _run(strategy: str, seed: int, curve: list[tuple[float, float]]) -> dict:
    return {"strategy": strategy, "seed": seed, "metric": "val_cinc_f1", "trials": 3, "epochs": 7,
            "curve_s": [t for t, _ in curve], "curve_best": [v for _, v in curve],
            "final_best": curve[-1][1] if curve else float("nan")}


def test_summary_reports_spread_over_seeds_and_time_to_reach_the_grid() -> None:
    runs = [_run("seed_grid", 0, [(50, 0.25)]), _run("seed_grid", 1, [(60, 0.27)]),
            _run("optuna_asha", 0, [(20, 0.2), (40, 0.3)]), _run("optuna_asha", 1, [(90, 0.5)])]
    summary = summarise(runs, budget=100.0)
    grid, optuna = summary["seed_grid"], summary["optuna_asha"]
    assert grid["at_s"][-1] == 100.0 and len(grid["at_s"]) == 10
    assert grid["final_mean"] == pytest.approx(0.26)
    assert optuna["final_mean"] == pytest.approx(0.4)
    assert optuna["min"][-1] == 0.3 and optuna["max"][-1] == 0.5
    # At 50 s seed 1 of optuna had nothing yet: no mean until every seed has a score.
    assert np.isnan(optuna["mean"][4]) and optuna["mean"][8] == pytest.approx(0.4)
    assert optuna["seconds_to_seed_grid_final"] == [40.0, 90.0]
    text = table({"summary": summary, "strategies": {"seed_grid": "grid", "optuna_asha": "TPE"}})
    assert "| TPE |" in text and "| grid |" in text and "40, 90" in text


def test_thin_keeps_every_part_and_class_and_round_trips_through_split_csv(small, tmp_path: Path) -> None:
    thinned = thin(small, 100, seed=1)
    used = thinned.index("train", "val", "test")
    assert 80 <= len(used) <= 120
    for part in ("train", "val", "test"):
        assert set(thinned.index(part)) <= set(small.index(part))
    assert set(thinned.tensors.labels[thinned.index("train")]) == set(small.tensors.labels)
    path = save_split(thinned.records, thinned.split, tmp_path / "split.csv")
    assert (load_split(path, thinned.records) == thinned.split).all()
    assert thin(small, 10**6) is small


def test_duration_baseline_scores_the_test_records(small) -> None:
    from ecg_tune.benchmarks.quality import duration_baselines

    result = duration_baselines(small, small.index("train", "val"), small.index("test"))
    for scores in result.values():
        assert scores["n_records"] == len(small.index("test"))
        assert 0.0 <= scores["cinc_f1"] <= 1.0
        low, high = scores["ci95"]["cinc_f1"]
        assert low <= scores["cinc_f1"] <= high


def test_fitted_matrix_pads_short_records_and_centres_long_ones(small) -> None:
    from ecg_tune.benchmarks.quality import fitted_matrix

    lengths = small.tensors.lengths
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    length = int((lengths[short] + lengths[long]) // 2)
    x = fitted_matrix(small, np.array([short, long]), length)
    assert x.shape == (2, 1, length)
    signals = small.tensors.signals
    assert np.allclose(x[0, 0, : lengths[short]], signals[short, : lengths[short]])
    assert not x[0, 0, lengths[short]:].any()
    begin = (lengths[long] - length) // 2
    assert np.allclose(x[1, 0], signals[long, begin:begin + length])


def test_minirocket_baseline_runs_on_the_split(small) -> None:
    pytest.importorskip("aeon", reason="MiniRocket is in the optional benchmark extra (pip install -e '.[benchmark]')")
    from ecg_tune.benchmarks.quality import minirocket

    train, val, test = small.index("train")[:80], small.index("val")[:30], small.index("test")
    result = minirocket(small, train, val, test, input_length=1500, n_kernels=168, log=lambda _: None)
    assert result["test"]["n_records"] == len(test)
    assert 0.0 <= result["validation"]["accuracy"] <= 1.0
    assert result["train_wall_s"] <= result["total_wall_s"]


def test_gpu_benchmark_skips_without_cuda(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gpu benchmark would run")
    assert main(["benchmark", "gpu"]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_search_benchmark_quick_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "search", "--quick", "--data", "synthetic:300",
                 "--strategies", "seed_grid", "optuna_asha", "--out", "results"]) == 0
    (result_file,) = Path("results").glob("search-*.json")
    result = json.loads(result_file.read_text())
    assert {r["strategy"] for r in result["runs"]} == {"seed_grid", "optuna_asha"}
    assert all(r["trials"] >= 1 for r in result["runs"])
    assert list(Path("results").glob("search-*.png"))


@pytest.mark.slow
def test_overhead_benchmark_quick_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("psutil", reason="the overhead benchmark needs the benchmark extra")
    assert main(["benchmark", "overhead", "--quick", "--data", "synthetic:300", "--out", str(tmp_path)]) == 0
    (result_file,) = tmp_path.glob("overhead-*.json")
    result = json.loads(result_file.read_text())
    assert [c["reuse_actors"] for c in result["trial_cost"]] == [False, True]
    assert all(c["trials"] == 8 for c in result["trial_cost"])
    assert [m["concurrent"] for m in result["memory"]] == [1, 4]
    assert all(m["peak_pss_mib"] > 0 for m in result["memory"])
    assert result["copy_probe"]["added_mib"] < result["copy_probe"]["dataset_signals_mib"]


@pytest.mark.slow
def test_gpu_benchmark_code_path_on_logical_gpus(small) -> None:
    """This machine has no CUDA: with Ray's logical GPU the trials share it and train on the CPU,
    which exercises the scheduling and the figures of `benchmark gpu` without a real GPU."""
    from ecg_tune.benchmarks.overhead import run_gpu_benchmark

    result = run_gpu_benchmark(thin(small, 120), shares=(1, 2), max_epochs=1, log=lambda _: None)
    assert [row["trials"] for row in result["rows"]] == [1, 2]
    assert [row["gpu_each"] for row in result["rows"]] == [1.0, 0.5]
    assert all(row["aggregate_samples_per_s"] > 0 for row in result["rows"])


@pytest.mark.slow
def test_quality_benchmark_quick_end_to_end(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("aeon", reason="MiniRocket is in the optional benchmark extra")
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "quality", "--quick", "--data", "synthetic:400", "--out", "results"]) == 0
    (result_file,) = Path("results").glob("quality-*.json")
    result = json.loads(result_file.read_text())
    n_test = result["search"]["test"]["n_records"]
    assert result["minirocket"]["test"]["n_records"] == n_test
    assert all(s["n_records"] == n_test for s in result["duration_baseline"].values())
    assert {result["pad_vs_crop"]["chosen_by_search"], "pad", "crop"} <= set(result["pad_vs_crop"])
    assert (Path(result["run"]) / "model" / "config.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["search", "--seeds", "0"], "--seeds: must be at least 1, got 0"),
    (["search", "--budget", "-1"], "--budget: must be positive, got -1.0"),
    (["quality", "--run", "no/such/run"], "no such folder"),
    (["pipeline", "--records", "0"], "--records: must be at least 1, got 0"),
])
def test_bad_benchmark_options_are_one_line_errors(args: list[str], message: str, capsys) -> None:
    assert main(["benchmark", *args, "--data", "synthetic:50"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_quality_on_a_search_without_refit_says_what_to_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "best_config.json").write_text("{}")
    assert main(["benchmark", "quality", "--run", str(tmp_path)]) == 2
    assert "refit the search first" in capsys.readouterr().err


def test_quality_without_aeon_fails_before_its_search(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "aeon.transformations.collection.convolution_based", None)
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "quality", "--quick", "--data", "synthetic:50", "--out", str(tmp_path)]) == 2
    assert "MiniRocket needs aeon" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("with_ptwt", [True, False])
def test_dwt_alone_measures_every_implementation_and_skips_a_missing_ptwt(with_ptwt: bool, monkeypatch) -> None:
    import sys

    from ecg_tune.benchmarks.pipeline import dwt_table, run_dwt_benchmark

    if with_ptwt:
        pytest.importorskip("ptwt", reason="ptwt is in the optional benchmark extra")
    else:
        monkeypatch.setitem(sys.modules, "ptwt", None)  # import ptwt now raises ImportError
    lines: list[str] = []
    result = run_dwt_benchmark(300, 4, 1, (("db2", 3, "approx"), ("sym4", 2, "bands")),
                               seconds_per_measurement=0.001, log=lines.append)
    assert ("ptwt is not installed" in lines[0]) is not with_ptwt
    for case in result["cases"].values():
        assert case["custom_samples_per_s"] > 0 and case["pywt_samples_per_s"] > 0
        assert case["custom_max_abs_diff"] < 1e-4
        assert ("ptwt_samples_per_s" in case) is with_ptwt
        if with_ptwt:
            assert case["ptwt_max_abs_diff"] < 1e-4 and case["ptwt_float64_max_abs_diff"] < 1e-10
    assert ("ptwt_aligned_samples_per_s" in result["cases"]["sym4 L2 bands"]) is with_ptwt
    text = dwt_table(result)
    assert "db2 L3 approx" in text and "sym4 L2 bands" in text
    assert ("ptwt not installed" in text) is not with_ptwt


# ----------------------------------------------------------------------------------------------
# portfolio


def _candidates_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "candidates.yaml"
    path.write_text(text)
    return path


def test_portfolio_measures_each_candidate_and_summarises_ranks(tmp_path: Path, capsys) -> None:
    candidates = _candidates_file(tmp_path, """candidates:
  - {name: cnn, model: simple_cnn, feature_size: 32, input_length: 3000, augmentation: none, batch_size: 64}
  - {model: minirocket, rocket_features: 2000, rocket_max_dilations: 16, input_length: 3000}
""")
    out = tmp_path / "results"
    assert main(["benchmark", "portfolio", "--data", "synthetic:60", "--candidates", str(candidates),
                 "--budget", "0.01", "--max-epochs", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (result_file,) = out.glob("portfolio-*.json")
    result = json.loads(result_file.read_text())
    assert result["metric"] == "val_cinc_f1" and result["threads"] == 1 and result["max_epochs"] == 3
    cnn, rocket = result["candidates"]
    assert (cnn["name"], rocket["name"]) == ("cnn", "#2")
    for row in (cnn, rocket):
        assert 0.0 <= row["best"] <= 1.0 and row["seconds_per_epoch"] > 0 and row["rank"] in (1.0, 1.5, 2.0)
        assert {"best_epoch", "at_quarter", "at_half", "epochs", "runs", "fitted"} <= set(row)
    # The budget is crossed by the first epoch: it stops there. The closed-form model is one fit.
    assert cnn["epochs"] == 1 and cnn["runs"][0]["stopped"] == "budget"
    assert rocket["epochs"] == 1 and rocket["runs"][0]["stopped"] == "one fit"
    assert cnn["config"]["input_length"] == 3000 and "model=simple_cnn" in cnn["description"]
    assert "| cnn |" in printed and "| #2 |" in printed and "best val_cinc_f1" in printed
    assert "- #2: `model=minirocket rocket_features=2000" in printed

    # Two data sets (a copy under another source stands in for the second): the mean rank.
    other = json.loads(result_file.read_text())
    other["source"] = "synthetic:61"
    copy = tmp_path / "other.json"
    copy.write_text(json.dumps(other))
    assert main(["benchmark", "portfolio", "--summarise", str(result_file), str(copy), "--out", str(out)]) == 0
    (summary_file,) = out.glob("portfolio-summary-*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["source"] == ["synthetic:60", "synthetic:61"]
    assert [row["mean_rank"] for row in summary["candidates"]] == sorted(r["rank"] for r in result["candidates"])
    assert "mean rank" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ("candidates:\n  - {model: simple_cnn, lerning_rate: 0.1}\n", "candidates: 1: lerning_rate: unknown key"),
    ("candidates:\n  - {model: simple_cnn}\n  - {model: resnet1d, width: wide}\n", "candidates: 2: width:"),
    ("candidates:\n  - {model: simple_cnn, lr: 0.5}\n", "candidates: 1: lr: 0.5 is not a value lr can take"),
    ("candidates:\n  - {model: simple_cnn, epochs: 3}\n", "candidates: 1: epochs: not a parameter"),
    ("start:\n  - {model: simple_cnn}\n", "expected `candidates:`"),
])
def test_a_bad_candidates_file_is_a_one_line_error_naming_file_and_key(tmp_path: Path, text: str, message: str,
                                                                      capsys) -> None:
    path = _candidates_file(tmp_path, text)
    assert main(["benchmark", "portfolio", "--data", "synthetic:50", "--candidates", str(path),
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("portfolio-*.json"))


def _ucr_pair(folder: Path, n_train: int = 40, n_test: int = 40) -> Path:
    """A *_TRAIN / *_TEST pair of short two-class beats (a class-0 beat has a wider QRS)."""
    rng = np.random.default_rng(0)
    t = np.linspace(-1, 1, 64)

    def rows(n: int, minority: int) -> np.ndarray:
        labels = np.r_[np.zeros(minority), np.ones(n - minority)]
        beats = [np.exp(-(t / (0.12 if y == 0 else 0.05)) ** 2) + 0.05 * rng.standard_normal(len(t)) for y in labels]
        return np.column_stack([labels, beats])

    np.savetxt(folder / "Beats_TRAIN.txt", rows(n_train, 14))
    np.savetxt(folder / "Beats_TEST.txt", rows(n_test, 12))
    return folder / "Beats_TRAIN.txt"


def test_resample_redraws_test_parts_with_the_official_sizes_and_proportions(tmp_path: Path) -> None:
    from ecg_tune.benchmarks.resample import resampled
    from ecg_tune.errors import DataError

    data = prepare(str(_ucr_pair(tmp_path)), progress=False)
    labels = data.records.labels
    official = np.bincount(labels[data.split == "test"])
    draws = [resampled(data, seed) for seed in range(4)]
    for drawn in draws:
        assert np.bincount(labels[drawn.split == "test"]).tolist() == official.tolist()
        assert set(drawn.split) == {"train", "val", "test"} and len(drawn.split) == len(data.split)
    tests = [frozenset(np.flatnonzero(d.split == "test")) for d in draws]
    assert len(set(tests)) == 4, "each seed draws another test part"
    assert tests[0] == frozenset(np.flatnonzero(resampled(data, 0).split == "test")), "a seed draws the same"
    with pytest.raises(DataError, match="needs a train/test pair"):
        resampled(prepare("synthetic:60", progress=False), 0)


def test_resample_table_shows_both_figures_and_their_means() -> None:
    from ecg_tune.benchmarks.resample import _result, table

    runs = [{"seed": s, "delivered": {"accuracy": a}, "single_best": {"accuracy": b}, "members": m}
            for s, a, b, m in ((0, 0.92, 0.90, 3), (1, 0.88, 0.88, 1))]
    result = _result(runs, 420.0, 5, complete=True)
    assert result["summary"]["delivered_accuracy_mean"] == pytest.approx(0.90)
    assert result["summary"]["single_best_accuracy_mean"] == pytest.approx(0.89)
    text = table(result)
    assert "| 0 | 0.920 | 0.900 | 3 |" in text and "0.900 ± 0.020 | 0.890 ± 0.010" in text


def test_steadiness_describes_a_curve() -> None:
    from ecg_tune.benchmarks.steadiness import describe_curve, ema_decay

    curve = [0.2, 0.5, 0.7, 0.6, 0.8, 0.6, 0.7, 0.6, 0.7, 0.6]
    figures = describe_curve("val_accuracy", curve)
    assert figures["best"] == 0.8 and figures["best_epoch"] == 5
    assert figures["tail_mean"] == pytest.approx(np.mean(curve[-5:]))
    assert figures["swing"] == pytest.approx(0.1)  # the second half moves 0.1 every epoch
    assert figures["luck"] == pytest.approx(0.8 - np.mean(curve[-5:]))
    loss = describe_curve("val_loss", [1.0, 0.5, 0.7, 0.6, 0.6])
    assert loss["best"] == 0.5 and loss["luck"] == pytest.approx(np.mean([1.0, 0.5, 0.7, 0.6, 0.6]) - 0.5)
    # a half-life of h epochs of s steps: the weight of a step h*s steps back is one half
    assert ema_decay(0.5, 40) ** 20 == pytest.approx(0.5)


@pytest.mark.slow
def test_steadiness_benchmark_quick_end_to_end(tmp_path: Path) -> None:
    assert main(["benchmark", "steadiness", "--quick", "--data", str(_ucr_pair(tmp_path)), "--out",
                 str(tmp_path / "results")]) == 0
    (result_file,) = (tmp_path / "results").glob("steadiness-*.json")
    result = json.loads(result_file.read_text())
    assert {r["variant"] for r in result["runs"]} == {"constant", "cosine", "ema", "cosine_ema"}
    assert all(len(r["curve"]) == 3 for r in result["runs"])
    assert all(r["ema_decay"] for r in result["runs"] if "ema" in r["variant"])


def test_first_rung_outcomes_pool_a_seeds_runs_to_find_what_a_rung_cut(tmp_path: Path) -> None:
    from ecg_tune.benchmarks.search import first_rung_outcomes

    def trials(name: str, rows: list[tuple]) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame(rows, columns=["trial_id", "status", "epochs", "config/model", "config/lr",
                                    "best/val_cinc_f1"]).to_csv(folder / "trials.csv", index=False)
        return {"strategy": name.split("-")[0], "seed": 0, "metric": "val_cinc_f1", "folder": str(folder)}

    # The same three configurations in both runs (seeded proposals); "metric" stops x at its first
    # rung (epoch 2), "auroc" trains it to 0.8; "z" was cut by the budget at epoch 1, not by a rung.
    runs = [trials("metric-seed0", [("a", "completed", 30, "resnet1d", 0.002, 0.79),
                                    ("b", "stopped", 2, "simple_cnn", 0.001, 0.25),
                                    ("c", "stopped", 1, "ecg_cnn", 0.003, 0.24)]),
            trials("auroc-seed0", [("d", "completed", 30, "resnet1d", 0.002, 0.78),
                                   ("e", "completed", 20, "simple_cnn", 0.001, 0.80),
                                   ("f", "stopped", 2, "ecg_cnn", 0.003, 0.26)])]
    outcomes = first_rung_outcomes(runs, first_rung=2, floor=0.30, top=2)
    assert outcomes["metric"] == {"trials": 3, "stopped_at_first_rung": 1, "top_started": 2,
                                  "top_stopped_at_first_rung": 1, "above_floor": 1, "seeds": 1}
    assert outcomes["auroc"] == {"trials": 3, "stopped_at_first_rung": 1, "top_started": 2,
                                 "top_stopped_at_first_rung": 0, "above_floor": 2, "seeds": 1}


def test_majority_floor_is_the_majority_class_score_plus_a_margin(small) -> None:
    from ecg_tune.benchmarks.search import FLOOR_MARGIN, majority_floor

    labels = small.tensors.labels
    majority = np.bincount(labels[small.index("train")]).argmax()
    accuracy = np.mean(labels[small.index("val")] == majority)
    assert majority_floor(small, "val_accuracy") == pytest.approx(accuracy + FLOOR_MARGIN)
    assert np.isnan(majority_floor(small, "val_f1_nonexistent"))
