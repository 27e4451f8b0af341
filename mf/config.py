"""The one typed training config: every key is declared here once, with its meaning.

It is loaded from YAML, overridden from the command line, saved with every checkpoint and
every export, so that a run can always be repeated exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import yaml

from mf.errors import ConfigError

SplitMethod = Literal["last-n", "random", "time"]
TrainOn = Literal["train", "train+val", "all"]
Optimizer = Literal["adamw", "sparse_adam", "lazy_adamw"]
Device = Literal["auto", "cpu", "cuda"]
LrSchedule = Literal["constant", "cosine", "linear", "one-cycle"]


def key(default: Any, doc: str) -> Any:
    """A config field with its documentation, which `--help` and the docs show.

    Args:
        default: the key's default value.
        doc: what the key means (kept in the field's metadata, read back by `doc()`).

    Returns:
        A `dataclasses.field` for a TrainConfig attribute.
    """
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run: data, split, model, optimiser, schedule.

    Defaults are the tutorial's run (dim 32, batch 8192, lr 0.005, 10 epochs, init/bias/sigmoid
    on, sigmoid high 5.5, last-5-per-user validation) but for the optimiser: `lazy_adamw`, whose
    step costs what the batch touches, where the tutorial's dense AdamW costs the whole tables;
    `tutorial_config()` is the tutorial's run itself.

    Every key is checked when a config is made: a value of the wrong type, or one outside its
    key's range, raises ConfigError (float keys also take ints and YAML-style number strings such
    as "1e-3", stored as floats).
    """

    # --- data and split -------------------------------------------------------------
    data: str = key(
        "ml-latest-small",
        "Path (dir, .zip, ratings file) or a data set name that is downloaded into the cache.",
    )
    split: SplitMethod = key(
        "last-n",
        "`last-n`: each user's last ratings by time are held out; `random`: seeded fractions; `time`: the "
        "latest fractions of the whole file by timestamp (held-out ratings of users or items with no "
        "training rating are left out and counted).",
    )
    val_n: int = key(5, "last-n: ratings per user for validation (the tutorial: 5).")
    test_n: int = key(0, "last-n: ratings per user held out as test after validation (0: no test part).")
    val_fraction: float = key(0.1, "random, time: fraction of ratings for validation.")
    test_fraction: float = key(0.0, "random, time: fraction of ratings for test (0: no test part).")
    val_data: str | None = key(
        None,
        "A ratings file (any form `data` takes) that is the validation part, instead of one split from "
        "`data`; its ids are mapped through `data`'s, and ratings of users or items `data` lacks are "
        "left out and counted.",
    )
    test_data: str | None = key(
        None,
        "A ratings file that is the test part (a published split such as ml-100k's u1.test), mapped as "
        "val_data is; test_n and test_fraction must then be 0.",
    )
    train_on: TrainOn = key(
        "train",
        "The parts the model trains on: `train`; `train+val`, a refit after the search selected on "
        "validation (no held-out val part: the epochs are fixed); `all`, every rating, for serving (no "
        "held-out part at all).",
    )

    # --- model (MFAdvanced) -----------------------------------------------------------
    emb_dim: int = key(32, "Width of the user and item embeddings.")
    bias: bool = key(True, "User bias, item bias and a global offset (the tutorial's `bias` switch).")
    init: bool = key(True, "Initialise embeddings uniform in [0, init_range] (else PyTorch's N(0, 1)).")
    init_range: float = key(0.05, "Upper end of the uniform embedding init (the tutorial: 0.05).")
    sigmoid: bool = key(True, "Squash the output with sigmoid(x) * sigmoid_high (else the raw dot product).")
    sigmoid_high: float = key(
        5.5, "Upper bound of the squashed output; 5.0 or 5.5 (a little headroom above the top rating)."
    )

    # --- optimisation -------------------------------------------------------------------
    optimizer: Optimizer = key(
        "lazy_adamw",
        "`lazy_adamw`: AdamW whose step reads and writes only the user and item rows of the batch, with "
        "weight decay exact but applied lazily (mf/optim.py); `adamw`: dense AdamW over every parameter "
        "(the tutorial's); `sparse_adam`: sparse embedding gradients, no weight decay.",
    )
    lr: float = key(0.005, "Learning rate.")
    lr_schedule: LrSchedule = key(
        "constant",
        "How the learning rate moves over the schedule's span (schedule_epochs): `constant`; `cosine` and "
        "`linear` fall from lr to lr * lr_floor; `one-cycle`, fastai's fit_one_cycle: up from lr / 25 to lr "
        "over the first quarter, then down to lr / 2.5e6 (half cosines). It moves in SCHEDULE_PIECES "
        "steps over the span, each piece a run of optimiser steps at one lr.",
    )
    schedule_epochs: int = key(
        0,
        "The epochs the schedule spans (0: `epochs`); a trial's is its own length (its tuned epochs, or ASHA's "
        "max epochs), kept when its config is exported with fewer epochs (a trial's best epoch), so that a "
        "retrain repeats the same lr at every epoch. Past it the lr stays at its end.",
    )
    lr_floor: float = key(
        0.0, "cosine, linear: the learning rate at the schedule's end, as a fraction of lr."
    )
    swa_start: int = key(
        0,
        "Stochastic weight averaging (SWA): from this epoch on, the model that is evaluated, kept as the "
        "best and exported is the mean of the weights at the end of each epoch since; training goes on "
        "from the current weights. 0: off. At a high constant lr the weights wander around a minimum, "
        "and their mean predicts held-out ratings better than any one epoch's weights.",
    )
    weight_decay: float = key(
        0.01, "AdamW's decoupled weight decay on every parameter (PyTorch's default 0.01, as the tutorial)."
    )
    epoch_decay: float = key(
        0.0,
        "When > 0, AdamW's weight decay is set from it so that its decoupled decay over an epoch at the "
        "base lr is this much: weight_decay = epoch_decay * batch_size / (lr * ratings an epoch). A step "
        "decays by lr * weight_decay, and an epoch takes ratings / batch_size steps, so the same "
        "weight_decay regularises a small batch many times more: tuned this way, one value serves every "
        "batch size and lr. 0: weight_decay as given.",
    )
    l2: float = key(
        0.0, "L2 penalty on the embeddings of each batch: l2 * mean(|p_u|^2 + |q_i|^2) added to the MSE."
    )
    batch_size: int = key(8192, "Ratings per optimiser step.")
    epochs: int = key(
        10, "Epochs to train (each one pass over the training ratings, or epoch_ratings of them)."
    )
    epoch_ratings: int = key(
        0,
        "Ratings an epoch trains on (0: one pass over the training ratings). On big data a shorter epoch "
        "makes each report, and so each of ASHA's rungs, cost what it costs on small data: epochs then "
        "walk through one shuffled pass after another, and epochs, rungs and max epochs count them.",
    )

    ensemble: int = key(
        1,
        "Train this many models alike, with the seeds seed, seed + 1000, seed + 2000, ..., and make "
        "the model their average: one MFAdvanced whose factors are theirs side by side, each scaled by "
        "1/sqrt(ensemble), and whose biases and offset are their means, so that its logit is the mean "
        "of theirs. Averaging models that differ only in their init and batch order cancels part of "
        "each one's error on unseen ratings. Trained whole by `fit` (no epoch-by-epoch run: a search's "
        "trials are single models). 1: one model.",
    )

    # --- evaluation ---------------------------------------------------------------------
    val_ndcg_k: int = key(
        0,
        "Also measure NDCG@k of the predicted rating on the val part every epoch (val_ndcg; held-out "
        "ratings >= 4 relevant, train items excluded): what a ranking objective selects on. 0: off.",
    )

    # --- run ----------------------------------------------------------------------------
    seed: int = key(0, "Seeds the init and the batch order, and the random split unless split_seed is set.")
    split_seed: int | None = key(
        None,
        "Seeds the random split instead of `seed` (none: `seed`): retrains with other seeds on the same split.",
    )
    device: Device = key("auto", "`auto` takes CUDA when there is one.")
    threads: int = key(0, "torch CPU threads; 0 leaves torch's default.")

    def __post_init__(self) -> None:
        _check_types(self)
        _check_ranges(self)

    @property
    def effective_split_seed(self) -> int:
        """What seeds the random split: `split_seed`, or `seed` where it is not set."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        """Every key and its value, as a plain dict (what config.yaml and a checkpoint hold)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys changed; unknown keys and bad values raise ConfigError."""
        return from_dict({**self.to_dict(), **changes}, where="override")


KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
_HINTS = get_type_hints(TrainConfig)


def _check_types(cfg: TrainConfig) -> None:
    for name in KEYS:
        value = getattr(cfg, name)
        hint = _HINTS[name]
        choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else None
        if choices is not None:
            if value not in choices:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
        elif hint is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
        elif hint is float:
            value = yaml_number(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            object.__setattr__(cfg, name, float(value))
        elif hint == (int | None):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name}: expected an integer or null, got {value!r}")
        elif hint == (str | None):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}: expected a path or null, got {value!r}")
        elif hint is str and not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")


def _check_ranges(cfg: TrainConfig) -> None:
    rules: list[tuple[str, bool, str]] = [
        ("val_n", cfg.val_n >= 1, ">= 1"),
        ("test_n", cfg.test_n >= 0, ">= 0"),
        ("val_fraction", 0 < cfg.val_fraction < 1, "in (0, 1)"),
        ("test_fraction", 0 <= cfg.test_fraction < 1, "in [0, 1)"),
        ("emb_dim", cfg.emb_dim >= 1, ">= 1"),
        ("init_range", cfg.init_range > 0, "> 0"),
        ("sigmoid_high", cfg.sigmoid_high > 0, "> 0"),
        ("lr", cfg.lr > 0, "> 0"),
        ("weight_decay", cfg.weight_decay >= 0, ">= 0"),
        ("l2", cfg.l2 >= 0, ">= 0"),
        ("epoch_decay", cfg.epoch_decay >= 0, ">= 0"),
        ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("epochs", cfg.epochs >= 1, ">= 1"),
        ("epoch_ratings", cfg.epoch_ratings >= 0, ">= 0"),
        ("ensemble", cfg.ensemble >= 1, ">= 1"),
        ("schedule_epochs", cfg.schedule_epochs >= 0, ">= 0"),
        ("lr_floor", 0 <= cfg.lr_floor <= 1, "in [0, 1]"),
        ("swa_start", cfg.swa_start >= 0, ">= 0"),
        ("threads", cfg.threads >= 0, ">= 0"),
        ("val_ndcg_k", cfg.val_ndcg_k >= 0, ">= 0"),
    ]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{name}: {getattr(cfg, name)!r} breaks the rule {name} {rule}")
    if cfg.test_data is not None and (cfg.test_n > 0 or cfg.test_fraction > 0):
        raise ConfigError(
            f"test_data: {cfg.test_data!r} is the test part, so test_n and test_fraction must be 0 "
            f"(got {cfg.test_n} and {cfg.test_fraction}); drop one of them"
        )
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction: {cfg.val_fraction} + {cfg.test_fraction} must be < 1"
        )
    if cfg.optimizer == "sparse_adam" and cfg.epoch_decay > 0:
        raise ConfigError(
            f"epoch_decay: {cfg.epoch_decay} cannot be used with optimizer 'sparse_adam' (SparseAdam has no "
            "weight decay); set epoch_decay: 0 and regularise with l2"
        )
    if cfg.optimizer == "sparse_adam" and cfg.weight_decay > 0:
        raise ConfigError(
            f"weight_decay: {cfg.weight_decay} cannot be used with optimizer 'sparse_adam' "
            "(SparseAdam has no weight decay); set weight_decay: 0 and regularise with l2"
        )


TUTORIAL_RUN: dict[str, Any] = {
    "emb_dim": 32,
    "bias": True,
    "init": True,
    "init_range": 0.05,
    "sigmoid": True,
    "sigmoid_high": 5.5,
    "optimizer": "adamw",
    "lr": 0.005,
    "weight_decay": 0.01,
    "l2": 0.0,
    "batch_size": 8192,
    "epochs": 10,
    "lr_schedule": "constant",
    "swa_start": 0,
    "ensemble": 1,
}
"""The tutorial's own run, spelt out so that it stays the tutorial's whatever the defaults become."""


def weight_decay_for(config: TrainConfig, epoch_ratings: int) -> float:
    """AdamW's weight decay for `config` where an epoch trains `epoch_ratings` ratings: weight_decay,
    or, where epoch_decay > 0, the one that decays by epoch_decay an epoch at the base lr (see the
    key; `epoch_ratings` below 1 counts as 1)."""
    if config.epoch_decay <= 0:
        return config.weight_decay
    return config.epoch_decay * config.batch_size / (config.lr * max(epoch_ratings, 1))


SCHEDULE_PIECES = 100
"""A schedule's span is trained in this many pieces of constant lr (each a multiple of the batch, and
at least one a pass): smooth to the eye, and LazyAdamW, whose owed decay is counted at one lr,
settles every row only this often."""
ONE_CYCLE_WARMUP, ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 0.25, 25.0, 1e5
"""fastai's fit_one_cycle defaults: pct_start, div, div_final."""


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at `progress` through the schedule (0: its start, 1: its end; beyond it,
    the end's), as `lr_schedule` says."""
    t, lr = min(max(progress, 0.0), 1.0), config.lr
    if config.lr_schedule == "constant":
        return lr
    if config.lr_schedule == "cosine":
        return lr * (config.lr_floor + (1.0 - config.lr_floor) * (1.0 + math.cos(math.pi * t)) / 2.0)
    if config.lr_schedule == "linear":
        return lr * (config.lr_floor + (1.0 - config.lr_floor) * (1.0 - t))
    start = lr / ONE_CYCLE_DIV
    if t < ONE_CYCLE_WARMUP:  # one-cycle: a half cosine up, then one down
        return start + (lr - start) * (1.0 - math.cos(math.pi * t / ONE_CYCLE_WARMUP)) / 2.0
    end = start / ONE_CYCLE_FINAL_DIV
    return (
        end + (lr - end) * (1.0 + math.cos(math.pi * (t - ONE_CYCLE_WARMUP) / (1.0 - ONE_CYCLE_WARMUP))) / 2.0
    )


def tutorial_config(**keys: Any) -> TrainConfig:
    """The tutorial's run (`TUTORIAL_RUN`), with `keys` (the data, the split, the device) on top.

    Raises:
        ConfigError: for an unknown key or a bad value in `keys`.
    """
    return from_dict({**TUTORIAL_RUN, **keys}, where="the tutorial's run")


def yaml_number(value: Any) -> Any:
    """A number written the way people write them, read as one: YAML 1.1 (PyYAML) reads `1e-3`
    (no dot) and `1e+12` as strings. Other values are returned unchanged."""
    if not isinstance(value, str):
        return value
    for parse in (int, float):
        with contextlib.suppress(ValueError):
            return parse(value)
    return value


def from_dict(values: dict[str, Any], *, where: str = "config") -> TrainConfig:
    """Build a config from `values`; keys not given keep their defaults.

    Args:
        values: config keys and their values.
        where: what the values came from (a file, 'override', 'command line'), named in errors.

    Returns:
        The checked TrainConfig.

    Raises:
        ConfigError: where `values` is not a mapping, names an unknown key, or holds a value of
            the wrong type or out of its range; the message begins with `where`.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    unknown = sorted(map(str, set(values) - set(KEYS)))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KEYS)}")
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_values(path: str | os.PathLike) -> dict[str, Any]:
    """The keys a YAML config file sets, checked, with their values as the file has them.

    An empty file (or one holding only `null` or comments) sets no key.

    Raises:
        ConfigError: where the file cannot be read, is not UTF-8 text or valid YAML, holds
            something other than a mapping of config keys, or sets an unknown key or a bad value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (YAML) file: byte {e.start} is not UTF-8") from e
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    if values is None:  # an empty file, or comments only
        values = {}
    from_dict(values, where=str(path))
    return values


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML config; keys not given keep their defaults.

    Raises:
        ConfigError: as `read_values`.
    """
    return from_dict(read_values(path), where=str(path))


def parse_value(name: str, raw: str) -> Any:
    """A command-line string `raw` as the value of key `name`: YAML for numbers and booleans, else as
    is (a path or string key always takes the string as given; a string that is not valid YAML too).
    The value is not checked here: `from_dict` does that."""
    if _HINTS.get(name) in (str, str | None):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def doc(name: str) -> str:
    """The documentation of config key `name` ("" where it has none); KeyError for a name that is no key."""
    return TrainConfig.__dataclass_fields__[name].metadata.get("doc", "")


__all__ = [
    "KEYS",
    "TrainConfig",
    "from_dict",
    "load_config",
    "read_values",
    "doc",
    "key",
    "parse_value",
    "TUTORIAL_RUN",
    "lr_at",
    "SCHEDULE_PIECES",
    "weight_decay_for",
    "tutorial_config",
    "yaml_number",
]
