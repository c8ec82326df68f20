from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import objective.train as train_module
from objective.config import ConfigError, TrainConfig
from objective.data import Mnist
from objective.train import build_config, main, parse_seeds
from tests.search.workers import offline_env

REPO_ROOT = Path(__file__).resolve().parents[2]

# Bad inputs: (arguments, what the one error line must say), one for each way `main` can be handed
# one. Each must fail cleanly: exit code 2, exactly one "error:" line on stderr, no traceback, before
# any data is loaded. The rules behind each (every config key's check, every way a file or a --seeds
# can be wrong, every device) are unit-tested in test_config.py, test_timed_run.py and below;
# tests/test_bad_input.py runs the real process for what only a process shows (argparse's errors, a
# missing MNIST).
BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "bad config key": (["--set", "learning_rate=0.1"], "unknown config key(s) learning_rate"),
    "bad config value": (["--set", "lr=abc"], "lr must be a number"),
    "unreadable config file": (["--config", "{tmp}/missing.json"], "cannot read config file"),
    "invalid JSON config file": (["--config", "{tmp}/invalid.json"], "is not valid JSON"),
    "bad seeds": (["--seeds", "abc"], "--seeds expects comma-separated integers"),
    "bad device": (["--device", "tpu"], "unknown device 'tpu'"),
    "bad threads": (["--threads", "0", "--device", "cpu"], "--threads must be >= 1"),
}


def _make_inputs(tmp: Path) -> None:
    (tmp / "no-mnist").mkdir(exist_ok=True)
    (tmp / "invalid.json").write_text('{"lr": 0.01,,}')


def _arguments(name: str, tmp: Path) -> list[str]:
    return [argument.format(tmp=tmp) for argument in BAD_INPUTS[name][0]]


def _assert_one_error_line(stderr: str, name: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert BAD_INPUTS[name][1] in lines[0]


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_in_process(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    _make_inputs(tmp_path)
    monkeypatch.setenv("MNIST_DATA", str(tmp_path / "no-mnist"))

    def no_data(*args: object, **kwargs: object) -> Mnist:
        raise AssertionError("a bad input must be rejected before any data is loaded")

    monkeypatch.setattr(train_module, "load_resident", no_data)
    assert main(_arguments(name, tmp_path)) == 2
    out, err = capsys.readouterr()
    _assert_one_error_line(err, name)
    assert out == ""


# --- in-process: parsing and the success path on synthetic data --------------------------------

@pytest.mark.parametrize(("text", "expected"), [(" 3 , 4 ", [3, 4]), ("5,", [5]), ("-1", [-1])])
def test_parse_seeds(text: str, expected: list[int]) -> None:
    assert parse_seeds(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("1,b", "--seeds expects comma-separated integers, got '1,b'"),
    (" , ", "--seeds needs at least one seed"),
])
def test_parse_seeds_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        parse_seeds(text)


def test_build_config_from_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"lr": 0.02, "batch_size": 512, "conv1_kernel": 7},
                                "value": 3.1}))
    config = build_config(str(path), ["batch_size=128", "channels_last=false"])
    assert config == TrainConfig(lr=0.02, batch_size=128, conv1_kernel=7, channels_last=False)
    assert build_config(None, []) == TrainConfig()
    assert build_config(None, ["lr=0.05", "lr=0.03"]).lr == 0.03  # the last --set wins


@pytest.fixture
def synthetic_cli(monkeypatch: pytest.MonkeyPatch, synthetic_mnist: Mnist) -> list[tuple[object, ...]]:
    """`main` trains on the synthetic data instead of loading MNIST; records what it asked for."""
    asked: list[tuple[object, ...]] = []

    def fake_load_resident(root: Path, device: torch.device, download: bool = True) -> Mnist:
        asked.append((root, device))
        return synthetic_mnist

    monkeypatch.setattr(train_module, "load_resident", fake_load_resident)
    return asked


FAST_SETS = ["--set", "batch_size=64", "--set", "eval_batch=100", "--set", "conv1_width=8",
             "--set", "fc_width=64", "--device", "cpu"]


def test_main_json_output(synthetic_cli: list[tuple[object, ...]], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FAST_SETS, "--seeds", "0,1", "--json", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    summary = json.loads(out)
    assert {"runs", "median_seconds", "mean_accuracy", "device", "config", "fingerprint"} <= set(summary)
    assert summary["device"] == "cpu"
    assert [run["seed"] for run in summary["runs"]] == [0, 1]
    assert all(run["steps"] == 8 for run in summary["runs"])
    accuracies = [run["test_accuracy"] for run in summary["runs"]]  # all test images, as the reference's
    assert summary["mean_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert all(run["test_accuracy"] == pytest.approx((run["accuracy"] + run["holdout_accuracy"]) / 2)
               for run in summary["runs"])
    seconds = sorted(run["seconds"] for run in summary["runs"])
    assert summary["median_seconds"] == pytest.approx(sum(seconds) / 2)
    assert summary["config"]["batch_size"] == 64
    assert synthetic_cli == [(tmp_path.resolve(), torch.device("cpu"))]


def test_main_text_output(synthetic_cli: list[tuple[object, ...]],
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FAST_SETS, "--seeds", "3"]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("seed 3: ") and "accuracy" in lines[0]
    assert lines[1].startswith("median ") and "mean accuracy" in lines[1]


def test_main_flags_a_diverged_run(monkeypatch: pytest.MonkeyPatch, synthetic_mnist: Mnist,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    images = torch.full_like(synthetic_mnist.train_images, float("nan"))
    poisoned = Mnist(images, synthetic_mnist.train_labels, synthetic_mnist.test_images,
                     synthetic_mnist.test_labels)
    monkeypatch.setattr(train_module, "load_resident", lambda root, device, download=True: poisoned)
    assert main([*FAST_SETS, "--set", "check_every=1"]) == 0
    out, _ = capsys.readouterr()
    assert "(diverged)" in out.splitlines()[0]


def test_main_threads(synthetic_cli: list[tuple[object, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        assert main([*FAST_SETS, "--threads", "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["threads"] == 1
    finally:
        torch.set_num_threads(before)


# --- the seed recipe on the real MNIST --------------------------------------------------------

@pytest.mark.slow
def test_seed_recipe_reaches_the_target_on_real_mnist(mnist_root: Path, tmp_path: Path) -> None:
    env = offline_env(os.environ, tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "objective.train", "--data-dir", str(mnist_root), "--seeds", "0",
         "--threads", "1", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert {"runs", "median_seconds", "mean_accuracy", "device"} <= set(summary)
    assert summary["config"] == TrainConfig().to_dict()
    assert len(summary["runs"]) == 1
    assert summary["runs"][0]["diverged"] is False
    assert summary["runs"][0]["steps"] == 235  # ceil(60000 / 256): one full epoch
    assert summary["mean_accuracy"] >= 0.989
