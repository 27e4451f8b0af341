"""The trainer: ratings held as tensors, batches drawn by index permutation, one epoch per call.

`Trainer.run_epoch()` is the single unit that the CLI, the benchmark and the Ray trainable all
drive: it trains one pass over the training ratings (or `epoch_ratings` of them) and returns that
epoch's metrics.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel

from mf import fused_step, shuffle
from mf.atomic import atomic_write
from mf.config import SCHEDULE_PIECES, TrainConfig, from_dict, lr_at, weight_decay_for
from mf.data import Dataset, Interactions, prepare_dataset
from mf.epoch_ndcg import EpochNDCG
from mf.errors import MFError
from mf.metrics import (
    EPOCH,
    EPOCH_SECONDS,
    TRAIN_LOSS,
    VAL_MAE,
    VAL_MSE,
    VAL_NDCG,
    VAL_RMSE,
    all_metrics,
    regression_metrics,
)
from mf.model import MFAdvanced
from mf.optim import LazyAdamW

EVAL_BATCH = 1 << 18
CHECKPOINT_FORMAT = 1


class TrainingDiverged(MFError):
    """The training loss became NaN or infinite: this configuration cannot be trained."""


@dataclass(frozen=True)
class BestModel:
    """The weights of the epoch with the lowest val MSE so far."""

    epoch: int
    val_mse: float
    weights: dict[str, torch.Tensor]

    def to_dict(self) -> dict[str, Any]:
        """The best epoch as a checkpoint holds it: epoch, val_mse and the weights (a state_dict)."""
        return {"epoch": self.epoch, "val_mse": self.val_mse, "weights": self.weights}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BestModel:
        """The best epoch from what `to_dict` gave; KeyError where a field is missing."""
        return cls(epoch=int(d["epoch"]), val_mse=float(d["val_mse"]), weights=d["weights"])


@dataclass(frozen=True)
class TensorPart:
    """One split part on the training device: int32 ids and float32 ratings, as the Dataset holds them."""

    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor

    @classmethod
    def from_interactions(cls, part: Interactions, device: torch.device) -> TensorPart:
        """`part` as tensors on `device`: int32 users and items, float32 ratings.

        On CPU the Dataset's arrays themselves where their dtypes fit (no copy); on a GPU one copy,
        made once per trial.
        """
        return cls(
            users=_as_tensor(part.users, torch.int32, device),
            items=_as_tensor(part.items, torch.int32, device),
            ratings=_as_tensor(part.ratings, torch.float32, device),
        )

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


def _as_tensor(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`array` as a tensor of `dtype`, sharing its memory where the dtype already fits.

    Arrays from Ray's object store are read-only; torch warns that writing to such a tensor is
    undefined, but these are never written (the trainer only gathers from them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(np.asarray(array))
    return tensor.to(device=device, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    """The torch device of a `device` setting: `auto` is CUDA where torch sees it, else the CPU.

    Other names go to `torch.device` as they are.

    Raises:
        MFError: for `cuda` where torch sees no CUDA device.
        RuntimeError: (torch's) for a name torch does not know.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MFError("device: 'cuda' was asked for but torch sees no CUDA device; use device: cpu")
    return torch.device(name)


def dataset_for(config: TrainConfig, *, cache_dir: str | None = None) -> Dataset:
    """The data set and split a config names (one place that maps config keys to the data layer).

    Args:
        config: its data, split, val_data, test_data, train_on and split seed are used.
        cache_dir: where named data sets are cached (None: `mf.data.data_home()`'s default).

    Raises:
        ConfigError: for split settings that `prepare_dataset` rejects.
        DataError: where the data cannot be found, fetched or read as MovieLens ratings.
    """
    return prepare_dataset(
        config.data,
        split=config.split,
        val_n=config.val_n,
        test_n=config.test_n,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.effective_split_seed,
        val_data=config.val_data,
        test_data=config.test_data,
        train_on=config.train_on,
        cache_dir=cache_dir,
    )


MODEL_KEYS = ("emb_dim", "ensemble", "bias", "sigmoid", "sigmoid_high", "optimizer")
"""The config keys that decide what a checkpoint's weights and optimiser state mean: a trainer loads
only a state saved under the same values (`Trainer.load_state`)."""


def build_model(config: TrainConfig, n_users: int, n_items: int) -> MFAdvanced:
    """A fresh MFAdvanced of `config`'s shape over `n_users` users and `n_items` items: emb_dim
    factors, emb_dim * ensemble for an ensemble (its members' factors side by side), with sparse
    gradients for `sparse_adam`. Its init draws from torch's global RNG."""
    return MFAdvanced(
        n_users,
        n_items,
        emb_dim=config.emb_dim * config.ensemble,
        bias=config.bias,
        init=config.init,
        init_range=config.init_range,
        sigmoid=config.sigmoid,
        sigmoid_high=config.sigmoid_high,
        sparse=config.optimizer == "sparse_adam",
    )


def build_optimizers(config: TrainConfig, model: MFAdvanced, epoch_ratings: int) -> list[Any]:
    """The optimiser(s) of `config.optimizer`, over `model`'s parameters (an epoch trains
    `epoch_ratings` ratings: see weight_decay_for).

    `lazy_adamw`: LazyAdamW over the user rows and item rows (factors and bias side by side) and the
    offset, idle rows brought up to date as dense AdamW would have moved them (the model's tables then
    live in the optimiser's table, see mf.optim); `adamw`: dense AdamW over everything (the
    tutorial); `sparse_adam`: SparseAdam for the tables + Adam for the offset.

    Returns:
        The optimisers, all to be stepped at every step: one for `lazy_adamw` and `adamw`, one or
        two (the second where the model has an offset) for `sparse_adam`.
    """
    decay = weight_decay_for(config, epoch_ratings)
    if config.optimizer == "lazy_adamw":
        users, items = model.row_tables()
        return [LazyAdamW([users, items], model.dense_parameters(), lr=config.lr, weight_decay=decay)]
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=decay, fused=True)]
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    dense = [p for n, p in model.named_parameters() if n == "offset"]
    optimizers: list[Any] = [torch.optim.SparseAdam(sparse, lr=config.lr)]
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=config.lr))
    return optimizers


class Trainer:
    """Holds the model, its optimiser and the data tensors; trains one epoch per `run_epoch()`."""

    def __init__(
        self, config: TrainConfig, dataset: Dataset, *, device: str | None = None, fused: bool | None = None
    ) -> None:
        """Build the model (seeded by config.seed), its optimisers and the data tensors.

        With config.threads > 0 on a CPU it sets torch's thread count, for the whole process.

        Args:
            config: the run's config.
            dataset: the data set and split the config names (`dataset_for`).
            device: the device to train on, overriding config.device (a name `resolve_device`
                takes).
            fused: LazyAdamW's step as one compiled pass (mf.fused_step) where it can run;
                None: if so; False: the torch path.

        Raises:
            MFError: where the device is `cuda` and torch sees none.
        """
        self.config = config
        self.dataset = dataset
        self.device = resolve_device(device or config.device)
        if config.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(config.threads)
        # Seed the init without disturbing the process's global RNG (a reused Ray worker runs many trials).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = build_model(config, dataset.n_users, dataset.n_items).to(self.device)
        self._want_fused = fused
        self._build_optimizers()
        # The batch order is drawn on the training device, so a GPU never waits for the CPU's shuffle.
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.train_part = TensorPart.from_interactions(dataset.train, self.device)
        # No val part where the model trains on it (train_on): then no epoch is judged or kept as the
        # best, and the epochs trained are the model.
        self.val_part = (
            TensorPart.from_interactions(dataset.val, self.device) if dataset.val is not None else None
        )
        self.test_part = (
            TensorPart.from_interactions(dataset.test, self.device) if dataset.test is not None else None
        )
        self.val_ndcg = (
            EpochNDCG(
                dataset.train,
                dataset.val,
                n_users=dataset.n_users,
                n_items=dataset.n_items,
                k=config.val_ndcg_k,
                device=self.device,
            )
            if config.val_ndcg_k > 0 and dataset.val is not None
            else None
        )
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best: BestModel | None = None
        # The running mean of the weights since epoch swa_start (None before it, or when off).
        self.average: AveragedModel | None = None
        # The shuffled pass epochs are drawn from, and how far into it they are (a whole pass: used up).
        self._pass = torch.empty(0, dtype=torch.int32, device=self.device)
        self._pass_cursor = len(self.train_part)
        self._pass_rng_state = self.generator.get_state()

    def _build_optimizers(self) -> None:
        if self.config.ensemble > 1:  # trained by its members (fit); its own weights never step
            self.optimizers, self.fused = [], None
            return
        epoch = self.config.epoch_ratings or len(self.dataset.train)
        self.optimizers = build_optimizers(self.config, self.model, epoch)
        lazy = self.lazy
        use = lazy is not None and self._want_fused is not False and fused_step.available(self.model, lazy)
        self.fused = fused_step.FusedStep(self.model, lazy, l2=self.config.l2) if use else None
        if lazy is not None and fused_step.numba is None and self.device.type == "cpu":
            warnings.warn(
                "numba is not installed: training takes the torch path, several times slower than the fused "
                "step, and shuffles with torch.randperm (other orders than with numba); pip install numba",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def lazy(self) -> LazyAdamW | None:
        """The row-sparse optimiser when the config uses one (its step is written out, not autograd)."""
        first = self.optimizers[0] if self.optimizers else None
        return first if isinstance(first, LazyAdamW) else None

    # ---------------------------------------------------------------- training
    def run_epoch(self) -> dict[str, float]:
        """Train one epoch (a pass, or `epoch_ratings` ratings); return its loss and validation metrics.

        The epoch's metrics are also appended to `history`, and with a val part the epoch is kept as
        the best where its val MSE is the lowest so far.

        Returns:
            epoch, train_loss and epoch_seconds; with a val part val_mse, val_rmse and val_mae, and
            val_ndcg where val_ndcg_k > 0.

        Raises:
            MFError: for an ensemble, which only `fit` trains.
            TrainingDiverged: where the training loss or the val MSE is NaN or infinite.
        """
        if self.config.ensemble > 1:
            raise MFError(
                f"ensemble: {self.config.ensemble} models are trained whole by fit(), not epoch by epoch; "
                "a search's trial is one model (ensemble: 1)"
            )
        cfg, part = self.config, self.train_part
        started = time.perf_counter()
        self.model.train()
        step = self._lazy_step if self.lazy is not None else self._autograd_step
        loss_sum = torch.zeros((), device=self.device)
        trained = 0
        slices = self._epoch_slices()
        pieces = self._pieces(sum(len(s) for s in slices))
        lr = None
        for k, order in _cut(slices, [n for n, _ in pieces]):
            if pieces[k][1] != lr:
                if lr is not None:
                    self.settle()  # LazyAdamW counts the decay a row owes at one lr
                lr = pieces[k][1]
                self._set_lr(lr)
            if self.fused is not None:  # the whole slice in one compiled call
                loss_sum += self.fused.train(part.users, part.items, part.ratings, order, cfg.batch_size)
            else:
                for start in range(0, len(order), cfg.batch_size):
                    batch = order[start : start + cfg.batch_size]
                    users = part.users.index_select(0, batch)
                    items = part.items.index_select(0, batch)
                    loss_sum += step(users, items, part.ratings.index_select(0, batch))
            trained += len(order)
        train_loss = float(loss_sum) / trained
        self.epoch += 1
        self.settle()
        if 0 < cfg.swa_start <= self.epoch:
            if self.average is None:
                self.average = self._new_average()
            self.average.update_parameters(self.model)
        metrics: dict[str, float] = {EPOCH: self.epoch, TRAIN_LOSS: train_loss}
        if self.val_part is not None:
            val = regression_metrics(self.val_part.ratings.cpu().numpy(), self.predict_part(self.val_part))
            metrics.update({VAL_MSE: val["mse"], VAL_RMSE: val["rmse"], VAL_MAE: val["mae"]})
        if not all(math.isfinite(metrics[k]) for k in (TRAIN_LOSS, VAL_MSE) if k in metrics):
            raise TrainingDiverged(
                f"epoch {self.epoch}: training loss is {train_loss}, val MSE {metrics.get(VAL_MSE)} (lr={cfg.lr}, "
                f"l2={cfg.l2}, weight_decay={cfg.weight_decay}); this configuration diverges"
            )
        if self.val_ndcg is not None:
            metrics[VAL_NDCG] = self.val_ndcg(self.scoring_model)
        metrics[EPOCH_SECONDS] = time.perf_counter() - started
        self.history.append(metrics)
        if VAL_MSE in metrics and (self.best is None or metrics[VAL_MSE] < self.best.val_mse):
            # A copy of the weights at the best epoch, so that no checkpoint is needed at every epoch.
            self.best = BestModel(
                epoch=self.epoch, val_mse=metrics[VAL_MSE], weights=_copy(self.scoring_model)
            )
        return metrics

    @property
    def scoring_model(self) -> MFAdvanced:
        """The model whose predictions count (evaluated, kept as the best, exported): the running mean
        of the weights once averaging has begun (swa_start), else the weights being trained."""
        return self.model if self.average is None else self.average.module

    def _new_average(self) -> AveragedModel:
        """An empty running mean: torch's AveragedModel around a model of its own (a copy of
        `self.model` would also copy the optimiser's table that LazyAdamW keeps the weights in)."""
        with torch.random.fork_rng(devices=[]):  # its throwaway init leaves the global RNG alone
            shell = build_model(self.config, self.dataset.n_users, self.dataset.n_items)
        return AveragedModel(shell.to(self.device))

    def _pieces(self, size: int) -> list[tuple[int, float]]:
        """This epoch's `size` ratings in runs of one learning rate, in order: (ratings, lr).

        The schedule's span (schedule_epochs, else epochs) is cut into about SCHEDULE_PIECES pieces,
        so many a pass, each a whole number of batches, each at the lr of its middle."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return [(size, cfg.lr)]
        span = cfg.schedule_epochs or cfg.epochs
        per_epoch = max(1, math.ceil(SCHEDULE_PIECES / span))
        length = max(1, math.ceil(size / per_epoch / cfg.batch_size)) * cfg.batch_size
        pieces, start = [], 0
        while start < size:
            n = min(length, size - start)
            pieces.append((n, lr_at(cfg, (self.epoch + (start + n / 2) / size) / span)))
            start += n
        return pieces

    def _epoch_slices(self) -> list[torch.Tensor]:
        """The positions of the training ratings this epoch trains on, in order, as slices of shuffled passes.

        Batches are gathered through one permutation per pass: no shuffled copy of the columns. An
        epoch is one whole pass, or with `epoch_ratings` that many ratings from where the last epoch
        stopped, a new pass drawn when one is used up (a batch does not straddle two passes).
        """
        size = len(self.train_part)
        want = self.config.epoch_ratings or size
        slices = []
        while want > 0:
            if self._pass_cursor >= size:
                self._pass_rng_state = self.generator.get_state()  # what a checkpoint needs to redraw it
                self._pass = self._draw_pass()
                self._pass_cursor = 0
            take = min(want, size - self._pass_cursor)
            slices.append(self._pass[self._pass_cursor : self._pass_cursor + take])
            self._pass_cursor += take
            want -= take
        return slices

    def _draw_pass(self) -> torch.Tensor:
        """A random order of the training ratings, drawn from the trainer's generator."""
        size = len(self.train_part)
        if self.device.type == "cpu" and shuffle.available():  # mf.shuffle: several times faster
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            return torch.from_numpy(shuffle.permutation(size, seed))
        return torch.randperm(size, generator=self.generator, device=self.device, dtype=torch.int32)

    def _autograd_step(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """One step of the dense (adamw) or sparse (sparse_adam) path; returns the batch's squared-error sum."""
        # forward: predictions (B,), factors (B, D) for the L2 term
        pred, p, q = self.model.predict_with_factors(users.long(), items.long())
        loss = F.mse_loss(pred, ratings)
        objective = loss
        if self.config.l2 > 0:
            objective = loss + self.config.l2 * (p.pow(2).sum(1) + q.pow(2).sum(1)).mean()
        # backward and step
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        objective.backward()
        for opt in self.optimizers:
            opt.step()
        return loss.detach() * len(ratings)

    def _lazy_step(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """One LazyAdamW step on the torch path: the batch's distinct rows, the objective's gradient
        by hand, the update (with the fused step, `run_epoch` hands it whole slices instead)."""
        opt, n = self.lazy, len(ratings)
        assert opt is not None
        # Row numbers in the optimiser's table: users first, then items (row_offsets).
        ids = torch.cat((users, items + opt.row_offsets[1])).long()
        rows = opt.gather(ids)
        batch_rows = rows.weights.index_select(0, rows.inverse)  # (2B, width): user rows, then item rows
        sq_err, grads, dense_grads = self.model.row_grads(
            batch_rows[:n], batch_rows[n:], ratings, l2=self.config.l2
        )
        opt.step(rows, grads, dense_grads)
        return sq_err

    def _set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            if isinstance(opt, LazyAdamW):
                opt.lr = lr
            else:
                for group in opt.param_groups:
                    group["lr"] = lr

    def settle(self) -> None:
        """Bring lazily owed weight decay into every row, so the model's weights are current."""
        if self.fused is not None:
            self.fused.settle()
        elif self.lazy is not None:
            self.lazy.settle()

    def fit(
        self, *, epochs: int | None = None, on_epoch: Callable[[dict[str, float]], None] | None = None
    ) -> list[dict[str, float]]:
        """Train up to `epochs` (default: the config's) in total, calling `on_epoch` with each epoch's
        metrics, and return the history. An ensemble (config.ensemble > 1) trains its members one
        after the other from scratch (each member's epochs reach `on_epoch` with a `member` key), then
        holds their average; its history is the members' mean at each epoch.

        Args:
            epochs: the epoch count to reach, counting those already trained (nothing is trained
                where it is reached).
            on_epoch: called with each epoch's metrics as `run_epoch` returns them.

        Returns:
            `history`: every epoch's metrics, the first epoch first.

        Raises:
            MFError: an ensemble that has already trained other epochs (it cannot go on from its
                average).
            TrainingDiverged: as `run_epoch`.
        """
        target = epochs if epochs is not None else self.config.epochs
        if self.config.ensemble > 1:
            return self._fit_ensemble(target, on_epoch)
        while self.epoch < target:
            metrics = self.run_epoch()
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history

    def _fit_ensemble(
        self, epochs: int, on_epoch: Callable[[dict[str, float]], None] | None
    ) -> list[dict[str, float]]:
        if self.epoch == epochs:
            return self.history
        if self.epoch > 0:
            raise MFError(
                f"an ensemble (ensemble > 1) trains whole, from scratch: it has already trained {self.epoch} "
                f"epochs, so it cannot be trained to {epochs}"
            )
        weights, histories = [], []
        for i, seed in enumerate(member_seeds(self.config)):
            member = Trainer(
                self.config.replace(ensemble=1, seed=seed),
                self.dataset,
                device=str(self.device),
                fused=self._want_fused,
            )
            member.fit(
                epochs=epochs,
                on_epoch=None if on_epoch is None else lambda m, i=i: on_epoch({**m, "member": i}),
            )
            member.settle()
            # Only its weights and history are kept: its optimiser's moments and the fused step's
            # scratch go before the next member is built.
            weights.append(_copy(member.scoring_model))
            histories.append(member.history)
            del member
        self.model.load_state_dict(average_of(weights))
        self.epoch = epochs
        self.history = [
            {
                **{k: statistics.fmean(float(h[e][k]) for h in histories) for k in histories[0][e]},
                EPOCH: e + 1,
            }
            for e in range(epochs)
        ]
        return self.history

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict_part(self, part: TensorPart) -> np.ndarray:
        """The scoring model's predictions (N,) for every rating of `part`, as a float32 array."""
        model = self.scoring_model
        model.eval()
        chunks = [
            model(part.users[s : s + EVAL_BATCH], part.items[s : s + EVAL_BATCH])
            for s in range(0, len(part), EVAL_BATCH)
        ]
        return torch.cat(chunks).cpu().numpy() if chunks else np.zeros(0, dtype=np.float32)

    def evaluate(self, part: str = "val") -> dict[str, float]:
        """All metrics (MSE, RMSE, MAE, F1, precision, recall) of the scoring model on `part`.

        Args:
            part: `val`, `test` or `train`.

        Raises:
            DataError: where `part` is not held out (no such part in the split, the model trained
                on it, or not a part name).
        """
        tensors = {"val": self.val_part, "test": self.test_part, "train": self.train_part}.get(part)
        if tensors is None:
            self.dataset.held_out(part)  # raises, saying why there is no such part
        return all_metrics(tensors.ratings.cpu().numpy(), self.predict_part(tensors))

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: config, model, optimisers, epoch, RNG, id mapping.

        It settles the lazy optimiser first, so the weights saved are current.
        """
        self.settle()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": _copy(self.model),
            # The running mean (swa_start) and how many epochs it holds, for a resume and for load_model.
            "average": None
            if self.average is None
            else {"weights": _copy(self.average.module), "epochs": int(self.average.n_averaged)},
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "epoch": self.epoch,
            "history": self.history,
            "best": None if self.best is None else self.best.to_dict(),
            "generator": self.generator.get_state(),
            # Part way through a pass (epoch_ratings): the generator's state before the pass was
            # drawn and the position in it, so that a resumed run draws the same pass and goes on.
            "pass": None
            if self._pass_cursor >= len(self.train_part)
            else {"generator": self._pass_rng_state, "cursor": self._pass_cursor},
            "n_users": self.dataset.n_users,
            "n_items": self.dataset.n_items,
            "user_ids": torch.tensor(
                self.dataset.user_ids, dtype=torch.int64
            ),  # a copy: Ray's arrays are read-only
            "item_ids": torch.tensor(self.dataset.item_ids, dtype=torch.int64),
        }

    def save_checkpoint(self, path: str | os.PathLike, *, fsync: bool = True) -> Path:
        """Write `state()` to `path` atomically (a crash keeps the previous file or the new one, whole);
        fsync=False: not flushed to the disk (see mf.atomic). Returns `path` as a Path; OSError where
        it cannot be written."""
        state = self.state()
        return atomic_write(path, lambda f: torch.save(state, f), fsync=fsync)

    def rewind_to_best(self) -> None:
        """Put back the weights of the best epoch (what an export serves), with fresh optimiser moments;
        with swa_start, those are the running mean's, and an epoch trained after this starts a new one.
        The history and the epoch count go back to that epoch.

        Raises:
            MFError: where no epoch has been judged on a val part (none trained, or no val part).
        """
        if self.best is None:
            raise MFError(
                "rewind_to_best: no epoch has been judged on a val part yet (none trained, or the model "
                "trains on val: train_on)"
            )
        self.model.load_state_dict(self.best.weights)
        self.average = None
        self._build_optimizers()
        self.history = self.history[: self.best.epoch]
        self.epoch = self.best.epoch

    def load_state(self, state: dict[str, Any], *, source: str = "checkpoint") -> None:
        """Resume from `state` (as `state()` or `read_checkpoint` gives it): weights, optimisers,
        epoch, history, best epoch, running mean, the pass in progress and the generator.

        The trainer keeps its own config: `state` must come from a run of the same model shape and
        optimiser (`from_checkpoint` builds the trainer from the checkpoint's config).

        Args:
            state: the saved state.
            source: what it came from, named in the error.

        Raises:
            MFError: where `state` was trained on other users or items than this trainer's data, by
                a config whose model or optimiser differs from this trainer's (`MODEL_KEYS`), or its
                LazyAdamW state does not fit this optimiser.
        """
        check_matches(state, self.dataset, source=source)
        saved = state.get("config") or {}
        differ = [k for k in MODEL_KEYS if k in saved and saved[k] != getattr(self.config, k)]
        if differ:
            raise MFError(
                f"{source}: was trained with "
                + ", ".join(f"{k} {saved[k]!r}" for k in differ)
                + ", this run has "
                + ", ".join(f"{k} {getattr(self.config, k)!r}" for k in differ)
                + "; load it into a trainer of its own config (Trainer.from_checkpoint)"
            )
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = BestModel.from_dict(state["best"]) if state.get("best") else None
        self.average = None
        if state.get("average"):
            self.average = self._new_average()
            self.average.module.load_state_dict(state["average"]["weights"])
            self.average.n_averaged.fill_(int(state["average"]["epochs"]))
        if state.get("pass") is not None:  # redraw the pass the saved run was part way through
            self.generator.set_state(state["pass"]["generator"])
            self._pass_rng_state = state["pass"]["generator"]
            self._pass = self._draw_pass()
            self._pass_cursor = int(state["pass"]["cursor"])
        self.generator.set_state(state["generator"])

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, dataset: Dataset, *, device: str | None = None
    ) -> Trainer:
        """A trainer resumed from the checkpoint at `path`, with the checkpoint's config.

        Args:
            path: a checkpoint written by `save_checkpoint`.
            dataset: the data it was trained on (same users and items, same order).
            device: the device to train on (None: the config's).

        Raises:
            MFError: where there is no readable checkpoint at `path`, it was trained on other data,
                or the device is `cuda` and torch sees none.
            ConfigError: where the checkpoint's config is not a valid config.
        """
        state = read_checkpoint(path)
        trainer = cls(from_dict(state["config"], where=f"{path} (config)"), dataset, device=device)
        trainer.load_state(state, source=str(path))
        return trainer


def _cut(slices: list[torch.Tensor], lengths: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
    """`slices` (in order) cut where the runs of `lengths` (which add up to them) end: (run, part)."""
    run, left = 0, lengths[0]
    for order in slices:
        start = 0
        while start < len(order):
            take = min(left, len(order) - start)
            yield run, order[start : start + take]
            start, left = start + take, left - take
            if left == 0 and run + 1 < len(lengths):
                run, left = run + 1, lengths[run + 1]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state a checkpoint holds (`Trainer.state()`), loaded onto the CPU with weights_only.

    Raises:
        MFError: where there is no file at `path`, torch cannot read it, or it is not an mf-tune
            checkpoint of format CHECKPOINT_FORMAT.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise MFError(f"{path}: no checkpoint there") from e
    except Exception as e:  # torch raises many kinds for a damaged file
        raise MFError(f"{path}: not a readable mf-tune checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MFError(f"{path}: not an mf-tune checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def check_matches(state: dict[str, Any], dataset: Dataset, *, source: str) -> None:
    """Check that `state` (a checkpoint's) was trained on `dataset`'s users and items, in the same order:
    a model knows them only by index.

    Args:
        state: a checkpoint's state (n_users, n_items, user_ids, item_ids are read).
        dataset: the data it is to be used with.
        source: what the state came from, named in the error.

    Raises:
        MFError: where the users or items differ.
    """
    same = (
        state["n_users"] == dataset.n_users
        and state["n_items"] == dataset.n_items
        and np.array_equal(state["user_ids"].numpy(), np.asarray(dataset.user_ids))
        and np.array_equal(state["item_ids"].numpy(), np.asarray(dataset.item_ids))
    )
    if not same:
        raise MFError(
            f"{source}: was trained on {state['n_users']} users / {state['n_items']} items, but the data "
            f"{dataset.source} has {dataset.n_users} / {dataset.n_items} with other ids; use the same data set"
        )


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> tuple[MFAdvanced, dict[str, Any]]:
    """The trained model of a checkpoint, for serving, with the checkpoint's state (config, id maps):
    the running mean of its weights where it has one (swa_start), as the trainer scores with.

    Args:
        path: a checkpoint (model.pt).
        device: where the model goes.

    Returns:
        (the model in eval mode on `device`, the checkpoint's state).

    Raises:
        MFError: where there is no readable checkpoint at `path`.
        ConfigError: where the checkpoint's config is not a valid config.
    """
    state = read_checkpoint(path)
    config = from_dict(state["config"], where=f"{path} (config)")
    model = build_model(config, state["n_users"], state["n_items"])
    model.load_state_dict(state["average"]["weights"] if state.get("average") else state["model"])
    return model.to(device).eval(), state


def member_seeds(config: TrainConfig) -> list[int]:
    """The seeds of an ensemble's members (config.ensemble of them): seed, seed + 1000, ..., far
    enough apart that no member's init seed is another's batch-order seed (seed + 1)."""
    return [config.seed + 1000 * i for i in range(config.ensemble)]


@torch.no_grad()
def average_of(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The weights of one MFAdvanced (emb_dim: the members' summed) that predicts what the members
    whose weights are `states` (MFAdvanced state dicts, alike but for their values) predict on
    average in logit space: their factors side by side, each scaled by 1/sqrt(n), so that p . q is
    the mean of the members' dot products, and the means of their biases and offsets. Through the
    sigmoid this is the mean of the members' logits, not of their ratings (the two differ by far
    less than the models' error)."""
    scale = 1.0 / math.sqrt(len(states))
    return {
        k: torch.cat([s[k] * scale for s in states], dim=1)
        if k in ("user_emb.weight", "item_emb.weight")
        else torch.stack([s[k] for s in states]).mean(dim=0)
        for k in states[0]
    }


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous copy of a model's weights (with LazyAdamW they are views of its table)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
