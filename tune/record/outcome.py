"""How a trial ended: the one rule, applied when the searcher tells Optuna, and read back from the study.

A trial that reached `max_epochs` is COMPLETE, valued at its best epoch; one stopped before (by ASHA
or the time budget) is PRUNED, and Optuna values it at its last epoch; one that diverged, crashed or
never trained an epoch is FAIL. The names are Optuna's `TrialState` names, so the study, trials.csv,
the summary and the report spell them the same way; RUNNING is a trial not ended yet.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from tune.record.keys import DIVERGED, EPOCH, MODE

COMPLETE, PRUNED, FAIL, RUNNING = (
    s.name for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
)
ENDED = (COMPLETE, PRUNED, FAIL)


def outcome_of_last(last: dict[str, Any], *, failed: bool, max_epochs: int) -> str:
    """The same rule from a trial's last result alone (a live view that keeps no curves): FAIL if it
    `failed`, diverged or has no epoch, COMPLETE if it reached `max_epochs`, else PRUNED."""
    if failed or last.get(DIVERGED) or EPOCH not in last:
        return FAIL
    return COMPLETE if int(last[EPOCH]) >= max_epochs else PRUNED


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
