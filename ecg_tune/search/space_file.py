"""Space files: reading a YAML search space, and the spaces shipped with the package.

The shipped spaces live in the top-level `search_spaces/` folder of the source tree, which is
installed as the package data `ecg_tune.search_spaces` (see pyproject.toml), so `--space full`
works from a checkout, an editable install and a wheel alike. A file's problems are one-line
`ConfigError`s naming the file and the key, like every other check of a space (search/space.py).
"""

from __future__ import annotations

import importlib.resources
import re
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from ecg_tune.errors import ConfigError
from ecg_tune.search.space import SearchSpace

__all__ = ["load_space", "shipped_names", "shipped_spaces"]

_PACKAGE = "ecg_tune.search_spaces"


def shipped_spaces() -> Traversable:
    """The folder of shipped spaces: the installed package data, or the checkout's folder."""
    try:
        folder = importlib.resources.files(_PACKAGE)
        if folder.is_dir():
            return folder
    except ModuleNotFoundError:
        pass
    # Running from a source checkout (the package imported from the tree, not installed).
    return Path(__file__).resolve().parents[2] / "search_spaces"


def shipped_names() -> list[str]:
    """Names of the shipped spaces (full, seed_grid, smoke, ...)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in shipped_spaces().iterdir()
                  if entry.name.endswith(".yaml"))


class _DuplicateKey(Exception):
    def __init__(self, key: object, first_line: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


class _SpaceLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads `1e-4` as a number.

    PyYAML silently keeps the last of two equal keys, so a parameter written twice would lose
    one definition without a word; and YAML 1.1 reads `1e-4` (no dot) as a string, the way
    most people write a learning rate.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are overrides by design
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)):
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> object:
    """The YAML of a space file, with duplicate keys and syntax errors as one-line errors."""
    try:
        return yaml.load(text, Loader=_SpaceLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"{where}: {dup.key}: defined twice (lines {dup.first_line} and {dup.line})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (`full`), or a space file by path (anything with a slash or a
    .yaml/.yml suffix). Raises ConfigError naming the file and key for any problem."""
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    source: Traversable
    if is_path:
        source = Path(text)
        if not source.is_file():
            raise ConfigError(f"{text}: search space file not found")
        shipped_folder = shipped_spaces()
        shipped = isinstance(shipped_folder, Path) and Path(text).resolve().parent == shipped_folder.resolve()
        name = Path(text).stem
    else:
        source = shipped_spaces() / f"{text}.yaml"
        if not source.is_file():
            raise ConfigError(f"unknown search space {text!r}; shipped spaces: {', '.join(shipped_names())} "
                              f"(or give the path of a .yaml file)")
        shipped, name = True, text
    where = f"search_spaces/{name}.yaml" if shipped else text
    try:
        content = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read search space file ({exc})") from None
    return SearchSpace.from_mapping(parse_yaml(content, where), name=name, where=where, shipped=shipped)
