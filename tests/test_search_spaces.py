"""Search spaces as data: the builtins sample valid configs, and every bad space fails in one line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from mf.config import KEYS, TrainConfig
from mf.errors import ConfigError
from search_spaces import BUILTIN_SPACES, TUNABLE_KEYS, Param, SearchSpace, load_space
from search_spaces._space import NOT_TUNABLE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    """The message of the ConfigError that loading `text` as a space file raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    # Every error is one line that starts with the file it is about.
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- the builtin spaces ----------------------------------------------------------------------------------


def test_builtin_spaces_are_files_beside_the_package() -> None:
    # "default" and "ablation" are YAML files shipped in search_spaces/.
    assert set(BUILTIN_SPACES) == {"default", "ablation"}
    assert all(path.is_file() and path.parent.name == "search_spaces" for path in BUILTIN_SPACES.values())


def test_builtin_default_tunes_the_model_the_optimiser_and_the_regime() -> None:
    space = load_space("default")
    # The name is the builtin's, and the keys keep the file's order.
    assert space.name == "default"
    assert list(space.params) == [
        "emb_dim", "lr", "sigmoid_high", "init_range", "l2", "weight_decay", "batch_size", "lr_schedule", "epochs"
    ]  # fmt: skip
    # 1.0e-4 in the file is a float bound, on a log scale.
    assert space.params["lr"] == Param("lr", "float", low=1e-4, high=0.2, log=True)
    assert space.params["emb_dim"] == Param("emb_dim", "int", low=8, high=256, log=True)


def test_builtin_ablation_tunes_only_the_three_switches() -> None:
    space = load_space("ablation")
    # The tutorial's basic-vs-advanced ablation: bias, init, sigmoid, each on or off, nothing else.
    assert {key: param.choices for key, param in space.params.items()} == {
        "bias": (True, False),
        "init": (True, False),
        "sigmoid": (True, False),
    }


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_builtin_space_samples_valid_configs_with_tpe(name: str) -> None:
    space = load_space(name)
    distributions = space.to_optuna()
    # Each parameter becomes a real Optuna distribution of its kind.
    kinds = {
        "float": optuna.distributions.FloatDistribution,
        "int": optuna.distributions.IntDistribution,
        "categorical": optuna.distributions.CategoricalDistribution,
    }
    assert all(isinstance(distributions[k], kinds[p.kind]) for k, p in space.params.items())
    # The default config (nothing fixed) can run every trial of the space.
    space.check_against({})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for i in range(15):
        trial = study.ask(distributions)
        for key, value in trial.params.items():
            param = space.params[key]
            # Every sampled value lies in its range or is one of its choices.
            if param.kind == "categorical":
                assert value in param.choices
            else:
                assert param.low <= value <= param.high
        # The sampled values together make a valid training config.
        cfg = TrainConfig().replace(**trial.params)
        assert all(getattr(cfg, key) == value for key, value in trial.params.items())
        study.tell(trial, float(i % 4))


def test_builtin_space_is_what_ray_optuna_search_takes() -> None:
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("default")
    search = OptunaSearch(
        space=space.to_optuna(), metric="val_mse", mode="min", sampler=optuna.samplers.TPESampler(seed=0)
    )
    suggested = search.suggest("trial_0")
    # Ray's searcher suggests exactly the tuned keys, and they build a config.
    assert set(suggested) == set(space.params)
    TrainConfig().replace(**suggested)


def test_tunable_keys_and_fixed_keys_cover_the_config() -> None:
    # Every config key is either tunable or fixed with a reason, never both: a new key needs a decision.
    assert set(TUNABLE_KEYS) | set(NOT_TUNABLE) == set(KEYS)
    assert not set(TUNABLE_KEYS) & set(NOT_TUNABLE)


# --- reading and writing -------------------------------------------------------------------------------


def test_space_to_dict_round_trips_through_yaml(tmp_path: Path) -> None:
    space = SearchSpace(
        "mine",
        {
            "batch_size": Param("batch_size", "int", low=1024, high=8192, step=1024),
            "lr": Param("lr", "float", low=0.001, high=0.01, step=0.001),
            "optimizer": Param("optimizer", "categorical", choices=("adamw", "sparse_adam")),
        },
    )
    path = write(tmp_path, yaml.safe_dump(space.to_dict(), sort_keys=False))
    again = load_space(path)
    # What to_dict writes, load_space reads back as the same parameters in the same order.
    assert again.params == space.params
    assert list(again.params) == list(space.params)
    assert again.to_optuna() == space.to_optuna()
    # An int range without a step is Optuna's step 1; a float step is kept.
    assert again.to_optuna()["batch_size"] == optuna.distributions.IntDistribution(1024, 8192, step=1024)
    assert again.to_optuna()["lr"].step == 0.001


def test_load_space_reads_exponents_without_a_dot_as_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "params:\n  lr: {type: float, low: 1e-4, high: 5e-2, log: true}\n")
    # YAML 1.1 reads 1e-4 as a string; the space reads the number that was meant.
    assert load_space(path).params["lr"] == Param("lr", "float", low=1e-4, high=5e-2, log=True)


def test_load_space_reads_exponent_choices_of_float_keys_as_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "params:\n  l2: {type: categorical, choices: [0, 1e-3, 1.0e-2]}\n")
    # Choices of a float key are numbers too, so Optuna hands the trial numbers.
    assert load_space(path).params["l2"].choices == (0, 1e-3, 1e-2)


def test_load_space_accepts_a_path_object_and_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "params:\n  emb_dim: {type: int, low: 8, high: 64}\n")
    # Both spellings name the same file, which is the space's name.
    assert load_space(path) == load_space(str(path))
    assert load_space(path).name == str(path)


# --- the file and its top level ------------------------------------------------------------------------


def test_load_space_rejects_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_space(path)
    # The message names the file and the builtin names that would have worked.
    assert str(info.value).startswith(f"{path}: no such search space file")
    assert "default, ablation" in str(info.value)


def test_load_space_rejects_an_unknown_builtin_name() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("defualt")
    # A name that is neither a builtin nor a file lists the builtins.
    assert str(info.value).startswith("defualt: no such search space file")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params: [\n", "not valid YAML at line 2"),
        ("", "the file is empty"),
        ("- lr\n- l2\n", "the top level is a list (['lr', 'l2'])"),
        ("lr: {type: float, low: 0.001, high: 0.1}\n", "unknown top-level key 'lr'"),
        ("parms: {}\n", "unknown top-level key 'parms' (did you mean 'params'?)"),
        ("{}\n", "no params key"),
        ("params: [lr, l2]\n", "params is a list (['lr', 'l2'])"),
        ("params: {}\n", "params is empty"),
    ],
)
def test_load_space_rejects_a_bad_top_level(tmp_path: Path, text: str, expected: str) -> None:
    # The message says what was found at the top level and what is expected there.
    assert expected in load_error(tmp_path, text)


def test_load_space_rejects_a_parameter_given_twice(tmp_path: Path) -> None:
    text = (
        "params:\n"
        "  lr: {type: float, low: 1.0e-4, high: 0.1, log: true}\n"
        "  l2: {type: float, low: 1.0e-4, high: 1.0, log: true}\n"
        "  lr: {type: float, low: 1.0e-3, high: 0.01}\n"
    )
    message = load_error(tmp_path, text)
    # PyYAML would keep the second lr silently; the space names it and both lines instead.
    assert "line 4: 'lr' is given twice (first on line 2)" in message


def test_load_space_rejects_a_field_given_twice(tmp_path: Path) -> None:
    message = load_error(tmp_path, "params:\n  lr: {type: float, low: 0.001, high: 0.1, low: 0.01}\n")
    # The same holds inside one parameter's spec.
    assert "'low' is given twice" in message


# --- parameter names -----------------------------------------------------------------------------------


def test_load_space_rejects_an_unknown_parameter_with_a_suggestion(tmp_path: Path) -> None:
    message = load_error(tmp_path, "params:\n  emb_dims: {type: int, low: 8, high: 64}\n")
    # The unknown name, the closest tunable key and the list of tunable keys.
    assert "param 'emb_dims': unknown parameter; did you mean 'emb_dim'?" in message
    assert "batch_size" in message


def test_load_space_suggests_the_key_for_another_library_s_name(tmp_path: Path) -> None:
    message = load_error(tmp_path, "params:\n  learning_rate: {type: float, low: 0.001, high: 0.1}\n")
    # learning_rate is spelt far from lr, so a short alias table finds it.
    assert "param 'learning_rate': unknown parameter; did you mean 'lr'?" in message


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("schedule_epochs", "a trial's own epochs"),
        ("seed", "fixed for a study"),
        ("val_n", "train/validation split"),
        ("data", "the data set"),
        ("device", "a run setting"),
    ],
)
def test_load_space_rejects_a_config_key_that_is_not_tunable(tmp_path: Path, key: str, why: str) -> None:
    message = load_error(tmp_path, f"params:\n  {key}: {{type: int, low: 1, high: 20}}\n")
    # The key is a real config key, so the message says why a study fixes it, not "unknown".
    assert f"param {key}: cannot be tuned, it is " in message
    assert why in message
    assert "remove it from params" in message


# --- parameter specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0.01", "param lr: spec 0.01 is not a mapping"),
        (
            "{type: floats, low: 0.001, high: 0.1}",
            "param lr: type 'floats' is unknown; did you mean 'float'?",
        ),
        ("{low: 0.001, high: 0.1}", "param lr: no type"),
        ("{type: float, lowest: 0.001, high: 0.1}", "param lr: unknown field 'lowest' (did you mean 'low'?)"),
        ("{type: float, high: 0.1}", "param lr: type float needs low"),
        ("{type: float, low: 0.001}", "param lr: type float needs high"),
        ("{type: float, low: x, high: 0.1}", "param lr: low 'x' is not a finite number"),
        ("{type: float, low: .nan, high: 0.1}", "param lr: low nan is not a finite number"),
        (
            "{type: float, low: 0.1, high: 0.001}",
            "param lr: low 0.1 is not below high 0.001; a range needs low < high",
        ),
        ("{type: float, low: 0.01, high: 0.01}", "param lr: low 0.01 is not below high 0.01"),
        ("{type: float, low: 0.001, high: 0.1, log: maybe}", "param lr: log 'maybe' is not true or false"),
        ("{type: float, low: 0.001, high: 0.1, choices: [0.01]}", "param lr: choices [0.01] does not apply"),
        ("{type: categorical, choices: [0.01], low: 0.001}", "param lr: low 0.001 does not apply"),
        ("{type: categorical, choices: [0.01], log: true}", "param lr: log true does not apply"),
        ("{type: categorical}", "param lr: type categorical needs choices"),
        ("{type: categorical, choices: 0.01}", "param lr: choices 0.01 is not a list"),
        ("{type: categorical, choices: []}", "param lr: choices [] is empty"),
        ("{type: categorical, choices: [0.01, 0.01]}", "param lr: choice 0.01 is listed twice"),
        ("{type: categorical, choices: [[0.01]]}", "param lr: choice [0.01] is a list"),
    ],
)
def test_load_space_rejects_a_malformed_spec(tmp_path: Path, spec: str, expected: str) -> None:
    message = load_error(tmp_path, f"params:\n  lr: {spec}\n")
    # The parameter, the value found and the rule, as the user wrote them.
    assert expected in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{type: float, low: 0, high: 1.0, log: true}", "param l2: low 0.0 is not > 0, which a log scale"),
        ("{type: float, low: -1.0, high: 1.0, log: true}", "param l2: low -1.0 is not > 0"),
        (
            "{type: float, low: 1.0e-4, high: 1.0, log: true, step: 0.1}",
            "step 0.1 cannot be combined with log",
        ),
        ("{type: float, low: 0.0, high: 1.0, step: 0}", "param l2: step 0.0 is not > 0"),
        ("{type: float, low: 0.0, high: 1.0, step: 0.3}", "not a multiple of step 0.3; set high: 0.9"),
    ],
)
def test_load_space_rejects_a_bad_scale_or_step(tmp_path: Path, spec: str, expected: str) -> None:
    message = load_error(tmp_path, f"params:\n  l2: {spec}\n")
    # Log scales need positive bounds and no step; a step must fit the range exactly.
    assert expected in message


# --- values against the training config ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "bias: {type: categorical, choices: [1, x]}",
            "param bias: choice 1 is rejected by the training config",
        ),
        ("bias: {type: categorical, choices: [true, x]}", "param bias: choice 'x' is rejected"),
        ("optimizer: {type: categorical, choices: [adam]}", "param optimizer: choice 'adam' is rejected"),
        ("emb_dim: {type: categorical, choices: [8, 16.5]}", "param emb_dim: choice 16.5 is rejected"),
        ("emb_dim: {type: categorical, choices: [0, 8]}", "param emb_dim: choice 0 is rejected"),
        ("lr: {type: float, low: 0, high: 0.1}", "param lr: low 0.0 is rejected by the training config"),
        ("weight_decay: {type: float, low: -0.1, high: 0.1}", "param weight_decay: low -0.1 is rejected"),
        ("batch_size: {type: int, low: 0, high: 8192}", "param batch_size: low 0 is rejected"),
    ],
)
def test_load_space_rejects_values_the_config_rejects(tmp_path: Path, line: str, expected: str) -> None:
    message = load_error(tmp_path, f"params:\n  {line}\n")
    # The space's context comes first, then TrainConfig's own rule in parentheses, then the fix.
    assert expected in message
    assert "(" in message and ("remove or correct that choice" in message or "to a value" in message)


def test_load_space_quotes_the_config_rule_for_a_bad_choice(tmp_path: Path) -> None:
    message = load_error(tmp_path, "params:\n  optimizer: {type: categorical, choices: [adamw, adam]}\n")
    # TrainConfig's rule lists the choices the key accepts.
    assert "optimizer: 'adam' is not one of 'adamw', 'sparse_adam'" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("emb_dim: {type: float, low: 8, high: 256}", "param emb_dim: type float would sample fractions"),
        ("batch_size: {type: float, low: 512, high: 8192}", "use type int"),
        ("emb_dim: {type: int, low: 8.5, high: 256}", "param emb_dim: low 8.5 is not an integer"),
        (
            "bias: {type: int, low: 0, high: 1}",
            "param bias: type int cannot tune it, bias takes only true, false",
        ),
        ("optimizer: {type: float, low: 0, high: 1}", "choices: [adamw, sparse_adam, lazy_adamw]"),
    ],
)
def test_load_space_rejects_a_type_that_does_not_fit_the_key(
    tmp_path: Path, line: str, expected: str
) -> None:
    message = load_error(tmp_path, f"params:\n  {line}\n")
    # Integer keys take int ranges; true/false and named keys take listed choices.
    assert expected in message


def test_load_space_accepts_sparse_adam_as_a_choice_on_its_own(tmp_path: Path) -> None:
    path = write(tmp_path, "params:\n  optimizer: {type: categorical, choices: [adamw, sparse_adam]}\n")
    # sparse_adam is a valid optimizer; whether the fixed weight_decay allows it is check_against's job.
    assert load_space(path).params["optimizer"].choices == ("adamw", "sparse_adam")


# --- the space against the user's fixed keys -----------------------------------------------------------


def test_space_check_against_rejects_a_key_both_tuned_and_fixed() -> None:
    space = load_space("default")
    with pytest.raises(ConfigError) as info:
        space.check_against({"lr": 0.01, "epochs": 20})
    # The key and the value the user fixed are named; epochs, which is not tuned, is no conflict.
    assert str(info.value).startswith(
        "default: tuned by the space and also set in the config: lr (fixed to 0.01)"
    )


def test_space_check_against_accepts_keys_the_space_leaves_alone() -> None:
    # Fixing keys the space does not tune is the normal case.
    load_space("default").check_against({"seed": 3, "optimizer": "adamw", "swa_start": 6})
    load_space("ablation").check_against({"emb_dim": 64, "lr": 0.01})


def test_space_check_against_rejects_an_unknown_fixed_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("ablation").check_against({"lrr": 0.01})
    # A typo in the fixed keys is caught here too.
    assert "the fixed config has unknown key(s) lrr" in str(info.value)


def test_space_check_against_rejects_a_tuned_value_the_fixed_keys_forbid() -> None:
    space = SearchSpace("mine", {"weight_decay": Param("weight_decay", "float", low=0.0, high=0.1)})
    with pytest.raises(ConfigError) as info:
        space.check_against({"optimizer": "sparse_adam"})
    message = str(info.value)
    # weight_decay 0 is fine with sparse_adam, but its high end would fail every such trial in Ray.
    assert message.startswith("mine: param weight_decay: a trial with weight_decay = 0.1 (its high)")
    assert "fixed keys (optimizer='sparse_adam')" in message
    assert "cannot be used with optimizer 'sparse_adam'" in message


def test_space_check_against_rejects_a_choice_the_defaults_forbid() -> None:
    space = SearchSpace(
        "mine", {"optimizer": Param("optimizer", "categorical", choices=("adamw", "sparse_adam"))}
    )
    with pytest.raises(ConfigError) as info:
        space.check_against({})
    # The default weight_decay 0.01 rules sparse_adam out; fixing weight_decay 0 lets it run.
    assert "param optimizer: a trial with optimizer = 'sparse_adam' (its choice)" in str(info.value)
    space.check_against({"weight_decay": 0.0})


def test_space_check_against_rejects_a_pair_of_tuned_values() -> None:
    space = SearchSpace(
        "mine",
        {
            "optimizer": Param("optimizer", "categorical", choices=("sparse_adam", "adamw")),
            "weight_decay": Param("weight_decay", "categorical", choices=(0.0, 0.1)),
        },
    )
    with pytest.raises(ConfigError) as info:
        space.check_against({})
    # Each value is fine alone; sparse_adam together with weight_decay 0.1 is not.
    assert "a trial with weight_decay = 0.1 (its choice), the other tuned keys at their first values" in str(
        info.value
    )


# --- building spaces in code ---------------------------------------------------------------------------


def test_param_checks_its_fields_when_built_in_code() -> None:
    # The same rules hold without a file: the error names the parameter and the value.
    with pytest.raises(ConfigError, match=r"param lr: low 0.1 is not below high 0.01"):
        Param("lr", "float", low=0.1, high=0.01)
    with pytest.raises(ConfigError, match=r"param lr: low '1e-3' is not a finite number"):
        Param("lr", "float", low="1e-3", high=0.01)


def test_search_space_checks_names_when_built_in_code() -> None:
    # A params key must match its Param, and name a tunable key.
    with pytest.raises(ConfigError, match=r"mine: params\['lr'\] holds a Param named 'l2'"):
        SearchSpace("mine", {"lr": Param("l2", "float", low=0.0, high=1.0)})
    with pytest.raises(ConfigError, match=r"mine: param seed: cannot be tuned"):
        SearchSpace("mine", {"seed": Param("seed", "int", low=1, high=20)})
    # A trial's weight decay comes from one key or the other.
    with pytest.raises(ConfigError, match=r"mine: params epoch_decay and weight_decay: .* tune one of them"):
        SearchSpace(
            "mine",
            {
                "weight_decay": Param("weight_decay", "float", low=0.01, high=1.0),
                "epoch_decay": Param("epoch_decay", "float", low=0.01, high=1.0),
            },
        )
