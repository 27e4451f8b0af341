"""Where an experiment's Optuna study lives, and a journal that a killed driver left cut short."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mf.errors import ConfigError
from tune.record.study import JOURNAL_FILE, exists, open_storage, study_location

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_new_experiment_keeps_its_study_in_a_journal_file(tmp_path: Path):
    assert study_location(tmp_path) == str(tmp_path / JOURNAL_FILE)
    assert not exists(study_location(tmp_path))
    # --study-storage wins, whether an RDB URL or a journal file elsewhere.
    assert study_location(tmp_path, "sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
    assert study_location(tmp_path, "/nfs/studies/mf.journal") == "/nfs/studies/mf.journal"


def test_a_journal_in_a_missing_folder_is_refused_by_name(tmp_path: Path):
    with pytest.raises(ConfigError, match="--study-storage.*does not exist"):
        open_storage(str(tmp_path / "no" / "such" / JOURNAL_FILE), writer=True)


def study_with_two_epochs(path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(str(path), writer=True))
    trial = study.ask()
    trial.report(1.2, 1)
    trial.report(1.1, 2)


def test_the_driver_cuts_off_a_journal_line_a_kill_left_unfinished(tmp_path: Path):
    journal = tmp_path / JOURNAL_FILE
    study_with_two_epochs(journal)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # the driver died while writing epoch 2's line

    # A reader (export, report, optuna-dashboard) skips the cut line and changes nothing...
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert study.trials[0].intermediate_values == {1: 1.2}
    assert journal.read_bytes() == whole[:-7]
    # ...the resumed driver cuts it off before it appends, so every later line reads back.
    resumed = optuna.load_study(study_name="s", storage=open_storage(str(journal), writer=True))
    optuna.Trial(resumed, resumed.trials[0]._trial_id).report(1.0, 3)
    again = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert again.trials[0].intermediate_values == {1: 1.2, 3: 1.0}


def test_appending_after_a_cut_line_without_mending_loses_it_then_damages_the_journal(tmp_path: Path):
    # Why the driver mends: Optuna appends after whatever is there.
    journal = tmp_path / JOURNAL_FILE
    study_with_two_epochs(journal)
    journal.write_bytes(journal.read_bytes()[:-7])
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    trial = optuna.Trial(study, study.trials[0]._trial_id)
    trial.report(1.0, 3)  # glued onto the cut line: the pair does not parse, and is skipped
    reread = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert reread.trials[0].intermediate_values == {1: 1.2}
    with pytest.raises(ValueError):  # the next change finds the damaged line in the middle
        trial.report(0.9, 4)
