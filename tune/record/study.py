"""Where an experiment's Optuna study lives: one rule for the run, the warm start, export and report.

By default a journal file in the experiment folder (`optuna.journal`): Optuna's JournalStorage keeps
the study in memory and appends each change to the file as one line, so an ask, a report or a tell
costs the driver about what an in-memory study costs, where SQLite spends most of each call in
SQLAlchemy. `--study-storage` takes an RDB URL (sqlite:///..., postgresql://...) or another journal
file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from mf.errors import ConfigError
from tune.record.trial_files import drop_cut_last_line

JOURNAL_FILE = "optuna.journal"


def study_location(experiment_dir: Path, study_storage: str | None = None) -> str:
    """The study's storage: `study_storage` (a URL or a journal file) if given, else the
    experiment's journal file."""
    return study_storage or str(experiment_dir / JOURNAL_FILE)


def is_url(location: str) -> bool:
    return "://" in location


def exists(location: str) -> bool:
    """Whether a study may be there: a journal or SQLite file that is on disk, or any other URL."""
    if location.startswith("sqlite:///"):
        return Path(location.removeprefix("sqlite:///")).is_file()
    return is_url(location) or Path(location).is_file()


def open_storage(location: str, *, writer: bool = False) -> optuna.storages.BaseStorage:
    """The storage at `location`. The driver opens it as the `writer`: a journal line that a killed
    driver left unfinished is cut off first, or the next change would glue onto it and damage both
    (Optuna's reader skips a cut-short last line, not a damaged one in the middle). Readers (export,
    report) must not: a live run may be writing that line."""
    if not is_url(location):
        if not Path(location).parent.is_dir():
            raise ConfigError(
                f"--study-storage: {location!r}: folder {Path(location).parent} does not exist; give a "
                "journal file in an existing folder, or an RDB URL such as sqlite:///path/study.db"
            )
        if writer:
            mend_journal(location)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(location))
    try:
        storage = optuna.storages.RDBStorage(location)
    except Exception as e:  # SQLAlchemy raises many kinds for a bad URL
        raise ConfigError(f"--study-storage: cannot open {location!r} ({type(e).__name__}: {e})") from e
    if location.startswith("sqlite:"):
        use_write_ahead_log(storage)
    return storage


def read_only(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """`storage` behind Optuna's storage interface, each read passed on and each write (`create_*`,
    `delete_*`, `set_*`) refused with PermissionError: for readers whose UI offers writes, such as
    optuna-dashboard's, on a study that a run owns."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only: the study belongs to the running experiment")

    kinds = ("get_", "check_", "create_", "delete_", "set_")  # the last three write
    methods = {
        name: staticmethod(refuse if name.startswith(kinds[2:]) else getattr(storage, name))
        for name in dir(optuna.storages.BaseStorage)
        if name.startswith(kinds)
    }
    return type("ReadOnlyStorage", (optuna.storages.BaseStorage,), methods)()


def mend_journal(location: str) -> None:
    """Before a driver appends to a journal (a new run, or a resume, whose searcher Tune unpickles
    with its storage): cut off a last line that a killed driver left unfinished."""
    if not is_url(location):
        drop_cut_last_line(Path(location))


def use_write_ahead_log(storage: optuna.storages.RDBStorage) -> None:
    """SQLite in WAL mode, synced at checkpoints: a commit is several times cheaper than in the
    default rollback journal, readers such as optuna-dashboard never block the driver, and a
    killed driver loses nothing it committed."""
    with storage.engine.connect() as connection:
        connection.execute(sqlalchemy.text("PRAGMA journal_mode=WAL"))
        connection.commit()

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _synchronous_normal(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # pooled connections reopen with the pragma


def load_experiment_study(
    folder: Path, settings: dict[str, Any], *, strict: bool = False
) -> optuna.Study | None:
    """The experiment's study, opened to read (`settings` as experiment.yaml holds them), or None
    if it has none yet.

    A journal damaged before its last line cannot be read: then None with a warning (the readers
    fall back to the trials' folders), or with `strict` (a driver about to append to it) a
    ConfigError naming the file and what to do."""
    location = study_location(folder, settings.get("study_storage"))
    if not exists(location):
        return None
    try:
        return optuna.load_study(study_name=settings["name"], storage=open_storage(location))
    except KeyError:  # the storage holds no study of that name
        return None
    except ValueError as e:  # json.JSONDecodeError: a line of the journal is damaged
        if strict:
            raise ConfigError(
                f"{location}: the study is damaged ({e}), and a resumed search would append to it; "
                f"export what there is with `python -m tune.export {folder}`, or start a new experiment"
            ) from None
        print(
            f"warning: {location} is damaged ({e}); the trials are read from their folders", file=sys.stderr
        )
        return None
