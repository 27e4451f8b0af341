"""`python -m bench.combine`: the tables of several `bench.quality --json` files, paired by seed.

A comparison that needs runs made one after the other (today's defaults and a new space, or a
search and the recipes run apart) is read from their JSON files instead of one long run. Each
argument is `LABEL=FILE`: that file's `ours` rows are shown as LABEL (its `ours-train` rows as
LABEL-train); every other tool keeps its name. The first label is the one the others are paired
against, as `bench.quality` pairs ours against each tool.

    python -m bench.combine regime=/tmp/mls-regime.json today=/tmp/mls-today.json recipes=/tmp/r.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.quality import (
    RECIPE_NAMES,
    Row,
    against_the_best_recipe,
    format_rows,
    format_summary,
    paired_differences,
)


def read_rows(label: str, path: Path) -> list[Row]:
    """The rows of one `bench.quality --json` file, its `ours` rows renamed to `label`.

    Raises SystemExit with the file's name where it is not such a file."""
    try:
        rows = [Row(**r) for r in json.loads(path.read_text())["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a bench.quality --json file ({e})") from None
    names = {"ours": label, "ours-train": f"{label}-train"}
    for row in rows:
        row.tool = names.get(row.tool, row.tool)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.combine", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", metavar="LABEL=FILE", help="a bench.quality --json file")
    args = parser.parse_args(argv)
    labelled = [spec.partition("=") for spec in args.files]
    if any(not sep or not label or not path for label, sep, path in labelled):
        parser.error("each argument is LABEL=FILE")
    rows = [row for label, _, path in labelled for row in read_rows(label, Path(path))]
    first = labelled[0][0]
    print("\n".join(format_rows(rows)))
    print("\n".join(format_summary(rows)))
    column = "test_mse" if any(r.test_mse is not None for r in rows) else "best_val_mse"
    print("\n".join(paired_differences(rows, column=column, ours=first)))
    recipes = sorted({r.tool for r in rows if r.tool in RECIPE_NAMES})
    print("\n".join(against_the_best_recipe(rows, recipes, ours=first)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
