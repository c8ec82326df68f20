"""MNIST as device-resident tensors: read once through torchvision, cached compactly, kept on the device.

The raw files are parsed by torchvision once; the images are then cached as one uint8 tensor file
(4x smaller than float) and loaded with `weights_only=True`. Each process moves the data to its
device once and normalizes it there; every trial of that process reuses the same tensors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from objective.errors import UserError, first_line

MEAN, STD = 0.1307, 0.3081  # the published MNIST pixel statistics, as the seed recipe uses
DEFAULT_ROOT = Path.home() / ".cache" / "fast-mnist"


class DataError(UserError):
    """MNIST could not be found or fetched; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Mnist:
    train_images: torch.Tensor  # float32, normalized, (60000, 1, 28, 28), on the device
    train_labels: torch.Tensor  # int64, (60000,)
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train_images.device


def resolve_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """--data-dir, else $MNIST_DATA, else ~/.cache/fast-mnist."""
    chosen = data_dir or os.environ.get("MNIST_DATA") or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def cache_file(root: Path) -> Path:
    # The data root may be read-only (a shared copy), so the cache lives in the user's cache dir,
    # keyed by the root it came from.
    cache_dir = Path(os.environ.get("FAST_MNIST_CACHE", DEFAULT_ROOT / "tensors")).expanduser()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return cache_dir / f"mnist-uint8-{key}.pt"


def load_uint8(root: Path, download: bool = True) -> dict[str, torch.Tensor]:
    """The four MNIST tensors in uint8/int64, from the cache or built from torchvision's files."""
    cached = cache_file(root)
    if cached.exists():
        return torch.load(cached, weights_only=True)
    tensors = _read_torchvision(root, download)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    torch.save(tensors, partial)
    partial.replace(cached)  # atomic, so concurrent workers never read a half-written cache
    return tensors


def _read_torchvision(root: Path, download: bool) -> dict[str, torch.Tensor]:
    from torchvision.datasets import MNIST  # imported late: it is slow and only needed once

    tensors: dict[str, torch.Tensor] = {}
    for split, train in (("train", True), ("test", False)):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints its download log
                dataset = MNIST(root=str(root), train=train, download=download)
        except (RuntimeError, OSError) as error:
            reason = first_line(error)
            raise DataError(
                f"MNIST not found in {root / 'MNIST' / 'raw'} and it could not be downloaded "
                f"({reason}); pass --data-dir (or set MNIST_DATA) to a folder holding MNIST/raw"
            ) from None
        tensors[f"{split}_images"] = dataset.data.contiguous()
        tensors[f"{split}_labels"] = dataset.targets.contiguous()
    return tensors


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> Mnist:
    def images(name: str) -> torch.Tensor:
        # uint8 travels (4x less to copy); normalization happens on the device.
        on_device = tensors[name].to(device, non_blocking=True)
        return on_device.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)

    def labels(name: str) -> torch.Tensor:
        return tensors[name].to(device, dtype=torch.int64, non_blocking=True)

    return Mnist(images("train_images"), labels("train_labels"),
                 images("test_images"), labels("test_labels"))


@functools.lru_cache(maxsize=4)
def load_resident(root: Path, device: torch.device, download: bool = True) -> Mnist:
    """MNIST on `device`, loaded once per process and shared by every run after that."""
    return to_device(load_uint8(root, download), device)
