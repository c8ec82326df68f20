from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from objective.config import TrainConfig
from objective.data import Mnist
from objective.errors import UserError
from objective.model import build_model
from objective.result import RunResult
from objective.timed_run import (
    bf16_enabled,
    fingerprint,
    resolve_device,
    total_steps,
    train_count,
    train_once,
)

CPU = torch.device("cpu")
# Small and quick on 512 synthetic images: 8 steps per epoch.
FAST = TrainConfig(batch_size=64, eval_batch=100, conv1_width=8, conv2_width=16, fc_width=64)
LEARNS = TrainConfig(batch_size=64, eval_batch=100, epochs=3.0)  # 24 steps of the recipe's widths


def _comparable(result: RunResult) -> tuple[object, ...]:
    """Everything a run computes, without its timings."""
    return (result.seed, result.accuracy, result.holdout_accuracy, result.steps, result.diverged,
            result.over_time)


def _poisoned(data: Mnist, rows: slice | list[int]) -> Mnist:
    images = data.train_images.clone()
    images[rows] = float("nan")
    return Mnist(images, data.train_labels, data.test_images, data.test_labels)


# --- step accounting ---------------------------------------------------------------------------

def test_train_count_and_total_steps(synthetic_mnist: Mnist) -> None:
    assert train_count(FAST, synthetic_mnist) == 512
    assert total_steps(FAST, synthetic_mnist) == 8
    assert total_steps(FAST.replace(batch_size=100), synthetic_mnist) == 6  # last batch partial
    assert total_steps(FAST.replace(epochs=0.5), synthetic_mnist) == 4
    assert total_steps(FAST.replace(epochs=1.3), synthetic_mnist) == 11  # ceil(1.3 * 8)
    assert total_steps(FAST.replace(epochs=0.001), synthetic_mnist) == 1
    subset = FAST.replace(train_subset=128)
    assert train_count(subset, synthetic_mnist) == 128
    assert total_steps(subset, synthetic_mnist) == 2
    # a subset larger than the data is the whole data
    assert train_count(FAST.replace(train_subset=10_000), synthetic_mnist) == 512


# --- a normal run -------------------------------------------------------------------------------

def test_train_once_result(synthetic_mnist: Mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    import objective.timed_run as timed_run_module

    built: list[torch.nn.Module] = []

    def build_and_keep(config: TrainConfig, device: torch.device) -> torch.nn.Module:
        built.append(build_model(config, device))
        return built[-1]

    monkeypatch.setattr(timed_run_module, "build_model", build_and_keep)
    result = train_once(FAST.replace(seed=3), synthetic_mnist)
    assert result.seed == 3
    assert result.steps == total_steps(FAST, synthetic_mnist)
    assert not result.diverged and not result.over_time
    # The accuracies are the trained model's (the last one built) on the even- and the odd-indexed
    # test images, scored here again independently, in the run's eval batches.
    model, test = built[-1].eval(), synthetic_mnist.test_images
    if FAST.channels_last:
        test = test.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16_enabled(FAST, CPU)):
        predicted = torch.cat([model(test[first:first + FAST.eval_batch]).argmax(dim=1)
                               for first in range(0, len(test), FAST.eval_batch)])
    hits = (predicted == synthetic_mnist.test_labels).double()
    assert (result.accuracy, result.holdout_accuracy) == (hits[0::2].mean().item(), hits[1::2].mean().item())
    assert result.train_seconds <= result.seconds
    json.dumps(result.to_dict())  # plain values only


def test_train_once_learns_the_synthetic_classes(synthetic_mnist: Mnist) -> None:
    result = train_once(LEARNS, synthetic_mnist)
    assert result.steps == 24
    assert result.accuracy >= 0.8  # chance is 0.1


@pytest.mark.parametrize(("channels_last", "bf16_autocast"),
                         [(False, "off"), (True, "off"), (False, "on"), (True, "auto")])
def test_speed_knobs_run(synthetic_mnist: Mnist, channels_last: bool, bf16_autocast: str) -> None:
    # Knobs change speed, not what is learned: 3 epochs of every combination learn the synthetic
    # classes as the plain run does (test_train_once_learns_the_synthetic_classes)
    config = LEARNS.replace(channels_last=channels_last, bf16_autocast=bf16_autocast)
    result = train_once(config, synthetic_mnist)
    assert result.steps == 24 and not result.diverged
    assert result.accuracy >= 0.8  # chance is 0.1
    assert result.fingerprint["bf16_autocast"] is bf16_enabled(config, CPU)


def test_bf16_auto_is_on_only_on_a_cpu_with_amx(monkeypatch: pytest.MonkeyPatch,
                                                synthetic_mnist: Mnist) -> None:
    auto = TrainConfig()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bf16_enabled(auto, torch.device("cpu"))
    assert not bf16_enabled(auto, torch.device("cuda"))  # unmeasured on a GPU: the reference's fp32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not bf16_enabled(auto, torch.device("cpu"))
    assert bf16_enabled(auto.replace(bf16_autocast="on"), torch.device("cpu"))
    assert train_once(FAST, synthetic_mnist).fingerprint["bf16_autocast"] is False  # as it ran


def test_the_halves_are_the_even_and_the_odd_test_images(synthetic_mnist: Mnist) -> None:
    # the odd-indexed test images relabelled wrong: a run that learned the classes scores them
    # near 0 and the even-indexed ones well, however the eval batches fall (63 is odd)
    labels = synthetic_mnist.test_labels.clone()
    labels[1::2] = (labels[1::2] + 1) % 10
    data = Mnist(synthetic_mnist.train_images, synthetic_mnist.train_labels, synthetic_mnist.test_images,
                 labels)
    learned = TrainConfig(batch_size=64, eval_batch=63, epochs=3.0)
    result = train_once(learned, data)
    assert result.accuracy >= 0.8 and result.holdout_accuracy <= 0.2
    assert result.test_accuracy == pytest.approx((result.accuracy + result.holdout_accuracy) / 2)
    again = train_once(learned.replace(eval_batch=200), data)
    assert (again.accuracy, again.holdout_accuracy) == (result.accuracy, result.holdout_accuracy)


def test_eval_batch_that_does_not_divide_the_test_set(synthetic_mnist: Mnist) -> None:
    # 200 test images in batches of 64 -> 64, 64, 64, 8: all must be scored, none twice
    a = train_once(FAST.replace(eval_batch=64), synthetic_mnist)
    b = train_once(FAST.replace(eval_batch=200), synthetic_mnist)
    assert (a.accuracy, a.holdout_accuracy) == (b.accuracy, b.holdout_accuracy)


def test_subset_and_fractional_epochs(synthetic_mnist: Mnist) -> None:
    assert train_once(FAST.replace(train_subset=128), synthetic_mnist).steps == 2
    assert train_once(FAST.replace(epochs=1.5), synthetic_mnist).steps == 12


# --- the timing protocol (docs/timing.md) ------------------------------------------------------

def test_the_clock_covers_model_construction_training_and_evaluation_only(
        synthetic_mnist: Mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of what train_once does, from stand-ins that record each call around the real one;
    the clock is a counter, so the result's seconds are spans of events, not of wall time."""
    import objective.data as data_module
    import objective.timed_run as timed_run_module

    events: list[str] = []

    def recorded(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            events.append(name)
            try:
                return real(*args, **kwargs)
            finally:
                events.append(f"{name} done")
        return call

    def clock() -> float:
        events.append("clock")
        return float(len(events))

    for name in ("warm_up", "_sync", "build_model", "_evaluate"):
        monkeypatch.setattr(timed_run_module, name, recorded(name, getattr(timed_run_module, name)))
    monkeypatch.setattr(timed_run_module.F, "nll_loss", recorded("step", timed_run_module.F.nll_loss))
    monkeypatch.setattr(timed_run_module, "time", type("Clock", (), {"perf_counter": staticmethod(clock)}))
    for name in ("load_resident", "load_uint8", "to_device"):  # the data is resident already
        monkeypatch.setattr(data_module, name, recorded(f"data.{name}", getattr(data_module, name)))
    monkeypatch.setattr(timed_run_module, "_warmed", set())  # this process may have warmed the shapes

    config = FAST.replace(check_every=1000)
    result = train_once(config, synthetic_mnist)

    reads = [i for i, event in enumerate(events) if event == "clock"]
    start, trained, stop = reads[0], reads[-2], reads[-1]
    assert not [event for event in events if event.startswith("data.")]
    # the warm-up first, untimed: a throwaway model through a full batch and an evaluation
    warm = events[:events.index("warm_up done") + 1]
    assert {"build_model", "step", "_evaluate"} <= set(warm)
    assert events.index("warm_up done") < start
    # the device synchronised before each read of the clock that starts or stops a span
    assert [events[i - 1] for i in (start, trained, stop)] == ["_sync done"] * 3
    # inside the clock: model construction, every training step, then evaluation, in that order
    timed = events[start:stop]
    assert "build_model" not in events[events.index("warm_up done"):start]
    assert timed.index("build_model") < timed.index("step")
    assert events[start:trained].count("step") == result.steps == total_steps(config, synthetic_mnist)
    assert "_evaluate" not in events[start:trained] and "step" not in events[trained:]
    assert events[trained:stop].count("_evaluate done") == 1
    assert events[stop:] == ["clock"]  # nothing after the clock stops
    assert (result.train_seconds, result.seconds) == (trained - start, stop - start)


# --- reproducibility ----------------------------------------------------------------------------

def test_same_seed_same_result(synthetic_mnist: Mnist) -> None:
    config = TrainConfig(batch_size=64, eval_batch=100, epochs=2.0, seed=5)
    first = train_once(config, synthetic_mnist)
    second = train_once(config, synthetic_mnist)
    assert _comparable(first) == _comparable(second)


def test_same_seed_same_result_with_the_seed_recipe_speed_knobs_off(synthetic_mnist: Mnist) -> None:
    config = FAST.replace(channels_last=False, bf16_autocast="off", epochs=2.0, seed=1)
    assert _comparable(train_once(config, synthetic_mnist)) == _comparable(
        train_once(config, synthetic_mnist))


def test_different_seeds_can_differ(synthetic_mnist: Mnist) -> None:
    config = TrainConfig(batch_size=64, eval_batch=100, epochs=2.0)
    accuracies = {train_once(config.replace(seed=seed), synthetic_mnist).accuracy for seed in range(4)}
    assert len(accuracies) > 1


def test_a_run_in_between_does_not_change_a_seeded_run(synthetic_mnist: Mnist) -> None:
    config = FAST.replace(seed=2)
    first = train_once(config, synthetic_mnist)
    train_once(FAST.replace(seed=9, conv1_kernel=3), synthetic_mnist)
    torch.rand(100)  # global RNG state moved on
    assert _comparable(train_once(config, synthetic_mnist)) == _comparable(first)


# --- divergence and the time limit --------------------------------------------------------------

def test_nan_loss_is_flagged_as_diverged_and_stops_at_the_next_check(synthetic_mnist: Mnist) -> None:
    data = _poisoned(synthetic_mnist, slice(None))
    result = train_once(FAST.replace(check_every=2), data)
    assert result.diverged
    assert result.steps == 2 < total_steps(FAST, data)
    assert not result.over_time
    # evaluated all the same: NaN weights give every image one class, whose share of each half is
    # the score there
    labels = data.test_labels
    shares = [((labels[0::2] == c).double().mean().item(), (labels[1::2] == c).double().mean().item())
              for c in range(10)]
    assert (result.accuracy, result.holdout_accuracy) in shares


def test_a_single_bad_image_diverges_the_run(synthetic_mnist: Mnist) -> None:
    data = _poisoned(synthetic_mnist, [17])
    result = train_once(FAST.replace(check_every=1, epochs=2.0), data)
    assert result.diverged
    # the image is in one batch of the first epoch, so the run stops within it
    assert 1 <= result.steps <= 8


def test_divergence_is_caught_at_the_last_step_even_with_rare_checks(synthetic_mnist: Mnist) -> None:
    data = _poisoned(synthetic_mnist, slice(None))
    result = train_once(FAST.replace(check_every=1000), data)
    assert result.diverged
    assert result.steps == total_steps(FAST, data)


def test_nan_from_the_loss_function_is_flagged(synthetic_mnist: Mnist,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import objective.timed_run as timed_run_module

    real_nll: Callable[..., torch.Tensor] = timed_run_module.F.nll_loss
    calls = {"n": 0}

    def nll_going_nan(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real_nll(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss  # finite at first, then NaN

    monkeypatch.setattr(timed_run_module.F, "nll_loss", nll_going_nan)
    result = train_once(FAST.replace(check_every=1, epochs=3.0, seed=11), synthetic_mnist)
    assert result.diverged
    assert result.steps < 24


def test_zero_time_limit_is_over_time(synthetic_mnist: Mnist) -> None:
    result = train_once(FAST.replace(check_every=1), synthetic_mnist, time_limit=0.0)
    assert result.over_time
    assert result.steps == 1  # stopped at the first look at the clock
    assert not result.diverged


def test_zero_time_limit_with_rare_checks_is_still_over_time(synthetic_mnist: Mnist) -> None:
    result = train_once(FAST.replace(check_every=1000), synthetic_mnist, time_limit=0.0)
    assert result.over_time


def test_no_time_limit_is_never_over_time(synthetic_mnist: Mnist) -> None:
    assert not train_once(FAST, synthetic_mnist, time_limit=math.inf).over_time


# --- devices ------------------------------------------------------------------------------------

def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_resolve_device_without_gpu() -> None:
    assert resolve_device("auto") == CPU
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UserError, match="no usable CUDA GPU"):
            resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_resolve_device_with_gpu() -> None:
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(("name", "message"), [
    ("tpu", "unknown device 'tpu'"),
    ("gpu0", "unknown device"),
    ("", "unknown device"),
    ("meta", "unsupported device 'meta'"),
    ("xla", "unsupported device"),
])
def test_resolve_device_rejects_other_devices(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_device(name)


def test_fingerprint_of_the_cpu() -> None:
    fp = fingerprint(CPU)
    assert set(fp) == {"device", "device_type", "torch", "threads", "cores"}
    assert fp["device_type"] == "cpu"
    assert fp["torch"] == torch.__version__
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        assert re.search(rf"^model name\s*: {re.escape(str(fp['device']))}\s*$", cpuinfo.read_text(), re.M)
    else:
        assert fp["device"] in (platform.processor(), platform.machine())
    # threads and cores as this process has them now, not as the machine has them
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert fingerprint(CPU)["threads"] == threads + 1
    finally:
        torch.set_num_threads(threads)
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert fingerprint(CPU)["cores"] == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert fingerprint(CPU)["cores"] == len(cores)


def test_a_run_records_where_it_ran(synthetic_mnist: Mnist) -> None:
    fp = train_once(FAST.replace(bf16_autocast="on"), synthetic_mnist).fingerprint
    assert (fp["device_type"], fp["torch"], fp["bf16_autocast"]) == ("cpu", torch.__version__, True)
    assert fp["threads"] == torch.get_num_threads() and fp["cores"] == len(os.sched_getaffinity(0))
