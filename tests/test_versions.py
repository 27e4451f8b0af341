"""The installed Ray, Optuna and friends are the versions pyproject.toml pins, i.e. the ones tested.

tune/ subclasses OptunaSearch and ASHAScheduler and reads some of their private attributes, so a
release outside the pins may break resume or the study without an error. This test says so first.
To move to a newer Ray or Optuna: raise its pin in pyproject.toml, reinstall, and run this test and
the resume tests (`pytest tests/test_versions.py tests/test_resume.py`).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REQUIRED = ("ray", "optuna")
"""Always installed, and their internals are read: they must be pinned with an upper bound."""
OPTIONAL = ("optuna-dashboard", "mlflow-skinny")
"""Extras (dashboard, mlflow): checked when installed."""


def pinned_ranges(pyproject: Path = PYPROJECT) -> dict[str, SpecifierSet]:
    """Each checked package's allowed versions: every requirement on it in pyproject.toml's
    dependencies and optional dependencies, intersected (ray is named by the main list and by the
    serve extra)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    ranges: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in REQUIRED + OPTIONAL:
            ranges[name] = ranges.get(name, SpecifierSet()) & req.specifier
    return ranges


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def out_of_range(
    ranges: dict[str, SpecifierSet], installed: Callable[[str], str | None] = installed_version
) -> list[str]:
    """One message per checked package that is installed at a version outside its range (or, for
    ray and optuna, not installed at all), naming the package, the version and the range."""
    problems = []
    for name in REQUIRED + OPTIONAL:
        version = installed(name)
        if version is None:
            if name in REQUIRED:
                problems.append(f"{name} is not installed; pyproject.toml pins {ranges.get(name)}")
            continue
        spec = ranges.get(name)
        if spec is None:
            problems.append(f"{name} {version} is installed but pyproject.toml names no range for it")
        elif not spec.contains(Version(version), prereleases=True):
            problems.append(f"{name} {version} is installed, outside pyproject.toml's range {spec}")
    return problems


def test_ray_and_optuna_are_pinned_below_their_next_releases() -> None:
    ranges = pinned_ranges()
    for name in REQUIRED:
        # An upper bound (or an exact version) on every package whose internals tune/ reads.
        assert any(s.operator in ("<", "<=", "==", "~=") for s in ranges[name]), (name, str(ranges[name]))
    for name in OPTIONAL:
        # The extras are pinned too, since their APIs are used directly.
        assert name in ranges and any(s.operator in ("<", "<=", "==", "~=") for s in ranges[name])


def test_installed_versions_are_within_the_pins() -> None:
    problems = out_of_range(pinned_ranges())
    # Each line names the package, the version installed and the range pinned.
    assert not problems, "\n".join(problems)


def test_out_of_range_names_package_version_and_range() -> None:
    ranges = pinned_ranges()
    versions = {"ray": "2.61.0", "optuna": "4.9.1", "optuna-dashboard": None, "mlflow-skinny": "3.17.2"}
    problems = out_of_range(ranges, versions.get)
    # A newer Ray and an older Optuna are both caught, each message naming version and range;
    # an extra that is not installed is no problem.
    assert problems == [
        f"ray 2.61.0 is installed, outside pyproject.toml's range {ranges['ray']}",
        f"optuna 4.9.1 is installed, outside pyproject.toml's range {ranges['optuna']}",
    ]
    # A pre-release of the next minor version is outside the range as well.
    assert out_of_range(ranges, {**versions, "ray": "2.61.0rc1", "optuna": "5.0.0"}.get) == [
        f"ray 2.61.0rc1 is installed, outside pyproject.toml's range {ranges['ray']}"
    ]
