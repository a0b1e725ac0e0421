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
    from pyrovae.data.datasets import load_dataset

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


class HostSync(AssertionError):
    """Raised by :func:`forbid_host_sync` when code reads a tensor's value on the host."""


# Tensor methods that read a device value on the host (or copy it there).
HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy")


@pytest.fixture
def forbid_host_sync(monkeypatch):
    """``with forbid_host_sync(): ...`` raises :class:`HostSync` on any host read of a tensor.

    On a GPU each such read waits for the device, and CUDA-graph capture rejects it, so this lets
    CPU tests check capture-ready code. Patches the :data:`HOST_READS` methods of ``torch.Tensor``
    and ``torch.tensor`` with non-empty data (a host-to-device copy on a GPU).
    """
    import contextlib

    def refuse(name):
        def read(*args, **kwargs):
            raise HostSync(f"host synchronisation: {name} called inside forbid_host_sync")

        return read

    new_tensor = torch.tensor

    def tensor(data, *args, **kwargs):
        # Empty data copies nothing: every pyro.plate without a device does torch.tensor(()).device
        # (pyro.poutine.subsample_messenger._Subsample) to find the default device.
        if isinstance(data, (tuple, list)) and not data:
            return new_tensor(data, *args, **kwargs)
        refuse("torch.tensor")()

    @contextlib.contextmanager
    def guard():
        with monkeypatch.context() as patch:
            for name in HOST_READS:
                patch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
            patch.setattr(torch, "tensor", tensor)
            yield

    return guard
