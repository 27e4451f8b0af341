"""`python -m bench.trainer`: the trainer benchmark. Speed and memory targets live here, not in tests.

1. Reference vs ours, in one process, on the same data and config: the tutorial's own loop (a
   per-row `Dataset`, a `DataLoader`, its `MFAdvanced`, AdamW, MSELoss) against `Trainer.run_epoch()`
   on the tutorial's config (`ours`: dense AdamW, as the tutorial) and on the default (`ours-lazy`:
   lazy_adamw). An epoch is timed the same way on every side: one pass over the training ratings
   plus the validation MSE. The target is ours >= 20x faster than the reference.
2. Scale: synthetic MovieLens-shaped sets (1M, 10M and 25M ratings by default, dim 32, batch 8192),
   each optimiser path (`adamw`, `sparse_adam`, `lazy_adamw`) trained on the same data in one
   process per size, epochs interleaved (adamw 1, sparse_adam 1, lazy_adamw 1, adamw 2, ...), so a
   busy neighbour slows every path alike. Printed: ratings/s per path and size, each path's cost
   per rating relative to its cost at the smallest size, the distinct rows a batch touches per
   rating, and the targets: lazy_adamw >= 5M ratings/s and >= 3x adamw at 10M, its cost per rating
   at 25M within 1.3x of that at 1M.

    python -m bench.trainer                                  # both parts, about 10 minutes on 2 idle cores
    python -m bench.trainer --sizes 1M,10M --epochs 1        # a shorter scale part
    python -m bench.trainer --skip-scale --json bench.json
    python -m bench.trainer --skip-compare --paths lazy_adamw --sizes 1M,25M
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bench import DEFAULT_DATA, REPO, data_folder
from bench.synthetic import synthetic_movielens
from mf.atomic import write_json
from mf.config import TrainConfig, tutorial_config
from mf.data import Dataset, Interactions, prepare_dataset
from mf.errors import MFError
from mf.metrics import VAL_MSE, regression_metrics
from mf.training import Trainer

TARGET_SPEEDUP = 20.0
SCALE_PATHS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw"},  # the tutorial's optimiser and weight decay
    "sparse_adam": {"optimizer": "sparse_adam", "weight_decay": 0.0, "l2": 0.05},
    "lazy_adamw": {"optimizer": "lazy_adamw"},  # the default
}
DEFAULT_PATH = "lazy_adamw"
TARGET_RATE_10M = 5e6  # ratings/s of the default path at 10M
TARGET_VS_DENSE = 3.0  # the default path against adamw at 10M, same run
TARGET_COST_GROWTH = 1.3  # the default path's cost per rating at 25M against 1M


# ------------------------------------------------------------------ the tutorial, written out as it is
class MovieDataset(TorchDataset):
    """The tutorial's Dataset: per row `((user, item), rating)` as numpy scalars; default_collate batches them."""

    def __init__(self, part: Interactions) -> None:
        self.x_user_movie = list(zip(part.users, part.items, strict=True))
        self.y_rating = np.asarray(part.ratings, dtype=np.float64)  # pandas' float64 column in the tutorial

    def __len__(self) -> int:
        return len(self.y_rating)

    def __getitem__(self, idx: int) -> tuple[tuple[Any, Any], Any]:
        return self.x_user_movie[idx], self.y_rating[idx]


class TensorRowsDataset(MovieDataset):
    """The same rows as 0-d tensors, a common way to write such a Dataset; batching them costs ~4x more."""

    def __init__(self, part: Interactions) -> None:
        self.users = torch.from_numpy(np.asarray(part.users, dtype=np.int64))
        self.items = torch.from_numpy(np.asarray(part.items, dtype=np.int64))
        self.y_rating = torch.from_numpy(np.asarray(part.ratings, dtype=np.float64))

    def __getitem__(self, idx: int) -> tuple[tuple[Any, Any], Any]:
        return (self.users[idx], self.items[idx]), self.y_rating[idx]


def sigmoid_range(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Sigmoid function with range (low, high)."""
    return torch.sigmoid(x) * (high - low) + low


class TutorialMF(nn.Module):
    """The tutorial's MFAdvanced: embeddings, biases as indexed Parameters, offset, sigmoid_range."""

    def __init__(self, num_users: int, num_items: int, emb_dim: int, init: bool, bias: bool, sigmoid: bool):
        super().__init__()
        self.bias = bias
        self.sigmoid = sigmoid
        self.user_emb = nn.Embedding(num_users, emb_dim)
        self.item_emb = nn.Embedding(num_items, emb_dim)
        if bias:
            self.user_bias = nn.Parameter(torch.zeros(num_users))
            self.item_bias = nn.Parameter(torch.zeros(num_items))
            self.offset = nn.Parameter(torch.zeros(1))
        if init:
            self.user_emb.weight.data.uniform_(0.0, 0.05)
            self.item_emb.weight.data.uniform_(0.0, 0.05)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        user_emb = self.user_emb(user)
        item_emb = self.item_emb(item)
        element_product = (user_emb * item_emb).sum(1)
        if self.bias:
            user_b = self.user_bias[user]
            item_b = self.item_bias[item]
            element_product += user_b + item_b + self.offset
        if self.sigmoid:
            return sigmoid_range(element_product, 0, 5.5)
        return element_product


class ReferenceRun:
    """The tutorial's training loop and validation, one epoch per `epoch()` call."""

    def __init__(
        self, dataset: Dataset, device: torch.device, rows: type[MovieDataset] = MovieDataset
    ) -> None:
        torch.manual_seed(0)
        self.device = device
        # The tutorial passes num_workers=4; on 2 cores that re-forks 4 workers every epoch and ran 2.5x
        # slower than in-process loading, so the reference loads in-process (the faster baseline).
        self.dl_train = DataLoader(rows(dataset.train), batch_size=8192, shuffle=True)
        self.dl_val = DataLoader(rows(dataset.val), batch_size=8192, shuffle=True)
        self.mdl = TutorialMF(
            dataset.n_users, dataset.n_items, emb_dim=32, init=True, bias=True, sigmoid=True
        )
        self.mdl.to(device)
        self.opt = torch.optim.AdamW(self.mdl.parameters(), lr=0.005)
        self.loss_fn = nn.MSELoss()

    def epoch(self) -> float:
        device, mdl, opt = self.device, self.mdl, self.opt
        train_losses = []
        mdl.train()
        for xb, yb in self.dl_train:
            x_user = xb[0].to(device, dtype=torch.long)
            x_item = xb[1].to(device, dtype=torch.long)
            y_ratings = yb.to(device, dtype=torch.float)
            preds = mdl(x_user, x_item)
            loss = self.loss_fn(preds, y_ratings)
            train_losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self.validate()

    def validate(self) -> float:
        """As the tutorial runs it (no torch.no_grad, no F1 here), but the MSE over all of val rather than
        a mean of batch means (val is one batch here, so the two agree)."""
        self.mdl.eval()
        lpreds, lratings = [], []
        for xb, yb in self.dl_val:
            x_user = xb[0].to(self.device, dtype=torch.long)
            x_item = xb[1].to(self.device, dtype=torch.long)
            lpreds.append(self.mdl(x_user, x_item))
            lratings.append(yb.to(self.device, dtype=torch.float))
        return self.loss_fn(torch.cat(lpreds), torch.cat(lratings)).item()


class OursRun:
    """`Trainer.run_epoch()`, which trains one pass and computes the validation metrics itself."""

    def __init__(self, dataset: Dataset, device: torch.device, *, data: str, lazy: bool = False) -> None:
        config = TrainConfig(data=data) if lazy else tutorial_config(data=data)
        self.trainer = Trainer(config, dataset, device=device.type)

    def epoch(self) -> float:
        return self.trainer.run_epoch()[VAL_MSE]

    def validate(self) -> float:
        part = self.trainer.val_part
        return regression_metrics(part.ratings.cpu().numpy(), self.trainer.predict_part(part))["mse"]


def timed(fn: Callable[[], float]) -> tuple[float, float, float]:
    """Wall seconds, process CPU seconds (every thread, so it can exceed the wall time) and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def summary(run: dict[str, list[float]]) -> dict[str, float]:
    return {
        "mean_s": statistics.fmean(run["epoch_s"]),
        "median_s": statistics.median(run["epoch_s"]),
        "min_s": min(run["epoch_s"]),
        "cpu_median_s": statistics.median(run["epoch_cpu_s"]),
        "val_median_s": statistics.median(run["val_s"]),
        "final_val_mse": run["val_mse"][-1],
    }


def compare(data: Path, *, epochs: int, device: torch.device) -> dict[str, Any]:
    """Epochs interleaved (reference 1, ref-tensors 1, ours 1, reference 2, ...) so that a load spike on a
    shared machine hits every side rather than one."""
    dataset = prepare_dataset(data)
    print(
        f"== reference (tutorial loop) vs ours (Trainer.run_epoch), {dataset.source}: train {len(dataset.train):,}"
        f" / val {len(dataset.val):,}, {epochs} epochs, device {device}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "   epoch = one pass over train + the val MSE, on every side, epochs interleaved; cpu s: process CPU"
        " time; val s: that validation alone, timed again apart; ref-tensors: the reference with 0-d tensor rows"
    )
    runs: dict[str, ReferenceRun | OursRun] = {
        "reference": ReferenceRun(dataset, device),
        "ref-tensors": ReferenceRun(dataset, device, rows=TensorRowsDataset),
        "ours": OursRun(dataset, device, data=str(data)),
        "ours-lazy": OursRun(dataset, device, data=str(data), lazy=True),
    }
    logs: dict[str, dict[str, list[float]]] = {
        n: {"epoch_s": [], "epoch_cpu_s": [], "val_s": [], "val_mse": []} for n in runs
    }
    for _ in range(epochs):
        for name, run in runs.items():
            wall, cpu, mse = timed(run.epoch)
            val_wall, _, _ = timed(run.validate)
            for key, value in zip(logs[name], (wall, cpu, val_wall, mse), strict=True):
                logs[name][key].append(value)
    rows = {name: summary(log) for name, log in logs.items()}
    print(
        f"   {'':11} {'mean s':>8} {'median s':>8} {'min s':>8} {'cpu s':>8} {'val s':>8} {'final val MSE':>14}"
    )
    for name, s in rows.items():
        print(
            f"   {name:11} {s['mean_s']:8.4f} {s['median_s']:8.4f} {s['min_s']:8.4f} {s['cpu_median_s']:8.4f}"
            f" {s['val_median_s']:8.4f} {s['final_val_mse']:14.4f}"
        )
    ratio = {
        f"{ref}/{ours} {k}": rows[ref][k] / rows[ours][k]
        for ref in ("reference", "ref-tensors")
        for ours in ("ours", "ours-lazy")
        for k in ("median_s", "mean_s", "cpu_median_s")
    }
    met = "met" if ratio["reference/ours median_s"] >= TARGET_SPEEDUP else "NOT met"
    for ref in ("reference", "ref-tensors"):
        for ours in ("ours", "ours-lazy"):
            key = f"{ref}/{ours}"
            print(
                f"   {key}: {ratio[f'{key} median_s']:.1f}x on the median, {ratio[f'{key} mean_s']:.1f}x"
                f" on the mean, {ratio[f'{key} cpu_median_s']:.1f}x on CPU time"
                + (
                    f" (target >= {TARGET_SPEEDUP:.0f}x on the median: {met})"
                    if key == "reference/ours"
                    else ""
                )
            )
    for name, log in logs.items():
        print(f"   per-epoch s, {name + ':':12} {' '.join(f'{t:.3f}' for t in log['epoch_s'])}")
    print(f"   load average at the end {os.getloadavg()[0]:.2f}")
    return {
        "data": dataset.source,
        "train": len(dataset.train),
        "val": len(dataset.val),
        "epochs": epochs,
        "runs": logs,
        "summary": rows,
        "ratio": ratio,
    }


# ------------------------------------------------------------------ scale: synthetic MovieLens-shaped data
def _memory_mb() -> dict[str, float]:
    """Current and peak resident set (MB) from /proc; empty where there is no /proc (not Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {line.split(":")[0]: line.split()[1] for line in lines if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss": int(fields["VmRSS"]) / 1024, "peak": int(fields["VmHWM"]) / 1024}


def run_scale_size(n_ratings: int, *, paths: list[str], epochs: int) -> dict[str, Any]:
    """One size: the data generated once, a trainer per path, their epochs interleaved."""
    started = time.perf_counter()
    dataset = synthetic_movielens(n_ratings)
    generate_s = time.perf_counter() - started
    gc.collect()
    before = _memory_mb()
    trainers: dict[str, Trainer] = {}
    init: dict[str, dict[str, float]] = {}
    for path in paths:
        rss = _memory_mb().get("rss", float("nan"))
        started = time.perf_counter()
        trainers[path] = Trainer(TrainConfig(data=dataset.source, **SCALE_PATHS[path]), dataset)
        init[path] = {
            "seconds": time.perf_counter() - started,
            "mb": _memory_mb().get("rss", float("nan")) - rss,
        }
    rows: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    for _ in range(epochs):
        for path, trainer in trainers.items():
            seconds, cpu_s, mse = timed(lambda t=trainer: t.run_epoch()[VAL_MSE])
            rows[path].append(
                {
                    "seconds": seconds,
                    "cpu_s": cpu_s,
                    "ratings_per_s": len(dataset.train) / seconds,
                    "val_mse": mse,
                }
            )
    return {
        "ratings": n_ratings,
        "train": len(dataset.train),
        "users": dataset.n_users,
        "items": dataset.n_items,
        "generate_s": generate_s,
        "rows_per_rating": rows_per_rating(dataset.train, batch_size=TrainConfig().batch_size),
        "data_rss_mb": before.get("rss", float("nan")),
        "init": init,
        "epochs": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "device": str(next(iter(trainers.values())).device),
        "load_average": os.getloadavg()[0],
    }


def rows_per_rating(part: Interactions, *, batch_size: int, batches: int = 20) -> float:
    """Distinct user and item rows a uniformly drawn batch touches, per rating in it: the work of a
    row-sparse step that no cache helps with, which grows with the tables at a fixed batch size."""
    rng = np.random.default_rng(0)
    touched = []
    for _ in range(batches):
        batch = rng.integers(0, len(part), min(batch_size, len(part)))
        touched.append((len(np.unique(part.users[batch])) + len(np.unique(part.items[batch]))) / len(batch))
    return float(np.mean(touched))


def _rate(size: dict[str, Any], path: str) -> float:
    """A path's ratings/s at one size: its fastest epoch (the first pays page faults and warm-up)."""
    return max(e["ratings_per_s"] for e in size["epochs"][path])


def scale(*, sizes: list[int], paths: list[str], epochs: int) -> dict[str, Any]:
    """Each size in a fresh `python -m bench.trainer --only-size N`, so its memory is its own."""
    results: list[dict[str, Any]] = []
    for n in sizes:
        cmd = [sys.executable, "-m", "bench.trainer", "--only-size", str(n), "--paths", ",".join(paths)]
        cmd += ["--epochs", str(epochs)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise MFError(f"scale size {n:,}: `{' '.join(cmd)}` failed:\n{done.stderr.strip()[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"\n== scale: synthetic MovieLens-shaped (bench/synthetic.py), dim 32, batch 8192, {epochs} epoch(s)"
        f" per path, epochs interleaved, device {results[0]['device']}, {results[0]['threads']} threads"
    )
    print(
        f"   {'size':>6} {'users':>8} {'items':>8} {'path':12} {'ratings/s':>11} {'epoch s':>8} {'cpu s':>8}"
        f" {'val MSE':>8} {'init s':>7} {'+MB':>6} {'cost/rating vs smallest':>24}"
    )
    first = results[0]
    for size in results:
        for path in paths:
            best = max(size["epochs"][path], key=lambda e: e["ratings_per_s"])
            growth = _rate(first, path) / _rate(size, path)
            print(
                f"   {_short(size['ratings']):>6} {size['users']:8,} {size['items']:8,} {path:12}"
                f" {best['ratings_per_s']:11,.0f} {best['seconds']:8.2f} {best['cpu_s']:8.2f}"
                f" {size['epochs'][path][-1]['val_mse']:8.4f} {size['init'][path]['seconds']:7.2f}"
                f" {size['init'][path]['mb']:6.0f} {growth:23.2f}x"
            )
        print(
            f"   {'':>6} peak RSS {size['peak_rss_mb']:,.0f} MB, load average {size['load_average']:.2f}, "
            f"a batch touches {size['rows_per_rating']:.2f} distinct rows per rating"
        )
    _check_targets(results, paths)
    return {"sizes": results}


def _check_targets(results: list[dict[str, Any]], paths: list[str]) -> None:
    by_size = {size["ratings"]: size for size in results}
    lines = []
    at_10m = by_size.get(10_000_000)
    if at_10m is not None and DEFAULT_PATH in paths:
        rate = _rate(at_10m, DEFAULT_PATH)
        lines.append(
            f"{DEFAULT_PATH} at 10M: {rate:,.0f} ratings/s (target >= {TARGET_RATE_10M:,.0f}: "
            f"{'met' if rate >= TARGET_RATE_10M else 'NOT met'})"
        )
        if "adamw" in paths:
            ratio = rate / _rate(at_10m, "adamw")
            lines.append(
                f"{DEFAULT_PATH} / adamw at 10M: {ratio:.2f}x (target >= {TARGET_VS_DENSE:.0f}x: "
                f"{'met' if ratio >= TARGET_VS_DENSE else 'NOT met'})"
            )
    if {1_000_000, 25_000_000} <= set(by_size) and DEFAULT_PATH in paths:
        growth = _rate(by_size[1_000_000], DEFAULT_PATH) / _rate(by_size[25_000_000], DEFAULT_PATH)
        lines.append(
            f"{DEFAULT_PATH} cost per rating at 25M / at 1M: {growth:.2f}x (target <= "
            f"{TARGET_COST_GROWTH}x: {'met' if growth <= TARGET_COST_GROWTH else 'NOT met'})"
        )
    for line in lines:
        print(f"   {line}")


def _short(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


# ------------------------------------------------------------------ command line
def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        scale_ = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        try:
            value = int(float(part[:-1] if scale_ > 1 else part) * scale_)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a size such as 1M, 250k or 10000000") from None
        if value < 10_000:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum 10,000 ratings")
        sizes.append(value)
    return sizes


def _paths(text: str) -> list[str]:
    paths = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in paths if p not in SCALE_PATHS]
    if unknown or not paths:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {', '.join(SCALE_PATHS)}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=data_folder, default=DEFAULT_DATA, help="ml-latest-small (default: the bundled copy)"
    )
    parser.add_argument("--epochs-ref", type=_at_least(1), default=10, help="epochs of part 1 (default: 10)")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[1_000_000, 10_000_000, 25_000_000],
        help="synthetic sizes (1M,10M,25M)",
    )
    parser.add_argument("--paths", type=_paths, default=list(SCALE_PATHS), help="optimiser paths (all three)")
    parser.add_argument(
        "--epochs", type=_at_least(1), default=2, help="epochs per path and size (default: 2)"
    )
    parser.add_argument("--skip-scale", action="store_true", help="run part 1 only")
    parser.add_argument("--skip-compare", action="store_true", help="run part 2 only")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--only-size", type=_at_least(10_000), help="internal: one scale size, as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.only_size:
            print(json.dumps(run_scale_size(args.only_size, paths=args.paths, epochs=args.epochs)))
            return 0
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"bench.trainer on {platform.machine()} with {torch.get_num_threads()} torch threads")
        results: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
        if not args.skip_compare:
            results["compare"] = compare(args.data, epochs=args.epochs_ref, device=device)
        if not args.skip_scale:
            results["scale"] = scale(sizes=args.sizes, paths=args.paths, epochs=args.epochs)
        if args.json:
            write_json(args.json, results)
    except MFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
