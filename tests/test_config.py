"""TrainConfig: the tutorial's defaults, YAML loading, and every rule a value must keep."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mf.config import KEYS, TrainConfig, from_dict, load_config, parse_value, read_values, tutorial_config
from mf.errors import ConfigError, MFError


def _yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_train_config_defaults_are_the_tutorials() -> None:
    cfg = TrainConfig()
    # Model and schedule: the tutorial's MFAdvanced run.
    assert (cfg.emb_dim, cfg.batch_size, cfg.lr, cfg.epochs) == (32, 8192, 0.005, 10)
    assert cfg.init and cfg.bias and cfg.sigmoid
    assert cfg.init_range == 0.05
    assert cfg.sigmoid_high == 5.5
    assert cfg.weight_decay == 0.01  # AdamW's default, which the tutorial kept
    assert cfg.l2 == 0.0
    # Split: each user's last 5 ratings are the validation set, no test part.
    assert (cfg.split, cfg.val_n, cfg.test_n) == ("last-n", 5, 0)


def test_train_config_default_optimizer_is_lazy_adamw_and_the_tutorial_keeps_dense_adamw() -> None:
    # The default steps only the rows a batch touches; the tutorial's run stays dense AdamW.
    assert TrainConfig().optimizer == "lazy_adamw"
    tutorial = tutorial_config(data="ratings.csv")
    assert tutorial.optimizer == "adamw"
    # Apart from the optimiser (and the data it was given), the tutorial's run is the defaults.
    assert tutorial.replace(optimizer="lazy_adamw") == TrainConfig(data="ratings.csv")


def test_train_config_keys_are_the_dataclass_fields_in_order() -> None:
    # KEYS drives the CLI flags and the unknown-key check, so it must list every field.
    assert tuple(f.name for f in dataclasses.fields(TrainConfig)) == KEYS
    assert {"lr", "emb_dim", "l2", "seed"} <= set(KEYS)


def test_train_config_is_frozen() -> None:
    # A config is a value: change it with `replace`, never in place.
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 0.1  # type: ignore[misc]


def test_train_config_to_dict_round_trips_through_from_dict() -> None:
    cfg = TrainConfig(lr=0.01, emb_dim=16, split="random", seed=3)
    # What a checkpoint saves is enough to rebuild the same config.
    assert from_dict(cfg.to_dict()) == cfg


def test_load_config_reads_given_keys_and_keeps_defaults_for_the_rest(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "emb_dim: 64\nsigmoid: false\noptimizer: sparse_adam\nweight_decay: 0\n")
    cfg = load_config(path)
    # The keys in the file are taken ...
    assert (cfg.emb_dim, cfg.sigmoid, cfg.optimizer, cfg.weight_decay) == (64, False, "sparse_adam", 0.0)
    # ... and everything else keeps its default.
    assert cfg.replace(emb_dim=32, sigmoid=True, optimizer="lazy_adamw", weight_decay=0.01) == TrainConfig()


def test_load_config_reads_exponent_without_dot_as_number(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-3` (no dot) as the string "1e-3"; the config still gets a float.
    cfg = load_config(_yaml(tmp_path, "lr: 1e-3\nl2: 5e-2\n"))
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.l2 == 0.05


def test_load_config_empty_file_gives_defaults(tmp_path: Path) -> None:
    # An empty file sets nothing.
    assert load_config(_yaml(tmp_path, "")) == TrainConfig()


def test_read_values_returns_only_the_keys_the_file_sets(tmp_path: Path) -> None:
    # The CLI layers flags over exactly these keys.
    assert read_values(_yaml(tmp_path, "lr: 0.01\nepochs: 3\n")) == {"lr": 0.01, "epochs": 3}


def test_load_config_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "lr: 0.01\nlearning_rate: 0.01\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # The message says where (the file), what (the key) and what is allowed.
    message = str(info.value)
    assert str(path) in message
    assert "learning_rate" in message
    assert "known keys" in message and "lr" in message


def test_load_config_bad_value_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "emb_dim: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # A range error in a file carries the file name in front of the field's message.
    assert str(info.value).startswith(f"{path}: emb_dim: 0")


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("lr", 0.0, "0.0"),
        ("lr", -0.1, "-0.1"),
        ("emb_dim", 0, "0"),
        ("val_n", 0, "0"),
        ("test_n", -1, "-1"),
        ("val_fraction", 0.0, "0.0"),
        ("val_fraction", 1.0, "1.0"),
        ("test_fraction", -0.1, "-0.1"),
        ("init_range", 0.0, "0.0"),
        ("sigmoid_high", 0.0, "0.0"),
        ("weight_decay", -0.01, "-0.01"),
        ("l2", -1.0, "-1.0"),
        ("batch_size", 0, "0"),
        ("epochs", 0, "0"),
        ("threads", -1, "-1"),
    ],
)
def test_train_config_out_of_range_value_names_field_and_value(name: str, value: float, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{name: value})
    # The message starts with the field and the value found, then states the rule.
    message = str(info.value)
    assert message.startswith(f"{name}: {shown} ")
    assert "rule" in message


def test_train_config_val_plus_test_fraction_must_stay_below_one() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(split="random", val_fraction=0.6, test_fraction=0.4)
    # Both fields and both values are named, since neither alone is wrong.
    message = str(info.value)
    assert "val_fraction" in message and "test_fraction" in message
    assert "0.6" in message and "0.4" in message
    # Just under one is fine.
    assert TrainConfig(val_fraction=0.6, test_fraction=0.3).test_fraction == 0.3


def test_train_config_sparse_adam_refuses_weight_decay() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(optimizer="sparse_adam", weight_decay=0.01)
    # SparseAdam has no weight decay: the error names the field, its value and the fix.
    message = str(info.value)
    assert message.startswith("weight_decay: 0.01")
    assert "sparse_adam" in message and "l2" in message
    # With weight_decay 0 (regularising with l2 instead) it is accepted.
    assert TrainConfig(optimizer="sparse_adam", weight_decay=0.0, l2=0.05).optimizer == "sparse_adam"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("emb_dim", True, "expected an integer"),  # bool is an int in Python, not here
        ("emb_dim", 32.0, "expected an integer"),
        ("epochs", "10", "expected an integer"),
        ("lr", "abc", "expected a finite number"),
        ("lr", True, "expected a finite number"),
        ("lr", float("inf"), "expected a finite number"),
        ("bias", 1, "expected true or false"),
        ("bias", "yes", "expected true or false"),
        ("data", 5, "expected a string"),
        ("split", "daily", "is not one of 'last-n', 'random'"),
        ("optimizer", "sgd", "is not one of 'adamw', 'sparse_adam', 'lazy_adamw'"),
        ("device", "tpu", "is not one of 'auto', 'cpu', 'cuda'"),
    ],
)
def test_train_config_wrong_type_names_field_value_and_expectation(
    name: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{name: value})
    message = str(info.value)
    # Field first, then what was expected, then the value found.
    assert message.startswith(f"{name}: ")
    assert expected in message
    assert repr(value) in message


def test_train_config_float_fields_accept_integers_and_numeric_strings() -> None:
    # `lr: 1` in YAML is an int; `--lr 1e-3` arrives as a string: both become floats.
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    assert TrainConfig(lr="1e-3").lr == 0.001


def test_train_config_error_is_an_mf_error() -> None:
    # The CLI catches the project's base class, so config errors must derive from it.
    with pytest.raises(MFError):
        TrainConfig(lr=0)


def test_train_config_replace_returns_a_checked_copy() -> None:
    base = TrainConfig()
    changed = base.replace(lr=0.01, emb_dim=8)
    # The copy has the changes; the original is untouched.
    assert (changed.lr, changed.emb_dim) == (0.01, 8)
    assert (base.lr, base.emb_dim) == (0.005, 32)
    assert changed.replace(lr=0.005, emb_dim=32) == base


def test_train_config_replace_rejects_unknown_keys_and_bad_values() -> None:
    # An unknown key is named, with 'override' as the place it came from.
    with pytest.raises(ConfigError, match=r"^override: unknown key\(s\) learning_rate;"):
        TrainConfig().replace(learning_rate=0.1)
    # A bad value goes through the same rules as the constructor.
    with pytest.raises(ConfigError, match=r"^override: batch_size: 0 breaks the rule"):
        TrainConfig().replace(batch_size=0)


def test_from_dict_names_where_the_values_came_from() -> None:
    # `where` is put in front of every message, so a user knows which file or flag to fix.
    with pytest.raises(ConfigError, match=r"^search space: emb_dim: -1 "):
        from_dict({"emb_dim": -1}, where="search space")
    with pytest.raises(ConfigError, match=r"^x\.yaml: expected a mapping of config keys, got list"):
        from_dict([1, 2], where="x.yaml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("lr", "0.01", 0.01),
        ("lr", "1e-3", "1e-3"),  # still a string; TrainConfig turns it into 0.001
        ("epochs", "20", 20),
        ("bias", "false", False),
        ("sigmoid", "true", True),
        ("split", "random", "random"),
        ("data", "123", "123"),  # str fields keep the text as is, even when it looks like a number
        ("data", "true", "true"),
        ("lr", "[1", "[1"),  # not valid YAML: kept as text for the config to reject
    ],
)
def test_parse_value_reads_command_line_text_as_yaml_except_for_strings(
    name: str, raw: str, value: object
) -> None:
    parsed = parse_value(name, raw)
    assert parsed == value and type(parsed) is type(value)


def test_parse_value_output_builds_a_config() -> None:
    # The CLI path: text -> parse_value -> from_dict.
    raw = {"lr": "1e-3", "epochs": "3", "bias": "false", "data": "data/ml-100k"}
    cfg = from_dict({k: parse_value(k, v) for k, v in raw.items()})
    assert (cfg.lr, cfg.epochs, cfg.bias, cfg.data) == (0.001, 3, False, "data/ml-100k")


def test_load_config_invalid_yaml_is_a_one_line_config_error(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "lr: [0.01\nepochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # One line, naming the file and saying it is not YAML (the parser's detail follows).
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML (")


def test_load_config_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    # A YAML list is valid YAML but not a config.
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        load_config(_yaml(tmp_path, "- lr\n- 0.01\n"))


def test_load_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    # Names the file and the OS's reason.
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config \(No such file or directory\)"):
        load_config(path)


def test_load_config_non_string_key_is_a_config_error(tmp_path: Path) -> None:
    # `1: 2` is valid YAML whose key is the integer 1: an unknown key like any other.
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_yaml(tmp_path, "1: 2\n"))


def test_load_config_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02\xff\x00binary")
    # Passing the wrong file to --config must still give a one-line message naming it.
    with pytest.raises(ConfigError, match="model.pt"):
        load_config(path)


@pytest.mark.parametrize("text", ["0\n", "- lr\n- 0.01\n", "just words\n"])
def test_a_config_file_that_is_not_a_mapping_is_refused_by_what_it_holds(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got (int|list|str)"):
        read_values(_yaml(tmp_path, text))


def test_an_empty_config_file_sets_no_key(tmp_path: Path) -> None:
    assert read_values(_yaml(tmp_path, "# nothing yet\n")) == {}
