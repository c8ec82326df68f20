"""Fixtures for the objective tests: tiny synthetic MNIST, the shared real MNIST, cache isolation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from objective.data import Mnist

# The shared, read-only MNIST next to the repository (../shared/mnist from the repo root).
MNIST_ROOT = (Path(__file__).resolve().parents[2] / ".." / "shared" / "mnist").resolve()


def make_mnist(n_train: int = 512, n_test: int = 200, noise: float = 1.0, seed: int = 0) -> Mnist:
    """A learnable stand-in for MNIST on the CPU: each class is a fixed random 28x28 template plus
    Gaussian noise, so a few epochs of the real model separate the classes well above chance."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = templates[labels] + noise * torch.randn(n, 1, 28, 28, generator=generator)
        return images, labels

    train_images, train_labels = split(n_train)
    test_images, test_labels = split(n_test)
    return Mnist(train_images, train_labels, test_images, test_labels)


@pytest.fixture(scope="session")
def synthetic_mnist() -> Mnist:
    """512 training and 200 test images on the CPU; treat as read-only (it is shared)."""
    return make_mnist()


@pytest.fixture
def mnist_factory() -> Callable[..., Mnist]:
    return make_mnist


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT}")
    return MNIST_ROOT


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's ~/.cache/fast-mnist or follows their $MNIST_DATA."""
    cache = tmp_path / "tensor-cache"
    monkeypatch.setenv("FAST_MNIST_CACHE", str(cache))
    monkeypatch.delenv("MNIST_DATA", raising=False)
    return cache
