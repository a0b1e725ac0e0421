"""Data sets: embedded sets, IDX files (good, corrupt, missing), user arrays, binarization."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pyrovae.data.datasets import (
    Dataset,
    binarize,
    check_binarize_mode,
    data_search_path,
    load_dataset,
)
from pyrovae.errors import PyrovaeError

from .conftest import real_data_dir


def write_idx(path, array: np.ndarray, compress=True):
    """Write ``array`` (uint8) in the IDX format that MNIST uses."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_folder(folder, n_train=30, n_test=10, size=8, splits=("train", "t10k"), compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        if split not in splits:
            continue
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)
        arrays[split] = (images, labels)
    return arrays


def test_digits_is_in_memory_unit_interval_with_stratified_split():
    d = load_dataset("digits")
    assert d.train_x.shape[1:] == (1, 8, 8) and d.train_x.dtype == torch.float32
    assert len(d.train_x) + len(d.test_x) == 1797
    assert 0 <= d.train_x.min() and d.train_x.max() <= 1
    counts = torch.bincount(d.test_y, minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19  # 10% of ~180 per class
    again = load_dataset("digits")
    assert torch.equal(d.test_x, again.test_x)  # seeded


def test_mnist_5k_is_the_embedded_default():
    d = load_dataset("mnist-5k")
    assert d.train_x.shape == (4500, 1, 28, 28) and d.test_x.shape == (500, 1, 28, 28)
    assert torch.equal(torch.bincount(d.test_y), torch.full((10,), 50))
    assert d.train_x.max() == 1.0 and d.train_x.min() == 0.0
    # mnist-5k is stored sorted by class: the splits are shuffled, so the first images mix classes
    assert len(d.test_y[:16].unique()) >= 5 and len(d.train_y[:16].unique()) >= 5
    # ...with the held-out membership of earlier versions (an order-free sum of its pixels)
    assert d.test_x.double().sum().item() == pytest.approx(52133.984759, rel=1e-9)


def test_carved_splits_are_shuffled_by_the_split_seed(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (100, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "sorted.npz", x=x, y=np.repeat(np.arange(10), 10))
    d = load_dataset(f"npz:{tmp_path / 'sorted.npz'}")
    assert torch.equal(torch.bincount(d.test_y), torch.ones(10, dtype=torch.long))  # stratified
    assert len(d.test_y[:5].unique()) == 5 and len(d.train_y[:10].unique()) >= 5
    assert not torch.equal(d.test_y.sort().values, d.test_y)
    again, other = load_dataset("digits"), load_dataset("digits", split_seed=1)
    first = load_dataset("digits")
    assert torch.equal(first.test_x, again.test_x) and torch.equal(first.train_y, again.train_y)
    assert not torch.equal(first.test_y, other.test_y)


def test_subset_is_a_seeded_random_sample_in_random_order():
    labels = torch.arange(1000) // 100  # sorted by class, like mnist-5k
    x = (labels.float() / 10 + 0.01).reshape(-1, 1, 1, 1)
    d = Dataset("sorted", x, x, labels, labels)
    a, b, c = d.subset(50, 20, seed=1), d.subset(50, 20, seed=1), d.subset(50, 20, seed=2)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.train_y, c.train_y)
    for y in (a.train_y, a.test_y):  # random order, not the stored (sorted) one
        assert not torch.equal(y.sort().values, y) and len(y[:16].unique()) >= 6
    assert torch.equal(a.train_x.flatten(), a.train_y.float() / 10 + 0.01)
    assert len(d.subset(5000, 2000).train_x) == 1000  # at most all


def test_idx_folder_round_trip(tmp_path):
    arrays = make_idx_folder(tmp_path / "set")
    d = load_dataset(f"idx:{tmp_path / 'set'}")
    images, labels = arrays["train"]
    assert torch.allclose(d.train_x[:, 0], torch.as_tensor(images, dtype=torch.float32) / 255)
    assert torch.equal(d.train_y, torch.as_tensor(labels, dtype=torch.long))
    assert len(d.test_x) == 10


def test_idx_folder_with_only_the_test_pair_holds_out_a_fraction(tmp_path):
    make_idx_folder(tmp_path / "t10k", n_test=50, splits=("t10k",), compress=False)
    d = load_dataset(f"idx:{tmp_path / 't10k'}")
    assert len(d.train_x) == 45 and len(d.test_x) == 5


def test_mnist_found_through_data_dir_and_env(tmp_path, monkeypatch):
    make_idx_folder(tmp_path / "mnist")
    assert len(load_dataset("mnist", tmp_path, download=False).train_x) == 30
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", download=False).test_x) == 10


def test_offline_miss_lists_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PyrovaeError) as err:
        load_dataset("mnist", tmp_path / "given", download=False)
    msg = str(err.value)
    for place in data_search_path("mnist", tmp_path / "given"):
        assert str(place) in msg
    assert "downloads are off" in msg and "--data-dir" in msg


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pyrovae.data.datasets.DEBIAN_DATASETS", tmp_path / "debian")
    with pytest.raises(PyrovaeError, match="download .* failed .*network unreachable"):
        load_dataset("fashion-mnist", download=True)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    make_idx_folder(tmp_path / "bad", compress=False)
    f = tmp_path / "bad" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(PyrovaeError, match="corrupt or truncated"):
        load_dataset(f"idx:{tmp_path / 'bad'}")


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    make_idx_folder(tmp_path / "bad")
    f = tmp_path / "bad" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(PyrovaeError, match="t10k-labels.*corrupt or truncated"):
        load_dataset(f"idx:{tmp_path / 'bad'}")


def test_mismatched_image_and_label_counts(tmp_path):
    make_idx_folder(tmp_path / "bad")
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(PyrovaeError, match="30 images but .* 7 labels"):
        load_dataset(f"idx:{tmp_path / 'bad'}")


def test_user_arrays_npy_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, (20, 6, 6), dtype=np.uint8))
    d = load_dataset(f"npy:{tmp_path / 'u8.npy'}")
    assert d.train_x.shape == (18, 1, 6, 6) and d.train_x.max() <= 1
    x = rng.random((12, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(12) % 2, x_test=x[:3], y_test=np.zeros(3, int))
    d = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert torch.allclose(d.train_x, torch.as_tensor(x)) and len(d.test_x) == 3


@pytest.mark.parametrize("array,match", [
    (np.full((4, 4, 4), 2.0), r"must lie in \[0, 1\]"),
    (np.full((4, 4, 4), np.nan), "NaN"),
    (np.zeros((4, 16)), r"shape \(N, H, W\)"),
    (np.zeros((4, 4, 4), dtype=np.int64), "uint8"),
])
def test_bad_user_arrays(tmp_path, array, match):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(PyrovaeError, match=match):
        load_dataset(f"npy:{tmp_path / 'a.npy'}")


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(PyrovaeError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(PyrovaeError, match="no file at"):
        load_dataset(f"npy:{tmp_path / 'missing.npy'}")
    with pytest.raises(PyrovaeError, match="holds no IDX"):
        load_dataset(f"idx:{tmp_path}")
    with pytest.raises(PyrovaeError, match="must hold an array 'x'"):
        np.savez(tmp_path / "n.npz", images=np.zeros((3, 4, 4)))
        load_dataset(f"npz:{tmp_path / 'n.npz'}")
    with pytest.raises(PyrovaeError, match="unknown --binarize"):
        check_binarize_mode("sometimes")


def test_binarize_draws_bernoulli_with_the_grey_level():
    x = torch.full((200_000,), 0.3)
    b = binarize(x, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - 0.3) < 5 * (0.3 * 0.7 / 200_000) ** 0.5


@pytest.mark.skipif(real_data_dir() is None, reason="no ../shared/data or $PYROVAE_DATA_DIR")
def test_real_fashion_mnist_from_data_dir():
    d = load_dataset("fashion-mnist", real_data_dir(), download=False)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(d.test_y), torch.full((10,), 1000))
