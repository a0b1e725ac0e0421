"""User data files that are wrong in some way: each gives one clear PyrovaeError at load time."""

import struct

import numpy as np
import pytest
import torch

from pyrovae import checks
from pyrovae.data.datasets import MIN_HELD_OUT, Dataset, load_dataset
from pyrovae.errors import PyrovaeError

from .test_data import make_idx_folder, write_idx


def images(n=20, size=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ---- .npy / .npz ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["npy", "npz"])
def test_array_files_are_read_by_content_whatever_the_prefix(tmp_path, prefix):
    x = images()
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x)
    a = load_dataset(f"{prefix}:{tmp_path / 'a.npy'}")
    b = load_dataset(f"{prefix}:{tmp_path / 'b.npz'}")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    got = torch.cat([a.train_x, a.test_x])[:, 0] * 255
    assert sorted(got.round().to(torch.uint8).flatten(1).sum(1).tolist()) == \
        sorted(torch.as_tensor(x).flatten(1).sum(1).tolist())


def savez_as_npy(folder, array):
    with (folder / "o.npy").open("wb") as f:  # an .npz under an .npy name
        np.savez(f, x=array)


@pytest.mark.parametrize("save", [
    lambda p, a: np.save(p / "o.npy", a, allow_pickle=True),
    savez_as_npy,
])
def test_object_arrays_are_refused_without_unpickling(tmp_path, save):
    save(tmp_path, np.array([np.zeros((4, 4)), "x"], dtype=object))
    with pytest.raises(PyrovaeError, match="cannot read .* file of numbers .*np.save"):
        load_dataset(f"npz:{tmp_path / 'o.npy'}")


def test_a_file_that_is_not_numpy_says_so(tmp_path):
    (tmp_path / "t.npy").write_text("0 1 2\n3 4 5\n")
    with pytest.raises(PyrovaeError, match=r"neither a NumPy \.npy nor a \.npz"):
        load_dataset(f"npy:{tmp_path / 't.npy'}")


@pytest.mark.parametrize("array,match", [
    (np.zeros((0, 8, 8), np.uint8), "no size 0"),
    (np.zeros((4,), np.uint8), r"shape \(N, H, W\)"),
    (images(4, 4).reshape(4, 16), "flat vectors"),
    (images(4, 8).reshape(4, 8, 8, 1).repeat(3, axis=3), "channels last"),
    (images(4, 4).reshape(1, 4, 1, 4, 4), r"got \(1, 4, 1, 4, 4\)"),
    (np.full((4, 4, 4), np.inf, np.float32), "NaN or inf"),
    (np.full((4, 4, 4), -0.5), r"\[0, 1\], got \[-0.5"),
    (np.zeros((4, 4, 4), bool), "uint8 .* or float"),
    (np.full((5, 4, 4), 0.5), "every pixel of all 5 images is 0.5: there is nothing to learn"),
    (np.zeros((5, 3, 4, 4), np.uint8), "every pixel of all 5 images is 0"),
])
def test_bad_image_arrays(tmp_path, array, match):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(PyrovaeError, match=match):
        load_dataset(f"npy:{tmp_path / 'a.npy'}")


def test_a_few_constant_images_are_fine(tmp_path):
    x = images()
    x[:3] = 0
    np.save(tmp_path / "a.npy", x)
    assert len(load_dataset(f"npy:{tmp_path / 'a.npy'}").train_x) == 18


def test_npz_labels_and_held_out_images_are_checked(tmp_path):
    x = images()
    np.savez(tmp_path / "y.npz", x=x, y=np.zeros(19, int))
    with pytest.raises(PyrovaeError, match="labels 'y' must be 20 non-negative integers"):
        load_dataset(f"npz:{tmp_path / 'y.npz'}")
    np.savez(tmp_path / "t.npz", x=x, x_test=np.zeros((3, 6, 6), np.uint8))
    with pytest.raises(PyrovaeError, match=r"\('x_test'\): every pixel"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")
    np.savez(tmp_path / "one.npz", x=x, x_test=x[:1])
    with pytest.raises(PyrovaeError, match="x_test has 1 image"):
        load_dataset(f"npz:{tmp_path / 'one.npz'}")


# ---- held-out minimum -----------------------------------------------------------------------------


@pytest.mark.parametrize("n,n_train", [(3, 1), (10, 8), (19, 17), (20, 18), (21, 18)])
def test_a_carved_split_holds_out_at_least_the_minimum(tmp_path, n, n_train):
    np.save(tmp_path / "a.npy", images(n))
    d = load_dataset(f"npy:{tmp_path / 'a.npy'}")
    assert (len(d.train_x), len(d.test_x)) == (n_train, n - n_train)
    assert len(d.test_x) >= MIN_HELD_OUT


def test_too_few_images_to_hold_out_the_minimum(tmp_path):
    np.save(tmp_path / "a.npy", images(2))
    with pytest.raises(PyrovaeError, match="2 image.* too few .* provide more images$"):
        load_dataset(f"npy:{tmp_path / 'a.npy'}")
    np.save(tmp_path / "b.npy", images(10))
    with pytest.raises(PyrovaeError, match="or a test_fraction below 0.95"):
        load_dataset(f"npy:{tmp_path / 'b.npy'}", test_fraction=0.95)


def test_subset_refuses_a_held_out_split_below_the_minimum(digits):
    with pytest.raises(PyrovaeError, match="^n_test must be a whole number >= 2 .*got 1"):
        digits.subset(10, 1)
    with checks.command_line(), pytest.raises(PyrovaeError, match="^--limit must be .* >= 2"):
        digits.subset(1, 1)
    with pytest.raises(PyrovaeError, match="n_train must be a whole number >= 1, got 0"):
        digits.subset(0, 5)
    assert len(digits.subset(1, 2).train_x) == 1


# ---- IDX folders ----------------------------------------------------------------------------------


def test_train_and_test_images_of_different_sizes_fail_at_load(tmp_path):
    folder = tmp_path / "set"
    make_idx_folder(folder, size=8)
    write_idx(folder / "t10k-images-idx3-ubyte", images(10, 10))
    with pytest.raises(PyrovaeError, match=r"train-images-idx3-ubyte.gz are \(8, 8\) pixels, "
                                           r"those in .*t10k-images-idx3-ubyte.gz \(10, 10\)"):
        load_dataset(f"idx:{folder}")


def idx_bytes(type_code, dims, payload=b""):
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("content,match", [
    (b"\x1f\x8b\x08\x00garbage", "not a valid IDX file .*no IDX header"),
    (b"\x00\x00", "not a valid IDX file"),
    (idx_bytes(0x08, (10,), bytes(10)), "holds 1-D data, but images .* must be 3-D"),
    (idx_bytes(0x0D, (10, 8, 8), bytes(10 * 64 * 4)), "type 0x0D; pyrovae reads uint8"),
    (idx_bytes(0x08, (10, 8, 8))[:10], "corrupt or truncated header"),
    (idx_bytes(0x08, (10, 8, 8), bytes(600)), "promises 640 bytes .* holds 600"),
    (idx_bytes(0x08, (10, 8, 8), bytes(641)), "promises 640 bytes .* holds 641"),
])
def test_invalid_idx_files_name_the_file_and_the_defect(tmp_path, content, match):
    folder = tmp_path / "bad"
    make_idx_folder(folder, compress=False)
    (folder / "t10k-images-idx3-ubyte").write_bytes(content)
    with pytest.raises(PyrovaeError, match=match) as err:
        load_dataset(f"idx:{folder}")
    assert str(folder / "t10k-images-idx3-ubyte") in str(err.value)
    assert "AssertionError" not in str(err.value)


def test_idx_labels_file_of_images_is_named(tmp_path):
    folder = tmp_path / "bad"
    make_idx_folder(folder)
    write_idx(folder / "train-labels-idx1-ubyte", images(30, 8))
    with pytest.raises(PyrovaeError, match="train-labels.* holds 3-D data, but labels"):
        load_dataset(f"idx:{folder}")


def test_blank_idx_images_are_refused_naming_the_file(tmp_path):
    folder = tmp_path / "blank"
    make_idx_folder(folder)
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((30, 8, 8), np.uint8))
    with pytest.raises(PyrovaeError, match="train-images-idx3-ubyte.gz: every pixel of all 30"):
        load_dataset(f"idx:{folder}")


def test_idx_test_pair_of_one_image_is_refused(tmp_path):
    folder = tmp_path / "one"
    make_idx_folder(folder, n_test=1)
    with pytest.raises(PyrovaeError, match="t10k-images-idx3-ubyte.gz holds 1 image"):
        load_dataset(f"idx:{folder}")


def test_subset_of_a_user_dataset_keeps_labels_with_images():
    x = torch.arange(40, dtype=torch.float32).reshape(40, 1, 1, 1) / 40
    d = Dataset("toy", x, x[:10], torch.arange(40), torch.arange(10)).subset(15, 5, seed=3)
    assert torch.equal((d.train_x.flatten() * 40).round().long(), d.train_y)
    assert torch.equal((d.test_x.flatten() * 40).round().long(), d.test_y)
