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
NO_GPU = not torch.cuda.is_available()

# Bad inputs: (arguments, what the one error line must say). Each must fail cleanly: exit code 2,
# exactly one "error:" line on stderr, no traceback. Checked here through `main`; tests/test_bad_input.py
# runs a selection as real processes, with the bad inputs of the other CLIs.
BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "unknown key": (["--set", "learning_rate=0.1"], "unknown config key(s) learning_rate"),
    "set without =": (["--set", "lr"], "--set expects key=value"),
    "batch_size=0": (["--set", "batch_size=0"], "batch_size must be > 0"),
    "lr=-1": (["--set", "lr=-1"], "lr must be > 0"),
    "lr=abc": (["--set", "lr=abc"], "lr must be a number"),
    "epochs=inf": (["--set", "epochs=inf"], "epochs must be finite"),
    "beta1=1": (["--set", "beta1=1"], "beta1 must be in (0, 1)"),
    "conv1_kernel=27": (["--set", "conv1_kernel=27"], "conv1_kernel=27 and conv2_kernel=3 do not fit"),
    "unreadable config": (["--config", "{tmp}/missing.json"], "cannot read config file"),
    "config is a directory": (["--config", "{tmp}"], "cannot read config file"),
    "invalid JSON config": (["--config", "{tmp}/invalid.json"], "is not valid JSON"),
    "non-object config": (["--config", "{tmp}/list.json"], "must hold a JSON object"),
    "binary config": (["--config", "{tmp}/binary.json"], "binary.json is not UTF-8 text"),
    "bad value in config": (["--config", "{tmp}/bad_value.json"], "batch_size must be a whole number"),
    "device tpu": (["--device", "tpu"], "unknown device 'tpu'"),
    "seeds abc": (["--seeds", "abc"], "--seeds expects comma-separated integers"),
    "seeds empty": (["--seeds", ","], "--seeds needs at least one seed"),
    "threads 0": (["--threads", "0", "--device", "cpu"], "--threads must be >= 1"),
}
if NO_GPU:
    BAD_INPUTS["device cuda"] = (["--device", "cuda"], "no usable CUDA GPU")


def _make_inputs(tmp: Path) -> None:
    (tmp / "no-mnist").mkdir(exist_ok=True)
    (tmp / "invalid.json").write_text('{"lr": 0.01,,}')
    (tmp / "list.json").write_text("[1, 2, 3]")
    (tmp / "bad_value.json").write_text('{"batch_size": 1.5}')
    (tmp / "binary.json").write_bytes(b"\x89PNG\x00\xff")


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


@pytest.mark.skipif(NO_GPU, reason="covered by the bad-input cases on a machine without a GPU")
def test_device_cuda_is_accepted_with_a_gpu() -> None:
    from objective.trainer import resolve_device

    assert resolve_device("cuda").type == "cuda"


# --- in-process: parsing and the success path on synthetic data --------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("0", [0]), ("0,1,2", [0, 1, 2]), (" 3 , 4 ", [3, 4]), ("5,", [5]), ("-1", [-1]),
])
def test_parse_seeds(text: str, expected: list[int]) -> None:
    assert parse_seeds(text) == expected


@pytest.mark.parametrize("text", ["abc", "1,b", "1.5", "", ",", " "])
def test_parse_seeds_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--seeds"):
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
    accuracies = [run["accuracy"] for run in summary["runs"]]
    assert summary["mean_accuracy"] == pytest.approx(sum(accuracies) / 2)
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
        [sys.executable, "-m", "objective.train", "--data-dir", str(mnist_root), "--seeds", "0", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert {"runs", "median_seconds", "mean_accuracy", "device"} <= set(summary)
    assert summary["config"] == TrainConfig().to_dict()
    assert len(summary["runs"]) == 1
    assert summary["runs"][0]["diverged"] is False
    assert summary["runs"][0]["steps"] == 235  # ceil(60000 / 256): one full epoch
    assert summary["mean_accuracy"] >= 0.989
