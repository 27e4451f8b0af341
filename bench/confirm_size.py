"""`python -m bench.confirm_size`: how many candidates and seeds should the confirmation take?

The confirmation (tune.confirmation) trains the search's top `confirm_top` configurations again with
`confirm_seeds` fresh seeds and exports the one with the best mean. This replays it on finished
experiments with other sizes, so every size judges the same searches (no search-to-search noise),
and then trains each size's pick with `--fresh` seeds that no size saw (bench.replicates): the val
MSE a user who retrains the export can expect, and its test MSE where the split has one. Size 0x0
is no confirmation: the search's best trial.

An argument is an experiment folder of `tune.run`, or a `bench.quality --work-dir` folder (its
`ours/seed*` experiments).

    python -m bench.confirm_size /tmp/quality-work --sizes 0x0,5x3,10x3,5x5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from bench.replicates import Export, Replicates, dataset_of, replicate
from mf.config import from_dict
from tune.confirmation import Candidate, candidates, confirm, confirmation_seeds, ranked, run_config
from tune.results import collect_trials
from tune.settings import read_experiment, recorded_settings
from tune.study_storage import load_experiment_study
from tune.trainable import confirmation_run


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "0x0,5x3" -> [(0, 0), (5, 3)]: candidates x seeds; 0x0 is the search's best trial."""
    sizes = []
    for part in text.split(","):
        top, _, seeds = part.partition("x")
        if not (top.isdigit() and seeds.isdigit()) or (int(top) == 0) != (int(seeds) == 0):
            raise SystemExit(f"error: --sizes: {part!r} is not TOPxSEEDS (both > 0, or 0x0)")
        sizes.append((int(top), int(seeds)))
    return sizes


def experiments_in(path: Path) -> list[Path]:
    if (path / "experiment.yaml").is_file():
        return [path]
    found = sorted(p for p in path.glob("ours/seed*") if (p / "experiment.yaml").is_file())
    if not found:
        raise SystemExit(
            f"error: {path}: neither an experiment folder nor a bench.quality --work-dir with ours/seed*"
        )
    return found


def replay(
    folder: Path, sizes: list[tuple[int, int]], fresh: list[int], datasets: dict[tuple, Any]
) -> list[dict[str, Any]]:
    """Each size's pick on `folder`'s search, and what it is worth on the fresh seeds."""
    experiment = read_experiment(folder)
    settings = recorded_settings(experiment)
    base = from_dict(experiment["base_config"], where=f"{folder} experiment.yaml (base_config)")
    study = load_experiment_study(folder, settings.to_dict())
    records = collect_trials(folder, max_epochs=settings.max_epochs, study=study)
    pool = candidates(records, max(top for top, _ in sizes) or 1)
    seeds = confirmation_seeds(base.seed, max(n for _, n in sizes))
    curves: dict[tuple[str, int], dict[int, float]] = {}
    worth: dict[str, Replicates] = {}
    rows = []
    for top, n in sizes:
        if top == 0:
            pick, mean = pool[0], None
        else:
            confirmed = []
            for c in pool[:top]:
                for seed in seeds[:n]:
                    if (c.trial_id, seed) not in curves:
                        config = run_config(base, c, seed=seed, max_epochs=settings.max_epochs)
                        data = dataset_of(config, datasets)
                        curves[c.trial_id, seed] = confirmation_run(
                            config, data, torch.get_num_threads(), None
                        )
                result = confirm(c, {s: curves[c.trial_id, s] for s in seeds[:n]})
                if result is not None:
                    confirmed.append(result)
            best = ranked(confirmed)[0]  # the confirmation's own winner rule
            pick, mean = next(c for c in pool if c.trial_id == best.trial_id), best.mean
        if pick.trial_id not in worth:
            worth[pick.trial_id] = replicate(
                export_of(folder, base, pick, settings.max_epochs), fresh, datasets
            )
        r = worth[pick.trial_id]
        rows.append(
            {
                "folder": str(folder),
                "size": f"{top}x{n}",
                "trial_id": pick.trial_id,
                "params": pick.params,
                "search_best": pick.search_best,
                "confirmed_mean": mean,
                "fresh_val_mse": r.val_mse,
                "fresh_test_mse": r.test_mse,
            }
        )
    return rows


def export_of(folder: Path, base: Any, pick: Candidate, max_epochs: int) -> Export:
    config = run_config(base, pick, seed=base.seed, max_epochs=max_epochs)
    return Export("ours", None, config, pick.search_best, str(folder), str(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.confirm_size", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="experiment folders or bench.quality work dirs")
    parser.add_argument("--sizes", default="0x0,5x3,10x3,5x5", help="TOPxSEEDS, comma-separated (0x0: none)")
    parser.add_argument("--fresh", default="100,101,102,103,104,105,106,107", help="seeds no size saw")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    sizes, fresh = parse_sizes(args.sizes), [int(s) for s in args.fresh.split(",")]
    folders = [f for p in args.paths for f in experiments_in(p)]
    print(f"bench.confirm_size: {len(folders)} experiments, sizes {args.sizes}, {len(fresh)} fresh seeds")
    print(
        f"{'size':>5} {'search':>7} {'confirmed':>9} {'fresh val':>9} {'fresh test':>10}  trial     experiment"
    )
    rows: list[dict[str, Any]] = []
    datasets: dict[tuple, Any] = {}
    for folder in folders:
        for row in replay(folder, sizes, fresh, datasets):
            rows.append(row)
            test = (
                f"{statistics.median(row['fresh_test_mse']):10.4f}" if row["fresh_test_mse"] else f"{'-':>10}"
            )
            conf = f"{row['confirmed_mean']:9.4f}" if row["confirmed_mean"] is not None else f"{'-':>9}"
            print(
                f"{row['size']:>5} {row['search_best']:7.4f} {conf} {statistics.median(row['fresh_val_mse']):9.4f}"
                f" {test}  {row['trial_id']}  {folder}",
                flush=True,
            )
    for top, n in sizes:
        mine = [r for r in rows if r["size"] == f"{top}x{n}"]
        vals = [statistics.median(r["fresh_val_mse"]) for r in mine]
        line = f"{top}x{n}: fresh val median {statistics.median(vals):.4f}, worst {max(vals):.4f}"
        if all(r["fresh_test_mse"] for r in mine):
            tests = [statistics.median(r["fresh_test_mse"]) for r in mine]
            line += f"; fresh test median {statistics.median(tests):.4f}, worst {max(tests):.4f}"
        print(line + f" ({len(mine)} experiments, {top * n} confirmation runs each)")
    if args.json:
        args.json.write_text(json.dumps({"sizes": args.sizes, "fresh": fresh, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
