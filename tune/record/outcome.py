"""How a trial ended: the one rule, applied when the searcher tells Optuna, and read back from the study.

A trial that reached `max_epochs` is COMPLETE, valued at its best epoch; one stopped before (by ASHA
or the time budget) is PRUNED, and Optuna values it at its last epoch; one that diverged, crashed or
never trained an epoch is FAIL. The names are Optuna's `TrialState` names, so the study, trials.csv,
the summary and the report spell them the same way; RUNNING is a trial not ended yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.trial import TrialState

from tune.record.keys import DIVERGED, EPOCH, MODE
from tune.settings import trial_epochs

COMPLETE, PRUNED, FAIL, RUNNING = (
    s.name for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
)
ENDED = (COMPLETE, PRUNED, FAIL)


def trial_outcome(status: str, last: Mapping[str, Any], max_epochs: int) -> str:
    """The same rule from Tune's `status` of a trial and its last result alone (for a live view that
    keeps no curves): FAIL if Tune's status is ERROR, or the trial diverged or has no epoch;
    COMPLETE if it reached its own epochs (`trial_epochs` of the parameters Tune puts in the result,
    at most `max_epochs`); else PRUNED."""
    if status == "ERROR" or last.get(DIVERGED) or EPOCH not in last:
        return FAIL
    own = trial_epochs(last.get("config") or {}, max_epochs)
    return COMPLETE if int(last[EPOCH]) >= own else PRUNED


def outcome_of_curve(
    curve: dict[int, float], *, failed: bool, max_epochs: int, mode: str = MODE
) -> tuple[TrialState, float | None]:
    """The state and value to tell Optuna for a trial whose intermediate values are `curve`
    (epoch -> val MSE): FAIL if it `failed` or has none, COMPLETE with its best value if it reached
    `max_epochs`, else PRUNED (no value: Optuna takes the last intermediate value)."""
    if failed or not curve:
        return TrialState.FAIL, None
    if max(curve) >= max_epochs:
        return TrialState.COMPLETE, (min if mode == "min" else max)(curve.values())
    return TrialState.PRUNED, None
