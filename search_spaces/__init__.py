"""Search spaces declared as data: YAML files of tuned config keys, checked in full before Ray starts.

A space names the `TrainConfig` keys that Optuna's TPE sampler varies; every other key comes from the
user's config. The YAML form (`default.yaml` and `ablation.yaml` beside this file are worked examples)::

    params:
      <key>: {type: float, low: <number>, high: <number>}   # optional: log: true, or step: <number>
      <key>: {type: int, low: <int>, high: <int>}           # optional: log: true, or step: <int>
      <key>: {type: categorical, choices: [<value>, ...]}

Rules, each enforced with a one-line `mf.errors.ConfigError` naming the file, the parameter, the value
found, the rule and the fix:

- `params` is the only top-level key; each name under it is one of `TUNABLE_KEYS`. The data, the split,
  the seed and the run settings are fixed for a study, and `epochs` is ASHA's max_t (`--max-epochs`).
- A range needs `low < high`; `log: true` needs `low > 0` and no `step`; with `step`, `high - low` is a
  multiple of `step`. `1e-3` written without a dot is read as a number (YAML 1.1 reads a string).
- Both ends of a range and every choice must be values `TrainConfig` accepts for the key. Integer keys
  (emb_dim, batch_size) take `type: int` or integer choices; true/false keys (bias, init, sigmoid) and
  `optimizer` take `type: categorical`.
- A key given twice is an error (PyYAML would silently keep the last one).
- `SearchSpace.check_against(fixed)` rejects a key both tuned and fixed by the user, and tuned values
  that the fixed keys make invalid (optimizer sparse_adam with weight_decay > 0).

Use::

    space = load_space("default")            # or a path to a YAML file
    space.check_against(fixed)                # the config keys the user set explicitly
    OptunaSearch(space=space.to_optuna(), metric="val_mse", mode="min", sampler=TPESampler(seed=0))
    yaml.safe_dump(space.to_dict())           # saved beside the experiment
"""

from search_spaces._load import BUILTIN_SPACES, load_space
from search_spaces._space import TUNABLE_KEYS, Param, SearchSpace

__all__ = ["BUILTIN_SPACES", "TUNABLE_KEYS", "Param", "SearchSpace", "load_space"]
