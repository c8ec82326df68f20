from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studies.spec import SpecError, load_spec, parse_spec

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def minimal(**params: dict) -> dict:
    return {"study": {"name": "s"}, "params": params or {"lr": {"type": "float", "low": 0.001, "high": 0.1}}}


@pytest.mark.parametrize("name", ["mnist_fast.toml", "smoke.toml"])
def test_shipped_specs_load_and_contain_the_seed_recipe(name: str) -> None:
    spec = load_spec(STUDIES / name)
    assert spec.space
    for param, value in spec.baseline_params().items():
        distribution = spec.space[param]
        assert distribution._contains(distribution.to_internal_repr(value)), param


def test_mission_space_reaches_past_the_seed_recipe_on_the_fast_side() -> None:
    spec = load_spec(STUDIES / "mnist_fast.toml")
    assert {"lr", "beta1", "beta2", "batch_size", "conv1_kernel", "conv1_width"} <= set(spec.space)
    batch = spec.space["batch_size"]
    assert isinstance(batch, CategoricalDistribution) and max(batch.choices) > 256
    assert spec.objective.accuracy_target == 0.99


def test_distributions_are_optunas_own() -> None:
    spec = parse_spec(minimal(
        lr={"type": "float", "low": 0.001, "high": 0.1, "log": True},
        batch_size={"type": "categorical", "choices": [128, 256]},
        conv1_width={"type": "int", "low": 8, "high": 32, "step": 8},
    ))
    assert spec.space["lr"] == FloatDistribution(0.001, 0.1, log=True)
    assert spec.space["batch_size"] == CategoricalDistribution([128, 256])
    assert spec.space["conv1_width"] == IntDistribution(8, 32, step=8)


def test_sampler_is_built_with_the_given_seed() -> None:
    spec = parse_spec({**minimal(), "sampler": {"name": "random", "seed": 3}})
    assert spec.sampler_seed == 3
    assert isinstance(spec.make_sampler(3), optuna.samplers.RandomSampler)


def test_seed_rules_and_budget_in_minutes() -> None:
    spec = parse_spec({**minimal(), "study": {"name": "s", "minutes": 14},
                       "objective": {"repeats": 3, "crown_seeds": 10, "slower_margin": 0.2}})
    assert spec.minutes == 14.0
    rules = spec.objective.seed_rules()
    assert (rules.repeats, rules.crown_seeds, rules.slower_margin) == (3, 10, 0.2)
    assert parse_spec(minimal()).minutes is None


def test_start_points_are_enqueued_over_the_baseline_after_it() -> None:
    space = minimal(lr={"type": "float", "low": 0.001, "high": 0.1},
                    batch_size={"type": "categorical", "choices": [128, 256]},
                    conv1_width={"type": "int", "low": 8, "high": 32, "step": 8})
    spec = parse_spec({**space, "start": [{"lr": 0.02, "batch_size": 256}, {"conv1_width": 16}]})
    baseline, first, second = spec.start_params()
    assert baseline == spec.baseline_params()
    assert first == {**baseline, "lr": 0.02, "batch_size": 256}
    assert second == {**baseline, "conv1_width": 16}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"study": {"name": "s"}, "params": {"dropout": {"type": "float", "low": 0, "high": 1}}},
         "[params.dropout] unknown parameter 'dropout'; searchable: batch_norm, batch_size,"),
        ({"study": {"name": "s"}, "params": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}},
         "[params.lr] low (0.1) is greater than high (0.01)"),
        ({"study": {"name": "s"}, "params": {"lr": {"type": "float", "low": 0.1, "high": 0.1}}}, "is empty"),
        ({"study": {"name": "s"}, "params": {"batch_size": {"type": "categorical", "choices": []}}},
         "[params.batch_size] choices must be a non-empty list"),
        ({"study": {"name": "s"}, "params": {"lr": {"type": "float", "low": "a", "high": 1}}},
         "[params.lr] low must be a number, got 'a'"),
        ({"study": {"name": "s"}, "params": {"lr": {"type": "gaussian"}}}, "type must be"),
        ({"study": {"name": "s"}, "params": {"conv1_kernel": {"type": "int", "low": 5, "high": 27}}},
         "[params.conv1_kernel] value 27 cannot be trained: conv1_kernel=27 and conv2_kernel=3 do not fit a "
         "28x28 image"),
        ({"study": {"name": "s"}, "params": {"conv1_width": {"type": "int", "low": 0, "high": 24}}},
         "[params.conv1_width] value 0 cannot be trained: conv1_width must be > 0"),
        ({"study": {"name": "s"}, "params": {"conv1_kernel": {"type": "int", "low": 3, "high": 15},
                                            "conv2_kernel": {"type": "int", "low": 2, "high": 7}}},
         "cannot be trained"),
        ({"study": {"name": "s"}, "params": {"batch_size": {"type": "categorical", "choices": [0, 256]}}},
         "batch_size must be > 0"),
        ({"study": {"name": "s"}, "params": {"batch_size": {"type": "categorical", "choices": [128, 512]}}},
         "does not contain the baseline"),
        ({"study": {"name": "s"}, "params": {"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
         "[params.lr]"),
        ({"study": {"name": "s"}, "params": {"seed": {"type": "int", "low": 0, "high": 9}}},
         "unknown parameter 'seed'"),
        ({"study": {"name": "s"}, "params": {}}, "[params] is empty"),
        ({**minimal(), "sampler": {"name": "annealing"}}, "unknown sampler 'annealing'; choose one of tpe, "),
        ({**minimal(), "sampler": {"name": "tpe", "n_startup": 3}}, "bad option"),
        ({**minimal(), "pruner": {"name": "median"}}, "unknown key(s) pruner"),
        ({**minimal(), "objective": {"crown_seeds": 0}}, "crown_seeds must be >= 1"),
        ({**minimal(), "study": {"name": "s", "minutes": 0}}, "minutes must be > 0"),
        ({**minimal(), "start": {"lr": 0.02}}, "array of tables"),
        ({**minimal(), "start": [{}]}, "[[start]] #1 is empty"),
        ({**minimal(), "start": [{"lr": 0.5}]}, "[[start]] #1 lr=0.5 is outside [params.lr]"),
        ({**minimal(), "start": [{"epochs": 2.0}]}, "unknown key(s) epochs"),
        ({**minimal(), "objective": {"accuracy_target": 1.5}}, "accuracy_target"),
        ({**minimal(), "objective": {"repeats": 0}}, "repeats must be >= 1"),
        ({**minimal(), "objective": {"target": 0.99}}, "unknown key(s) target"),
        ({**minimal(), "train": {"batch_size": -1}}, "[train] batch_size must be > 0"),
        ({**minimal(), "study": {"name": "bad name/../x"}}, "is not allowed"),
        ({**minimal(), "study": {"name": "s", "direction": "maximize"}}, "direction"),
        ({**minimal(), "study": {"name": "s", "n_trials": 0}}, "n_trials must be >= 1"),
        ({**minimal(), "extra": {}}, "unknown key(s) extra"),
    ],
)
def test_bad_specs_are_rejected_with_a_message(document: dict, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(document)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[study\nname = 's'")
    with pytest.raises(SpecError, match=r"broken\.toml is not valid TOML"):
        load_spec(path)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "absent.toml")
