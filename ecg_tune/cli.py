"""The `ecg-tune` command line: argument parsing only; each subcommand calls the package.

Errors in the user's input (data, config, options) are printed as one line and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from ecg_tune.errors import EcgTuneError


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {message}\n"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic",
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


def cmd_train(args: argparse.Namespace) -> int:
    from ecg_tune.config import load_config, make_config
    from ecg_tune.data import prepare
    from ecg_tune.training.run import train_one

    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.config, overrides) if args.config else make_config(overrides, where="--set")
    dataset = prepare(args.data, label_column=args.label_column, split_file=args.split, seed=config.seed)
    train_one(config, dataset, out=Path(args.out) if args.out else None, device=args.device)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import json
    import time

    from ecg_tune.data import prepare

    source = args.data or (str(DEFAULT_BENCHMARK_DATA) if DEFAULT_BENCHMARK_DATA.is_dir() else "synthetic")
    dataset = prepare(source, label_column=args.label_column)
    print(f"data: {dataset.summary()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.benchmark == "pipeline":
        from ecg_tune.benchmarks.pipeline import run_pipeline_benchmark

        records, rounds = (256, 1) if args.quick else (args.records, args.rounds)
        result = run_pipeline_benchmark(dataset, records=records, rounds=rounds)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"{args.benchmark}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0


# CinC 2017 where the project's shared data sits beside the checkout, as on the team's machines.
DEFAULT_BENCHMARK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cinc2017" / "training2017"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-tune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one configuration and print a line per epoch")
    add_data_options(train)
    train.add_argument("--config", help="a YAML or JSON config file (or a search's best_config.json)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set model=resnet1d (repeatable)")
    train.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    train.add_argument("--seed", type=int, help="seed for the split, initialisation and augmentation")
    train.add_argument("--split", help="a split.csv to use instead of a new split")
    train.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    train.add_argument("--out", help="folder for split.csv, history.json and checkpoint.pt")
    train.set_defaults(run=cmd_train)

    bench = commands.add_parser("benchmark", help="measure speed (results under benchmarks/results/)")
    bench.add_argument("benchmark", choices=["pipeline"], help="which benchmark")
    bench.add_argument("--data", default=None,
                       help=f"data source (default: {DEFAULT_BENCHMARK_DATA} when present, else synthetic)")
    bench.add_argument("--label-column", choices=["first", "last", "none"], default=None)
    bench.add_argument("--records", type=int, default=1024, help="training records per measurement")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best one counts")
    bench.add_argument("--quick", action="store_true", help="a small, fast setting for trying it out")
    bench.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    bench.set_defaults(run=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return args.run(args)
    except EcgTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
