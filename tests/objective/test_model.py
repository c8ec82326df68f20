from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from objective.config import IMAGE_SIZE, ConfigError, TrainConfig, feature_side, from_dict
from objective.model import Net, build_model

CPU = torch.device("cpu")


def _forward(config: TrainConfig, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(config, CPU)
    with torch.no_grad():
        images = torch.randn(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return model(images)


def _assert_log_probabilities(out: torch.Tensor, batch: int) -> None:
    assert out.shape == (batch, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(batch))


# Every kernel pair is covered by the loop below at width 1; these add the widths, which fc1's input
# size also depends on, at the two ends of the study's kernel range.
@pytest.mark.parametrize(("conv1_kernel", "conv2_kernel", "conv1_width", "conv2_width", "fc_width"), [
    (3, 2, 48, 64, 512),  # smallest kernels, widest layers: the largest map (6x6) into fc1
    (9, 7, 8, 16, 32),  # largest kernels (2x2 map), narrow layers
])
def test_forward_gives_log_probabilities_at_the_extremes(
        conv1_kernel: int, conv2_kernel: int, conv1_width: int, conv2_width: int, fc_width: int) -> None:
    config = TrainConfig(conv1_kernel=conv1_kernel, conv2_kernel=conv2_kernel, conv1_width=conv1_width,
                         conv2_width=conv2_width, fc_width=fc_width)
    _assert_log_probabilities(_forward(config), 3)


def test_layers_follow_the_config() -> None:
    config = TrainConfig(conv1_kernel=7, conv2_kernel=4, conv1_width=12, conv2_width=40, fc_width=96)
    model = Net(config)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.out_channels == 12
    assert model.conv2.kernel_size == (4, 4)
    assert (model.conv2.in_channels, model.conv2.out_channels) == (12, 40)
    # 28 -conv7-> 22 -pool-> 11 -conv4-> 8 -pool-> 4
    assert model.fc1.in_features == config.flat_features() == 40 * 4 * 4
    assert model.fc1.out_features == 96
    assert model.fc2.out_features == 10


@pytest.mark.parametrize(("batch_norm", "expected"), [
    ("none", {}), ("conv2", {"norm2": 16}), ("both", {"norm1": 8, "norm2": 16}),
])
def test_batch_norm_follows_the_chosen_convs(batch_norm: str, expected: dict[str, int]) -> None:
    config = TrainConfig(conv1_width=8, conv2_width=16, fc_width=32, batch_norm=batch_norm)
    model = build_model(config, CPU)
    norms = {name: module for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    assert {name: norm.num_features for name, norm in norms.items()} == expected
    images = torch.randn(4, 1, IMAGE_SIZE, IMAGE_SIZE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _assert_log_probabilities(model(images), 4)  # training mode: batch statistics
    assert all(norm.num_batches_tracked == 1 for norm in norms.values())  # each is on the forward path


def test_batch_of_one() -> None:
    _assert_log_probabilities(_forward(TrainConfig(conv1_width=8, conv2_width=8, fc_width=32), batch=1), 1)


def test_every_kernel_pair_the_config_accepts_builds_and_runs() -> None:
    accepted = 0
    for conv1_kernel, conv2_kernel in itertools.product(range(1, 31), range(1, 31)):
        try:
            config = TrainConfig(conv1_kernel=conv1_kernel, conv2_kernel=conv2_kernel,
                                 conv1_width=1, conv2_width=1, fc_width=2, channels_last=False)
        except ConfigError:
            assert feature_side(conv1_kernel, conv2_kernel) < 1
            continue
        accepted += 1
        out = _forward(config, batch=1)
        assert out.shape == (1, 10), (conv1_kernel, conv2_kernel)
    assert accepted > 100  # the loop really exercised the model


@pytest.mark.parametrize(("conv1_kernel", "conv2_kernel"), [(22, 3), (5, 12)])
def test_kernels_that_do_not_fit_28x28_are_rejected_at_construction(conv1_kernel: int,
                                                                    conv2_kernel: int) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig(conv1_kernel=conv1_kernel, conv2_kernel=conv2_kernel)
    message = str(caught.value)
    assert f"conv1_kernel={conv1_kernel} and conv2_kernel={conv2_kernel} do not fit" in message
    assert "28x28" in message and "use smaller kernels" in message
    with pytest.raises(ConfigError, match="do not fit"):
        from_dict({"conv1_kernel": str(conv1_kernel), "conv2_kernel": str(conv2_kernel)})


def test_channels_last_changes_layout_not_results() -> None:
    config = TrainConfig(conv1_kernel=5, conv2_kernel=4, conv1_width=8, conv2_width=16, fc_width=64)
    torch.manual_seed(0)
    plain = build_model(config.replace(channels_last=False), CPU)
    torch.manual_seed(0)
    nhwc = build_model(config.replace(channels_last=True), CPU)
    # conv2 (several input channels): with one input channel both layouts coincide
    assert plain.conv2.weight.is_contiguous()
    assert nhwc.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.conv2.weight.is_contiguous()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = plain(images)
        actual = nhwc(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_build_model_puts_parameters_on_the_device() -> None:
    model = build_model(TrainConfig(), CPU)
    assert {p.device for p in model.parameters()} == {CPU}
