from __future__ import annotations

import json
from pathlib import Path

import pytest

from objective.config import (
    FIELD_TYPES,
    ConfigError,
    TrainConfig,
    feature_side,
    from_dict,
    load_json,
    parse_assignment,
)
from objective.errors import UserError


def test_defaults_are_the_seed_recipe() -> None:
    config = TrainConfig()
    assert (config.lr, config.beta1, config.beta2, config.batch_size, config.epochs) == (
        0.01, 0.7, 0.9, 256, 1.0)
    assert (config.conv1_kernel, config.conv2_kernel) == (5, 3)
    assert (config.conv1_width, config.conv2_width, config.fc_width) == (24, 32, 256)
    assert config.seed == 0
    assert config.train_subset == 0


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, UserError)


def test_round_trip_through_dict() -> None:
    config = TrainConfig(lr=0.02, batch_size=512, conv1_kernel=7, channels_last=False)
    assert from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == set(FIELD_TYPES)


def test_replace_returns_a_new_validated_config() -> None:
    config = TrainConfig()
    changed = config.replace(lr=0.05, seed=3)
    assert (changed.lr, changed.seed) == (0.05, 3)
    assert config.lr == 0.01  # frozen original untouched
    with pytest.raises(ConfigError, match="batch_size must be > 0"):
        config.replace(batch_size=0)
    with pytest.raises(ConfigError, match="unknown config key"):
        config.replace(learning_rate=0.1)


def test_unknown_keys_are_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"lr": 0.01, "learning_rate": 0.1, "dropout": 0.5})
    message = str(caught.value)
    assert "dropout, learning_rate" in message
    assert "known keys:" in message and "conv1_kernel" in message
    assert "\n" not in message


POSITIVE_FIELDS = ["lr", "batch_size", "epochs", "conv1_kernel", "conv2_kernel", "conv1_width",
                   "conv2_width", "fc_width", "eval_batch", "check_every"]


@pytest.mark.parametrize("name", POSITIVE_FIELDS)
def test_non_positive_values_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be > 0"):
        from_dict({name: 0})


def test_batch_size_zero_and_negative_lr() -> None:
    with pytest.raises(ConfigError, match="batch_size must be > 0, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=-1e-3)


def test_nan_lr_is_rejected() -> None:
    with pytest.raises(ConfigError, match="lr must be > 0"):
        from_dict({"lr": "nan"})


@pytest.mark.parametrize("name", ["lr", "epochs"])
def test_infinite_lr_and_epochs_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be finite, got inf"):
        from_dict({name: "inf"})


@pytest.mark.parametrize("name", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_betas_outside_open_unit_interval_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be in \(0, 1\)"):
        from_dict({name: value})


@pytest.mark.parametrize("value", [1e-6, 0.5, 0.999999])
def test_betas_inside_the_interval_are_accepted(value: float) -> None:
    config = from_dict({"beta1": value, "beta2": value})
    assert config.beta1 == config.beta2 == value


def test_train_subset_must_not_be_negative() -> None:
    assert TrainConfig(train_subset=0).train_subset == 0
    assert TrainConfig(train_subset=100).train_subset == 100
    with pytest.raises(ConfigError, match="train_subset must be >= 0"):
        TrainConfig(train_subset=-1)


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": "abc"}, "lr must be a number, got 'abc'"),
    ({"lr": None}, "lr must be a number, got None"),
    ({"lr": True}, "lr must be a number, got True"),
    ({"batch_size": 1.5}, "batch_size must be a whole number, got 1.5"),
    ({"seed": "inf"}, "seed must be a whole number"),
    ({"channels_last": "yes"}, "channels_last must be true or false, got 'yes'"),
    ({"bf16_autocast": "2"}, "bf16_autocast must be auto, on or off, got '2'"),
    ({"bf16_autocast": 1}, "bf16_autocast must be auto, on or off, got 1"),
])
def test_wrong_types_are_rejected_with_one_line(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_strings_from_the_command_line_are_coerced_to_the_field_types() -> None:
    config = from_dict({"lr": "0.02", "batch_size": "512", "epochs": "2", "seed": "7.0",
                        "beta1": "0.8"})
    assert config.lr == 0.02 and isinstance(config.lr, float)
    assert config.batch_size == 512 and isinstance(config.batch_size, int)
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.seed == 7 and isinstance(config.seed, int)
    assert config.beta1 == 0.8


def test_whole_floats_become_ints_and_ints_become_floats() -> None:
    config = from_dict({"batch_size": 128.0, "lr": 1})
    assert config.batch_size == 128 and isinstance(config.batch_size, int)
    assert config.lr == 1.0 and isinstance(config.lr, float)


@pytest.mark.parametrize(("text", "expected"), [
    ("True", True), ("1", True), ("FALSE", False), ("0", False), (True, True), (False, False),
])
def test_bool_parsing(text: str | bool, expected: bool) -> None:
    config = from_dict({"channels_last": text, "bf16_autocast": text})
    assert config.channels_last is expected
    assert config.bf16_autocast == ("on" if expected else "off")  # a switch also takes true/false


@pytest.mark.parametrize("text", ["auto", "on", "off", "AUTO"])
def test_bf16_autocast_takes_auto_on_or_off(text: str) -> None:
    assert from_dict({"bf16_autocast": text}).bf16_autocast == text.lower()


@pytest.mark.parametrize(("text", "expected"), [
    (" lr = 0.1 ", ("lr", "0.1")),
    ("lr=", ("lr", "")),
    ("a=b=c", ("a", "b=c")),
])
def test_parse_assignment(text: str, expected: tuple[str, str]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["lr", " =0.1"])
def test_parse_assignment_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_assignment(text)


def test_assignment_feeds_from_dict() -> None:
    config = from_dict(dict(parse_assignment(t) for t in ["lr=0.03", "batch_size=64",
                                                          "channels_last=0"]))
    assert (config.lr, config.batch_size, config.channels_last) == (0.03, 64, False)


def test_load_json_plain_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lr": 0.02, "batch_size": 512}))
    assert load_json(path) == {"lr": 0.02, "batch_size": 512}
    assert load_json(str(path)) == {"lr": 0.02, "batch_size": 512}


def test_load_json_accepts_an_export_document(tmp_path: Path) -> None:
    config = TrainConfig(lr=0.02, conv1_kernel=7).to_dict()
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"study": "mnist_fast", "value": 4.2, "config": config,
                                "params": {"lr": 0.02}}))
    assert load_json(path) == config
    assert from_dict(load_json(path)) == TrainConfig(lr=0.02, conv1_kernel=7)


def test_load_json_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.json: No such file"):
        load_json(path)


def test_load_json_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_json(tmp_path)


def test_load_json_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{lr: 0.1,")
    with pytest.raises(ConfigError, match="is not valid JSON") as caught:
        load_json(path)
    assert "\n" not in str(caught.value)


def test_load_json_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x89PNG\x00\xff")
    with pytest.raises(ConfigError, match=r"config file .*model\.pt is not UTF-8 text"):
        load_json(path)


@pytest.mark.parametrize("document", ["[1, 2]", "null"])
def test_load_json_non_object(tmp_path: Path, document: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(document)
    with pytest.raises(ConfigError, match="must hold a JSON object of config fields"):
        load_json(path)


def test_load_json_config_key_that_is_not_an_object_is_checked_like_any_key(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"config": 5}')
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(load_json(path))


def test_feature_side_of_the_seed_recipe() -> None:
    # 28 -conv5-> 24 -pool-> 12 -conv3-> 10 -pool-> 5
    assert feature_side(5, 3) == 5
    assert TrainConfig().flat_features() == 32 * 5 * 5
    # odd sizes are floored by the pools: 28 -conv4-> 25 -pool-> 12 -conv2-> 11 -pool-> 5
    assert feature_side(4, 2) == 5
