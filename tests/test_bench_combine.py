"""bench.combine: runs made apart (two spaces, a search and the recipes) compared seed by seed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.combine import main
from bench.quality import Row


def write(path: Path, rows: list[Row]) -> Path:
    path.write_text(json.dumps({"settings": {}, "rows": [asdict(r) for r in rows]}))
    return path


def test_two_runs_of_ours_are_paired_by_seed_and_held_against_the_best_recipe(tmp_path: Path, capsys):
    new = write(
        tmp_path / "new.json", [Row("ours", s, 0.80, t) for s, t in [(0, 0.81), (1, 0.82), (2, 0.83)]]
    )
    old = write(
        tmp_path / "old.json", [Row("ours", s, 0.80, t) for s, t in [(0, 0.83), (1, 0.81), (2, 0.86)]]
    )
    recipes = write(
        tmp_path / "recipes.json",
        [Row("surprise-svd", s, None, 0.85) for s in range(3)]
        + [Row("tutorial", s, None, 0.90) for s in range(3)],
    )

    assert main([f"new={new}", f"old={old}", f"r={recipes}"]) == 0

    out = capsys.readouterr().out
    # new - old per seed: -0.02, +0.01, -0.03; the median -0.02, new lower on 2 of 3.
    assert "new - old          test_mse: median -0.0200" in out
    assert "ours lower on 2 of 3 seeds  (-0.0200, +0.0100, -0.0300)" in out
    assert (
        "the best recipe by median: surprise-svd 0.8500; ours' median 0.8200 (-0.0300), ours' worst 0.8300"
        in out
    )


def test_an_argument_without_a_label_or_a_file_that_is_not_a_quality_json_is_refused(tmp_path: Path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match="broken.json: not a bench.quality --json file"):
        main([f"a={broken}"])
