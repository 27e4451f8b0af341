"""The search's end under a time budget: it keeps what confirming its best will take, no more."""

from __future__ import annotations

import pickle

import pytest

from tune.search.reserve import ConfirmationReserve


def reserve(**overrides) -> ConfirmationReserve:
    settings = {"budget_s": 300.0, "most_s": 60.0, "top": 2, "seeds": 3, "slots": 2, "max_epochs": 10}
    return ConfirmationReserve(**(settings | overrides))


def report(
    stopper: ConfirmationReserve, trial_id: str, val_mse: float, epoch_seconds: float, **config
) -> None:
    stopper(
        trial_id, {"val_mse": val_mse, "epoch_seconds": epoch_seconds, "config": config or {"lr": val_mse}}
    )


def estimate(stopper: ConfirmationReserve) -> float:
    stopper.stop_all()
    return stopper.reserve_s()


# The rule, by hand: the confirmation's start (10 s), then a quarter more than the read-back (5 ms a
# trial) and the candidates' runs (seeds x max_epochs x median epoch, over the slots).


def test_before_any_result_only_the_confirmations_start_is_kept():
    assert estimate(reserve()) == 10.0


def test_the_best_distinct_configurations_runs_are_kept_spread_over_the_slots():
    stopper = reserve()
    report(stopper, "a", 0.84, 0.2, lr=0.01)  # best: 10 epochs of 0.2 s
    report(stopper, "b", 0.85, 0.2, lr=0.01)  # the same configuration again: not a second candidate
    report(stopper, "c", 0.86, 0.5, lr=0.02)  # second: 10 epochs of 0.5 s
    report(stopper, "d", 0.90, 9.0, lr=0.03)  # outside the top 2: its cost does not count
    # 10 s + 1.25 x (4 trials x 5 ms + 3 seeds x (2 s + 5 s) / 2 slots)
    assert estimate(stopper) == pytest.approx(23.15)


def test_a_trial_is_costed_at_its_median_epoch_and_ranked_by_its_best():
    stopper = reserve(top=1)
    for val_mse, seconds in [(0.95, 0.1), (0.84, 0.3), (0.88, 5.0)]:
        report(stopper, "a", val_mse, seconds, lr=0.01)
    report(stopper, "b", 0.85, 1.0, lr=0.02)
    # a's median epoch 0.3 s: 10 s + 1.25 x (2 trials x 5 ms + 3 seeds x 3 s / 2 slots)
    assert estimate(stopper) == pytest.approx(15.6375)


def test_a_configuration_that_trains_its_own_epochs_is_costed_at_them():
    stopper = reserve(top=1)
    report(stopper, "a", 0.84, 0.2, lr=0.01, epochs=4)  # the space tunes the training length
    # A confirmation run trains its 4 epochs, not max_epochs' 10:
    # 10 s + 1.25 x (1 trial x 5 ms + 3 seeds x 4 x 0.2 s / 2 slots)
    assert estimate(stopper) == pytest.approx(11.50625)


def test_the_search_always_keeps_the_rest_of_the_budget():
    stopper = reserve(most_s=20.0)
    report(stopper, "slow", 0.84, 30.0)  # one run would take 300 s
    assert estimate(stopper) == 20.0


def test_the_search_ends_when_the_time_left_is_the_reserve(monkeypatch: pytest.MonkeyPatch):
    clock = [1000.0]
    monkeypatch.setattr("tune.search.reserve.time.time", lambda: clock[0])
    stopper = reserve(budget_s=100.0)  # the budget's clock starts here
    report(stopper, "a", 0.84, 1.0)
    # 10 s + 1.25 x (1 trial x 5 ms + 3 seeds x 10 s / 2 slots)
    kept = 28.75625
    clock[0] += 100.0 - kept - 0.5
    assert not stopper.stop_all()
    clock[0] += 1.0
    assert stopper.stop_all()


def test_a_restored_search_counts_its_budget_again(monkeypatch: pytest.MonkeyPatch):
    clock = [1000.0]
    monkeypatch.setattr("tune.search.reserve.time.time", lambda: clock[0])
    stopper = reserve(budget_s=100.0)
    clock[0] += 95.0
    assert stopper.stop_all()
    restored = pickle.loads(pickle.dumps(stopper))  # as Tuner.restore brings it back
    assert not restored.stop_all()
