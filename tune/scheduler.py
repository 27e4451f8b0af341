"""ASHA whose rung records survive a driver restart.

Ray's ASHAScheduler keeps the values recorded at each rung only in memory, and `Tuner.restore`
starts it empty (ray-project/ray#30838): after a restart the first trials to reach a rung are
compared with nobody and pass, so the resumed experiment stops other trials than it would have.
This subclass writes the records to a JSON file beside the experiment whenever they change and
reads them back when it is created or unpickled (which is how `Tuner.restore` brings it back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from mf.atomic import write_json

ASHA_STATE_FILE = "asha_state.json"


class PersistentASHA(ASHAScheduler):
    """ASHAScheduler (one bracket) with its rung records saved to `state_path`."""

    def __init__(self, *, state_path: str | os.PathLike, **kwargs: Any) -> None:
        if kwargs.get("brackets", 1) != 1:
            raise ValueError("PersistentASHA keeps one bracket (ASHA's default)")
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._load()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

    @property
    def rungs(self) -> dict[int, dict[str, float]]:
        """Rung epoch -> {trial_id: recorded reward} (the reward is the metric times -1 for mode=min)."""
        return {int(milestone): recorded for milestone, recorded in self._brackets[0]._rungs}

    def _count(self) -> int:
        return sum(len(recorded) for recorded in self.rungs.values())

    def _load(self) -> None:
        path = Path(self._state_path)
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        for milestone, recorded in self.rungs.items():
            recorded.clear()
            recorded.update(saved["rungs"].get(str(milestone), {}))
        self._num_stopped = int(saved.get("num_stopped", 0))

    def _save(self) -> None:
        rungs = {str(m): recorded for m, recorded in self.rungs.items()}
        write_json(self._state_path, {"rungs": rungs, "num_stopped": self._num_stopped})

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        before = (self._count(), self._num_stopped)
        decision = super().on_trial_result(tune_controller, trial, result)
        if (self._count(), self._num_stopped) != before:
            self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        before = self._count()
        super().on_trial_complete(tune_controller, trial, result)
        if self._count() != before:
            self._save()
