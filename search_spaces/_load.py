"""`load_space`: a builtin space by name, or a YAML file, read strictly and checked in full."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from mf.config import yaml_number
from mf.errors import ConfigError
from search_spaces._space import _HINTS, Param, SearchSpace, check_tunable

_HERE = Path(__file__).resolve().parent
BUILTIN_SPACES: dict[str, Path] = {
    "default": _HERE / "default.yaml",
    "ablation": _HERE / "ablation.yaml",
}

_TOP_KEYS = ("params",)
_SPEC_FIELDS = ("type", "low", "high", "log", "step", "choices")


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error.

    PyYAML keeps the last of two equal keys silently, so a parameter declared twice would be tuned over
    whichever range came second, without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: PyYAML's own error says so
                continue
            if seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first_line[key])
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """A builtin space ("default", "ablation") or a YAML file; any breach is one ConfigError."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_SPACES:
        path, where = BUILTIN_SPACES[name_or_path], name_or_path
    else:
        path = Path(name_or_path)
        where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise ConfigError(
            f"{where}: no such search space file; give a YAML file or a builtin space "
            f"({', '.join(BUILTIN_SPACES)})"
        ) from e
    except OSError as e:
        raise ConfigError(f"{where}: cannot read the search space ({e.strerror})") from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as e:
        raise ConfigError(
            f"{where}: line {e.line}: {e.key!r} is given twice (first on line {e.first}); "
            "YAML would silently keep the last, so keep only one"
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at} ({problem}); fix the syntax") from e
    return space_from_dict(data, where=where)


def space_from_dict(data: object, *, where: str) -> SearchSpace:
    """A space from its YAML form (as `SearchSpace.to_dict` writes it); `where` names it in errors."""
    if data is None:
        raise ConfigError(f"{where}: the file is empty; expected a mapping with params: {{<key>: <spec>}}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level is a {type(data).__name__} ({_short(data)}); "
            "expected a mapping with params: {<key>: <spec>}"
        )
    for top in data:
        if top not in _TOP_KEYS:
            raise ConfigError(
                f"{where}: unknown top-level key {top!r}{_suggest(top, _TOP_KEYS)}; "
                "the only top-level key is params"
            )
    if "params" not in data:
        raise ConfigError(f"{where}: no params key; put the tuned keys under params:")
    if not isinstance(data["params"], dict):
        raise ConfigError(
            f"{where}: params is a {type(data['params']).__name__} ({_short(data['params'])}); "
            "expected a mapping of config key to spec, e.g. lr: {type: float, low: 1.0e-4, high: 0.1}"
        )
    params: dict[str, Param] = {}
    for name, spec in data["params"].items():
        check_tunable(name, where=where)
        params[name] = _param(name, spec, where=where)
    return SearchSpace(name=where, params=params)


def _param(name: str, spec: object, *, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: param {name}: spec {_short(spec)} is not a mapping; write e.g. "
            f"{name}: {{type: float, low: ..., high: ...}} (to fix a value, set it in the config instead)"
        )
    for field in spec:
        if field not in _SPEC_FIELDS:
            raise ConfigError(
                f"{where}: param {name}: unknown field {field!r}{_suggest(field, _SPEC_FIELDS)}; "
                f"a spec takes {', '.join(_SPEC_FIELDS)}"
            )
    if "type" not in spec:
        raise ConfigError(f"{where}: param {name}: no type; add type: float, int or categorical")
    choices = spec.get("choices")
    if isinstance(choices, list) and _HINTS[name] is float:
        choices = [yaml_number(choice) for choice in choices]
    try:
        return Param(
            name=name,
            kind=spec["type"],
            low=yaml_number(spec.get("low")),
            high=yaml_number(spec.get("high")),
            log=spec.get("log", False),
            step=yaml_number(spec.get("step")),
            choices=choices,
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _suggest(word: object, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
