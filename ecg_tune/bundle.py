"""The exported model bundle (`model/`): writing it, loading it, predicting with it.

A bundle classifies new recordings without the search: `weights.pt` (the network's state dict,
loaded with `torch.load(..., weights_only=True)`), the file of a fitted head the model keeps apart
(models/head.py: `FittedHead.file`, `svm.skops` for cnn_svm's SVM stage, loaded with no untrusted
types, so no arbitrary code runs), and `config.json` with the full training config, the class
names, the sampling rate and the preprocessing (normalisation, input length, transform,
windowing; the transform's options are those it declares). A fitted head that is part of the
model (minirocket's ridge head) is in weights.pt. Prediction reuses the data layer's tensors and
the record-level windowed evaluation of training, so a bundle predicts exactly as the refit's
test evaluation did.

Loading checks every file before using it, so that a damaged or hand-edited bundle is a one-line
error naming the file rather than a traceback or a silently different prediction: config.json
against its schema and its `preprocessing` against its `config`; the weights' names, shapes,
dtypes and finiteness against the network config.json describes; a head kept apart against the
network's features and the classes.

An ensemble (the team the search chose, ensemble.json in the run folder, refitted member by
member) is a bundle of bundles: `ensemble.json` (the class names, the sampling rate and the
members with their weights) and `members/<trial_id>/`, each a complete single-model bundle as
above (usable alone with `predict --model`). It predicts the weighted mean of its members'
record probabilities (`weighted_mean`, the refit's own combination). `load_bundle` tells the two
apart by ensemble.json, so `predict` takes either with no change; a refit writing one kind removes
what an earlier refit left of the other.

Beside them, `model.onnx` and `onnx.json`: the same model as one ONNX graph for onnxruntime without
torch (onnx_export.py writes it when a bundle is saved, a team's as one graph; onnx_runtime.py runs
it; `ecg-tune export` rewrites it, with `--quantize int8` also `model.int8.onnx`). Without the
optional `deploy` packages, or for a part with no ONNX form, saving warns in one line and the
bundle is complete without it.

Format history (all of format 1, all loaded): until 1abb620 `preprocessing` listed wavelet,
levels, wavelet_output and fourier_log for every transform (None where unused); since then only
the transform's declared options. The config keys have only been added to since (the rocket_*
keys with minirocket), so an older config takes today's defaults for the keys it lacks, which
are the values it was trained with. A newer format is refused with the version it is.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data.records import Records
from ecg_tune.data.sources import some_of
from ecg_tune.data.tensors import TensorData, to_tensors
from ecg_tune.errors import ConfigError, EcgTuneError, validation_message
from ecg_tune.models.head import FittedHead
from ecg_tune.onnx_export import GraphMember, export_onnx, export_or_warn, quantize_int8

# Resampling to the bundle's rate is shared with the torch-free runtime, which owns it.
from ecg_tune.onnx_runtime import INT8_FILE, ONNX_FILE, ONNX_META
from ecg_tune.onnx_runtime import at_rate as at_rate
from ecg_tune.training.device import pick_device
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.network import Network, build_network

FORMAT_VERSION = 1
META, WEIGHTS = "config.json", "weights.pt"
ENSEMBLE, MEMBERS = "ensemble.json", "members"  # an ensemble bundle's description and its members' folder


@dataclass
class Bundle:
    """One trained model, ready to predict."""

    network: Network
    head: FittedHead | None  # a fitted head kept apart from the network (its file), or None
    config: TrainConfig
    classes: list[str]
    fs: float | None
    device: torch.device

    def predict(self, records: Records) -> np.ndarray:
        """Per-record class probabilities (n_records, n_classes) for records at the bundle's rate."""
        return self.predict_tensors(to_tensors(records))

    def predict_tensors(self, tensors: TensorData) -> np.ndarray:
        """`predict` on records already made tensors (an ensemble makes them once for its members)."""
        probabilities, _ = record_probabilities(self.network, self.head, tensors, np.arange(len(tensors)),
                                                self.config.normalisation, self.config.window_overlap,
                                                self.device)
        return probabilities


@dataclass
class EnsembleBundle:
    """An ensemble's members (each a complete `Bundle`) and their weights; predicts as a `Bundle` does."""

    members: list[tuple[str, float, Bundle]]  # (trial id, weight, its bundle); the weights sum to 1
    classes: list[str]
    fs: float | None

    def predict(self, records: Records) -> np.ndarray:
        """The weighted mean of the members' per-record class probabilities."""
        tensors = to_tensors(records)  # the same for every member: normalisation is per record
        return weighted_mean([bundle.predict_tensors(tensors) for _, _, bundle in self.members],
                             [weight for _, weight, _ in self.members])


def weighted_mean(probabilities: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """An ensemble's probabilities: its members' (each records x classes) averaged with `weights`
    (normalised to sum to 1). One member of weight 1 gives its own probabilities unchanged."""
    share = np.asarray(weights, dtype=np.float64)
    share = share / share.sum()
    return np.tensordot(share, np.stack([np.asarray(p, dtype=np.float64) for p in probabilities]), axes=1)


def save_bundle(folder: Path, network: Network, head: FittedHead | None, config: TrainConfig,
                classes: list[str], fs: float | None, onnx: bool = True) -> Path:
    """Write the bundle; each file is replaced whole, config.json last, so an interrupted export
    never leaves a truncated file. `head`: the model's fitted head, written to its own file when
    the model keeps it apart (one that is part of the model is in the weights already). With
    `onnx`, model.onnx and onnx.json too (onnx_export.py), or a one-line warning saying why not."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    # An earlier refit's ensemble would be what load_bundle reads: gone before the model is written;
    # so is an earlier graph, which would otherwise answer for a model it is not.
    for stale in (ENSEMBLE, ONNX_FILE, ONNX_META, INT8_FILE):
        (folder / stale).unlink(missing_ok=True)
    weights = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, weights)
    _replace(folder / WEIGHTS, weights.getvalue())
    file = None if head is None else head.file
    if head is not None and file is not None:
        _replace(folder / file, head.to_bytes())
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "classes": list(classes),
        "fs": fs,
        "preprocessing": {
            "normalisation": config.normalisation,
            "input_length": network.input_length,
            "transform": config.transform,
            # The transform's own options (e.g. wavelet, levels, wavelet_output), by its declaration.
            **config.part_options("transform"),
            "windowing": {"window": network.input_length, "overlap": config.window_overlap,
                          "aggregation": "mean of window probabilities"},
        },
        "svm": file is not None,
    }
    _replace(folder / META, json.dumps(meta, indent=2).encode())
    shutil.rmtree(folder / MEMBERS, ignore_errors=True)
    if onnx:
        export_or_warn(folder, [GraphMember(config.model, 1.0, network, head, config)], classes, fs)
    return folder


@dataclass(frozen=True)
class MemberModel:
    """One member to write into an ensemble bundle: what `save_bundle` takes, with its trial and weight."""

    trial_id: str
    weight: float
    network: Network
    head: FittedHead | None
    config: TrainConfig


def save_ensemble_bundle(folder: Path, members: Sequence[MemberModel], classes: list[str],
                         fs: float | None, onnx: bool = True) -> Path:
    """Write an ensemble bundle: each member a bundle in members/<trial_id>/, then ensemble.json
    (the file load_bundle goes by, so an interrupted export is never read as a finished one), then
    what an earlier refit left (a single model's files, former members) is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [_EnsembleEntry(trial_id=m.trial_id, weight=m.weight) for m in members]  # checks each name
    # An earlier ensemble's file goes first: members rewritten under it must never load as a team.
    (folder / ENSEMBLE).unlink(missing_ok=True)
    for member in members:
        # One graph for the team (below), not one per member: `ecg-tune export` makes a member's.
        save_bundle(folder / MEMBERS / member.trial_id, member.network, member.head, member.config, classes, fs,
                    onnx=False)
    meta = {"format_version": FORMAT_VERSION, "kind": "ensemble", "classes": list(classes), "fs": fs,
            "aggregation": "weighted mean of the members' record probabilities",
            "members": [entry.model_dump() for entry in entries]}
    _replace(folder / ENSEMBLE, json.dumps(meta, indent=2).encode())
    for path in folder.iterdir():
        if path.is_file() and path.name != ENSEMBLE:
            path.unlink()
    kept = {m.trial_id for m in members}
    for path in (folder / MEMBERS).iterdir():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if onnx:
        export_or_warn(folder, [GraphMember(m.trial_id, m.weight, m.network, m.head, m.config) for m in members],
                       classes, fs)
    return folder


def export_bundle(folder: str | Path, quantize: Literal["int8"] | None = None) -> list[Path]:
    """(Re)write the saved bundle's model.onnx and onnx.json, and with `quantize` its int8 copy
    (model.int8.onnx); the files written. Errors are one line (ExportError names the family)."""
    folder = Path(folder)
    bundle = load_bundle(folder, device="cpu")
    for stale in (ONNX_FILE, ONNX_META, INT8_FILE):
        (folder / stale).unlink(missing_ok=True)
    if isinstance(bundle, EnsembleBundle):
        parts = [GraphMember(trial, weight, b.network, b.head, b.config) for trial, weight, b in bundle.members]
    else:
        parts = [GraphMember(bundle.config.model, 1.0, bundle.network, bundle.head, bundle.config)]
    written = [export_onnx(folder, parts, bundle.classes, bundle.fs), folder / ONNX_META]
    if quantize == "int8":
        written.append(quantize_int8(folder))
    return written


def _replace(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(content)
    temporary.replace(path)


class _Windowing(BaseModel):
    window: int = Field(ge=16)
    overlap: float = Field(ge=0, lt=1)


class _Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow")  # the transform's options, by its declaration

    normalisation: str
    input_length: int = Field(ge=16)
    transform: str
    windowing: _Windowing


class _Meta(BaseModel):
    """config.json's schema (format 1); `config` is validated by TrainConfig."""

    format_version: int
    config: dict[str, Any]
    classes: list[str] = Field(min_length=2)
    fs: float | None = Field(gt=0, allow_inf_nan=False)
    preprocessing: _Preprocessing
    # Whether a fitted head kept apart has its file beside the weights; named when cnn_svm's SVM
    # stage was the only such head, and kept so that every bundle reads alike.
    svm: bool


class _EnsembleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A folder name under members/: never a path that leads out of the bundle.
    trial_id: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    weight: float = Field(gt=0, le=1)


class _EnsembleMeta(BaseModel):
    """ensemble.json's schema (format 1)."""

    format_version: int
    kind: Literal["ensemble"]
    classes: list[str] = Field(min_length=2)
    fs: float | None = Field(gt=0, allow_inf_nan=False)
    aggregation: str = ""
    members: list[_EnsembleEntry] = Field(min_length=1)


def load_bundle(folder: str | Path, device: str | None = None) -> Bundle | EnsembleBundle:
    """The bundle in `folder` (an ensemble's when it holds ensemble.json), every file checked (see
    the module docstring); any problem is an EcgTuneError naming the file."""
    folder = Path(folder)
    if (folder / ENSEMBLE).is_file():
        return _load_ensemble(folder, device)
    return _load_single(folder, device)


def _load_ensemble(folder: Path, device: str | None) -> EnsembleBundle:
    """An ensemble bundle: ensemble.json checked, then each member as a bundle of its own."""
    path = folder / ENSEMBLE
    try:
        meta = _EnsembleMeta.model_validate(_json_object(path, "kind, classes, fs, members"))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    ids = [entry.trial_id for entry in meta.members]
    total = sum(entry.weight for entry in meta.members)
    if len(set(ids)) != len(ids) or abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{path}: members: " + ("a trial is listed twice" if len(set(ids)) != len(ids)
                                                  else f"the weights sum to {total:g}, not 1"))
    members = []
    for entry in meta.members:
        bundle = _load_single(folder / MEMBERS / entry.trial_id, device)
        if bundle.classes != meta.classes or bundle.fs != meta.fs:
            raise ConfigError(f"{path}: member {entry.trial_id} predicts classes {bundle.classes} at "
                              f"{bundle.fs} Hz, the ensemble {meta.classes} at {meta.fs} Hz (edited, or mixed "
                              "bundles?)")
        members.append((entry.trial_id, entry.weight, bundle))
    return EnsembleBundle(members=members, classes=meta.classes, fs=meta.fs)


def _load_single(folder: Path, device: str | None) -> Bundle:
    """A single model's bundle in `folder`."""
    meta_path = folder / META
    if not meta_path.is_file():
        raise EcgTuneError(f"{folder}: not a model bundle (no {META})")
    meta, config = _read_meta(meta_path)
    input_length, n_classes = meta.preprocessing.input_length, len(meta.classes)
    try:
        network = build_network(config, input_length, n_classes)
    except EcgTuneError as exc:
        raise ConfigError(f"{meta_path}: {exc}") from None
    described = (f"the network {META} describes ({config.model}, {n_classes} classes, "
                 f"input_length {input_length})")
    _load_weights(folder / WEIGHTS, network, described)
    network.eval()
    declared = network.model.fitted_head()
    apart = declared if declared is not None and declared.file is not None else None
    if meta.svm != (apart is not None):
        raise ConfigError(f"{meta_path}: svm is {str(meta.svm).lower()}, but model {config.model} "
                          + (f"predicts with its {apart.name} ({apart.file})" if apart is not None
                             else "has no SVM stage (no fitted head in a file of its own)"))
    head = _load_head(folder, apart, network, n_classes) if apart is not None else None
    target = pick_device(device)
    network.to(target)
    return Bundle(network=network, head=head, config=config, classes=meta.classes, fs=meta.fs, device=target)


def _read_meta(path: Path) -> tuple[_Meta, TrainConfig]:
    """config.json, checked against its schema, its config validated and its preprocessing
    compared with that config."""
    content = _json_object(path, "config, classes, preprocessing")
    try:
        meta = _Meta.model_validate(content)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    config = make_config(meta.config, where=str(path))
    if len(set(meta.classes)) != len(meta.classes):
        raise ConfigError(f"{path}: classes: names repeat ({', '.join(meta.classes)})")
    disagreement = _preprocessing_disagreement(meta.preprocessing, config)
    if disagreement:
        raise ConfigError(f"{path}: {disagreement} (edited by hand? the two are written together)")
    return meta, config


def _json_object(path: Path, keys: str) -> dict[str, Any]:
    """A bundle's JSON file (config.json, ensemble.json) as an object of a format this version
    reads (`keys`: what the object holds, for the error); anything else a one-line error."""
    try:
        content = json.loads(path.read_text())
    except OSError as exc:
        raise EcgTuneError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise EcgTuneError(f"{path}: not a text file (a bundle's {path.name} is JSON)") from None
    except json.JSONDecodeError as exc:
        raise EcgTuneError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                           "damaged or edited") from None
    if not isinstance(content, dict):
        raise EcgTuneError(f"{path}: expected a JSON object with format_version, {keys}, "
                           f"got {type(content).__name__}")
    version = content.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise EcgTuneError(f"{path}: bundle format {version} was written by a newer ecg-tune; this one reads "
                           f"format {FORMAT_VERSION} and earlier: upgrade ecg-tune to use this model")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise EcgTuneError(f"{path}: format_version must be a bundle format number such as {FORMAT_VERSION}, "
                           f"got {version!r}")
    return content


def _preprocessing_disagreement(given: _Preprocessing, config: TrainConfig) -> str | None:
    """Where config.json's `preprocessing` (a description for the reader) contradicts its
    `config` (what the network is built from), or None."""
    options = given.model_extra or {}
    pairs = [("normalisation", given.normalisation, config.normalisation),
             ("transform", given.transform, config.transform),
             ("input_length", given.input_length, config.input_length),  # None: the data's median
             ("windowing: window", given.windowing.window, given.input_length),
             ("windowing: overlap", given.windowing.overlap, config.window_overlap),
             # An older layout lists other transforms' options as None: only values count.
             *((key, options.get(key), value) for key, value in config.part_options("transform").items())]
    for key, found, expected in pairs:
        if found is not None and expected is not None and found != expected:
            return f"preprocessing: {key} is {found!r}, but the config's is {expected!r}"
    return None


def _load_weights(path: Path, network: Network, described: str) -> None:
    """The state dict in `path`, loaded into `network` only once it is known to fit it exactly."""
    if not path.is_file():
        raise EcgTuneError(f"{path}: {'not a file' if path.exists() else 'missing'} "
                           f"(a bundle holds {META}, {WEIGHTS} and, for cnn_svm, svm.skops)")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it then refuses: the error says it.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc)
        if "GLOBAL" in reason:
            raise EcgTuneError(f"{path}: refused: it holds Python objects, not only tensors, and loading them "
                               f"could run code ({reason})") from None
        raise EcgTuneError(f"{path}: not a PyTorch weights file (torch.load refused it: {reason})") from None
    except Exception as exc:  # torch raises many types (EOFError, RuntimeError, ...) for damaged files
        first = str(exc).split(". ")[0] or "empty or cut short"
        raise EcgTuneError(f"{path}: not a PyTorch weights file, or a damaged one ({type(exc).__name__}: "
                           f"{first})") from None
    problem = _state_mismatch(state, network.state_dict())
    if problem:
        raise EcgTuneError(f"{path}: does not fit {described}: {problem}; the files are damaged, edited or "
                           "from different bundles")
    broken = [key for key, value in state.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if broken:
        raise EcgTuneError(f"{path}: NaN or infinite values in {some_of(broken)} (a training that diverged, "
                           "or a damaged file)")
    network.load_state_dict(state)


def _refusal_reason(exc: Exception) -> str:
    """What torch's weights_only refusal says it refused, in one line (the rest of its message is
    advice on loading the file anyway, which is what this module must not do)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.rpartition("WeightsUnpickler error:")[2].strip()
    else:
        advice = ("Weights only load failed", "Check the documentation")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip() and not p.strip().startswith(advice)]
        reason = paragraphs[0] if paragraphs else "content other than tensors"
    return reason.split(". ")[0].splitlines()[0].strip().rstrip(".")


def _state_mismatch(state: Any, expected: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` from being loaded as `expected` exactly, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict of tensors"
    missing = [key for key in expected if key not in state]
    extra = [str(key) for key in state if key not in expected]
    if missing or extra:
        return "; ".join(([f"{len(missing)} tensor(s) missing: {some_of(missing)}"] if missing else [])
                         + ([f"{len(extra)} unexpected: {some_of(extra)}"] if extra else []))
    for key, want in expected.items():
        have = state[key]
        if not isinstance(have, torch.Tensor):
            return f"{key} is a {type(have).__name__}, not a tensor"
        if have.shape != want.shape:
            return f"{key} has shape {list(have.shape)}, the network's is {list(want.shape)}"
        if have.dtype != want.dtype:
            return f"{key} is {have.dtype}, the network's is {want.dtype}"
    return None


def _load_head(folder: Path, declared: FittedHead, network: Network, n_classes: int) -> FittedHead:
    """The model's fitted head from its file in `folder` (`declared`: a new one of the kind the
    model declares), checked to take the network's features and give `n_classes` probabilities."""
    assert declared.file is not None  # only a head kept apart has a file
    path, name = folder / declared.file, declared.name
    try:
        head = declared.load_bytes(path.read_bytes())
    except OSError as exc:
        raise EcgTuneError(f"{path}: cannot read the {name} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise EcgTuneError(f"{path}: {exc}") from None
    # One prediction on a blank input proves the head takes these features (sklearn's error
    # would otherwise surface, as a traceback, at the first real prediction).
    with torch.no_grad():
        features = network.features(torch.zeros(1, network.input_length)).numpy()
    try:
        probabilities = head.predict_proba(features)
    except Exception as exc:  # sklearn raises ValueError, AttributeError, ... for a mismatched stage
        raise EcgTuneError(f"{path}: the {name} does not fit the network's {features.shape[1]} features "
                           f"({type(exc).__name__}: {exc})") from None
    if probabilities.ndim == 2 and probabilities.shape[1] != n_classes:
        raise EcgTuneError(f"{path}: the {name} gives {probabilities.shape[1]} classes, {META} names {n_classes}")
    if probabilities.shape != (1, n_classes) or not math.isfinite(float(probabilities.sum())):
        raise EcgTuneError(f"{path}: the {name} gives no usable probabilities for the network's features")
    return head
