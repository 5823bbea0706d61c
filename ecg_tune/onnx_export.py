"""The delivered model as one ONNX graph: `model/model.onnx` and `onnx.json` (format: onnx_runtime.py).

This module owns turning a bundle's trained parts (network, fitted head, config; a team's
members with their weights) into one torch module from raw signal windows to class probabilities,
exporting it with torch.onnx, checking the graph against the torch path, and the optional int8
copy. What is in the graph, per member:

- normalisation: the record's z-scoring as data/tensors.py does it (float64, then float32; the
  record's mean and std come in beside each window, see onnx_runtime.py), zeros beyond the record,
  and the scale multiplied back for `normalisation: none`;
- the transform: none and the wavelet's exact linear operator (signal/transforms.py: matrix
  products on polyphase blocks, edge matrices, a gather) as they are; the Fourier magnitude with
  its DFT in float64 (onnx_parts.py's `FourierGraph`: onnxruntime's float32 DFT is inexact);
- the model: simple_cnn, ecg_cnn and resnet1d as they are; minirocket restated with fixed shapes
  (`RocketGraph`), its head the Linear layer (ridge or gradient);
- a head kept apart: cnn_svm's SVM stage from its fitted scikit-learn attributes (`SvmGraph`);
- the softmax, and a team's weighted sum of its members' window probabilities. Members that
  window records alike (input length, overlap) share one input pair; see onnx_runtime.py.

Exporter: torch.onnx.export(dynamo=True) (torch.export + onnxscript), the exporter torch 2.13
maintains; the TorchScript exporter still runs there but warns that it will be removed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ecg_tune.config import TrainConfig
from ecg_tune.errors import EcgTuneError
from ecg_tune.models.head import FittedHead
from ecg_tune.models.minirocket import MiniRocket
from ecg_tune.models.svm import SVMStage
from ecg_tune.onnx_parts import ExportError, FourierGraph, RocketGraph, SvmGraph
from ecg_tune.onnx_runtime import FLAT_STD, INT8_FILE, ONNX_FILE, ONNX_FORMAT, ONNX_META, open_session
from ecg_tune.signal.transforms import FourierTransform
from ecg_tune.training.network import Network

OPSET = 18
# The export's own check: the graph against the torch path on a few windows (tests check 1e-4 on
# records; a real mismatch, e.g. a scikit-learn that changed an attribute's meaning, is far above).
CHECK_TOLERANCE = 1e-3
# Windows per onnxruntime run written into onnx.json: minirocket's comparisons against every bias
# are (windows, kernels, biases, samples) wide, so it runs a few windows at a time.
BATCH_SIZE, ROCKET_BATCH_SIZE = 64, 2


@dataclass(frozen=True)
class GraphMember:
    """One model of the graph: what a bundle holds for it, and its weight in the team (1 alone)."""

    name: str  # the trial id of a team's member, the model's name alone (messages)
    weight: float
    network: Network
    head: FittedHead | None  # a fitted head kept apart (its file), or None
    config: TrainConfig


class MemberGraph(nn.Module):
    """One model: (raw windows, their records' stats) -> window class probabilities."""

    positions: Tensor

    def __init__(self, member: GraphMember) -> None:
        super().__init__()
        network = copy.deepcopy(member.network).cpu().eval()  # the caller's network stays as it is
        self.input_length = network.input_length
        self.scaled = member.config.normalisation == "none"
        self.register_buffer("positions", torch.arange(self.input_length, dtype=torch.float64))
        transform = network.transform
        self.transform: nn.Module = (FourierGraph(transform.log) if isinstance(transform, FourierTransform)
                                     else transform)
        model = network.model
        self.rocket = RocketGraph(model) if isinstance(model, MiniRocket) else None
        self.model = None if self.rocket is not None else model
        self.svm: SvmGraph | None = None
        if member.head is not None and member.head.file is not None:  # a head in the model is in its weights
            if not isinstance(member.head, SVMStage):
                raise ExportError(f"{member.name}: the {member.head.name} of model {member.config.model} has no "
                                  "ONNX form (only cnn_svm's SVM stage is exported)")
            self.svm = SvmGraph(member.head)

    def forward(self, signal: Tensor, stats: Tensor) -> Tensor:
        mean, std, valid = stats[:, 0:1], stats[:, 1:2], stats[:, 2:3]
        x = ((signal - mean) / std).float() * (self.positions < valid).float()
        if self.scaled:
            x = x * std.float()
        inputs = self.transform(x)
        if self.rocket is not None:
            logits = self.rocket(inputs)
        else:
            assert self.model is not None  # set whenever rocket is not
            if self.svm is not None:
                return self.svm(self.model.features(inputs)).float()
            logits = self.model(inputs)
        return torch.softmax(logits.float(), dim=1)


class DeployedGraph(nn.Module):
    """The whole delivered model: per windowing an input pair and an output (onnx_runtime.py)."""

    def __init__(self, groups: Sequence[Sequence[GraphMember]]) -> None:
        super().__init__()
        total = sum(m.weight for group in groups for m in group)
        self.members = nn.ModuleList(MemberGraph(m) for group in groups for m in group)
        # Per windowing: (position in `members`, share of the team) of each of its members.
        self.layout: list[list[tuple[int, float]]] = []
        for group in groups:
            first = sum(len(layout) for layout in self.layout)
            self.layout.append([(first + i, m.weight / total) for i, m in enumerate(group)])

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        outputs = []
        for g, layout in enumerate(self.layout):
            signal, stats = inputs[2 * g], inputs[2 * g + 1]
            parts = [self.members[i](signal, stats) if share == 1.0 else share * self.members[i](signal, stats)
                     for i, share in layout]
            outputs.append(sum(parts[1:], parts[0]))
        return tuple(outputs)


def windowing_groups(members: Sequence[GraphMember]) -> list[list[GraphMember]]:
    """Members grouped by how they window records (input length, overlap), in first-seen order."""
    groups: dict[tuple[int, float], list[GraphMember]] = {}
    for m in members:
        groups.setdefault((m.network.input_length, float(m.config.window_overlap)), []).append(m)
    return list(groups.values())


def export_onnx(folder: Path, members: Sequence[GraphMember], classes: Sequence[str], fs: float | None,
                check: bool = True) -> Path:
    """Write `folder`/model.onnx and onnx.json for these members (one, or a team); with `check`
    (and onnxruntime installed) the graph is compared with the torch path first. Raises
    ExportError (one line) when a part cannot be exported."""
    groups = windowing_groups(members)
    try:
        graph = DeployedGraph(groups).eval()
    except ExportError:
        raise
    except Exception as exc:  # a fitted part whose attributes are not what the graph reads
        raise ExportError(f"{_families(members)}: cannot build the graph ({_reason(exc)})") from None
    examples: list[Tensor] = []
    names: list[str] = []
    shapes: list[dict[int, Any]] = []
    windowings: list[dict[str, Any]] = []
    for g, group in enumerate(groups):
        length = group[0].network.input_length
        examples += list(_example_windows(length, rows=3))
        names += [f"signal_{g}", f"stats_{g}"]
        batch = torch.export.Dim(f"windows_{g}", min=1)
        shapes += [{0: batch}, {0: batch}]
        windowings.append({"signal": f"signal_{g}", "stats": f"stats_{g}", "output": f"probabilities_{g}",
                           "input_length": length, "overlap": float(group[0].config.window_overlap)})
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ONNX_FILE
    partial = target.with_name(target.name + ".partial")
    try:
        with _quiet():
            torch.onnx.export(graph, tuple(examples), str(partial), dynamo=True, opset_version=OPSET,
                              input_names=names, output_names=[w["output"] for w in windowings],
                              # forward(*inputs): the varargs are one argument holding every input
                              dynamic_shapes=(tuple(shapes),), external_data=False, verbose=False)
    except ExportError:
        raise
    except Exception as exc:  # torch.export and onnxscript raise many types
        partial.unlink(missing_ok=True)
        raise ExportError(f"{_families(members)}: torch.onnx.export failed ({_reason(exc)})") from None
    if check:
        try:
            _check(partial, groups, examples)
        except ExportError:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(target)
    meta = {"format_version": ONNX_FORMAT, "graph": ONNX_FILE, "opset": OPSET, "classes": list(classes), "fs": fs,
            "windowings": windowings,
            "batch_size": ROCKET_BATCH_SIZE if any(m.config.model == "minirocket" for m in members) else BATCH_SIZE,
            "members": [{"name": m.name, "weight": m.weight, "model": m.config.model,
                         "transform": m.config.transform, "normalisation": m.config.normalisation,
                         **member_costs(m, len(classes))}
                        for m in members],
            "stats": "per window: its record's mean and standard deviation (float64, population; 1 when at "
                     f"most {FLAT_STD:g}) and how many of its samples are the record's (the rest are zero)",
            "windows": "a record no longer than input_length is one window, zero-padded at the end; a longer one "
                       "is cut into windows of input_length every round(input_length * (1 - overlap)) samples, the "
                       "last ending at the record's end",
            "aggregation": "a record's probabilities: the sum over windowings of the mean of its windows' outputs",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}"}
    (folder / ONNX_META).write_text(json.dumps(meta, indent=2))
    return target


def member_costs(member: GraphMember, n_classes: int) -> dict[str, int]:
    """What a device pays for one member, as a trial reports it (training/costs.py): its numbers
    (parameters and a kept-apart head's) and multiply-accumulates per window at its input length."""
    from ecg_tune.training.costs import config_costs, head_macs, head_size, parameter_count

    network = member.network
    macs = config_costs(member.config, network.input_length, n_classes).macs
    return {"n_params": parameter_count(network) + head_size(member.head),
            "macs_per_window": macs + head_macs(member.head)}


def export_or_warn(folder: Path, members: Sequence[GraphMember], classes: Sequence[str], fs: float | None) -> None:
    """`export_onnx`, or one warning line saying why not (what the refit's bundle writing calls: the
    bundle is the refit's deliverable and stands without its graph; `ecg-tune export` retries)."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        warnings.warn(f"{folder}: no {ONNX_FILE} written: {' and '.join(missing)} not installed "
                      "(pip install 'ecg-tune[deploy]')", stacklevel=3)
        return
    try:
        export_onnx(folder, members, classes, fs)
    except Exception as exc:  # an exporter failure of any kind must not fail the refit
        reason = str(exc) if isinstance(exc, EcgTuneError) else f"{_families(members)}: {_reason(exc)}"
        warnings.warn(f"{folder}: no {ONNX_FILE} written: {reason}", stacklevel=3)


def _reason(exc: BaseException) -> str:
    """The exporter's failure in one line: its innermost cause (the outer exceptions only say
    which step of the export failed)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _families(members: Sequence[GraphMember]) -> str:
    return ", ".join(sorted({f"{m.config.model} ({m.config.transform})" for m in members}))


def _example_windows(length: int, rows: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Windows and stats of `rows` made-up records: the last one shorter than the window (padding)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0.1, 0.5, size=(rows, length))
    valid = np.full(rows, float(length))
    valid[-1] = max(1, length // 2)
    signal[-1, int(valid[-1]):] = 0.0
    stats = np.stack([signal.mean(axis=1), signal.std(axis=1), valid], axis=1)
    return torch.as_tensor(signal), torch.as_tensor(stats)


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter's progress lines, its warnings and its log noise (torchvision's missing ops, the
    quantiser's advice) kept off the refit's output: a failure is reported by the exception."""
    # torch.onnx's own logger; the root logger carries onnxruntime's quantiser's advice
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@torch.no_grad()
def _check(path: Path, groups: Sequence[Sequence[GraphMember]], examples: Sequence[Tensor]) -> None:
    """The graph's probabilities against the torch path (the network, its head kept apart), on the
    example windows; skipped without onnxruntime."""
    try:
        session = open_session(path)
    except EcgTuneError as exc:
        if "not installed" in str(exc):
            return
        raise ExportError(str(exc)) from None
    feeds = {name.name: t.numpy() for name, t in zip(session.get_inputs(), examples, strict=True)}
    found = session.run(None, feeds)
    for g, group in enumerate(groups):
        signal, stats = examples[2 * g].numpy(), examples[2 * g + 1].numpy()
        expected = sum(m.weight * torch_probabilities(m, signal, stats) for m in group) / sum(
            m.weight for group in groups for m in group)
        gap = float(np.abs(found[g] - expected).max())
        if not gap <= CHECK_TOLERANCE:
            raise ExportError(f"{_families(group)}: the ONNX graph's probabilities differ from torch's by {gap:.2g} "
                              "(not exported)")


@torch.no_grad()
def torch_probabilities(member: GraphMember, signal: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Window probabilities by the torch path (training/evaluate.py's, from raw windows and their
    records' stats): z-scored as data/tensors.py does, the network, its head kept apart."""
    mean, std, valid = stats[:, :1], stats[:, 1:2], stats[:, 2:3]
    inside = np.arange(signal.shape[1])[None, :] < valid
    x = torch.as_tensor(((signal - mean) / std).astype(np.float32) * inside)
    if member.config.normalisation == "none":
        x = x * torch.as_tensor(std.astype(np.float32))
    network = member.network
    device = next(iter(network.parameters()), torch.empty(0)).device
    training = network.training
    network.eval()
    try:
        inputs = network.inputs(x.to(device))
        if member.head is not None and member.head.file is not None:
            return member.head.predict_proba(network.model.features(inputs).float().cpu().numpy())
        return torch.softmax(network.model(inputs).float(), dim=1).cpu().numpy()
    finally:
        network.train(training)


def quantize_int8(folder: Path, op_types: Sequence[str] = ("MatMul", "Gemm")) -> Path:
    """`folder`/model.int8.onnx: model.onnx with the weights of its `op_types` in int8 (onnxruntime's
    dynamic quantisation; activations are quantised per run). The default, the matrix products,
    holds most of the parameters of the models with a dense layer (ecg_cnn, simple_cnn); onnxruntime
    1.32 also runs quantised Conv (ConvInteger), which on this CPU was not reliably faster."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install 'ecg-tune[deploy]'") from None
    source, target = folder / ONNX_FILE, folder / INT8_FILE
    if not source.is_file():
        raise ExportError(f"{source}: missing (export first)")
    partial = target.with_name(target.name + ".partial")
    try:
        with _quiet():
            quantize_dynamic(source, partial, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    except Exception as exc:  # onnxruntime's quantiser raises many types
        partial.unlink(missing_ok=True)
        raise ExportError(f"{source}: int8 quantisation failed ({_reason(exc)})") from None
    partial.replace(target)
    return target
