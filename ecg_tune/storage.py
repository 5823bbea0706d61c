"""Where Ray Tune's experiment lives, and reading it back from there.

`--storage` takes a local path (which must be on a filesystem every node mounts when the cluster
has more than one node: search/cluster.py checks that) or a URI that pyarrow opens (`s3://`,
`gs://`, `hdfs://`, with options in the query string such as
`s3://bucket/runs?endpoint_override=http://host:9000&region=us-west-2`) or, failing that, fsspec.
With no `--storage` the experiment is `<out>/experiment`; with one it is
`<storage>/<out's name>/experiment`, so that several searches can share one bucket.
`ExperimentStorage` is that location as one value: the pyarrow filesystem and path Tune is given,
the text recorded in the run folder (runs.py) so that refit, report and benchmarks read Tune's
results from where they are, and the few reads they need (a file of every trial folder, a file
of a trial's checkpoints, newest first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from ecg_tune.errors import ConfigError

EXPERIMENT = "experiment"  # Tune's experiment name: the folder that holds the trials
# Tune's names for a trial's checkpoint folders (ray.train._internal.storage): the index grows.
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


@dataclass(frozen=True)
class ExperimentStorage:
    """A storage root (path or URI) and the run under it whose experiment Tune writes."""

    root: str  # an absolute local path, or a URI as the user gave it
    run_name: str | None = None  # None: the root is the run folder itself (the --out default)

    @classmethod
    def for_search(cls, storage: str | None, out: Path) -> ExperimentStorage:
        """The storage of a search writing to `out` (`storage`: --storage, or None for --out)."""
        if storage is None:
            return cls(str(out.resolve()))
        if not is_uri(storage):
            storage = str(Path(storage).expanduser().resolve())  # Ray refuses relative paths
        open_filesystem(storage)  # a URI nothing can open fails here, before any trial runs
        return cls(storage, out.resolve().name)

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root) or self.root.startswith("file://")

    @cached_property
    def _opened(self) -> tuple[Any, str]:
        return open_filesystem(self.root)

    @property
    def filesystem(self) -> Any:
        """The pyarrow filesystem the experiment is on."""
        return self._opened[0]

    @property
    def storage_path(self) -> str:
        """Tune's `storage_path` on `filesystem` (without scheme and options)."""
        path = self._opened[1].rstrip("/")
        return f"{path}/{self.run_name}" if self.run_name else path

    @property
    def experiment_path(self) -> str:
        """The experiment folder on `filesystem`."""
        return f"{self.storage_path}/{EXPERIMENT}"

    def describe(self) -> str:
        """Where the experiment is, in words a user can paste (no options, which may hold secrets)."""
        if self.is_local:
            return self.experiment_path
        scheme = self.root.split("://", 1)[0]
        return f"{scheme}://{self.experiment_path}"

    def free_bytes(self) -> int | None:
        """Free space under a local storage (None for a URI): of its nearest existing folder."""
        if not self.is_local:
            return None
        import shutil

        folder = Path(self.storage_path)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return shutil.disk_usage(folder).free

    # reading ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self.filesystem.get_file_info(self.experiment_path).type != pafs.FileType.NotFound)

    def trial_files(self, name: str, folder_contains: str = "") -> Iterator[tuple[str, bytes]]:
        """(trial folder name, content) of the file `name` in every trial folder of the experiment
        (only the folders whose name contains `folder_contains`: Tune names them after the trial id)."""
        import pyarrow.fs as pafs

        filesystem = self.filesystem
        try:
            folders = filesystem.get_file_info(pafs.FileSelector(self.experiment_path, allow_not_found=True))
        except OSError as exc:
            raise ConfigError(f"{self.describe()}: cannot list the experiment ({exc})") from None
        for folder in sorted(folders, key=lambda info: info.path):
            if folder.type != pafs.FileType.Directory or folder_contains not in folder.base_name:
                continue
            content = self._read_file(f"{folder.path}/{name}")
            if content is not None:
                yield folder.base_name, content

    def checkpoint_files(self, trial_folder: str, name: str) -> Iterator[tuple[str, bytes]]:
        """(checkpoint folder name, content) of the file `name` in each checkpoint of the trial
        folder `trial_folder` (its name under the experiment) that holds one, newest first. Each
        is read when the caller asks for it: a caller content with the newest reads only that."""
        path = f"{self.experiment_path}/{trial_folder}"
        try:
            folders = checkpoint_folders(self.filesystem, path)
        except OSError as exc:
            raise ConfigError(f"{self.describe()}/{trial_folder}: cannot list its checkpoints ({exc})") from None
        for _, folder in folders:
            content = self._read_file(f"{folder}/{name}")
            if content is not None:
                yield PurePosixPath(folder).name, content

    def _read_file(self, path: str) -> bytes | None:
        """The content of the file at `path` on the experiment's filesystem; None if there is none."""
        import pyarrow.fs as pafs

        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())

    # the run folder's record ---------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "run_name": self.run_name}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> ExperimentStorage:
        try:
            content = json.loads(text)
            run_name = content.get("run_name")
            return cls(str(content["root"]), None if run_name is None else str(run_name))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a storage record ({type(exc).__name__}: {exc})") from None


def checkpoint_folders(filesystem: Any, trial_path: str) -> list[tuple[int, str]]:
    """(index, path) of every checkpoint folder in the trial folder at `trial_path` on the pyarrow
    `filesystem`, newest (highest index) first; none when the folder does not exist. OSError when
    it cannot be listed."""
    import pyarrow.fs as pafs

    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        match = CHECKPOINT_NAME.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            found.append((int(match[1]), info.path))
    return sorted(found, reverse=True)


def is_uri(text: str) -> bool:
    return "://" in text


def open_filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a local path or a URI; a one-line error otherwise."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), location
    try:
        filesystem, path = pafs.FileSystem.from_uri(location)
        return filesystem, path
    except Exception as arrow_error:  # pyarrow raises ArrowInvalid, OSError or ValueError by scheme
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            spec, path = fsspec.core.url_to_fs(location)
            return PyFileSystem(FSSpecHandler(spec)), path
        except Exception as exc:
            scheme = location.split("://", 1)[0]
            raise ConfigError(f"--storage {scheme}://...: cannot open it ({_first_line(arrow_error)}; fsspec: "
                              f"{_first_line(exc)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
