"""Shared fixtures: seeded RNGs, a clean Pyro param store, small data sets, the real-data folder."""

import os
import warnings
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def single_thread():
    """One torch thread (about 10x faster for tiny tensors on shared cores); quiet jit warnings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from pyrovae.data import load_dataset

    return load_dataset("digits")


def real_data_dir() -> Path | None:
    """``$PYROVAE_DATA_DIR`` or ``../shared/data`` when it holds Fashion-MNIST, else None."""
    for candidate in (os.environ.get("PYROVAE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "fashion-mnist").is_dir():
            return Path(candidate)
    return None


def small_batch(shape=(1, 8, 8), n=5, binary=True):
    x = torch.rand(n, *shape)
    return torch.bernoulli(x) if binary else x
