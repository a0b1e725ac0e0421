"""Latent views: exact interpolation ends, slerp geometry, traversals, and decoding through a VAE."""

import math

import pytest
import torch

import pyrovae
from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.latent_views import INTERPOLATIONS, interpolate, traversal
from pyrovae.models.vae import VAE


def test_linear_interpolation_is_evenly_spaced():
    z0, z1 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 2.0, -1.5])
    z = interpolate(z0, z1, steps=5)
    assert z.shape == (5, 3)
    assert torch.equal(z[0], z0) and torch.equal(z[-1], z1)
    assert torch.allclose(z[2], (z0 + z1) / 2)
    assert torch.allclose(z.diff(dim=0), ((z1 - z0) / 4).expand(4, 3))


def test_spherical_interpolation_follows_the_great_circle():
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms: slerp stays on the sphere of that radius
    z = interpolate(z0, z1, steps=9, mode="spherical")
    assert torch.equal(z[0], z0) and torch.equal(z[-1], z1)
    assert torch.allclose(z.norm(dim=1), z0.norm().expand(9))
    # equal angles between consecutive codes, summing to the angle between the ends
    unit = z / z.norm(dim=1, keepdim=True)
    steps = torch.arccos((unit[1:] * unit[:-1]).sum(1).clamp(-1, 1))
    total = torch.arccos(torch.dot(unit[0], unit[-1]))
    assert torch.allclose(steps, (total / 8).expand(8))
    # the linear path cuts the chord, inside the sphere
    assert (interpolate(z0, z1, 9)[1:-1].norm(dim=1) < z0.norm() - 1e-6).all()


def test_spherical_matches_a_hand_computed_quarter_turn():
    z = interpolate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), 3, "spherical")
    # weights sin(w/2)/sin(w) = 1/sqrt(2) at w = pi/2
    assert torch.allclose(z[1], torch.tensor([1.0, 2.0]) / math.sqrt(2))


@pytest.mark.parametrize("z1", [[2.0, 4.0], [-1.0, -2.0], [0.0, 0.0]])
def test_spherical_falls_back_to_linear_when_parallel_or_zero(z1):
    z0, z1 = torch.tensor([1.0, 2.0]), torch.tensor(z1)
    z = interpolate(z0, z1, 5, "spherical")
    assert torch.isfinite(z).all()
    assert torch.allclose(z, interpolate(z0, z1, 5, "linear"))


@pytest.mark.parametrize("mode", list(INTERPOLATIONS))
def test_interpolation_ends_decode_to_the_reconstructions(mode):
    vae = VAE((1, 8, 8), z_dim=3, hidden=[16]).eval()
    x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.5))
    loc, _ = pyrovae.encode(vae, x)
    assert loc.shape == (2, 3)
    images = vae.decode(interpolate(loc[0], loc[1], steps=6, mode=mode))
    assert images.shape == (6, 1, 8, 8)
    recon = vae.reconstruct(x)
    assert torch.allclose(images[0], recon[0], atol=1e-6)
    assert torch.allclose(images[-1], recon[1], atol=1e-6)
    assert not torch.allclose(images[0], images[-1], atol=1e-3)  # two different inputs


def test_traversal_varies_one_dimension_per_block():
    z = torch.tensor([0.5, -1.0, 2.0, 0.0])
    codes = traversal(z, dims=[2, 0], span=2.0, steps=5)
    assert codes.shape == (10, 4)
    values = torch.linspace(-2, 2, 5)
    for block, d in enumerate([2, 0]):
        rows = codes[block * 5:(block + 1) * 5]
        assert torch.equal(rows[:, d], values)  # absolute values by default
        others = [k for k in range(4) if k != d]
        assert torch.equal(rows[:, others], z[others].expand(5, 3))
    relative = traversal(z, dims=[2], span=2.0, steps=5, relative=True)
    assert torch.allclose(relative[:, 2], 2.0 + values)
    assert torch.equal(traversal(z, steps=3, relative=True).reshape(4, 3, 4)[:, 1], z.expand(4, 4))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: interpolate(torch.zeros(2), torch.ones(2), 4, "cubic"),
         "unknown interpolation 'cubic': choose one of linear, spherical"),
        (lambda: interpolate(torch.zeros(2), torch.ones(3)), "same shape"),
        (lambda: interpolate(torch.zeros(2), torch.ones(2), 1), "steps >= 2"),
        (lambda: traversal(torch.zeros(3), dims=[3]), "dims"),
        (lambda: traversal(torch.zeros(3), dims=[]), "dims"),
        (lambda: traversal(torch.zeros(3), span=0.0), "span > 0"),
        (lambda: traversal(torch.zeros(2, 3)), r"shape \(z_dim,\)"),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(PyrovaeError, match=match):
        call()
