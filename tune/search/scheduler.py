"""ASHA whose decisions survive a driver restart, with one bracket or several (Hyperband-style).

Ray's ASHAScheduler keeps the values recorded at each rung, and which bracket each trial is in,
only in memory, and `Tuner.restore` brings it back empty (ray-project/ray#30838): after a restart
the first trials to reach a rung would be compared with nobody and pass, so the resumed experiment
would stop other trials than the same experiment run without a restart. This subclass writes its
records to `asha_state.json` beside the experiment whenever they change and reads them back both
when it is built and when it is unpickled, which is how `Tuner.restore` brings a scheduler back.
With several brackets, each new trial is put in a bracket drawn as ASHA draws it, but from a seeded
generator keyed by the trial's id, so the same trial lands in the same bracket after a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler

from mf.atomic import write_json
from tune._internals.ray import asha_num_stopped, asha_rungs, set_asha_num_stopped, set_asha_trial_bracket

ASHA_STATE_FILE = "asha_state.json"


class PersistentASHA(ASHAScheduler):
    """ASHAScheduler with its rung records and bracket assignments saved to `state_path`.

    `seed` decides the bracket of each trial (with `brackets=1` every trial is in bracket 0).
    """

    def __init__(self, *, state_path: str | os.PathLike, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._seed = seed
        self._brackets_of: dict[str, int] = {}
        self._load()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tuner.restore unpickles the scheduler as it was when the run started: reload what it decided since.
        self.__dict__.update(state)
        self._load()

    @property
    def rungs(self) -> dict[int, dict[str, float]]:
        """The first bracket's rungs: epoch -> {trial_id: recorded reward} (the metric times -1 for mode=min)."""
        return asha_rungs(self)[0]

    @property
    def bracket_rungs(self) -> list[dict[int, dict[str, float]]]:
        """Every bracket's rungs, bracket 0 (the earliest first rung) first."""
        return asha_rungs(self)

    def bracket_of(self, trial_id: str) -> int | None:
        return self._brackets_of.get(trial_id)

    def _count(self) -> int:
        return sum(len(recorded) for bracket in asha_rungs(self) for recorded in bracket.values())

    def _load(self) -> None:
        path = Path(self._state_path)
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        # An experiment from before brackets saved one bracket's rungs under "rungs".
        brackets = saved.get("brackets", [saved.get("rungs", {})])
        for live, stored in zip(asha_rungs(self), brackets, strict=False):
            for milestone, recorded in live.items():
                recorded.clear()
                recorded.update(stored.get(str(milestone), {}))
        self._brackets_of = {str(k): int(v) for k, v in saved.get("trial_brackets", {}).items()}
        set_asha_num_stopped(self, int(saved.get("num_stopped", 0)))

    def _save(self) -> None:
        brackets = [{str(m): recorded for m, recorded in bracket.items()} for bracket in asha_rungs(self)]
        write_json(
            self._state_path,
            {
                "brackets": brackets,
                "trial_brackets": self._brackets_of,
                "num_stopped": asha_num_stopped(self),
            },
        )

    def _draw_bracket(self, trial_id: str) -> int:
        """ASHA's own draw (brackets with more rungs are likelier), from a generator keyed by the trial."""
        sizes = np.array([len(bracket) for bracket in asha_rungs(self)], dtype=float)
        weights = np.exp(sizes - sizes.max())
        key = int.from_bytes(hashlib.sha256(f"{self._seed}:{trial_id}".encode()).digest()[:8], "little")
        return int(np.random.default_rng(key).choice(len(sizes), p=weights / weights.sum()))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)  # checks metric and mode, draws a bracket
        bracket = self._brackets_of.get(trial.trial_id)
        if bracket is None:
            bracket = self._draw_bracket(trial.trial_id)
            self._brackets_of[trial.trial_id] = bracket
            if len(asha_rungs(self)) > 1:
                self._save()
        set_asha_trial_bracket(self, trial.trial_id, bracket)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        before = (self._count(), asha_num_stopped(self))
        decision = super().on_trial_result(tune_controller, trial, result)
        if (self._count(), asha_num_stopped(self)) != before:
            self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        before = self._count()
        super().on_trial_complete(tune_controller, trial, result)
        if self._count() != before:
            self._save()
