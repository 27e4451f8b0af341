"""When a trial may train its next epoch before the driver has handled its last report, and which
epochs a trial trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.search.scheduler import PersistentASHA
from tune.search.trainable import RunAhead
from tune.settings import ExperimentSettings


@pytest.mark.parametrize(
    ("max_epochs", "grace_period", "reduction_factor"),
    [(30, 2, 3), (18, 2, 3), (4, 1, 2), (27, 1, 3), (100, 4, 4), (5, 5, 2), (10, 3, 2)],
)
def test_decision_epochs_are_where_asha_may_stop_a_trial(
    tmp_path: Path, max_epochs: int, grace_period: int, reduction_factor: int
):
    settings = ExperimentSettings(
        max_epochs=max_epochs, grace_period=grace_period, reduction_factor=reduction_factor
    )
    asha = PersistentASHA(
        state_path=tmp_path / "asha.json",
        time_attr="epoch",
        metric="val_mse",
        mode="min",
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
    # ASHA compares trials at its rungs and stops every trial at max_t; after any other epoch it
    # says CONTINUE, which is what lets a trial train the next epoch early.
    assert settings.decision_epochs == frozenset(asha.rungs) | {max_epochs}


def test_run_ahead_waits_after_a_decision_epoch_and_after_a_slow_epoch():
    run_ahead = RunAhead(decision_epochs=frozenset({2, 6, 18, 30}), max_epoch_s=1.0)
    assert run_ahead.allowed(1, 0.02)
    assert run_ahead.allowed(5, 0.02)
    # ASHA may stop the trial after epoch 2: its next epoch waits for that decision.
    assert not run_ahead.allowed(2, 0.02)
    assert not run_ahead.allowed(30, 0.02)
    # A slow epoch gains nothing from running ahead, and would hold up a stop by the time budget.
    assert not run_ahead.allowed(5, 1.5)


def test_a_trial_trains_its_own_epochs_if_the_space_tunes_them_and_its_schedule_spans_them():
    from mf.config import TrainConfig
    from tune.settings import trial_config, trial_epochs

    base = TrainConfig(lr_schedule="one-cycle")
    # Not tuned: ASHA's max epochs, which the schedule spans.
    assert (trial_config(base, {"lr": 0.01}, 30).epochs, trial_config(base, {}, 30).schedule_epochs) == (
        30,
        30,
    )
    # Tuned: the trial's own, at most max epochs; its schedule spans them.
    own = trial_config(base, {"lr": 0.01, "epochs": 5}, 30)
    assert (own.epochs, own.schedule_epochs, own.lr) == (5, 5, 0.01)
    assert trial_epochs({"epochs": 50}, 30) == trial_config(base, {"epochs": 50}, 30).epochs == 30
    # A schedule span the base sets stays.
    assert trial_config(base.replace(schedule_epochs=8), {"epochs": 5}, 30).schedule_epochs == 8


def test_own_trial_seeds_are_fixed_by_the_parameters_and_keep_the_split():
    from mf.config import TrainConfig
    from mf.errors import ConfigError
    from tune.settings import trial_config

    base = TrainConfig(seed=3, split="random")
    a, b = {"lr": 0.05, "emb_dim": 16}, {"lr": 0.0500001, "emb_dim": 16}
    # Own (the default): a seed from the experiment's seed and the parameters, the same on every
    # call (a resumed trial, the export), another for other parameters or another experiment seed ...
    assert ExperimentSettings().trial_seed == "own"
    own = trial_config(base, a, 30, own_seed=True)
    assert own.seed == trial_config(base, dict(reversed(a.items())), 30, own_seed=True).seed
    assert own.seed != trial_config(base, b, 30, own_seed=True).seed
    assert own.seed != trial_config(base.replace(seed=4), a, 30, own_seed=True).seed
    assert len({trial_config(base, {"lr": x / 100}, 30, own_seed=True).seed for x in range(1, 101)}) == 100
    # ... while the random split stays the experiment's, as the confirmation keeps it.
    assert own.split_seed == 3 and own.lr == 0.05 and own.epochs == 30
    # Shared: every trial trains with the experiment's seed.
    assert trial_config(base, a, 30).seed == trial_config(base, b, 30).seed == 3
    assert ExperimentSettings(trial_seed="shared").trial_seed == "shared"
    with pytest.raises(ConfigError, match="--trial-seed: 'mine' must be one of shared, own"):
        ExperimentSettings(trial_seed="mine")


def test_an_experiment_yaml_from_another_version_is_refused_by_key():
    from mf.errors import ConfigError
    from tune.settings import recorded_settings

    # What a run recorded is what its resume and export do.
    for value in ("own", "shared"):
        recorded = {"settings": ExperimentSettings(trial_seed=value).to_dict()}
        assert recorded_settings(recorded).trial_seed == value
    # A key this version lacks (a newer one's) or a key missing (an older one's, whose run may have
    # done what today's default does not) is named, not guessed.
    newer = {"settings": {**ExperimentSettings().to_dict(), "warp": 9}}
    with pytest.raises(ConfigError, match="settings: 'warp' unknown to this mf-tune"):
        recorded_settings(newer)
    older = {"settings": {k: v for k, v in ExperimentSettings().to_dict().items() if k != "ensemble"}}
    with pytest.raises(ConfigError, match="settings: 'ensemble' missing .written by an older mf-tune"):
        recorded_settings(older)


def test_an_epoch_is_a_pass_up_to_a_million_ratings_and_a_whole_fraction_of_one_beyond():
    from tune.settings import epoch_ratings_for

    # ml-latest-small and ml-100k: a pass (0).
    assert epoch_ratings_for(94_736) == epoch_ratings_for(1_000_000) == 0
    # 9M ratings: 9 epochs a pass, of 1M; 20M + 1: 21 epochs a pass, of 952,381 (21 x 952,381 is 20M + 1).
    assert epoch_ratings_for(9_000_000) == 1_000_000
    assert epoch_ratings_for(20_000_001) == 952_381
    assert epoch_ratings_for(20_000_002) == 952_382  # the last epoch of the pass is a rating short
