"""The refit: the model a search delivers retrained on train + validation, evaluated once on the
test records, exported as a model bundle, with report.json and pictures.

The delivered model is the search's single best trial, or, when the search chose a team
(ensemble.json, written by ecg_tune/search/ensemble.py), that ensemble: each member is refit for
its own epochs, replaying its own learning rates, and the ensemble's probabilities are the weighted
mean of the members' (bundle.weighted_mean, which the bundle predicts with too). The single best
trial is refit as well when it is not a member: it is the reference the ensemble's test figures
stand beside in report.json. `ecg-tune refit --trial ID` (`RefitOptions.trial`) delivers that
trial instead (a point of the Pareto front, reporting/pareto.py), refit alone for its own best
epoch with its own learning rates, with report.json's `chosen` saying so. Without ensemble.json,
or with the best trial alone in it, the refit is the one model it always was: same report keys
(plus `refit_seconds`), same bundle layout; its task now takes the cluster's idle CPUs as
threads, so its figures can differ in the last digits from a one-thread refit. In report.json
`test` is the delivered model's (the ensemble's), while `validation`, `config` and `epochs` stay
the single best trial's (`ensemble.single_best`); a trial chosen by hand has them its own.

It reuses the training loop (replaying the learning rate each trial used at each epoch, since no
validation data is left for ReduceLROnPlateau) and the network building of the trainable. A
cross-validated search's trial reported the fold mean per epoch: the refit trains for the epoch
where that mean peaked, replaying the median rate of the folds (training/folds.py). Each model
also replays the precision its trial's steps ran in (`ran_in`: fp32 or bf16, never a new `auto`
decision), in the config it trains, so report.json and the bundle's config.json say what ran.
Each model trains as a Ray task with the trials' resource rules, so it also works on a remote
cluster, and several models train at once when the cluster has CPUs for them; their progress
lines come back through one Ray queue, tagged by trial when there are several.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.errors import EcgTuneError
from ecg_tune.runs import BestConfig, EnsembleRecord, RunFolder, TrialTable
from ecg_tune.training.precision import reported_precision
from ecg_tune.training.reported import BF16, TRAINING_ITERATION


class RefitOptions(BaseModel):
    """Resources of the refit task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, gt=0)
    gpus: float | None = Field(None, ge=0)  # None: 0.25 when the cluster has GPUs, else 0
    address: str | None = None  # a Ray cluster to run on (None: the search's, or a local one)
    connect_timeout: float = Field(30.0, gt=0)
    # `ecg-tune refit --trial`: deliver this trial (a point of the Pareto front, say) instead of the
    # search's best or its ensemble; None: the search's choice.
    trial: str | None = None
    # model.onnx beside the torch bundle (2-5 s of export and check); off: the torch bundle only,
    # `ecg-tune export` writes the graph later.
    onnx: bool = True


@dataclass
class TrainedModel:
    """What the refit task returns: the training history, the trained parts, test probabilities."""

    history: list[dict[str, Any]]
    state: dict[str, Any]  # the network's state dict, on the CPU
    input_length: int
    head: bytes | None  # the model's fitted head (FittedHead.to_bytes, models/head.py) if it has one
    probabilities: np.ndarray  # per test record


@dataclass
class RefitResult:
    """A finished refit: the test report (as written to report.json) and where it went."""

    run: RunFolder
    report: dict[str, Any]
    epochs: int  # the single best trial's
    seconds: float = 0.0  # the refit's wall time (report.json's refit_seconds)

    @property
    def test(self) -> dict[str, Any]:
        return dict(self.report["test"])


@dataclass(frozen=True)
class RefitJob:
    """One model for a refit task: its config (epochs: its schedule's length) and rate per epoch."""

    config: TrainConfig
    lr_schedule: list[float]
    label: str = "refit"  # what its progress lines start with


def _refit_task(config_values: dict[str, Any], tensors: Any, train_index: np.ndarray, test_index: np.ndarray,
                lr_schedule: list[float], queue: Any, threads: int, label: str = "refit") -> TrainedModel:
    """Train, then predict the test records; runs where Ray places it, on `threads` CPU threads."""
    import torch

    torch.set_num_threads(threads)  # a pooled worker keeps the thread count of its last task
    from ecg_tune.training.device import out_of_memory_as_error, pick_device
    from ecg_tune.training.evaluate import record_probabilities
    from ecg_tune.training.loop import fit

    config = make_config(config_values, where="best config")
    device = pick_device()
    history, last = [], None
    with out_of_memory_as_error(config, who="the refit", flag="ecg-tune refit --gpus"):
        for result in fit(config, tensors, train_index, None, device=device, lr_schedule=lr_schedule,
                          head_last_epoch_only=True):
            history.append(result.metrics)
            last = result
            queue.put(f"{label} epoch {result.epoch}/{len(lr_schedule)}  train_loss "
                      f"{result.metrics['train_loss']:.4f}  lr {result.metrics['lr']:.2g}  "
                      f"{result.metrics['epoch_seconds']:.1f} s{'  bf16' if result.metrics.get(BF16) else ''}")
        assert last is not None, "the refit trains at least one epoch"
        if last.head is not None:
            queue.put(f"{label}: {last.head.name} fitted on all training features")
        probabilities, _ = record_probabilities(last.network, last.head, tensors, test_index, config.normalisation,
                                                config.window_overlap, device)
    return TrainedModel(history=history,
                        state={k: v.detach().cpu() for k, v in last.network.state_dict().items()},
                        input_length=last.network.input_length,
                        head=last.head.to_bytes() if last.head is not None else None,
                        probabilities=probabilities)


def train_and_predict(config: TrainConfig, dataset: Dataset, train_index: np.ndarray, test_index: np.ndarray,
                      lr_schedule: list[float], cpus: float = 1.0, gpus: float | None = None,
                      address: str | None = None, connect_timeout: float = 30.0) -> TrainedModel:
    """Train `config` on `train_index` as a Ray task (progress printed here), then predict `test_index`."""
    (output,) = train_and_predict_all([RefitJob(config, lr_schedule)], dataset, train_index, test_index, cpus,
                                      gpus, address, connect_timeout)
    return output


def train_and_predict_all(jobs: Sequence[RefitJob], dataset: Dataset, train_index: np.ndarray,
                          test_index: np.ndarray, cpus: float = 1.0, gpus: float | None = None,
                          address: str | None = None, connect_timeout: float = 30.0) -> list[TrainedModel]:
    """Each job as a Ray task, as many at once as the cluster has room for (`_cpus_per_task`),
    their progress printed here as it comes; the outputs in the jobs' order. A task that fails
    cancels the others: the refit has failed."""
    import ray
    from ray.util.queue import Queue

    from ecg_tune.search.cluster import connect

    connect(address, connect_timeout)  # no-op inside a search, which is connected already
    if gpus is None:
        gpus = 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    share = _cpus_per_task(cpus, len(jobs))
    if len(jobs) > 1:
        print(f"refit: {len(jobs)} models as Ray tasks of {share:g} CPU(s) each, as many at once as the "
              f"cluster's {ray.cluster_resources().get('CPU', 0):g} CPUs allow", flush=True)
    queue = Queue()
    task = ray.remote(num_cpus=share, num_gpus=gpus)(_refit_task)
    tensors = ray.put(dataset.tensors)  # once in the object store, however many tasks read it
    # Longest first (by epochs, the cost known beforehand): when the tasks outnumber the places,
    # the ones that start last are the short ones, so fewer CPUs idle at the end.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].lr_schedule))
    started = {i: task.remote(jobs[i].config.to_dict(), tensors, train_index, test_index, jobs[i].lr_schedule,
                              queue, max(1, int(share)), jobs[i].label) for i in order}
    pending = [started[i] for i in range(len(jobs))]
    waiting = [started[i] for i in order]
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
            while not queue.empty():
                print(queue.get(), flush=True)
            ray.get(done)  # a failed task raises here, while the others may still run
    except BaseException as exc:
        for ref in waiting:
            ray.cancel(ref, force=True)
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, EcgTuneError):
            raise cause from None  # our one line (e.g. CUDA out of memory), not Ray's traceback of it
        raise
    while not queue.empty():
        print(queue.get(), flush=True)
    return list(ray.get(pending))


def _cpus_per_task(cpus: float, tasks: int) -> float:
    """The CPUs each refit task asks for, at least `cpus`. When the cluster has room for every
    task, the CPUs it would leave idle are shared out among them (as threads, within what one node
    has: a task runs on one node), so one model uses the machine, not one core of it; when it has
    not, up to two tasks share a CPU rather than the last ones waiting for a round of their own
    while CPUs idle (3 models on 2 CPUs: 1.5 model-times instead of 2)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0.0))
    if tasks * cpus <= total:
        nodes = [float(node["Resources"].get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")] or [total]
        # The most whole CPUs per task at which every task still has a place at once (a task runs
        # on one node: nodes of 4 and 2 CPUs take two tasks of 2, not of 3).
        for share in range(int(total // tasks), 0, -1):
            if share >= cpus and sum(int(n // share) for n in nodes) >= tasks:
                return float(share)
        return cpus
    # Ray keeps resources to 4 decimals: rounded down, so that `tasks` shares fit in `total`.
    return max(cpus / 2, math.floor(total / tasks * 1e4) / 1e4)


def lr_schedule_of(run: RunFolder, best: BestConfig) -> list[float]:
    """The learning rate a trial (`best`: the best one, or an ensemble member's record) used at
    each epoch up to its peak (constant if unknown)."""
    history = run.history(best.trial_id)
    if history is not None and "lr" in history:
        return [float(v) for v in history.sort_values(TRAINING_ITERATION)["lr"].tolist()[:best.epoch]]
    return [float(best.config.get("lr", 1e-3))] * best.epoch


def ran_in(trial: BestConfig) -> str:
    """The precision a trial's steps ran in, to replay: its complete config holds it (the export
    writes the winner's reported `bf16` into best_config.json, `_member_trial` a member's from
    trials.csv); a config without one is from before the option, when every trial ran in fp32."""
    return str(trial.config.get("precision", "fp32"))


@dataclass(frozen=True)
class RefitModel:
    """One model the refit trains: a member of the delivered model, the single best trial, or both."""

    trial: BestConfig  # its trial: complete config (the search's epochs and seed), best epoch, score
    config: TrainConfig  # what the refit trains: epochs = len(lr_schedule), record caps lifted
    lr_schedule: list[float]
    weight: float  # its share of the delivered probabilities; 0: the single best, refit as the reference

    @property
    def trial_id(self) -> str:
        return self.trial.trial_id

    @property
    def validation(self) -> float | None:
        """Its trial's score on the search's metric (trials.csv's best/<metric>)."""
        return self.trial.metrics.get(self.trial.metric)


@dataclass
class RefitSetup:
    """What a refit of a finished search trains and tests."""

    best: BestConfig
    config: TrainConfig  # the single best trial's, as the refit trains it
    dataset: Dataset
    train_index: np.ndarray  # train + val
    test_index: np.ndarray
    lr_schedule: list[float]  # one rate per epoch, up to the best trial's peak
    # Every model to train: the delivered model's members (the single best alone without an
    # ensemble), then the single best when it is not a member.
    models: tuple[RefitModel, ...] = ()
    ensemble: EnsembleRecord | None = None  # the team chosen after the search, if it chose one
    # `--trial`: report.json's `chosen` (evaluation.chosen_content); then `best`, `config` and
    # `lr_schedule` are that trial's, refit alone as the delivered model.
    chosen: dict[str, Any] | None = None

    @property
    def delivered(self) -> list[RefitModel]:
        return [m for m in self.models if m.weight > 0]


def refit_setup(run: RunFolder, trial: str | None = None) -> RefitSetup:
    """The best config of the search in `run` (and the members of its ensemble, if it chose one),
    or the trial `trial` alone (`--trial`: its own config, best epoch and learning rates, as an
    ensemble member's), its data and split, and the epochs to train."""
    best = run.best()
    chosen = None
    if trial is not None:
        best, chosen = _chosen_trial(run, best, trial)
    lr_schedule = lr_schedule_of(run, best)
    config = make_config({**best.config, "epochs": len(lr_schedule), "precision": ran_in(best)},
                         where=str(run.best_config_path) if chosen is None else f"--trial {best.trial_id}")
    if chosen is not None:  # its values as the config types them (trials.csv reads a gappy int column as floats)
        typed = config.to_dict()
        chosen["config"] = {k: v if k == "epochs" else typed.get(k, v) for k, v in chosen["config"].items()}
    dataset = prepare(best.data, split_file=run.split_path, seed=config.seed, split_digest=best.split_digest)
    train_index, test_index = dataset.index("train", "val"), dataset.index("test")
    config = _lift_record_caps(config, len(train_index))
    ensemble = run.ensemble() if chosen is None else None  # a trial chosen by hand is delivered alone
    weights = {best.trial_id: 1.0} if ensemble is None else {m.trial_id: m.weight for m in ensemble.members}
    table = run.trial_table() if set(weights) - {best.trial_id} else None
    models = []
    for trial_id, weight in weights.items():
        if trial_id == best.trial_id:
            models.append(RefitModel(best, config, lr_schedule, weight))
            continue
        assert table is not None  # read above, as there is a member other than the best
        record = _member_trial(best, table, trial_id, where=str(run.ensemble_path))
        schedule = lr_schedule_of(run, record)
        member = make_config({**record.config, "epochs": len(schedule), "precision": ran_in(record)},
                             where=f"{run.ensemble_path}: {trial_id}")
        models.append(RefitModel(record, _lift_record_caps(member, len(train_index)), schedule, weight))
    if best.trial_id not in weights:
        models.append(RefitModel(best, config, lr_schedule, 0.0))
    return RefitSetup(best, config, dataset, train_index, test_index, lr_schedule, tuple(models), ensemble, chosen)


def _chosen_trial(run: RunFolder, best: BestConfig, trial_id: str) -> tuple[BestConfig, dict[str, Any]]:
    """`--trial`: the trial's record as the best one's is (`_member_trial`) and report.json's
    `chosen`; an unknown id is a one-line error listing some known ones, an infeasible trial a
    one-line warning (it is refit as asked)."""
    import sys

    from ecg_tune.reporting.evaluation import chosen_content
    from ecg_tune.reporting.pareto import FEASIBLE

    table = run.trial_table()
    if trial_id not in table.ids:
        known = ", ".join(table.ids[:6]) + (f", ... ({len(table)} trials)" if len(table) > 6 else "")
        raise EcgTuneError(f"--trial {trial_id}: no such trial in {run.path / 'trials.csv'} (known: {known or 'none'})")
    trial = _member_trial(best, table, trial_id, where=f"--trial {trial_id}")
    flag = table.final[FEASIBLE].get(trial_id) if FEASIBLE in table.final else None
    feasible = None if flag is None or pd.isna(flag) else bool(float(flag) > 0.5)
    if feasible is False:
        print(f"warning: trial {trial_id} broke the run's constraints (feasible = 0 in trials.csv); refitting it as "
              f"asked", file=sys.stderr, flush=True)
    return trial, chosen_content(trial_id, best.trial_id, feasible, trial.config)


def _lift_record_caps(config: TrainConfig, records: int) -> TrainConfig:
    """A part that learns from a subsample of records per epoch (cnn_svm's SVM stage: its
    svm_max_train) learns from every training record in the refit."""
    from ecg_tune.models import MODELS

    return config.with_updates(**{key: max(config.value(key), records) for key in MODELS.record_caps()})


def _member_trial(best: BestConfig, table: TrialTable, trial_id: str, where: str) -> BestConfig:
    """An ensemble member's trial as the best one's record is: its sampled values from trials.csv
    made complete as the export makes the best config (the search's epochs and seed), its best
    epoch and its score on the search's metric."""
    from ecg_tune.search.trainable import trial_config

    if trial_id not in table.ids:
        raise EcgTuneError(f"{where}: {trial_id} is not a trial of this search (not in trials.csv)")
    epoch = table.info["best_epoch"].get(trial_id) if "best_epoch" in table.info else None
    if epoch is None or pd.isna(epoch):
        raise EcgTuneError(f"{where}: trial {trial_id} never reported {best.metric} (trials.csv): nothing to refit")
    # trials.csv leaves out a conditional key the trial did not set (NaN); numpy scalars as Python's.
    values = {str(key): value.item() if isinstance(value, np.generic) else value
              for key, value in table.config.loc[trial_id].items() if not pd.isna(value)}
    ran = table.final[BF16].get(trial_id) if BF16 in table.final else None
    if ran is not None and not pd.isna(ran):  # as the export writes the best config's
        values["precision"] = reported_precision(float(ran))
    score = table.best[best.metric].get(trial_id) if best.metric in table.best else None
    return replace(best, config=trial_config(values, best.config["epochs"], best.config["seed"]), epoch=int(epoch),
                   trial_id=trial_id, metrics={} if score is None or pd.isna(score) else {best.metric: float(score)})


def run_refit(run: RunFolder, options: RefitOptions | None = None) -> RefitResult:
    """Refit the delivered model of the search in `run`; write report, pictures and model/."""
    options = options or RefitOptions()
    run = RunFolder(run.path.resolve())
    with run.lock():  # not while a search (or another refit) writes to the folder
        return _refit(run, options)


def _refit(run: RunFolder, options: RefitOptions) -> RefitResult:
    from ecg_tune.bundle import weighted_mean
    from ecg_tune.reporting.evaluation import ModelFigures, ensemble_content, headline, test_metrics
    from ecg_tune.reporting.page import write_html_report
    from ecg_tune.reporting.pictures import write_pictures

    started = time.monotonic()
    setup = refit_setup(run, options.trial)
    best, dataset, models = setup.best, setup.dataset, setup.models
    train_index, test_index = setup.train_index, setup.test_index
    _announce(setup)
    if len(models) == 1:  # the one model, through the function the benchmarks (and tests) call
        outputs = [train_and_predict(setup.config, dataset, train_index, test_index, setup.lr_schedule,
                                     options.cpus, options.gpus, options.address, options.connect_timeout)]
    else:
        jobs = [RefitJob(m.config, m.lr_schedule, f"refit {m.trial_id}") for m in models]
        outputs = train_and_predict_all(jobs, dataset, train_index, test_index, options.cpus, options.gpus,
                                        options.address, options.connect_timeout)
    trained = dict(zip([m.trial_id for m in models], outputs, strict=True))

    classes = dataset.records.classes
    assert dataset.tensors.labels is not None  # data.prepare refuses unlabelled data
    truth = dataset.tensors.labels[test_index]
    seed = setup.config.seed  # one seed: every model's intervals come from the same resamples
    tests = {m.trial_id: test_metrics(truth, trained[m.trial_id].probabilities, classes, seed=seed) for m in models}
    delivered = setup.delivered
    probabilities = weighted_mean([trained[m.trial_id].probabilities for m in delivered], [m.weight for m in delivered])
    test = tests[delivered[0].trial_id] if len(delivered) == 1 else test_metrics(truth, probabilities, classes,
                                                                                  seed=seed)
    seconds = time.monotonic() - started
    figures = [ModelFigures(m.trial_id, m.weight, m.validation, len(m.lr_schedule), tests[m.trial_id])
               for m in models]
    ensemble = None if setup.ensemble is None else ensemble_content(
        figures, best.trial_id, best.metric, setup.ensemble.rule, setup.ensemble.figures)
    report = run.write_report(test, best.metrics, setup.config.to_dict(), len(setup.lr_schedule),
                              ensemble=ensemble, refit_seconds=seconds, chosen=setup.chosen)
    _save_model(run, delivered, trained, classes, dataset.records.fs, onnx=options.onnx)
    run.write_predictions(pd.DataFrame({
        "record": [dataset.records.record_ids[i] for i in test_index],
        "true": [classes[i] for i in truth],
        "predicted": [classes[i] for i in probabilities.argmax(axis=1)],
        **{f"p_{c}": probabilities[:, k] for k, c in enumerate(classes)}}))

    histories = run.histories()
    pictures = write_pictures(run, best, test, trained[best.trial_id].history, histories)
    html = write_html_report(run, histories)
    print(f"test ({test['n_records']} records, once): {headline(test)}", flush=True)
    if ensemble is not None:
        for figure in figures:
            role = "single best" if figure.trial_id == best.trial_id else "member"
            share = f"weight {figure.weight:.2f}, " if figure.weight > 0 else "the reference, "
            score = "" if figure.validation is None else f"validation {best.metric} {figure.validation:.4f}, "
            print(f"  {role} {figure.trial_id} ({share}{score}{_epochs(figure.epochs)}): test {headline(figure.test)}",
                  flush=True)
    print(f"refit wall time: {seconds:.1f} s ({len(models)} model{'s' if len(models) > 1 else ''} trained)",
          flush=True)
    print(f"refit results in {run.path}: report.json, report.html, confusion_matrix.png, training_curves.png, "
          f"search_overview.png, test_predictions.csv, model/", flush=True)
    from ecg_tune.tracking import log_refit  # does nothing (imports no MLflow) unless --mlflow

    log_refit(run, test, [*pictures, html.path, run.pareto_path], ensemble=ensemble, refit_seconds=seconds)
    return RefitResult(run=run, report=report, epochs=len(setup.lr_schedule), seconds=seconds)


def _announce(setup: RefitSetup) -> None:
    """What the refit is about to train, printed."""
    best, records = setup.best, f"on {len(setup.train_index)} train+val records; test: {len(setup.test_index)} records"
    peak = f" (where the mean of its {best.cv} folds peaked)" if best.cv > 1 else ""
    if setup.chosen is not None:
        print(f"refit: trial {best.trial_id}, chosen by hand instead of the search's best "
              f"{setup.chosen['search_best']}, for {_epochs(len(setup.lr_schedule))}{peak} {records}", flush=True)
        return
    if len(setup.models) == 1:
        print(f"refit: {best.trial_id}'s config for {len(setup.lr_schedule)} epochs{peak} {records}", flush=True)
        return
    delivered = setup.delivered
    team = (f"the ensemble of {len(delivered)} trials chosen after the search" if len(delivered) > 1
            else f"trial {delivered[0].trial_id}, chosen after the search")
    print(f"refit: {team}, each for its own epochs{peak}, {records}", flush=True)
    for model in setup.models:
        role = f"weight {model.weight:.2f}" if model.weight > 0 else "the single best, refit as the reference"
        print(f"  {model.trial_id}: {role}, {_epochs(len(model.lr_schedule))}", flush=True)


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _save_model(run: RunFolder, delivered: list[RefitModel], trained: dict[str, TrainedModel], classes: list[str],
                fs: float | None, onnx: bool) -> None:
    """model/: the one model's bundle, or the ensemble's (its members' bundles and weights); with
    `onnx`, its graph too."""
    from ecg_tune.bundle import MemberModel, save_bundle, save_ensemble_bundle
    from ecg_tune.training.network import build_network

    members = []
    for model in delivered:
        output = trained[model.trial_id]
        network = build_network(model.config, output.input_length, len(classes))
        network.load_state_dict(output.state)
        head = network.model.restore_head(output.head)
        members.append(MemberModel(model.trial_id, model.weight, network, head, model.config))
    if len(members) == 1:
        save_bundle(run.model_dir, members[0].network, members[0].head, members[0].config, classes, fs, onnx=onnx)
    else:
        save_ensemble_bundle(run.model_dir, members, classes, fs, onnx=onnx)
