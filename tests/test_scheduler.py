"""PersistentASHA with several brackets: a restored driver decides as the one that was killed would.

`Tuner.restore` unpickles the scheduler as it was when the run started; these tests do the same
with the real ASHAScheduler underneath and Ray's own `Trial` objects, and feed the results a
driver would.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tune.search.scheduler import PersistentASHA
from tune.settings import ExperimentSettings


def three_brackets(state_path: Path, seed: int = 0) -> PersistentASHA:
    settings = ExperimentSettings(max_epochs=30, grace_period=2, reduction_factor=3, brackets=3)
    return PersistentASHA(
        state_path=state_path,
        seed=seed,
        time_attr="epoch",
        metric="val_mse",
        mode="min",
        max_t=settings.max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        brackets=settings.brackets,
    )


def trial(n: int) -> Trial:
    return Trial("mf", trial_id=f"t{n:02d}", stub=True)


def feed(asha: PersistentASHA, trials: list[Trial], epochs: range) -> dict[str, str]:
    """Every trial reports each epoch (trial n's val MSE falls with epoch, 0.8 + n/100 at best);
    returns each trial's last decision, and stops feeding a trial ASHA stopped."""
    decisions: dict[str, str] = {}
    for epoch in epochs:
        for i, t in enumerate(trials):
            if decisions.get(t.trial_id) == TrialScheduler.STOP:
                continue
            result = {"epoch": epoch, "val_mse": 0.8 + i / 100 + 1 / epoch}
            decisions[t.trial_id] = asha.on_trial_result(None, t, result)
    return decisions


def test_brackets_and_rung_records_survive_a_restore(tmp_path: Path) -> None:
    state = tmp_path / "asha_state.json"
    asha = three_brackets(state)
    at_start = pickle.dumps(asha)  # what Tune's snapshot holds: the scheduler as the run began
    trials = [trial(n) for n in range(24)]
    for t in trials:
        asha.on_trial_add(None, t)
    decisions = feed(asha, trials, range(1, 7))
    # The seeded draw spread the trials over more than one bracket, and rungs of several filled.
    assert len({asha.bracket_of(t.trial_id) for t in trials}) > 1
    assert sum(bool(recorded) for bracket in asha.bracket_rungs for recorded in bracket.values()) > 1

    restored = pickle.loads(at_start)
    for t in trials:  # Tune adds the resumed trials again
        restored.on_trial_add(None, t)
    assert [restored.bracket_of(t.trial_id) for t in trials] == [asha.bracket_of(t.trial_id) for t in trials]
    assert restored.bracket_rungs == asha.bracket_rungs

    # From here on both decide alike: the restored driver compares with what the killed one saw.
    going_on = [t for t in trials if decisions[t.trial_id] != TrialScheduler.STOP]
    assert 0 < len(going_on) < len(trials)
    assert feed(restored, going_on, range(7, 19)) == feed(asha, going_on, range(7, 19))


def test_the_bracket_draw_is_seeded_by_trial(tmp_path: Path) -> None:
    one, two = three_brackets(tmp_path / "a.json"), three_brackets(tmp_path / "b.json")
    other_seed = three_brackets(tmp_path / "c.json", seed=1)
    trials = [trial(n) for n in range(40)]
    for t in trials:
        for asha in (one, two, other_seed):
            asha.on_trial_add(None, t)
    brackets = [one.bracket_of(t.trial_id) for t in trials]
    assert brackets == [two.bracket_of(t.trial_id) for t in trials]
    assert brackets != [other_seed.bracket_of(t.trial_id) for t in trials]
    # ASHA's own weights: the bracket with the most rungs (bracket 0) is the likeliest.
    assert brackets.count(0) > brackets.count(2)
