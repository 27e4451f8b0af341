"""Optuna alone: the reference a tuner is measured against, as an Optuna user writes it.

TPE (seeded) with Optuna's HyperbandPruner, one trial at a time in one process, each trial driving
the same `Trainer` one epoch at a time and reporting every epoch; the budget is checked between
trials, as `study.optimize(timeout=...)` does. torch keeps its own thread count (one per core), which
is what a user gets by default; the trials run one at a time, so nothing competes for them. At the
end the best trial's model at its best epoch is evaluated on the test part, where the split has one:
what the user of Optuna alone would take away; and, outside the budget, its configuration is
trained again on train + validation for that many epochs as an average of --ensemble runs (what
tune.run's export does, --refit train+val, with the same default) and evaluated on the test part
too, so that the refit's gain and the search's are told apart.

    python -m bench.optuna_alone --data ../shared/data/ml-latest-small --budget-s 60 --seed 0 --out b.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from mf.config import TrainConfig, from_dict, read_values
from mf.metrics import EPOCH, EPOCH_SECONDS, VAL_MSE, prefixed
from mf.training import Trainer, TrainingDiverged, dataset_for
from search_spaces import load_space
from tune.settings import ExperimentSettings, trial_epochs


@dataclass
class OptunaAloneRun:
    curves: list[list[dict[str, float]]] = field(default_factory=list)
    """Per trial, per epoch: wall_time (epoch seconds), val_mse, epoch_seconds."""
    states: dict[str, int] = field(default_factory=dict)
    params: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    """The best trial: params, epoch, val_mse and, with a test part, the test metrics of its model."""
    refit: dict[str, Any] = field(default_factory=dict)
    """With a test part: the best configuration trained on train + validation for its best epoch
    count, its test metrics and seconds."""
    torch_threads: int = 0


def optuna_alone(
    base: TrainConfig, *, space: str, max_epochs: int, budget_s: float, seed: int, ensemble: int = 1
) -> OptunaAloneRun:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset = dataset_for(base)
    distributions = load_space(space).to_optuna()
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3),
    )
    run = OptunaAloneRun(torch_threads=torch.get_num_threads())
    best_value, best_weights = math.inf, None
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        trial = study.ask(distributions)
        config = trial_config(base, trial.params, max_epochs)
        trainer = Trainer(config, dataset)
        curve: list[dict[str, float]] = []
        run.curves.append(curve)
        state = optuna.trial.TrialState.COMPLETE
        try:
            for _ in range(config.epochs):
                m = trainer.run_epoch()
                curve.append({"wall_time": time.time(), VAL_MSE: m[VAL_MSE], EPOCH_SECONDS: m[EPOCH_SECONDS]})
                trial.report(m[VAL_MSE], m[EPOCH])
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
        except TrainingDiverged:
            state = optuna.trial.TrialState.FAIL
        # COMPLETE: the best epoch's value, as tune.run tells Optuna; PRUNED: Optuna takes the last one.
        value = min(e[VAL_MSE] for e in curve) if state == optuna.trial.TrialState.COMPLETE else None
        study.tell(trial, value, state=state)
        if trainer.best is not None and trainer.best.val_mse < best_value:
            best_value = trainer.best.val_mse
            best_weights = (dict(trial.params), trainer.best.epoch, trainer.best.weights)
    states = [t.state.name for t in study.trials]
    run.states = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    run.params = [t.params for t in study.trials]
    if best_weights is not None:
        params, epoch, weights = best_weights
        trainer = Trainer(trial_config(base, params, max_epochs).replace(epochs=epoch), dataset)
        trainer.model.load_state_dict(weights)
        run.best = {"params": params, "epoch": epoch, "val_mse": best_value}
        if dataset.test is not None:
            run.best.update(prefixed(trainer.evaluate("test"), "test"))
            started = time.monotonic()
            refit = trial_config(base, params, max_epochs).replace(
                epochs=epoch, train_on="train+val", ensemble=ensemble
            )
            trainer = Trainer(refit, dataset.training_on("train+val"))
            trainer.fit()
            run.refit = {**prefixed(trainer.evaluate("test"), "test"), "seconds": time.monotonic() - started}
    return run


def trial_config(base: TrainConfig, params: dict[str, Any], max_epochs: int) -> TrainConfig:
    """A trial's config as an Optuna user writes it: the base, the sampled parameters, its epochs
    (its own where the space tunes them, at most max_epochs: tune.settings.trial_epochs, the rule
    ours follows), which a learning-rate schedule spans, kept when fewer epochs are trained again."""
    epochs = trial_epochs(params, max_epochs)
    sampled = {k: v for k, v in params.items() if k != "epochs"}
    return base.replace(**sampled, epochs=epochs, schedule_epochs=base.schedule_epochs or epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.optuna_alone", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", type=Path, help="YAML of fixed training keys (split, test_n, ...)")
    parser.add_argument("--space", default="default")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--ensemble",
        type=int,
        default=ExperimentSettings().ensemble,
        help="runs the refit averages, as tune.run's --ensemble (default: its default)",
    )
    args = parser.parse_args(argv)
    fixed = read_values(args.config) if args.config else {}
    base = from_dict({**fixed, "data": args.data, "seed": args.seed}, where="bench.optuna_alone")
    run = optuna_alone(
        base,
        space=args.space,
        max_epochs=args.max_epochs,
        budget_s=args.budget_s,
        seed=args.seed,
        ensemble=args.ensemble,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run.__dict__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
