"""`Param` and `SearchSpace`: a search space as plain data, checked against `TrainConfig` when built.

Every check runs when the objects are made, so a bad space fails in the CLI, in one line, before Ray
starts a single worker, rather than as a column of failed trials.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args, get_origin, get_type_hints

import optuna

from mf.config import KEYS, TrainConfig
from mf.errors import ConfigError

Kind = Literal["float", "int", "categorical"]
KINDS: tuple[str, ...] = get_args(Kind)

TUNABLE_KEYS: tuple[str, ...] = (
    "epochs",  # a trial's own length, at most --max-epochs (tune.settings.trial_epochs)
    "emb_dim",
    "bias",
    "init",
    "init_range",
    "sigmoid",
    "sigmoid_high",
    "optimizer",
    "lr",
    "lr_schedule",
    "lr_floor",
    "swa_start",
    "weight_decay",
    "epoch_decay",
    "l2",
    "batch_size",
)

# Every other config key, with why a study fixes it and where the user sets it instead. A test checks
# that the two lists cover KEYS, so a new config key forces a decision here.
_SPLIT = (
    "part of the train/validation split, which must be the same for every trial",
    "set it in the config",
)
_RUN = ("a run setting, not a hyperparameter", "set it in the config")
NOT_TUNABLE: dict[str, tuple[str, str]] = {
    "data": (
        "the data set, fixed for a study so that trials compare on the same ratings",
        "set it in the config",
    ),
    "split": _SPLIT,
    "val_n": _SPLIT,
    "test_n": _SPLIT,
    "val_fraction": _SPLIT,
    "test_fraction": _SPLIT,
    "seed": ("fixed for a study so that trials differ only in their hyperparameters", "set it in the config"),
    "split_seed": _SPLIT,
    "val_data": _SPLIT,
    "test_data": _SPLIT,
    "train_on": (
        "what the exported model is refit on after the search chose it on val (trials train on train)",
        "use --refit",
    ),
    "schedule_epochs": (
        "a trial's own epochs (the span of its learning-rate schedule)",
        "tune epochs, or set --max-epochs",
    ),
    "ensemble": (
        "the export's refit averages several runs of the chosen configuration; a trial is one run",
        "use --ensemble",
    ),
    "val_ndcg_k": ("what each epoch measures, not how the model trains", "use --val-ndcg-k"),
    "epoch_ratings": (
        "the unit that epochs, ASHA's rungs and max epochs count, which trials must share to be compared",
        "use --epoch-ratings",
    ),
    "device": _RUN,
    "threads": _RUN,
}

# Other libraries' names for tunable keys, which spelling distance alone would not find.
_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "embedding_dim": "emb_dim",
    "factors": "emb_dim",
    "n_factors": "emb_dim",
    "wd": "weight_decay",
    "reg": "l2",
    "regularization": "l2",
}

_HINTS = get_type_hints(TrainConfig)

# Each tuned value is first checked on its own, on a config where no other key constrains it: weight_decay
# 0 lets optimizer sparse_adam pass. What the user's fixed keys allow is check_against's job.
_NEUTRAL: dict[str, Any] = TrainConfig(weight_decay=0.0).to_dict()


def check_tunable(name: object, *, where: str) -> None:
    """Raise unless `name` is a key a space may tune, saying why a config key is not, or what was meant."""
    if name in TUNABLE_KEYS:
        return
    if name in NOT_TUNABLE:
        why, fix = NOT_TUNABLE[name]
        raise ConfigError(
            f"{where}: param {name}: cannot be tuned, it is {why}; remove it from params and {fix}"
        )
    matches = difflib.get_close_matches(str(name), TUNABLE_KEYS, n=1)
    close = _ALIASES.get(str(name).lower()) or (matches[0] if matches else None)
    hint = f"did you mean {close!r}? " if close else ""
    raise ConfigError(
        f"{where}: param {name!r}: unknown parameter; {hint}a space may tune {', '.join(TUNABLE_KEYS)}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One tuned config key: a float or int range (optionally log-scaled or stepped), or a list of choices.

    The fields mirror Optuna's distributions so that `to_optuna` is a plain translation; the checks in
    `__post_init__` are Optuna's own plus the ones Optuna leaves to warnings (a `high` it would silently
    move to fit `step`) or accepts (`low == high`, a choice given twice).
    """

    name: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def __post_init__(self) -> None:
        where = f"param {self.name}"
        if self.kind not in KINDS:
            close = difflib.get_close_matches(str(self.kind), KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: type {self.kind!r} is unknown; {hint}use one of {', '.join(KINDS)}")
        if not isinstance(self.log, bool):
            raise ConfigError(
                f"{where}: log {self.log!r} is not true or false; write log: true or log: false"
            )
        if self.kind == "categorical":
            self._check_choices(where)
        else:
            self._check_range(where)

    def _check_choices(self, where: str) -> None:
        for field in ("low", "high", "step"):
            if getattr(self, field) is not None:
                raise ConfigError(
                    f"{where}: {field} {getattr(self, field)!r} does not apply to type categorical, "
                    "which takes only choices; remove it, or use type float or int"
                )
        if self.log:
            raise ConfigError(f"{where}: log true does not apply to type categorical; remove it")
        if self.choices is None:
            raise ConfigError(f"{where}: type categorical needs choices; add e.g. choices: [a, b]")
        if not isinstance(self.choices, (list, tuple)):
            raise ConfigError(f"{where}: choices {self.choices!r} is not a list; write choices: [a, b]")
        if not self.choices:
            raise ConfigError(f"{where}: choices [] is empty; list the values to try, e.g. choices: [a, b]")
        seen: list[tuple[type, Any]] = []
        for choice in self.choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(
                    f"{where}: choice {choice!r} is a {type(choice).__name__}; "
                    "a choice must be a number, a string or true/false"
                )
            if (type(choice), choice) in seen:
                raise ConfigError(f"{where}: choice {choice!r} is listed twice; list each value once")
            seen.append((type(choice), choice))
        object.__setattr__(self, "choices", tuple(self.choices))

    def _check_range(self, where: str) -> None:
        if self.choices is not None:
            raise ConfigError(
                f"{where}: choices {list(self.choices)!r} does not apply to type {self.kind}, which takes "
                "low and high; remove choices, or use type categorical"
            )
        for field in ("low", "high", "step"):
            value = getattr(self, field)
            if value is None:
                if field == "step":
                    continue
                raise ConfigError(f"{where}: type {self.kind} needs {field}; add {field}: <number>")
            if self.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(
                    f"{where}: {field} {value!r} is not an integer; type int takes integer bounds "
                    "(or use type float)"
                )
            if not _is_number(value) or not math.isfinite(value):
                raise ConfigError(f"{where}: {field} {value!r} is not a finite number; give a number")
            if self.kind == "float":
                object.__setattr__(self, field, float(value))
        low, high, step = self.low, self.high, self.step
        if not low < high:
            raise ConfigError(
                f"{where}: low {low!r} is not below high {high!r}; a range needs low < high "
                "(to fix one value, set the key in the config instead)"
            )
        if self.log and low <= 0:
            raise ConfigError(
                f"{where}: low {low!r} is not > 0, which a log scale (log: true) needs; "
                "raise low, or set log: false"
            )
        if step is None:
            return
        if self.log:
            raise ConfigError(
                f"{where}: step {step!r} cannot be combined with log: true (Optuna samples a log scale "
                "without steps); remove step or log"
            )
        if step <= 0:
            raise ConfigError(f"{where}: step {step!r} is not > 0; give a positive step")
        span, size = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
        if span % size != 0:
            fit = Decimal(str(low)) + (span // size) * size
            raise ConfigError(
                f"{where}: high {high!r} - low {low!r} is not a multiple of step {step!r}; "
                f"set high: {fit} (Optuna would move it there silently)"
            )

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution TPE samples this key from."""
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = 1 if self.step is None else self.step
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=step)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def to_dict(self) -> dict[str, Any]:
        """The YAML spec of this key, as a space file writes it (defaults left out)."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def contains(self, value: Any) -> bool:
        """Whether TPE could have sampled `value` from this key's distribution (for a warm start)."""
        if self.kind == "categorical":
            # True == 1 in Python: a true/false choice matches only true/false
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
        if not _is_number(value) or not self.low <= value <= self.high:
            return False
        if self.kind == "int" and value != int(value):
            return False
        if self.step is None:
            return True
        steps = (Decimal(str(value)) - Decimal(str(self.low))) / Decimal(str(self.step))
        return steps == steps.to_integral_value()

    def ends(self) -> Iterator[tuple[str, Any]]:
        """The values that bound what TPE may sample, named: each choice, or low and high."""
        if self.kind == "categorical":
            for choice in self.choices:
                yield "choice", choice
        else:
            yield "low", self.low
            yield "high", self.high


def _check_kind_fits_key(param: Param, *, where: str) -> None:
    """An int key cannot take a float range, and a true/false or named key needs its choices listed."""
    hint = _HINTS[param.name]
    literal = get_args(hint) if get_origin(hint) is Literal else None
    if (hint is bool or literal) and param.kind != "categorical":
        values = "true, false" if hint is bool else ", ".join(literal)
        raise ConfigError(
            f"{where}: param {param.name}: type {param.kind} cannot tune it, {param.name} takes only "
            f"{values}; use {{type: categorical, choices: [{values}]}}"
        )
    if hint is int and param.kind == "float":
        raise ConfigError(
            f"{where}: param {param.name}: type float would sample fractions, but {param.name} is an "
            "integer; use type int (or categorical with integer choices)"
        )


@dataclass(frozen=True)
class SearchSpace:
    """The tuned keys of one study, in declaration order, each checked against `TrainConfig`.

    `name` is the builtin's name or the file's path; every error names it.
    """

    name: str
    params: dict[str, Param]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))
        if not self.params:
            raise ConfigError(
                f"{self.name}: params is empty; list at least one key to tune: {', '.join(TUNABLE_KEYS)}"
            )
        for key, param in self.params.items():
            if not isinstance(param, Param):
                raise ConfigError(f"{self.name}: params[{key!r}] is a {type(param).__name__}, not a Param")
            if key != param.name:
                raise ConfigError(
                    f"{self.name}: params[{key!r}] holds a Param named {param.name!r}; use one name"
                )
            check_tunable(key, where=self.name)
            if key == "epoch_decay" and "weight_decay" in self.params:
                raise ConfigError(
                    f"{self.name}: params epoch_decay and weight_decay: epoch_decay sets the weight decay, "
                    "so tune one of them"
                )
            _check_kind_fits_key(param, where=self.name)
            for end, value in param.ends():
                try:
                    TrainConfig(**{**_NEUTRAL, key: value})
                except ConfigError as e:
                    fix = (
                        "remove or correct that choice"
                        if end == "choice"
                        else f"move {end} to a value {key} accepts"
                    )
                    raise ConfigError(
                        f"{self.name}: param {key}: {end} {value!r} is rejected by the training config ({e}); {fix}"
                    ) from e

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether `params` sets exactly this space's keys, each to a value its range or choices hold."""
        return set(params) == set(self.params) and all(self.params[k].contains(v) for k, v in params.items())

    def to_optuna(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The space as `Study.ask(...)` takes it."""
        return {key: param.to_optuna() for key, param in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """The YAML form back, to save beside an experiment; `load_space` reads it again."""
        return {"params": {key: param.to_dict() for key, param in self.params.items()}}

    def check_against(self, fixed: Mapping[str, Any]) -> None:
        """Reject the space if it cannot run with the keys the user set explicitly (`fixed`).

        A key both tuned and fixed is ambiguous (which value wins?), so it is an error naming the key.
        Then trial configs are built on top of `fixed`, as Ray's trials will be: one with every tuned key
        at its first value (low, or the first choice), then each tuned key moved to each of its ends, alone
        and paired with every other key's ends. TrainConfig's rules involve at most two keys, so a config
        that fails here (optimizer sparse_adam with a weight_decay > 0) is a trial that would fail in Ray.
        """
        both = [key for key in self.params if key in fixed]
        if both:
            listed = ", ".join(f"{key} (fixed to {fixed[key]!r})" for key in both)
            raise ConfigError(
                f"{self.name}: tuned by the space and also set in the config: {listed}; "
                "remove each from the config or from the space"
            )
        unknown = sorted(set(fixed) - set(KEYS))
        if unknown:
            raise ConfigError(
                f"{self.name}: the fixed config has unknown key(s) {', '.join(map(str, unknown))}; "
                f"known keys: {', '.join(KEYS)}"
            )
        ends = {key: list(param.ends()) for key, param in self.params.items()}
        first = {key: key_ends[0][1] for key, key_ends in ends.items()}
        trial = _TrialCheck(self.name, {**TrainConfig().to_dict(), **fixed, **first}, fixed, first)
        trial.check([])
        for key, key_ends in ends.items():
            for end, value in key_ends:
                trial.check([(key, end, value)])
        for key_a, key_b in itertools.combinations(ends, 2):
            for (end_a, a), (end_b, b) in itertools.product(ends[key_a], ends[key_b]):
                trial.check([(key_a, end_a, a), (key_b, end_b, b)])


@dataclass(frozen=True)
class _TrialCheck:
    """Builds trial configs for `check_against`: `base` with some tuned keys moved to an end."""

    space: str
    base: dict[str, Any]
    fixed: Mapping[str, Any]
    first: dict[str, Any]  # each tuned key at its first value

    def check(self, moved: list[tuple[str, str, Any]]) -> None:
        try:
            TrainConfig(**{**self.base, **{key: value for key, _, value in moved}})
        except ConfigError as e:
            fixed = ", ".join(f"{k}={v!r}" for k, v in self.fixed.items()) or "none"
            moved_keys = {key for key, _, _ in moved}
            first = ", ".join(f"{k}={v!r}" for k, v in self.first.items() if k not in moved_keys) or "none"
            if moved:
                (key, end, value), *rest = moved
                others = "".join(f" and {k} = {v!r} (its {w})" for k, w, v in rest)
                trial = (
                    f"param {key}: a trial with {key} = {value!r} (its {end}){others}, the other tuned keys"
                )
            else:
                trial = "a trial with the tuned keys"
            raise ConfigError(
                f"{self.space}: {trial} at their first values ({first}) and the fixed keys ({fixed}) "
                f"is rejected by the training config ({e}); change the space or the config so every trial "
                "is valid"
            ) from e
