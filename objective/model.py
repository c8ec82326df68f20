"""The seed recipe's CNN with its kernel sizes, widths and BatchNorm placement as parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from objective.config import TrainConfig


class Net(nn.Module):
    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, config.conv1_width, config.conv1_kernel)
        self.conv2 = nn.Conv2d(config.conv1_width, config.conv2_width, config.conv2_kernel)
        # After the pool, so BatchNorm normalises a quarter of the conv's output.
        both = config.batch_norm == "both"
        self.norm1 = nn.BatchNorm2d(config.conv1_width) if both else nn.Identity()
        self.norm2 = nn.BatchNorm2d(config.conv2_width) if config.batch_norm != "none" else nn.Identity()
        # Computed from the kernels, so every kernel/width pair the config accepts builds.
        self.fc1 = nn.Linear(config.flat_features(), config.fc_width)
        self.fc2 = nn.Linear(config.fc_width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(F.max_pool2d(self.conv1(images), 2)))
        x = F.relu(self.norm2(F.max_pool2d(self.conv2(x), 2)))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def build_model(config: TrainConfig, device: torch.device) -> Net:
    model = Net(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
