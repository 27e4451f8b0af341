"""The few Ray and Optuna internals the project relies on are all in tune/_internals/ray.py, tune/_internals/optuna.py and
mf/_ray_serve.py, and still there in the installed releases; everything else uses public attributes
only."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune._internals import optuna as _optuna
from tune._internals import ray as _ray

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = {
    REPO / "tune" / "_internals" / "ray.py",
    REPO / "tune" / "_internals" / "optuna.py",
    REPO / "mf" / "_ray_serve.py",
}
SCANNED = ("mf", "tune", "search_spaces")


def private_attribute_uses(path: Path) -> list[str]:
    """`x._name` where x is not our own `self`/`cls`, and `self._name` in a class built on an outside
    base (a Ray or Optuna class) where `_name` is not assigned in the class itself."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            outside = any(_root(b) in _library_names(tree) for b in node.bases)
            own = {
                t.attr
                for n in ast.walk(node)
                if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
                for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                if isinstance(t, ast.Attribute)
            } | {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for n in ast.walk(node):
                if (
                    outside
                    and isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == "self"
                    and _private(n.attr)
                    and n.attr not in own
                    and not isinstance(getattr(n, "ctx", None), ast.Store)
                ):
                    found.append(f"{_name(path)}:{n.lineno}: self.{n.attr} (inherited)")
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{_name(path)}:{node.lineno}: .{node.attr}")
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("ray", "optuna")
        ):
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(_private(p) for p in parts):
                found.append(f"{_name(path)}:{node.lineno}: from {node.module} import ...")
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _library_names(tree: ast.Module) -> set[str]:
    """Names the file imports from Ray or Optuna (a class built on one is theirs)."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in ("ray", "optuna"):
            names |= {a.asname or a.name for a in n.names}
        if isinstance(n, ast.Import):
            names |= {a.asname or a.name for a in n.names if a.name.split(".")[0] in ("ray", "optuna")}
    return names


def test_no_private_attribute_of_ray_or_optuna_is_used_outside_the_adapters():
    files = [p for folder in SCANNED for p in (REPO / folder).rglob("*.py") if p not in ADAPTERS]
    uses = [use for path in files for use in private_attribute_uses(path)]
    # Each use belongs in tune/_internals/ray.py, tune/_internals/optuna.py or mf/_ray_serve.py, with the reason and a test below.
    assert uses == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path):
    # The scan itself can fail: it flags each kind of use it is meant to catch, and not our own.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from ray.tune.schedulers import ASHAScheduler\n"
        "from ray._private import utils\n"
        "class A(ASHAScheduler):\n"
        "    def f(self):\n"
        "        self._mine = 1\n"
        "        return self._brackets, self._mine\n"
        "def g(study):\n"
        "    return study._storage\n"
    )
    uses = [u.split(": ", 1)[1] for u in private_attribute_uses(sample)]
    assert sorted(uses) == sorted(["from ray._private import ...", "self._brackets (inherited)", "._storage"])


def asha(tmp_brackets: int = 2) -> ASHAScheduler:
    return ASHAScheduler(
        time_attr="epoch", metric="val_mse", mode="min", max_t=9, grace_period=1, reduction_factor=3,
        brackets=tmp_brackets,
    )  # fmt: skip


def test_ray_asha_internals_are_where_tune_ray_reads_them():
    scheduler = asha()
    # One dict of rungs per bracket, bracket 1 starting a rung later, filled by ASHA itself.
    rungs = _ray.asha_rungs(scheduler)
    assert [sorted(r) for r in rungs] == [[1, 3, 9], [3, 9]]
    trial = Trial("__fake", trial_id="t1", stub=True)
    scheduler.on_trial_add(None, trial)
    _ray.set_asha_trial_bracket(scheduler, "t1", 1)
    assert _ray.asha_trial_brackets(scheduler) == {"t1": 1}
    assert scheduler.on_trial_result(None, trial, {"epoch": 3, "val_mse": 1.0}) == TrialScheduler.CONTINUE
    assert _ray.asha_rungs(scheduler)[1][3] == {"t1": -1.0}
    _ray.set_asha_num_stopped(scheduler, 5)
    assert _ray.asha_num_stopped(scheduler) == 5


def test_optuna_live_trial_reports_on_a_running_trial_of_the_study():
    study = optuna.create_study()
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    frozen = study.trials[0]
    trial = _optuna.live_trial(study, frozen)
    trial.report(0.5, 1)
    study.tell(trial, 0.5)
    assert study.trials[0].intermediate_values == {1: 0.5}
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_without_default_loggers_sets_tunes_switch_for_the_call_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    import os

    with _ray.without_default_loggers():
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ


def test_tune_still_reads_the_default_loggers_switch():
    # The variable is read where Tune builds its default callbacks; a release that renames it
    # would bring the CSV, JSON and TensorBoard loggers back without a word.
    from ray.tune.utils import callback

    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" in Path(callback.__file__).read_text()


def test_ray_serve_still_reads_the_switches_mf_serve_sets():
    # mf.serve turns on Serve's HAProxy ingress through environment variables that Serve reads in a
    # private module; a release that renames one would fall back to the Python proxy without a word.
    import ray.serve

    from mf.serve import HAPROXY_ENV, HAPROXY_PORTS

    source = (Path(ray.serve.__file__).parent / "_private" / "constants.py").read_text()
    missing = [name for name in (*HAPROXY_ENV, *HAPROXY_PORTS) if f'"{name}"' not in source]
    assert missing == []


def test_serves_haproxy_template_still_has_the_binds_mf_serve_rewrites():
    # mf._ray_serve rewrites two lines of the template; a release that changes them would leave
    # HAProxy's stats page and exporter on every interface again without a word.
    from ray.serve._private import haproxy

    from mf import _ray_serve

    template = haproxy.HAPROXY_CONFIG_TEMPLATE
    assert [line for line in _ray_serve.BINDS if template.count(line) != 1] == []
    assert "bind {{ config.frontend_host }}:{{ config.frontend_port }}" in template
