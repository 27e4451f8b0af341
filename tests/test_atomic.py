"""Atomic writes: a reader sees the old file or folder or the new one, whole, and never none."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

from mf.atomic import replace_folder, write_json


def make_export(path: Path, version: int) -> Path:
    path.mkdir()
    for name in ("config.yaml", "metrics.json", "model.pt"):
        (path / name).write_text(f"{version}\n" * 1000)
    return path


def test_a_folder_is_replaced_whole_and_the_old_one_removed(tmp_path: Path):
    target = make_export(tmp_path / "best", 1)
    replace_folder(make_export(tmp_path / "staging", 2), target)
    assert {p.read_text() for p in target.iterdir()} == {"2\n" * 1000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging, nothing aside


def test_a_folder_is_moved_in_where_there_was_none(tmp_path: Path):
    replace_folder(make_export(tmp_path / "staging", 1), tmp_path / "best")
    assert (tmp_path / "best" / "model.pt").read_text() == "1\n" * 1000


def _watch(target: str, stop: float, seen: multiprocessing.Queue) -> None:
    missing = torn = reads = 0
    while time.time() < stop:
        try:
            for name in ("config.yaml", "metrics.json", "model.pt"):
                lines = (Path(target) / name).read_text().splitlines()
                torn += len(lines) != 1000 or len(set(lines)) != 1
                reads += 1
        except FileNotFoundError:
            missing += 1
    seen.put((missing, torn, reads))


def test_a_reader_never_finds_the_folder_missing_while_it_is_replaced_again_and_again(tmp_path: Path):
    target = make_export(tmp_path / "best", 0)
    stop = time.time() + 3.0
    seen: multiprocessing.Queue = multiprocessing.Queue()
    reader = multiprocessing.get_context("fork").Process(target=_watch, args=(str(target), stop, seen))
    reader.start()
    version = 0
    while time.time() < stop:
        version += 1
        replace_folder(make_export(tmp_path / f"staging-{version}", version), target)
    missing, torn, reads = seen.get(timeout=10)
    reader.join()
    assert version > 50 and reads > 100
    assert missing == 0  # a reader between two renames would have found no folder
    assert torn == 0  # every file read was one version's, whole


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path: Path):
    path = write_json(tmp_path / "params.json", {"lr": 0.01})
    pid = os.fork()
    if pid == 0:  # the child starts a large write and is killed in the middle of it
        write_json(path, {"lr": [0.02] * 5_000_000})
        os._exit(0)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    # The old content or the new, whole: json.loads fails on half a file.
    assert json.loads(path.read_text()) in ({"lr": 0.01}, {"lr": [0.02] * 5_000_000})
