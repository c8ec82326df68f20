from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import objective.data as data_module
from objective.data import (
    DEFAULT_ROOT,
    MEAN,
    STD,
    DataError,
    Mnist,
    cache_file,
    load_resident,
    load_uint8,
    resolve_root,
    to_device,
)

CPU = torch.device("cpu")
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _small_uint8(n_train: int = 6, n_test: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "train_images": torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=generator),
        "train_labels": torch.randint(0, 10, (n_train,), dtype=torch.uint8, generator=generator),
        "test_images": torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=generator),
        "test_labels": torch.randint(0, 10, (n_test,), dtype=torch.int64, generator=generator),
    }


# --- where the data and the cache live -------------------------------------------------------------

def test_resolve_root_prefers_the_argument_then_the_environment_then_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_root(None) == DEFAULT_ROOT.resolve()
    monkeypatch.setenv("MNIST_DATA", str(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_resolve_root_is_absolute_and_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_root("~/mnist") == tmp_path / "mnist"
    monkeypatch.chdir(tmp_path)
    assert resolve_root("relative/dir") == tmp_path / "relative" / "dir"


def test_cache_file_is_keyed_by_root_under_the_cache_dir(isolated_cache: Path) -> None:
    first, second = cache_file(Path("/data/a")), cache_file(Path("/data/b"))
    assert first.parent == second.parent == isolated_cache
    assert first != second
    assert first == cache_file(Path("/data/a"))
    assert first.name.startswith("mnist-uint8-") and first.suffix == ".pt"


def test_cache_file_default_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAST_MNIST_CACHE")
    assert cache_file(Path("/data/a")).parent == DEFAULT_ROOT / "tensors"


# --- to_device ------------------------------------------------------------------------------------

def test_to_device_normalizes_images_and_widens_labels() -> None:
    tensors = _small_uint8()
    mnist = to_device(tensors, CPU)
    assert isinstance(mnist, Mnist)
    assert mnist.device == CPU
    assert mnist.train_images.shape == (6, 1, 28, 28)
    assert mnist.test_images.shape == (4, 1, 28, 28)
    assert mnist.train_images.dtype == mnist.test_images.dtype == torch.float32
    assert mnist.train_labels.dtype == mnist.test_labels.dtype == torch.int64
    expected = (tensors["train_images"].unsqueeze(1).float() / 255 - MEAN) / STD
    torch.testing.assert_close(mnist.train_images, expected)
    assert mnist.train_labels.tolist() == tensors["train_labels"].tolist()
    assert mnist.test_labels.tolist() == tensors["test_labels"].tolist()
    # the uint8 source is not modified by the in-place normalization
    assert tensors["train_images"].dtype == torch.uint8


def test_to_device_maps_black_and_white_pixels() -> None:
    tensors = _small_uint8()
    tensors["train_images"][0] = 0
    tensors["train_images"][1] = 255
    mnist = to_device(tensors, CPU)
    torch.testing.assert_close(mnist.train_images[0], torch.full((1, 28, 28), -MEAN / STD))
    torch.testing.assert_close(mnist.train_images[1], torch.full((1, 28, 28), (1 - MEAN) / STD))


# --- load_uint8 without the real data -----------------------------------------------------------

def test_load_uint8_without_data_and_without_download_raises_data_error(
        tmp_path: Path, isolated_cache: Path) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataError) as caught:
        load_uint8(root, download=False)
    message = str(caught.value)
    assert str(root / "MNIST" / "raw") in message
    assert "--data-dir" in message and "MNIST_DATA" in message
    assert "\n" not in message
    assert not cache_file(root).exists()


def test_load_uint8_writes_the_cache_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                isolated_cache: Path) -> None:
    tensors = _small_uint8()
    reads: list[Path] = []

    def fake_read(root: Path, download: bool) -> dict[str, torch.Tensor]:
        reads.append(root)
        return tensors

    monkeypatch.setattr(data_module, "_read_torchvision", fake_read)
    root = tmp_path / "data"
    first = load_uint8(root)
    assert reads == [root]
    assert cache_file(root).exists()
    assert [p.name for p in isolated_cache.iterdir()] == [cache_file(root).name]  # no .tmp left
    second = load_uint8(root)
    assert reads == [root]  # served from the cache, torchvision not asked again
    for name, tensor in tensors.items():
        assert torch.equal(first[name], tensor)
        assert torch.equal(second[name], tensor)


def test_load_uint8_prefers_an_existing_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    tensors = _small_uint8()
    cache_file(root).parent.mkdir(parents=True)
    torch.save(tensors, cache_file(root))

    def no_read(root: Path, download: bool) -> dict[str, torch.Tensor]:
        raise AssertionError("torchvision must not be read when the cache exists")

    monkeypatch.setattr(data_module, "_read_torchvision", no_read)
    loaded = load_uint8(root, download=False)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


# --- the real MNIST (skipped where ../shared/mnist is absent) -------------------------------------

@pytest.fixture(scope="module")
def real_uint8(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[dict[str, torch.Tensor], Path]]:
    """MNIST read once through torchvision into a fresh cache dir; yields (tensors, cache dir)."""
    cache_dir = tmp_path_factory.mktemp("real-mnist-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAST_MNIST_CACHE", str(cache_dir))
        assert not cache_file(mnist_root).exists()
        tensors = load_uint8(mnist_root, download=False)
    yield tensors, cache_dir


def test_real_mnist_shapes_dtypes_and_labels(real_uint8: tuple[dict[str, torch.Tensor], Path]) -> None:
    tensors, _ = real_uint8
    assert tensors["train_images"].shape == (60000, 28, 28)
    assert tensors["test_images"].shape == (10000, 28, 28)
    assert tensors["train_images"].dtype == tensors["test_images"].dtype == torch.uint8
    assert tensors["train_labels"].shape == (60000,)
    assert tensors["test_labels"].shape == (10000,)
    assert tensors["train_labels"].dtype == tensors["test_labels"].dtype == torch.int64
    assert torch.bincount(tensors["train_labels"], minlength=10).tolist() == TRAIN_LABEL_COUNTS
    assert torch.bincount(tensors["test_labels"], minlength=10).tolist() == TEST_LABEL_COUNTS
    assert tensors["train_images"].is_contiguous()


def test_real_mnist_second_call_loads_the_cache_with_weights_only(
        real_uint8: tuple[dict[str, torch.Tensor], Path], mnist_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tensors, cache_dir = real_uint8
    monkeypatch.setenv("FAST_MNIST_CACHE", str(cache_dir))
    cached = cache_file(mnist_root)
    assert cached.exists()
    assert cached.parent == cache_dir
    assert list(cache_dir.glob("*.tmp")) == []

    def no_read(root: Path, download: bool) -> dict[str, torch.Tensor]:
        raise AssertionError("the second call must come from the cache")

    loads: list[dict[str, object]] = []
    real_load = torch.load

    def spy_load(*args: object, **kwargs: object) -> object:
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(data_module, "_read_torchvision", no_read)
    monkeypatch.setattr(torch, "load", spy_load)
    again = load_uint8(mnist_root, download=False)
    assert len(loads) == 1 and loads[0].get("weights_only") is True
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(again[name], tensors[name])


def test_real_mnist_normalized_statistics(real_uint8: tuple[dict[str, torch.Tensor], Path]) -> None:
    tensors, _ = real_uint8
    mnist = to_device(tensors, CPU)
    assert mnist.train_images.shape == (60000, 1, 28, 28)
    assert mnist.train_images.dtype == torch.float32
    assert mnist.train_images.mean().item() == pytest.approx(0.0, abs=0.01)
    assert mnist.train_images.std().item() == pytest.approx(1.0, abs=0.01)
    assert mnist.test_images.mean().item() == pytest.approx(0.0, abs=0.02)
    assert mnist.test_images.std().item() == pytest.approx(1.0, abs=0.02)


def test_real_mnist_load_resident_is_loaded_once_per_process(
        real_uint8: tuple[dict[str, torch.Tensor], Path], mnist_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tensors, cache_dir = real_uint8
    monkeypatch.setenv("FAST_MNIST_CACHE", str(cache_dir))
    load_resident.cache_clear()
    try:
        first = load_resident(mnist_root, CPU)
        second = load_resident(mnist_root, CPU)
        assert first is second
        assert first.device == CPU
        assert first.train_images.shape == (60000, 1, 28, 28)
        assert first.test_labels.tolist() == tensors["test_labels"].tolist()
    finally:
        load_resident.cache_clear()
