"""The `ecg-tune` command line: argument parsing only; each subcommand calls the package.

Errors in the user's input (data, config, options) are printed as one line and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecg_tune.errors import EcgTuneError, SearchInterrupted


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    # warnings.formatwarning's signature; the fifth argument warnings passes is the source line.
    return f"warning: {message}\n"


def add_data_options(parser: argparse.ArgumentParser, default: str | None = "synthetic") -> None:
    parser.add_argument("--data", default=default,
                        help="synthetic[:N], a PhysioNet/WFDB folder, a notebook pickle folder, "
                             "or a .pkl/.parquet/.csv/UCR table file (default: synthetic)")
    parser.add_argument("--label-column", choices=["first", "last", "none"], default=None,
                        help="where a text table keeps its label (default: first for UCR .txt/.tsv, "
                             "last for .csv; none: unlabelled)")


def parse_overrides(pairs: Sequence[str]) -> dict:
    """`key=value` pairs, values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EcgTuneError(f"--set {pair!r}: expected key=value")
        values[key.strip()] = yaml.safe_load(raw)
    return values


def cv_value(text: str) -> int | str:
    """--cv: "auto" or a whole number of folds."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of folds, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from ecg_tune.pipeline import run_train, train_options

    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    run_train(train_options(args.config, overrides, args.data, label_column=args.label_column,
                            split_file=args.split, threads=args.threads,
                            out=Path(args.out) if args.out else None, device=args.device))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import time

    from ecg_tune.pipeline import DataOptions, PipelineOptions, RefitOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions
    from ecg_tune.search.space_file import load_space

    space = load_space(args.space)  # a bad space file fails before anything else
    if args.resume and not args.out:
        raise EcgTuneError("--resume needs the --out folder of the search to continue")
    out = Path(args.out or f"runs/{space.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    search = options_from_args(SearchOptions, args, out=out, reuse_actors=not args.new_worker_per_trial,
                               trial_resources=_resources(args.trial_resource))
    refit = None if args.no_refit else options_from_args(RefitOptions, args, cpus=args.cpus_per_trial, gpus=None)
    run_pipeline(PipelineOptions(search=search, space=space, refit=refit, dry_run=args.dry_run,
                                 data=DataOptions(args.data, args.label_column, seed=args.seed)))
    return 0


def _resources(pairs: list[str]) -> dict[str, float]:
    """--trial-resource NAME=AMOUNT pairs as a dict."""
    resources = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            resources[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise EcgTuneError(f"--trial-resource {pair!r}: expected NAME=AMOUNT, e.g. gpu_node=0.01")
    return resources


def cmd_refit(args: argparse.Namespace) -> int:
    from ecg_tune.pipeline import RefitOptions, run_refit
    from ecg_tune.runs import RunFolder

    run_refit(RunFolder(args.run), options_from_args(RefitOptions, args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ecg_tune.reporting.page import write_html_report
    from ecg_tune.runs import RunFolder

    written = write_html_report(RunFolder(args.run))
    print(f"{written.path} ({written.size / 1e6:.1f} MB)", flush=True)
    return 0


def options_from_args(model: Any, args: argparse.Namespace, **given: Any) -> Any:
    """A pydantic options model from the parsed arguments of the same names (plus `given`);
    a value out of its bounds is a one-line error naming the flag."""
    from pydantic import ValidationError

    from ecg_tune.errors import validation_message

    values = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    values.update(given)
    try:
        return model(**values)
    except ValidationError as exc:
        raise EcgTuneError(validation_message(exc, name=lambda key: "--" + key.replace("_", "-"))) from None


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from ecg_tune.data import check_records, load
    from ecg_tune.data.sources import read_wfdb_records
    from ecg_tune.onnx_runtime import OnnxModel, at_rate  # torch-free, so both runtimes share them

    if args.runtime == "onnx":  # onnxruntime, numpy and the readers only: this path imports no torch
        if args.device:
            raise EcgTuneError("--device is read with --runtime torch only (onnx runs on the CPU)")
        bundle: Any = OnnxModel(args.model, onnx_file=args.onnx_file, threads=args.threads)
    else:
        from ecg_tune.bundle import load_bundle

        if args.onnx_file:
            raise EcgTuneError("--onnx-file is read with --runtime onnx only")
        bundle = load_bundle(args.model, device=args.device)
    header = ["record", "predicted", *[f"p_{c}" for c in bundle.classes]]
    rows, failed = [], 0
    for item in args.inputs:
        try:
            path = Path(item)
            if path.suffix.lower() in {".hea", ".mat", ".dat"}:
                if not path.exists():
                    raise EcgTuneError(f"{item}: no such file")
                records = read_wfdb_records([path.with_suffix("")], source=item, progress=False)
                check_records(records)
            else:
                records = load(item, label_column=args.label_column, progress=False)
            records = at_rate(records, bundle.fs, args.fs)
            probabilities = bundle.predict(records)
        except EcgTuneError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for record, p in zip(records.record_ids, probabilities, strict=False):
            rows.append([record, bundle.classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    finally:
        if args.output:
            handle.close()
    if failed:
        print(f"{failed} of {len(args.inputs)} input(s) failed; {len(rows)} record(s) classified", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from ecg_tune.bundle import export_bundle

    for path in export_bundle(args.model, quantize=args.quantize):
        print(f"wrote {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ecg_tune.benchmarks.run import BenchmarkOptions, run_benchmark

    run_benchmark(options_from_args(BenchmarkOptions, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-tune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one configuration and print a line per epoch")
    add_data_options(train, default=None)
    train.add_argument("--config", help="a YAML or JSON config file (or a search's best_config.json)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set model=resnet1d (repeatable)")
    train.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    train.add_argument("--seed", type=int, help="seed for the split, initialisation and augmentation")
    train.add_argument("--split", help="a split.csv to use instead of a new split")
    train.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    train.add_argument("--out", help="folder for split.csv, history.json and checkpoint.pt")
    train.add_argument("--threads", type=int,
                       help="CPU threads for torch (default: torch's, or the trial's for a best_config.json)")
    train.set_defaults(handler=cmd_train)

    search = commands.add_parser("search", help="run a Ray Tune search over a space file")
    add_data_options(search)
    search.add_argument("--space", default="full", help="a shipped space (full, seed_grid, smoke) or a YAML file")
    search.add_argument("--out", help="results folder (default: runs/<space>-<timestamp>)")
    search.add_argument("--num-samples", type=int, help="number of trials (default: the space's)")
    search.add_argument("--max-epochs", type=int, help="epochs per trial, ASHA's max_t (default: the space's)")
    search.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop starting trials after this")
    search.add_argument("--cpus-per-trial", type=float, default=1.0)
    search.add_argument("--gpus-per-trial", type=float,
                        help="GPU fraction per trial (default: 0.25 when the cluster has GPUs, else 0)")
    search.add_argument("--max-concurrent", type=int, help="trials at once (default: what the resources allow)")
    search.add_argument("--searcher", choices=["optuna", "random"], default="optuna")
    search.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    search.add_argument("--metric", help="metric that ranks trials, in its own direction (val_loss: lowest wins; "
                                         "default: val_cinc_f1 with N, A, O classes, else val_macro_f1)")
    search.add_argument("--rung-metric", metavar="METRIC",
                        help="what ASHA's rungs rank trials by (e.g. val_auroc, which moves before the arg-max "
                             "does); the searcher and the best trial still rank by --metric (default: the "
                             "space's search.rung_metric, else --metric)")
    search.add_argument("--objectives", metavar="KEYS",
                        help="several objectives, comma-separated, e.g. val_cinc_f1,latency_ms: a multi-objective "
                             "search, each key in its own direction (costs n_params, macs, latency_ms are "
                             "minimised); the first, a validation metric, ranks the best trial and ASHA's rungs")
    search.add_argument("--max-params", type=float, metavar="N",
                        help="train no configuration with more parameters (estimated before training; a fitted "
                             "SVM stage's support vectors count once fitted)")
    search.add_argument("--max-macs", type=float, metavar="N",
                        help="train no configuration with more multiply-accumulates per record at its input length")
    search.add_argument("--max-latency-ms", type=float, metavar="MS",
                        help="a trial slower than this per record (batch 1, one thread, measured by the trial) is "
                             "infeasible: never the best trial nor an ensemble member")
    search.add_argument("--cv", type=cv_value, default="auto", metavar="K",
                        help="rank trials by K-fold cross-validation over the train+val records; 1: the "
                             "split's val part; auto (default): 5 folds when the val part has fewer than "
                             "100 records")
    search.add_argument("--ensemble", type=int, default=1, metavar="K",
                        help="deliver a team of at most K distinct trials, chosen after the search from their "
                             "saved validation predictions (greedy selection with replacement; team or single "
                             "best, and its size, decided on held-out halves of those records), refit and "
                             "bundled together; 1 (default): the single best trial")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--address", help="attach to the Ray cluster at HOST:PORT (its head's GCS port) instead of "
                                          "starting one on this machine")
    search.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for --address to answer (default 30)")
    search.add_argument("--storage", help="where Tune keeps the experiment, seen by every node: a path on a shared "
                                          "filesystem or a URI (s3://bucket/path?endpoint_override=...); "
                                          "default: --out, one machine only")
    search.add_argument("--trial-resource", action="append", default=[], metavar="NAME=AMOUNT",
                        help="a custom Ray resource each trial also asks for (repeatable), e.g. "
                             "gpu_node=0.01 to run trials only on nodes started with that resource")
    search.add_argument("--optuna-storage", metavar="URL", help="keep the Optuna study there, e.g. sqlite:///study.db")
    search.add_argument("--keep-checkpoints", type=int, default=argparse.SUPPRESS,
                        help="checkpoints kept of a running trial (default 3); an ended trial keeps its newest")
    search.add_argument("--min-free-mb", type=float, default=256.0, metavar="MB",
                        help="stop the search (resumably) when less than this is free on a local storage "
                             "(default 256)")
    search.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
    # const "default" (tracking.DEFAULT_URI) is resolved against --out; the literal keeps cli.py from
    # importing tracking (and ray.tune) to build the parser.
    search.add_argument("--mlflow", nargs="?", const="default", metavar="URI",
                        help="track the search in MLflow: a parent run, each trial as a nested run, the refit's "
                             "test metrics and files (default URI: sqlite:///<out>/mlflow.db; needs "
                             'pip install "ecg-tune[tracking]")')
    search.add_argument("--new-worker-per-trial", action="store_true",
                        help="start a fresh worker process for every trial (Tune's default) instead of "
                             "reusing finished trials' workers")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    search.add_argument("--dry-run", action="store_true", help="validate data and space, show the plan, train nothing")
    search.add_argument("--no-refit", action="store_true", help="skip the refit of the best config")
    search.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="write the torch bundle only, no model.onnx (`ecg-tune export` writes it later)")
    search.set_defaults(handler=cmd_search)

    refit = commands.add_parser("refit", help="retrain a finished search's best config, test it once, export it")
    refit.add_argument("--run", required=True, help="the search's output folder (holds best_config.json)")
    refit.add_argument("--cpus", type=float, default=1.0,
                       help="CPUs each refit task asks for at least (idle CPUs are shared out among the tasks)")
    refit.add_argument("--gpus", type=float, help="GPU share (default: 0.25 when the cluster has GPUs)")
    refit.add_argument("--address", help="run the refit task on the Ray cluster at HOST:PORT")
    refit.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="how long to wait for --address to answer (default 30)")
    refit.add_argument("--trial", metavar="ID",
                       help="deliver this trial instead of the search's best (e.g. a point of pareto.csv): its "
                            "config for its own best epoch, learning rates replayed")
    refit.add_argument("--no-onnx", dest="onnx", action="store_false",
                       help="write the torch bundle only, no model.onnx (`ecg-tune export` writes it later)")
    refit.set_defaults(handler=cmd_refit)

    report = commands.add_parser("report", help="(re)write a finished search's report.html: its trials, "
                                                "parameter importances and, once refitted, the test report")
    report.add_argument("--run", required=True, help="the search's output folder (holds best_config.json)")
    report.set_defaults(handler=cmd_report)

    predict = commands.add_parser("predict", help="classify recordings with an exported model bundle")
    predict.add_argument("--model", required=True, help="a model/ folder written by the refit")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="WFDB records (.hea/.mat/.dat), folders of them, or table files")
    predict.add_argument("--output", help="CSV file to write (default: standard output)")
    predict.add_argument("--fs", type=float, help="sampling rate of inputs that do not state one")
    predict.add_argument("--label-column", choices=["first", "last", "none"], default=None)
    predict.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    predict.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                         help="torch: the bundle's network (default); onnx: its model.onnx in onnxruntime, "
                              "without importing torch")
    predict.add_argument("--onnx-file", default=None,
                         help="--runtime onnx: the graph to run, in the bundle or a path (default model.onnx; "
                              "model.int8.onnx after `export --quantize int8`)")
    predict.add_argument("--threads", type=int, default=1, help="--runtime onnx: onnxruntime's intra-op threads")
    predict.set_defaults(handler=cmd_predict)

    export = commands.add_parser("export", help="(re)write a model bundle's model.onnx (and an int8 copy)")
    export.add_argument("--model", required=True, help="a model/ folder written by the refit")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write model.int8.onnx (dynamic int8 quantisation of the matrix products)")
    export.set_defaults(handler=cmd_export)

    bench = commands.add_parser("benchmark", help="measure speed and quality (results under benchmarks/results/)")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    pipeline = kinds.add_parser("pipeline", help="input pipeline and epoch throughput against the seed and the limit")
    pipeline.add_argument("--records", type=int, default=1024, help="training records per measurement")
    pipeline.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best one counts")
    strategies = kinds.add_parser("search", help="seed grid vs random/FIFO vs random/ASHA vs Optuna/ASHA at equal time")
    strategies.add_argument("--budget", type=float, default=240.0, metavar="SECONDS",
                            help="wall-clock budget of each search run (default 240: each strategy x seed is "
                                 "one run, so 5 strategies x 3 seeds take about an hour on 2 cores)")
    strategies.add_argument("--seeds", type=int, default=3, help="runs per strategy")
    strategies.add_argument("--records", type=int, default=2500,
                            help="a stratified subset of this many records, the same for every run "
                                 "(default 2500, so that a 5-minute run tries more than a couple of "
                                 "configs on 2 cores; 0: all)")
    strategies.add_argument("--strategies", nargs="+", choices=["seed_grid", "random_fifo", "random_asha",
                                                                "optuna_asha", "optuna_asha_complete",
                                                                "optuna_asha_auroc"],
                            help="a subset (default: all)")
    overhead = kinds.add_parser("overhead", help="Ray's cost per trial, trials/min, peak memory of 1 vs 4 trials, "
                                                 "the searcher's cost per trial as the study grows")
    overhead.add_argument("--tiny-trials", type=int, default=40, help="trials that only report once")
    overhead.add_argument("--parts", nargs="+", choices=["trials", "memory", "searcher"],
                          help="a subset (default: all): Tune's cost per tiny trial, memory of 1 vs 4 trials, "
                               "the searcher's cost per trial as the study grows")
    overhead.add_argument("--searcher-trials", type=int,
                          help="searcher part: trials per searcher in process (default 1000; --quick 60)")
    overhead.add_argument("--searcher-ray-trials", type=int,
                          help="searcher part: trials per searcher through Tune (default 200; --quick 12)")
    gpu = kinds.add_parser("gpu", help="throughput of 1, 2, 4, 8 trials sharing one GPU (skips without CUDA)")
    quality = kinds.add_parser("quality", help="a full search's test score against duration-only, MiniRocket, "
                                               "pad vs crop and the published anchors")
    quality.add_argument("--run", help="a finished, refitted search folder to measure (default: run a full search)")
    quality.add_argument("--search-budget", type=float, default=1500.0, metavar="SECONDS",
                         help="wall-clock budget of that search (default 1500 = 25 min)")
    quality.add_argument("--search-trials", type=int, default=200, help="trial limit of that search")
    quality.add_argument("--kernels", type=int, default=10_000, help="MiniRocket kernels")
    quality.add_argument("--seed", type=int, default=0, help="seed of the split and the search (default 0)")
    quality.add_argument("--ensemble", type=int, default=1, metavar="K",
                         help="--ensemble of that search (default 1: the single best trial)")
    portfolio = kinds.add_parser("portfolio", help="candidate start points of full, each trained alone for the "
                                                   "same budget on one thread (--summarise: mean rank over data sets)")
    portfolio.add_argument("--candidates", type=Path, help="a YAML file with a `candidates:` list of partial configs "
                                                           "(default: the start: list of the full space)")
    portfolio.add_argument("--budget", type=float, default=120.0, metavar="SECONDS",
                           help="wall-clock seconds per candidate; it stops after the epoch that crosses it")
    portfolio.add_argument("--max-epochs", type=int, help="epoch cap per candidate (default: full's max_epochs)")
    portfolio.add_argument("--seeds", type=int, default=1, help="seeds of the split and initialisation")
    portfolio.add_argument("--summarise", nargs="+", type=Path, metavar="FILE",
                           help="portfolio result files, one per data set: their mean rank (trains nothing)")
    steadiness = kinds.add_parser("steadiness", help="full's trained start points with a constant rate, cosine "
                                                     "annealing, weight averaging (EMA) and both: best, last epochs, "
                                                     "swing between epochs")
    steadiness.add_argument("--max-epochs", type=int, default=20, help="epochs per run (default 20)")
    steadiness.add_argument("--seeds", type=int, default=3, help="seeds per start point and variant")
    steadiness.add_argument("--records", type=int, default=0,
                            help="a stratified subset of this many records (default 0: all)")
    steadiness.add_argument("--starts", type=int, nargs="+", metavar="INDEX",
                            help="indices into full's start: list (default: every trained one)")
    steadiness.add_argument("--variants", nargs="+", choices=["constant", "cosine", "ema", "cosine_ema"],
                            help="a subset (default: all)")
    resample = kinds.add_parser("resample", help="a full search with refit on each re-split of a UCR TRAIN/TEST "
                                                 "pair (pooled, re-drawn with the official sizes and class "
                                                 "proportions): delivered against single best test figures")
    resample.add_argument("--resamples", type=int, default=5, help="re-splits (default 5)")
    resample.add_argument("--first-seed", type=int, default=0, help="seed of the first re-split (default 0)")
    resample.add_argument("--budget", type=float, default=420.0, metavar="SECONDS",
                          help="time budget of each search (default 420)")
    resample.add_argument("--ensemble", type=int, default=5, metavar="K", help="--ensemble of each search (default 5)")
    precision = kinds.add_parser("precision", help="epoch time in fp32, bf16 and auto per model family on full's "
                                                   "start-point shapes, one thread (--accuracy: fp32 against bf16 "
                                                   "best validation scores of start point A)")
    precision.add_argument("--records", type=int, default=0,
                           help="a stratified subset of this many records (default 0: all)")
    precision.add_argument("--rounds", type=int, default=1, help="timed runs per case and precision (median)")
    precision.add_argument("--accuracy", action="store_true",
                           help="also train start point A in fp32 and bf16 for --seeds x --max-epochs")
    precision.add_argument("--seeds", type=int, default=3, help="--accuracy: seeds per precision (default 3)")
    precision.add_argument("--max-epochs", type=int, default=20, help="--accuracy: epochs per run (default 20)")
    deploy = kinds.add_parser("deploy", help="per model family: a short training on CinC, its ONNX graph against "
                                             "torch on test records (same class, probabilities), and the latency "
                                             "of torch, onnxruntime fp32 and int8 on one 30-s record, one thread")
    deploy.add_argument("--families", nargs="+", choices=["resnet1d", "minirocket", "simple_cnn", "cnn_svm", "ecg_cnn"],
                        help="a subset (default: all five)")
    deploy.add_argument("--max-epochs", type=int, default=2, help="epochs of each family's training (default 2)")
    deploy.add_argument("--records", type=int, default=2000, help="training records per family (default 2000)")
    deploy.add_argument("--test-records", type=int, default=200, help="test records compared (default 200)")
    deploy.add_argument("--run", help="measure the model this finished, refitted search delivered (on its own test "
                                      "records) instead of training each family")
    fronts = kinds.add_parser("fronts", help="finished searches' fronts side by side: trials, front size, the area "
                                             "each front dominates in (log2 latency, metric) on a shared box, and "
                                             "what each halving of latency costs")
    fronts.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="finished search folders")
    fronts.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    for kind in (pipeline, strategies, overhead, gpu, quality, portfolio, steadiness, resample, precision, deploy):
        kind.add_argument("--data", default=None,
                          help="data source (default: ../shared/data/cinc2017/training2017 beside the "
                               "checkout when present, else synthetic)")
        kind.add_argument("--label-column", choices=["first", "last", "none"], default=None)
        kind.add_argument("--quick", action="store_true", help="a small, fast setting for trying it out")
        kind.add_argument("--out", default="benchmarks/results", help="folder for the JSON results and plots")
    bench.set_defaults(handler=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return args.handler(args)
    except SearchInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except EcgTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
