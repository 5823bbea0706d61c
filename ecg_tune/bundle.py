"""The exported model bundle (`model/`) and prediction with it.

A bundle classifies new recordings without the search: `weights.pt` (the network's state dict,
loaded with `torch.load(..., weights_only=True)`), `svm.skops` for cnn_svm (loaded with no
untrusted types, so no arbitrary code runs), and `config.json` with the full training config,
the class names, the sampling rate and the preprocessing (normalisation, input length, transform,
windowing; the transform's options are those it declares). Prediction reuses the data layer's
tensors and the record-level windowed evaluation of training, so a bundle predicts exactly as the
refit's test evaluation did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data.records import Records
from ecg_tune.data.tensors import to_tensors
from ecg_tune.errors import DataError, EcgTuneError
from ecg_tune.models.svm import SVMStage
from ecg_tune.training.device import pick_device
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.network import Network, build_network

FORMAT_VERSION = 1


@dataclass
class Bundle:
    network: Network
    svm: SVMStage | None
    config: TrainConfig
    classes: list[str]
    fs: float | None
    device: torch.device

    def predict(self, records: Records) -> np.ndarray:
        """Per-record class probabilities (n_records, n_classes) for records at the bundle's rate."""
        tensors = to_tensors(records)
        index = np.arange(len(records))
        probabilities, _ = record_probabilities(self.network, self.svm, tensors, index,
                                                self.config.normalisation, self.config.window_overlap,
                                                self.device)
        return probabilities


def save_bundle(folder: Path, network: Network, svm: SVMStage | None, config: TrainConfig,
                classes: list[str], fs: float | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, folder / "weights.pt")
    if svm is not None:
        (folder / "svm.skops").write_bytes(svm.to_bytes())
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
        "svm": svm is not None,
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_bundle(folder: str | Path, device: str | None = None) -> Bundle:
    folder = Path(folder)
    meta_path = folder / "config.json"
    if not meta_path.is_file():
        raise EcgTuneError(f"{folder}: not a model bundle (no config.json)")
    try:
        meta = json.loads(meta_path.read_text())
        config = make_config(meta["config"], where=str(meta_path))
        classes, input_length = list(meta["classes"]), int(meta["preprocessing"]["input_length"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EcgTuneError(f"{meta_path}: unreadable bundle config ({type(exc).__name__}: {exc})") from None
    target = pick_device(device)
    network = build_network(config, input_length, len(classes))
    try:
        network.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, KeyError) as exc:
        raise EcgTuneError(f"{folder / 'weights.pt'}: cannot load the weights ({exc})") from None
    network.to(target).eval()
    svm = None
    if meta.get("svm"):
        try:
            svm = SVMStage.from_bytes((folder / "svm.skops").read_bytes())
        except (OSError, ValueError) as exc:
            raise EcgTuneError(f"{folder / 'svm.skops'}: cannot load the SVM stage ({exc})") from None
    return Bundle(network=network, svm=svm, config=config, classes=classes, fs=meta.get("fs"), device=target)


def at_rate(records: Records, bundle_fs: float | None, assumed_fs: float | None = None) -> Records:
    """Records resampled to the bundle's sampling rate (polyphase, exact rational ratio)."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    fs = records.fs or assumed_fs
    if bundle_fs is None or fs is None or abs(fs - bundle_fs) < 1e-9:
        if bundle_fs is not None and fs is None:
            raise DataError(f"{records.source}: the sampling rate is unknown and the model expects "
                            f"{bundle_fs:g} Hz; give it with --fs")
        return records
    ratio = Fraction(bundle_fs / fs).limit_denominator(1000)
    signals = [resample_poly(s.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
               for s in records.signals]
    return Records(signals=signals, labels=records.labels, classes=records.classes,
                   record_ids=records.record_ids, fs=bundle_fs, source=records.source)
