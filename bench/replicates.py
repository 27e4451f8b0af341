"""`python -m bench.replicates`: what is an exported configuration worth on a seed it was not picked on?

A search reports the lowest val MSE of hundreds of trials, each the lowest of up to max_epochs
noisy epochs, so the figure it reports is partly the configuration and partly the luck of one seed.
Here each exported configuration is trained again, unpruned, to max_epochs with `--seeds` fresh
seeds on the same data and split, and each run is read as the search reads a trial: its best epoch
by val MSE (and, where the split has a test part, the test MSE of the model kept there). That is
what a user who retrains the export gets.

An argument is one of:
  * a `bench.quality --work-dir` folder: every export in it, ours (`ours/seed*/best/`) and
    Optuna alone's (`optuna-*.json`, on the split of its `split.yaml`), paired by seed;
  * an experiment folder of `tune.run` with an export (`best/config.yaml`).

Printed per export: the val MSE the search picked it on; over the fresh seeds the median, lowest
and highest best val MSE, how many reached the search's figure, and the median test MSE; then, per
tool, the median and worst over its exports of the fresh median.

    python -m bench.replicates /tmp/quality-work --json replicates.json
    python -m bench.replicates runs/ml-latest-small --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import DEFAULT_DATA
from bench.optuna_alone import trial_config
from mf.config import TrainConfig, from_dict, load_config
from mf.metrics import VAL_MSE
from mf.training import Trainer, TrainingDiverged, dataset_for
from tune.export.models import SPLIT_KEYS
from tune.settings import read_experiment, recorded_settings


@dataclass(frozen=True)
class Export:
    tool: str
    """"ours" or "optuna" (Optuna alone)."""
    seed: int | None
    """The search's --seed, where known."""
    config: TrainConfig
    """The exported configuration, trained for its own length (its tuned epochs, or the search's max_epochs)."""
    search_val_mse: float
    """The val MSE the search picked it on: its trial's best, on the trial's own seed."""
    source: str
    group: str
    """What it is summarised with: the exports of one bench.quality work dir, or all experiment
    folders given on their own."""


@dataclass
class Replicates:
    export: Export
    val_mse: list[float] = field(default_factory=list)
    """Per fresh seed: the best epoch's val MSE (inf where training diverged)."""
    test_mse: list[float] = field(default_factory=list)
    """Per fresh seed: the test MSE at that epoch (empty without a test part)."""

    @property
    def median(self) -> float:
        return statistics.median(self.val_mse)


def ours(folder: Path, group: Path, seed: int | None = None) -> Export:
    metrics = json.loads((folder / "best" / "metrics.json").read_text())
    max_epochs = recorded_settings(read_experiment(folder)).max_epochs
    # Judged as the search judged it: one run trained on the training part, read at its best epoch
    # on val. Its own length: the span of its schedule (its tuned epochs, or max_epochs).
    exported = load_config(folder / "best" / "config.yaml")
    config = exported.replace(epochs=exported.schedule_epochs or max_epochs, train_on="train", ensemble=1)
    search = metrics.get("search_best_val_mse") or metrics[VAL_MSE]
    return Export("ours", seed, config, float(search), str(folder), str(group))


def optuna_alone(record: Path, data: str, max_epochs: int) -> Export:
    """Optuna alone's export, on the split bench.quality gave it (split.yaml beside the record)."""
    best = json.loads(record.read_text())["best"]
    split = yaml.safe_load((record.parent / "split.yaml").read_text())
    base = from_dict({**split, "data": data}, where=str(record.parent / "split.yaml"))
    seed = int(record.stem.split("-")[-1])
    config = trial_config(base, best["params"], max_epochs)
    return Export("optuna", seed, config, float(best[VAL_MSE]), str(record), str(record.parent))


def exports_in(path: Path, *, data: str, max_epochs: int) -> list[Export]:
    if (path / "best" / "config.yaml").is_file():
        return [ours(path, Path("the experiment folders given"))]
    if (path / "split.yaml").is_file():
        found = [
            ours(folder, path, int(folder.name.removeprefix("seed")))
            for folder in sorted(path.glob("ours/seed*"))
            if (folder / "best" / "config.yaml").is_file()
        ]
        found += [optuna_alone(r, data, max_epochs) for r in sorted(path.glob("optuna-*.json"))]
        if found:
            return found
    raise SystemExit(
        f"error: {path}: neither an experiment folder with an export (best/config.yaml) nor a "
        "bench.quality --work-dir folder (split.yaml with ours/seed*/best/ or optuna-*.json)"
    )


def dataset_of(config: TrainConfig, datasets: dict[tuple, Any]) -> Any:
    """`config`'s data and split, loaded once per distinct split (`datasets` is the cache): the
    split keys the export's reference uses, with the seed that splits in place of the two seeds."""
    key = tuple(getattr(config, k) for k in SPLIT_KEYS if k not in ("seed", "split_seed"))
    key += (config.effective_split_seed,)
    if key not in datasets:
        datasets[key] = dataset_for(config)
    return datasets[key]


def replicate(export: Export, seeds: list[int], datasets: dict[tuple, Any]) -> Replicates:
    """The export trained once per fresh seed, each run read at its best epoch by val MSE."""
    c = export.config
    dataset = dataset_of(c, datasets)
    out = Replicates(export)
    for seed in seeds:
        trainer = Trainer(c.replace(seed=seed), dataset)
        with contextlib.suppress(TrainingDiverged):  # a diverged run keeps its best epoch so far
            trainer.fit()
        if trainer.best is None:
            out.val_mse.append(float("inf"))
            continue
        out.val_mse.append(trainer.best.val_mse)
        if dataset.test is not None:
            trainer.rewind_to_best()
            out.test_mse.append(trainer.evaluate("test")["mse"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicates", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="bench.quality work dirs or experiment folders")
    parser.add_argument(
        "--seeds", default="100,101,102,103,104,105,106,107", help="fresh seeds (default 100-107)"
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="Optuna alone's data (bench.quality's --data)")
    parser.add_argument("--max-epochs", type=int, default=30, help="Optuna alone's max_epochs (default 30)")
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    exports = [e for p in args.paths for e in exports_in(p, data=args.data, max_epochs=args.max_epochs)]
    print(f"bench.replicates: {len(exports)} exports x {len(seeds)} fresh seeds {seeds}, unpruned")
    print(
        f"{'tool':7} {'seed':>4} {'search':>7} {'median':>7} {'lowest':>7} {'highest':>7} {'reached':>7} {'test':>7}"
    )
    datasets: dict[tuple, Any] = {}
    results = []
    for export in exports:
        r = replicate(export, seeds, datasets)
        results.append(r)
        test = f"{statistics.median(r.test_mse):7.4f}" if r.test_mse else f"{'-':>7}"
        reached = sum(v <= export.search_val_mse for v in r.val_mse)
        print(
            f"{export.tool:7} {export.seed if export.seed is not None else '-':>4} {export.search_val_mse:7.4f}"
            f" {r.median:7.4f} {min(r.val_mse):7.4f} {max(r.val_mse):7.4f} {reached:>3}/{len(seeds):<3} {test}",
            flush=True,
        )
    for group in dict.fromkeys((r.export.group, r.export.tool) for r in results):
        mine = [r for r in results if (r.export.group, r.export.tool) == group]
        tool = group[1]
        fresh = [r.median for r in mine]
        line = (
            f"{tool:7} fresh median best val: median {statistics.median(fresh):.4f}, worst {max(fresh):.4f}"
        )
        luck = statistics.median(r.median - r.export.search_val_mse for r in mine)
        line += f"; fresh minus search, median {luck:+.4f}"
        if all(r.test_mse for r in mine):
            tests = [statistics.median(r.test_mse) for r in mine]
            line += f"; test: median {statistics.median(tests):.4f}, worst {max(tests):.4f}"
        print(line + f" ({len(mine)} exports of {group[0]})")
    if args.json:
        rows = [
            {**asdict(r), "export": {**asdict(r.export), "config": r.export.config.to_dict()}}
            for r in results
        ]
        args.json.write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
