"""The in-memory dataset every source is turned into: `Records`.

Signals keep their own lengths (a list of 1-D float32 arrays, in the source's physical unit,
millivolts for ECG sources that say so); labels are integers indexing `classes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Records:
    """Variable-length single-lead recordings with optional labels, groups and a predefined split.

    signals: one float32 1-D array per record.
    labels: int64 array indexing `classes`, or None for unlabelled data (prediction only).
    classes: class names, in label order.
    record_ids: unique string id per record.
    groups: optional patient/group id per record (a group never spans two splits).
    fs: sampling rate in Hz when the source has one.
    split: optional predefined split per record ("train" / "val" / "test"), kept by the splitter.
    source: the source string the records came from (for messages and caching).
    """

    signals: list[np.ndarray]
    labels: np.ndarray | None
    classes: list[str]
    record_ids: list[str]
    groups: list[str] | None = None
    fs: float | None = None
    split: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.signals), dtype=np.int64, count=len(self.signals))

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, index: np.ndarray | list[int]) -> Records:
        """The records at `index`, in that order."""
        index = [int(i) for i in index]
        pick = lambda seq: None if seq is None else [seq[i] for i in index]  # noqa: E731
        return Records(
            signals=[self.signals[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            classes=list(self.classes),
            record_ids=[self.record_ids[i] for i in index],
            groups=pick(self.groups),
            fs=self.fs,
            split=pick(self.split),
            source=self.source,
        )

    def class_counts(self) -> dict[str, int]:
        if self.labels is None:
            return {}
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts, strict=False)}
