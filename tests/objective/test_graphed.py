"""The `cuda_graphs` knob (objective/graphed.py): the same run as eager steps, replayed from graphs."""

from __future__ import annotations

import pytest
import torch

from objective import graphed
from objective.config import TrainConfig
from objective.data import Mnist
from objective.graphed import one_cycle_lrs, train_graphed
from objective.model import build_model
from objective.timed_run import total_steps, train_count, train_once

from .test_timed_run import FAST, _comparable, _poisoned

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_gpu(data: Mnist) -> Mnist:
    return Mnist(*(tensor.cuda() for tensor in (data.train_images, data.train_labels,
                                                 data.test_images, data.test_labels)))


@pytest.mark.parametrize("config", [TrainConfig(), TrainConfig(lr=0.03, pct_start=0.12, div_factor=7.0,
                                                               final_div_factor=300.0)])
@pytest.mark.parametrize("steps", [30, 235])
def test_one_cycle_lrs_are_torchs(config: TrainConfig, steps: int) -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps, pct_start=config.pct_start,
        div_factor=config.div_factor, final_div_factor=config.final_div_factor, cycle_momentum=False)
    expected = []
    for _ in range(steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert one_cycle_lrs(config, steps) == pytest.approx(expected, rel=1e-12)


def test_cuda_graphs_on_a_cpu_is_the_eager_run(synthetic_mnist: Mnist) -> None:
    eager = train_once(FAST.replace(seed=5), synthetic_mnist)
    assert _comparable(train_once(FAST.replace(seed=5, cuda_graphs=True), synthetic_mnist)) == \
        _comparable(eager)
    assert not graphed._graphed  # nothing was captured


@GPU
@pytest.mark.parametrize("changes", [
    {},  # 8 full batches an epoch
    {"batch_size": 96, "epochs": 1.5},  # a short last batch (32), and a second epoch's first half
    {"batch_norm": "both", "channels_last": False},
    {"bf16_autocast": "on"},
])
def test_graphed_run_is_the_eager_run(synthetic_mnist: Mnist, changes: dict[str, object]) -> None:
    data = _on_gpu(synthetic_mnist)
    config = FAST.replace(epochs=3.0, **changes)
    for seed in (0, 1):
        eager = train_once(config.replace(seed=seed), data)
        replayed = train_once(config.replace(seed=seed, cuda_graphs=True), data)
        assert replayed.steps == eager.steps == total_steps(config, data)
        assert not replayed.diverged and not replayed.over_time
        # Float rounding apart (the learning rate is a float32 tensor there), the same training:
        # at most 2 of the 200 test images scored differently.
        assert abs(replayed.accuracy - eager.accuracy) <= 0.01
        assert replayed.accuracy > 0.5  # learned: chance is 0.1


@GPU
def test_each_run_starts_from_the_weights_build_model_draws(synthetic_mnist: Mnist) -> None:
    data = _on_gpu(synthetic_mnist)
    config = FAST.replace(cuda_graphs=True, seed=7, batch_norm="conv2")
    train_once(config.replace(seed=3), data)  # leaves trained weights and Adam state behind
    steps = total_steps(config, data)
    state, _ = train_graphed(config, data, train_count(config, data), steps, bf16=False)
    torch.manual_seed(config.seed)
    drawn = build_model(config, data.device).state_dict()
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(tensor, drawn[name]), name
    for values in state.optimizer.state.values():
        assert all(not tensor.any() for tensor in values.values())
    assert state.step.item() == 0 and state.loss_sum.item() == 0


@GPU
def test_one_capture_per_shape_and_betas(synthetic_mnist: Mnist) -> None:
    data = _on_gpu(synthetic_mnist)
    graphed._graphed.clear()
    config = FAST.replace(cuda_graphs=True)
    train_once(config, data)
    first = next(iter(graphed._graphed.values()))
    train_once(config.replace(seed=9, lr=0.02, epochs=0.5), data)  # same shapes and betas
    assert list(graphed._graphed.values()) == [first]
    train_once(config.replace(beta1=0.8), data)  # betas are numbers in the fused kernel
    assert len(graphed._graphed) == 2


@GPU
def test_graphed_divergence_and_time_limit(synthetic_mnist: Mnist) -> None:
    data = _on_gpu(synthetic_mnist)
    config = FAST.replace(cuda_graphs=True, check_every=2)
    diverged = train_once(config, _on_gpu(_poisoned(synthetic_mnist, slice(None))))
    assert diverged.diverged and diverged.steps == 2
    over = train_once(config, data, time_limit=0.0)
    assert over.over_time and over.steps == 2 and not over.diverged
