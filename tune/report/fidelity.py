"""Does pruning keep the good trials? How well ASHA's rungs rank the trials that ran to the end.

For the trials that ran to their end (max_epochs, or their own tuned epochs): the rank correlation
(Spearman) between their value at each rung and their final best value, and how many of the final
top 10 the first rung would have stopped (their value there was outside the best 1/reduction_factor
of all values recorded at that rung). A first rung that ranks poorly stops trials that would have
ended best; the cure is a later first rung (--grace-period) or several brackets (--brackets), some
of which judge later. Read from trial records alone (no Ray), for the end-of-run summary and the
report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tune.record.outcome import COMPLETE
from tune.record.results import TrialRecord
from tune.settings import ExperimentSettings

TOP = 10
LOW_RHO = 0.5
"""Below this rank correlation at the first rung, the summary warns."""


@dataclass(frozen=True)
class RungFidelity:
    epoch: int
    trials: int
    """Trials that ran to their end (each has a value at this rung)."""
    spearman: float
    """Rank correlation of their value at this epoch with their final best value (NaN: < 3 trials)."""


@dataclass(frozen=True)
class PruningFidelity:
    rungs: tuple[RungFidelity, ...]
    finished: int
    """Trials that ran to their end (COMPLETE: max_epochs, or their own tuned epochs)."""
    top: int
    """The size of the final top (TOP, or fewer trials)."""
    top_stopped_at_first_rung: int
    """How many of the final top were outside the best 1/reduction_factor at the first rung."""
    first_rung: int | None

    def warning(self, settings: ExperimentSettings) -> str | None:
        """One line when the first rung ranks trials poorly, saying what to change; else None."""
        if not self.rungs or math.isnan(self.rungs[0].spearman):
            return None
        rho = self.rungs[0].spearman
        if rho >= LOW_RHO:
            return None
        later = settings.grace_period * settings.reduction_factor
        return (
            f"warning: ASHA's first rung (epoch {self.first_rung}) ranks trials poorly: Spearman's rho "
            f"{rho:.2f} against their final best, and it would have stopped {self.top_stopped_at_first_rung} "
            f"of the final top {self.top}; try --grace-period {later}, or --brackets "
            f"{min(settings.brackets + 1, len(settings.bracket_rungs(0)) + 1)} (later first rungs for some trials)"
        )

    def lines(self) -> list[str]:
        if not self.rungs:
            return ["pruning fidelity: ASHA has no rung below max_epochs"]
        if self.finished < 3:
            return [f"pruning fidelity: {self.finished} trials ran to their end, too few to judge the rungs"]
        rhos = ", ".join(f"epoch {r.epoch} {r.spearman:.2f}" for r in self.rungs)
        return [
            f"pruning fidelity over the {self.finished} trials that ran to their end: Spearman's rho of "
            f"each rung's value with the final best: {rhos}",
            f"of the final top {self.top}, the first rung (epoch {self.first_rung}) would have stopped "
            f"{self.top_stopped_at_first_rung}",
        ]


def pruning_fidelity(records: Sequence[TrialRecord], settings: ExperimentSettings) -> PruningFidelity:
    finished = {r.trial_id: r.curve for r in records if r.outcome == COMPLETE and r.curve}
    final_best = pd.Series({t: min(c.values()) for t, c in finished.items()}, dtype=float)
    rungs = []
    for epoch in settings.rung_epochs:
        at_rung = pd.Series({t: c[epoch] for t, c in finished.items() if epoch in c}, dtype=float)
        rho = math.nan
        if len(at_rung) >= 3:
            rho = float(at_rung.rank().corr(final_best[at_rung.index].rank()))
        rungs.append(RungFidelity(epoch=epoch, trials=len(at_rung), spearman=rho))
    first = settings.rung_epochs[0] if settings.rung_epochs else None
    top = list(final_best.nsmallest(TOP).index)
    stopped = 0
    if first is not None:
        recorded = np.array([c[first] for r in records if first in (c := r.curve)])
        if len(recorded):
            cutoff = np.quantile(recorded, 1.0 / settings.reduction_factor)
            stopped = sum(finished[t][first] > cutoff for t in top if first in finished[t])
    return PruningFidelity(
        rungs=tuple(rungs),
        finished=len(finished),
        top=len(top),
        top_stopped_at_first_rung=int(stopped),
        first_rung=first,
    )
