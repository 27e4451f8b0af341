"""When the search ends: as soon as the time left is what the confirmation of its best will need.

With --time-budget-s the budget is shared by the search and the confirmation after it
(tune.export.confirmation). A fixed share is wrong both ways: after a short search the read-back and the
confirmation's start alone outlast it, and no candidate is confirmed; after a long one on small
data the runs take a fraction of it, and the rest is idle. So this stopper keeps, from the end of
the budget, what the confirmation of the search's current best `top` distinct configurations would
take, from the search's own measurements:

- `CONFIRM_START_S` for the confirmation's workers to start,
- `READ_BACK_S_PER_TRIAL` for each trial the driver reads back between the search and the
  confirmation (Tune's final read of the results, the confirmation's read of the trials), and
- `seeds` runs of each candidate for its epochs (`tune.settings.trial_epochs`: its own where the
  space tunes them, else max_epochs) at its own median epoch time, spread over the trial slots (`tune.export.confirmation.confirmation_seconds`, the rule the confirmation plans with), and
- the export's refit of the best of them (`tune.export.confirmation.refit_cost`),

but never more than `most_s` (--confirm-share of the budget): the search always gets the rest. The
confirmation then plans its runs into whatever is left, as before.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray.tune import Stopper

from tune.export.confirmation import CONFIRM_START_S, confirmation_seconds, refit_cost, run_cost
from tune.record.keys import EPOCH_SECONDS, METRIC
from tune.settings import trial_epochs

READ_BACK_S_PER_TRIAL = 0.005
"""The driver's read-back between the search's end and the confirmation's start, per trial: on 2
cores 4.4 ms while the settling read every trial a second time, 2.6 ms since (7.0 s after 2,698
trials; bench/README.md, the confirmation's reserve). Kept at the higher figure: a slower disk or
a busier driver reads slower, and the search loses only what is left over."""
MARGIN = 1.25
"""The measured parts (the read-back, the runs) are kept a quarter larger: the confirmation plans a
candidate only if all its runs fit, and a read-back a little slower than its estimate would cost
one."""
ESTIMATE_EVERY_S = 1.0
"""How often the reserve is estimated again: it sorts every trial, and Tune checks the stopper
at every step of its loop."""


class ConfirmationReserve(Stopper):
    """Ends the search `reserve_s()` before the end of `budget_s`, counted from its creation.

    It is created (or, by `Tuner.restore`, unpickled) just before the Tuner runs, where
    tune.search.experiment starts the budget's clock for the confirmation: Tune's own setup, a second or
    more, then counts against the search, not the confirmation. A restored experiment starts its
    budget again, as Tune's TimeoutStopper does, and knows only the trials that report after the
    restore."""

    def __init__(
        self,
        *,
        budget_s: float,
        most_s: float,
        top: int,
        seeds: int,
        slots: int,
        max_epochs: int,
        refit: str = "none",
        refit_larger: float = 1.0,
        ensemble: int = 1,
    ) -> None:
        """`refit`, `refit_larger`, `ensemble`: the --refit rule, how much larger its training part is
        than the search's, and the runs each refit model averages (see tune.export.confirmation.refit_cost)."""
        self.budget_s, self.most_s = budget_s, most_s
        self.top, self.seeds, self.slots, self.max_epochs = top, seeds, slots, max_epochs
        self.refit, self.refit_larger, self.ensemble = refit, refit_larger, ensemble
        self._started = time.time()
        self._trials: dict[str, _TrialCost] = {}
        self._reserve_s = self._estimate()
        self._estimated_at = -math.inf
        self._changed = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._started = time.time()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        config = result.get("config", {})
        trial = self._trials.setdefault(
            trial_id, _TrialCost(_config_key(config), trial_epochs(config, self.max_epochs))
        )
        trial.add(result.get(METRIC), result.get(EPOCH_SECONDS))
        self._changed = True
        return False

    def stop_all(self) -> bool:
        now = time.time()
        if self._changed and now - self._estimated_at >= ESTIMATE_EVERY_S:
            self._reserve_s, self._estimated_at, self._changed = self._estimate(), now, False
        return now - self._started >= self.budget_s - self._reserve_s

    def reserve_s(self) -> float:
        """The seconds kept for the confirmation, as the search's results stood at the last estimate."""
        return self._reserve_s

    def _estimate(self) -> float:
        costs, seen = [], set()
        for trial in sorted(
            (t for t in self._trials.values() if math.isfinite(t.best)), key=lambda t: t.best
        ):
            if len(costs) == self.top:
                break
            if trial.config not in seen:
                seen.add(trial.config)
                costs.append(run_cost(trial.epoch_seconds, trial.epochs))
        runs = confirmation_seconds(costs, seeds=self.seeds, slots=self.slots)
        runs += refit_cost(costs, refit=self.refit, larger=self.refit_larger, ensemble=self.ensemble)
        needed = CONFIRM_START_S + MARGIN * (READ_BACK_S_PER_TRIAL * len(self._trials) + runs)
        return min(needed, self.most_s)


class _TrialCost:
    """One trial's best val MSE so far, its epochs' seconds, and the epochs a run of it trains."""

    def __init__(self, config: str, epochs: int) -> None:
        self.config = config
        self.epochs = epochs
        self.best = math.inf
        self.epoch_seconds: list[float] = []

    def add(self, value: Any, seconds: Any) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best = min(self.best, float(value))
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            self.epoch_seconds.append(float(seconds))


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)
