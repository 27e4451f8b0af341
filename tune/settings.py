"""How an experiment is run (scheduler, resources, budget, storage): one typed, checked record.

It is written to `<experiment>/experiment.yaml` when the run starts, so that export, report
and resume read the same settings the run used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mf.config import TrainConfig, from_dict
from mf.errors import ConfigError

EXPERIMENT_FILE = "experiment.yaml"
TRIAL_SEEDS = ("shared", "own")
REFITS = {"none": "train", "train+val": "train+val", "all": "all"}
"""--refit: the TrainConfig.train_on of the exported model."""


def setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything about a tuning run that is not a training hyperparameter: each field is a
    `python -m tune.run` flag (`--time-budget-s` for `time_budget_s`), its doc the flag's help, and
    the whole is recorded in the experiment's experiment.yaml.

    Raises:
        ConfigError: a value out of its range, naming the flag and the rule.
    """

    name: str = setting(
        "mf-tune", "Experiment name: the folder under --storage-path and the Optuna study name."
    )
    storage_path: str = setting(
        "runs", "Where Tune and we write the experiment (a shared path on a cluster)."
    )
    space: str = setting("default", "Search space: a built-in name (default, ablation) or a YAML file.")
    num_samples: int = setting(
        40, "Trials to run (-1: as many as --time-budget-s allows, the default when a budget is given)."
    )
    time_budget_s: float | None = setting(
        None,
        "Seconds for the whole run, from tune.run's start (loading the data, starting Ray) to its "
        "export: the search ends early enough for its confirmation and export to fit.",
    )
    max_epochs: int = setting(30, "Epochs of a trial that is never stopped (ASHA's max_t).")
    grace_period: int = setting(2, "Epochs every trial gets before ASHA may stop it (first rung).")
    reduction_factor: int = setting(3, "ASHA keeps the top 1/reduction_factor of trials at each rung.")
    brackets: int = setting(
        1,
        "ASHA brackets (Hyperband-style): bracket s has its first rung at grace_period * "
        "reduction_factor**s; each trial is put in one at random.",
    )
    trial_seed: str = setting(
        "own",
        "`shared`: every trial trains with the config's seed (one init and batch order for all); `own`: "
        "each trial with a seed derived from that seed and its parameters, so that a lucky init or batch "
        "order favours one trial, not a neighbourhood of configurations that TPE then concentrates on.",
    )
    startup_trials: int = setting(
        10, "Trials TPE proposes at random before it models the results (Optuna's n_startup_trials)."
    )
    cpus_per_trial: float = setting(1.0, "CPUs each trial holds (torch threads follow it).")
    gpus_per_trial: float = setting(0.0, "GPUs each trial holds; fractions share a GPU (0.25: four a GPU).")
    max_concurrent: int = setting(
        0,
        "Trials running at once (0: as many as the cluster's resources hold at the start; set it on an autoscaling cluster).",
    )
    address: str | None = setting(
        None, "Ray cluster to join (e.g. auto or ray://host:10001); none: a local Ray."
    )
    study_storage: str | None = setting(
        None,
        "Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file "
        "(default: optuna.journal in the experiment).",
    )
    warm_start: str | None = setting(
        None, "Earlier experiment folder or Optuna storage URL whose trials seed TPE."
    )
    checkpoint_every: int = setting(
        0,
        "Checkpoint a trial every N epochs; 0: at ASHA's rungs, at the last epoch and every "
        "--checkpoint-interval-s of training (a checkpoint costs more than a fast epoch).",
    )
    checkpoint_interval_s: float = setting(
        20.0, "With --checkpoint-every 0: the most training time a retry can lose."
    )
    max_failures: int = setting(2, "Retries of a trial that crashed (node lost) from its last checkpoint.")
    confirm_top: int = setting(
        5,
        "Before export, train the best N distinct configurations again with fresh seeds and export the "
        "one with the best mean val MSE (0: export the search's best trial as it is).",
    )
    confirm_seeds: int = setting(3, "Fresh seeds per configuration in the confirmation.")
    confirm_share: float = setting(
        0.25,
        "With --time-budget-s: the most of the budget kept for the confirmation. The search ends when "
        "the time left is what confirming its best needs, by its own measurements (at most this share).",
    )
    refit: str = setting(
        "train+val",
        "What the exported model trains on once the search and its confirmation chose it: `train+val`, "
        "the chosen configuration trained again on the training and validation parts for its chosen "
        "epochs (the test figure is this model's); `none`, the chosen run's own model (trained on "
        "train); `all`, as train+val, and then a model for serving trained on every rating (its test "
        "figure is the train+val model's: none can exist for it).",
    )
    ensemble: int = setting(
        5,
        "The refit trains the chosen configuration this many times, with different seeds, and exports "
        "their average as one model (TrainConfig.ensemble); fewer where the time budget holds fewer. "
        "1: one model. With --refit none the chosen run's own model is exported.",
    )
    keep_checkpoints: int = setting(
        3,
        "Ended trials that keep their last checkpoint: the best N by val MSE (the export uses the "
        "best); the others' are deleted, as is every checkpoint older than a trial's newest. -1: keep them all.",
    )

    def __post_init__(self) -> None:
        rules = [
            (
                "num_samples",
                self.num_samples == -1 or self.num_samples >= 1,
                ">= 1, or -1 with a time budget",
            ),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            (
                "grace_period",
                1 <= self.grace_period <= self.max_epochs,
                f"in [1, max_epochs={self.max_epochs}]",
            ),
            ("reduction_factor", self.reduction_factor >= 2, ">= 2"),
            ("trial_seed", self.trial_seed in TRIAL_SEEDS, f"one of {', '.join(TRIAL_SEEDS)}"),
            ("startup_trials", self.startup_trials >= 1, ">= 1"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", self.gpus_per_trial >= 0, ">= 0"),
            ("max_concurrent", self.max_concurrent >= 0, ">= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
            ("checkpoint_interval_s", self.checkpoint_interval_s > 0, "> 0"),
            ("max_failures", self.max_failures >= -1, ">= 0 (or -1: retry forever)"),
            ("confirm_top", self.confirm_top >= 0, ">= 0"),
            ("confirm_seeds", self.confirm_seeds >= 1, ">= 1"),
            ("confirm_share", 0 <= self.confirm_share < 1, "in [0, 1)"),
            ("refit", self.refit in REFITS, f"one of {', '.join(REFITS)}"),
            ("ensemble", self.ensemble >= 1, ">= 1"),
            (
                "keep_checkpoints",
                self.keep_checkpoints == -1 or self.keep_checkpoints >= 1,
                ">= 1 (or -1: keep all)",
            ),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')}: {getattr(self, name)!r} must be {rule}")
        most = len(self.bracket_rungs(0)) + 1  # the last bracket has no rung below max_epochs: plain FIFO
        if not 1 <= self.brackets <= most:
            raise ConfigError(
                f"--brackets: {self.brackets!r} must be in [1, {most}] with these rungs "
                f"({', '.join(map(str, self.bracket_rungs(0))) or 'none'} below --max-epochs {self.max_epochs})"
            )
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"--time-budget-s: {self.time_budget_s!r} must be > 0")
        if self.num_samples == -1 and self.time_budget_s is None:
            raise ConfigError("--num-samples -1 runs trials until the budget ends: give --time-budget-s too")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"--name: {self.name!r} must be a plain folder name (no '/', not hidden)")

    @property
    def own_trial_seeds(self) -> bool:
        """Whether each trial trains with a seed of its own (trial_config's `own_seed`)."""
        return self.trial_seed == "own"

    def bracket_rungs(self, bracket: int) -> tuple[int, ...]:
        """The epochs below max_epochs at which ASHA compares the trials of `bracket`:
        grace_period * reduction_factor**(bracket + k), k = 0, 1, ... (ASHAScheduler's own rule)."""
        rungs, t = [], self.grace_period * self.reduction_factor**bracket
        while t < self.max_epochs:
            rungs.append(t)
            t *= self.reduction_factor
        return tuple(rungs)

    @property
    def rung_epochs(self) -> tuple[int, ...]:
        """Every epoch below max_epochs at which ASHA compares some trials (the rungs of all brackets)."""
        return tuple(sorted({t for b in range(self.brackets) for t in self.bracket_rungs(b)}))

    @property
    def decision_epochs(self) -> frozenset[int]:
        """The epochs after which ASHA may stop a trial: its rungs and max_epochs. After any other
        epoch it lets the trial go on, which is what lets a trial train its next epoch early."""
        return frozenset((*self.rung_epochs, self.max_epochs))

    @property
    def is_remote_storage(self) -> bool:
        return "://" in self.storage_path

    @property
    def experiment_dir(self) -> Path:
        """The experiment folder (local or a shared mount; remote URIs are not supported here)."""
        if self.is_remote_storage:
            raise ConfigError(
                f"--storage-path: {self.storage_path!r}: this tool keeps the Optuna study and exports in the "
                "experiment folder, so use a shared file system path (NFS) on a cluster"
            )
        return Path(self.storage_path).expanduser().resolve() / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How a run shows itself; none of it changes what is tuned, so it is not saved with the
    experiment (a resumed run keeps the callbacks its first run had: Tune stores them)."""

    verbose: bool = False
    """Ray's own console output (per-trial boxes, INFO logs, workers' output) instead of one line."""
    dashboard_port: int | None = None
    """Serve the study with optuna-dashboard on 127.0.0.1 at this port while the run goes on."""
    mlflow_uri: str | None = None
    """Track the run in MLflow at this URI ("": a SQLite store in the experiment folder)."""
    started: float | None = None
    """When --time-budget-s began (epoch seconds): tune.run's start, so that loading the data and
    starting Ray are spent from the budget too; None: when the search begins."""
    callbacks: tuple[Any, ...] = ()
    """More `ray.tune.Callback`s for the run (Ray's own loggers, such as `MLflowLoggerCallback` or
    `WandbLoggerCallback`), called before the progress line's."""


def refit_grace_s(budget_s: float) -> float:
    """How far past the end of a `budget_s` time budget the export's refit may still end: half of
    max(30 s, 5 %), the run's tolerance. A refit takes seconds on ml-latest-small and is worth more
    to the exported model than any other step (docs/decisions.md), so a confirmation that ended a
    second late must not cost it; the other half is the rest of the export's."""
    return 0.5 * max(30.0, 0.05 * budget_s)


def module_env() -> dict[str, str]:
    """The environment for a `python -m tune...` process a run starts (the dashboard, the MLflow
    writer): this one's, with the folder holding the tune package first on
    PYTHONPATH, so that the child runs this source tree from whatever working directory."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def doc(name: str) -> str:
    return ExperimentSettings.__dataclass_fields__[name].metadata["doc"]


def read_experiment(folder: str | os.PathLike) -> dict[str, Any]:
    """The `experiment.yaml` of an experiment folder, as written when the experiment started.

    Returns:
        A mapping with `settings` (see `recorded_settings`), `base_config` (TrainConfig keys) and
        `space` (the search space).

    Raises:
        ConfigError: no experiment.yaml in `folder`, or one that is not valid YAML or lacks a part.
    """
    path = Path(folder) / EXPERIMENT_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: not an mf-tune experiment folder (no {EXPERIMENT_FILE})")
    try:
        experiment = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    missing = [
        k
        for k in ("settings", "base_config")
        if not isinstance(experiment, dict) or not isinstance(experiment.get(k), dict)
    ]
    if missing:
        raise ConfigError(
            f"{path}: damaged, {', '.join(missing)} missing (it is written once, when the experiment starts: "
            "restore it from a backup, or start a new experiment)"
        )
    return experiment


HELD_OUT_TEST = {"last-n": ("test_n", 5), "random": ("test_fraction", 0.1), "time": ("test_fraction", 0.1)}
"""The test part an experiment holds out unless told otherwise (test_n 0 / test_fraction 0: none,
the tutorial's split; test_data: a file of its own): the search selects on validation, so only a
part it never saw tells the truth."""


def experiment_config(keys: Mapping[str, Any], *, where: str = "experiment config") -> TrainConfig:
    """An experiment's base training config from the keys a user set (`python -m tune.run`'s flags
    and --config, or a Python caller's): TrainConfig's defaults, but a test part held out
    (HELD_OUT_TEST) unless the keys set one, and data files by absolute path, since the trials, the
    export and a later retrain may run in other folders or on other machines.

    Raises:
        ConfigError: a key or value TrainConfig refuses (`where` says where it came from).
    """
    fixed = dict(keys)
    for key in ("data", "val_data", "test_data"):
        if fixed.get(key) is not None and Path(fixed[key]).exists():
            fixed[key] = str(Path(fixed[key]).resolve())
    split = fixed.get("split", TrainConfig.split)
    if split in HELD_OUT_TEST and fixed.get("test_data") is None:
        key, value = HELD_OUT_TEST[split]
        fixed.setdefault(key, value)
    return from_dict(fixed, where=where)


def recorded_settings(experiment: dict[str, Any]) -> ExperimentSettings:
    """The settings an experiment ran with, from its `experiment.yaml` as `read_experiment` returns it.

    Raises:
        ConfigError: a key this version does not know (a newer mf-tune's, or a typo), or one it
            lacks (an older mf-tune's: its resume or export would not do what its run did).
    """
    known = {f.name for f in dataclasses.fields(ExperimentSettings)}
    unknown = sorted(set(experiment["settings"]) - known)
    if unknown:
        raise ConfigError(
            f"{EXPERIMENT_FILE}: settings: {', '.join(map(repr, unknown))} unknown to this mf-tune (written by a "
            "newer one, or edited by hand); use the mf-tune that ran it, or remove the key"
        )
    missing = sorted(known - set(experiment["settings"]))
    if missing:
        raise ConfigError(
            f"{EXPERIMENT_FILE}: settings: {', '.join(map(repr, missing))} missing (written by an older "
            "mf-tune, or edited by hand); use the mf-tune that ran it, or add the keys with the values it ran with"
        )
    return ExperimentSettings(**experiment["settings"])


EPOCH_RATINGS_MAX = 1_000_000
"""The most ratings an epoch of a trial trains, unless --epoch-ratings says otherwise: an epoch is a
report and the unit of ASHA's rungs, so on a large file a pass would make the first rung cost
minutes, and a budget would see a handful of trials."""


def epoch_ratings_for(train_ratings: int) -> int:
    """A trial's epoch on a training part of `train_ratings` ratings: a pass (0) up to
    EPOCH_RATINGS_MAX, else the pass cut into as few equal epochs as keep each below it."""
    epochs_a_pass = -(-train_ratings // EPOCH_RATINGS_MAX)
    return 0 if epochs_a_pass <= 1 else -(-train_ratings // epochs_a_pass)


def trial_epochs(params: Mapping[str, Any], max_epochs: int) -> int:
    """The epochs a trial trains if nothing stops it: its own `epochs` where the space tunes them (at
    most ASHA's max epochs), else max_epochs. A trial that reaches them is COMPLETE (tune.record.outcome)."""
    return min(int(params.get("epochs", max_epochs)), max_epochs)


def trial_config(
    base: TrainConfig, params: dict[str, Any], max_epochs: int, *, own_seed: bool = False
) -> TrainConfig:
    """The full training config of one trial: the base, the sampled parameters, its epochs
    (`trial_epochs`: also the span of a learning-rate schedule, unless the base sets one) and, with
    `own_seed` (--trial-seed own, the default), a seed of the trial's own, derived from the base's
    seed and the parameters, so that a resumed trial and its export keep it; the split stays the
    base's. A trial is one model (ensemble 1): only the export's refit averages several."""
    epochs = trial_epochs(params, max_epochs)
    sampled = {k: v for k, v in params.items() if k != "epochs"}
    config = base.replace(
        **sampled, epochs=epochs, schedule_epochs=base.schedule_epochs or epochs, ensemble=1
    )
    if not own_seed:
        return config
    key = json.dumps([base.seed, sorted(params.items())], default=str)
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") >> 1
    return config.replace(seed=seed, split_seed=base.effective_split_seed)
