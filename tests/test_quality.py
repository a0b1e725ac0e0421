"""The classifier-based sample quality: it ranks real images first, its formulas, its files."""

import contextlib
import math

import pytest
import torch
from torch import nn

from pyrovae.errors import PyrovaeError
from pyrovae.evaluation.quality import (
    CLASSIFIER,
    cached_classifier,
    classifier_accuracy,
    load_classifier,
    nearest_train_distance,
    sample_quality,
    save_classifier,
    train_classifier,
)
from pyrovae.models.vae import VAE


@contextlib.contextmanager
def one_thread():
    # batches of 128 tiny images: intra-op threads only contend on a busy machine (5x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_classifier(digits):
    with one_thread():
        return train_classifier(digits.train_x, digits.train_y, seed=0)


def test_classifier_learns_the_digits(digits, digits_classifier):
    assert classifier_accuracy(digits_classifier, digits.test_x, digits.test_y) >= 0.9


def test_real_images_outrank_noise_and_an_untrained_decoder(digits, digits_classifier):
    n = len(digits.test_x)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(n, 1, 8, 8, generator=gen)
    untrained = VAE((1, 8, 8), z_dim=8, hidden=[128]).eval()
    decoded = untrained.decode(torch.randn(n, 8, generator=gen))
    real, *fakes = (sample_quality(digits_classifier, x, digits.train_x)
                    for x in (digits.test_x, noise, decoded))
    for other in fakes:
        assert real["mean_confidence"] > other["mean_confidence"] + 0.1
        assert real["score"] > 2 * other["score"]
        assert real["class_entropy"] > other["class_entropy"]
        assert real["nn_distance"] < other["nn_distance"]
    # held-out digits are varied and clear: near the maxima log 10 and 10
    assert real["class_entropy"] > 0.95 * math.log(10) and real["score"] > 8


class FixedProbs(nn.Module):
    """A stand-in classifier: probabilities ``A`` when the first pixel is > 0.5, else ``B``."""

    A, B = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x):
        first = x.reshape(len(x), -1)[:, :1] > 0.5
        return torch.where(first, torch.tensor(self.A).log(), torch.tensor(self.B).log())


def test_scores_follow_the_documented_formulas():
    images = torch.zeros(4, 1, 2, 2)
    images[:3, 0, 0, 0] = 1.0  # three images of kind A, one of kind B
    got = sample_quality(FixedProbs(), images, torch.rand(5, 1, 2, 2), batch=3)
    a, b = FixedProbs.A, FixedProbs.B
    marginal = [(3 * pa + pb) / 4 for pa, pb in zip(a, b, strict=True)]
    kl = lambda p: sum(pi * math.log(pi / mi) for pi, mi in zip(p, marginal, strict=True))  # noqa: E731
    assert got["n"] == 4
    assert got["mean_confidence"] == pytest.approx((3 * 0.7 + 0.6) / 4)
    assert got["class_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert got["max_class_entropy"] == pytest.approx(math.log(3))
    assert got["score"] == pytest.approx(math.exp((3 * kl(a) + kl(b)) / 4))


def test_nearest_train_distance_is_exact_and_batched():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(50, 1, 8, 8, generator=gen)
    assert torch.equal(nearest_train_distance(train[:7], train, batch=3), torch.zeros(7))
    images = torch.rand(10, 1, 8, 8, generator=gen)
    brute = (images.reshape(10, 1, 64) - train.reshape(1, 50, 64)).pow(2).mean(2).sqrt().min(1)
    assert torch.allclose(nearest_train_distance(images, train, batch=3), brute.values)
    # a copy shifted by 0.05 everywhere is 0.05 (RMS, pixel units) from its original
    shifted = (train[:4] * 0.9 + 0.05)
    expected = (shifted - train[:4]).pow(2).mean((1, 2, 3)).sqrt()
    assert torch.allclose(nearest_train_distance(shifted, train), expected, atol=1e-6)


def test_classifier_works_on_any_image_shape():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 5, 7, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0.5).long()  # learnable from the pixels
    with one_thread():
        clf = train_classifier(x, y, epochs=30)
    assert clf(x).shape == (40, 2)
    assert classifier_accuracy(clf, x, y) >= 0.9


def test_save_load_and_cache_in_the_run_folder(tmp_path, digits, digits_classifier):
    path = save_classifier(tmp_path / CLASSIFIER, digits_classifier)
    payload = torch.load(path, weights_only=True)
    assert payload["spec"] == {"shape": [1, 8, 8], "classes": 10}
    loaded = load_classifier(path)
    x = digits.test_x[:20]
    assert torch.equal(loaded(x), digits_classifier(x))
    # a cached classifier is loaded, not retrained: no labels are needed the second time
    cached = cached_classifier(path, digits.train_x, None)
    assert torch.equal(cached(x), digits_classifier(x))
    with pytest.raises(PyrovaeError, match="delete it to train a new one"):
        cached_classifier(path, torch.rand(4, 1, 5, 5), None)
    fresh = cached_classifier(tmp_path / "new" / CLASSIFIER, torch.rand(20, 1, 4, 4),
                              torch.arange(20) % 2, epochs=1)
    assert (tmp_path / "new" / CLASSIFIER).is_file() and fresh.spec["shape"] == [1, 4, 4]


def test_bad_input_is_one_clear_error(tmp_path, digits, digits_classifier):
    with pytest.raises(PyrovaeError, match="no labels"):
        train_classifier(digits.train_x, None)
    with pytest.raises(PyrovaeError, match="K >= 2"):
        train_classifier(digits.train_x[:5], torch.zeros(5, dtype=torch.long))
    with pytest.raises(PyrovaeError, match=r"images \(n, 1, 8, 8\)"):
        sample_quality(digits_classifier, torch.rand(4, 1, 28, 28), digits.train_x)
    with pytest.raises(PyrovaeError, match="non-empty"):
        sample_quality(digits_classifier, torch.rand(0, 1, 8, 8), digits.train_x)
    with pytest.raises(PyrovaeError, match="must match"):
        sample_quality(digits_classifier, torch.rand(4, 1, 8, 8), torch.rand(9, 1, 4, 4))
    with pytest.raises(PyrovaeError, match="no classifier at"):
        load_classifier(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PyrovaeError, match="not a pyrovae classifier"):
        load_classifier(tmp_path / "other.pt")
