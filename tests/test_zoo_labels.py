"""The label-using models of the zoo: the mixture VAE (gmvae), the conditional VAE (cvae) and the
semi-supervised M2, with hide_labels. Losses are checked against formulas written out here by hand
(the same random draw, seeded), and each model trains through pyrovae.train on the 8x8 digits."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

import pyrovae
from pyrovae import PyrovaeError
from pyrovae.data.labels import UNKNOWN, hide_labels, labelled
from pyrovae.infer.registry import make_elbo
from pyrovae.models.conditional import CVAE, Classifier, one_hot
from pyrovae.models.mixture import GMVAE, cluster_purity, purity
from pyrovae.models.semisupervised import M2, classification_accuracy

SHAPE = (1, 8, 8)
SMALL = dict(z_dim=3, hidden=[16])


def binary_batch(digits, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(digits.train_x[:n], generator=g), digits.train_y[:n]


def bernoulli_log_px(logits, x):
    return dist.Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))


def gaussian_log_prob(loc, scale, z):
    return dist.Normal(loc, scale).log_prob(z).sum(-1)


# --------------------------------------------------------------------------- gmvae


@pytest.mark.parametrize("weights", ["learned", "uniform"])
def test_gmvae_enumerated_elbo_is_the_sum_over_clusters(digits, weights, single_thread):
    """-loss = log p(x|z) - log q(z|x) + sum_c q(c|x) [log p(c) + log p(z|c) - log q(c|x)],
    with the one z ~ q(z|x) that the guide drew."""
    m = GMVAE(SHAPE, clusters=4, weights=weights, **SMALL)
    with torch.no_grad():
        m.prior.logits.copy_(torch.tensor([0.5, -1.0, 0.0, 1.5]))  # unequal weights (buffer or parameter)
    x, _ = binary_batch(digits)
    elbo = make_elbo("enum", 1, m.max_plate_nesting)
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(m.model, m.guide, x)

    pyro.set_rng_seed(5)
    with torch.no_grad():
        loc, scale = m.encoder(x)
        z = dist.Normal(loc, scale).rsample()  # the guide's draw: same seed, same shape
        log_q_c = F.log_softmax(m.classifier(x), -1)  # (N, K)
        log_p_c = F.log_softmax(m.prior.logits, -1)  # (K,)
        sigma = F.softplus(m.prior.raw_scale) + 1e-3
        log_p_z_c = torch.stack([gaussian_log_prob(m.prior.loc[c], sigma[c], z) for c in range(4)], -1)
        per_cluster = (log_q_c.exp() * (log_p_c + log_p_z_c - log_q_c)).sum(-1)
        expected = bernoulli_log_px(m.decoder(z), x) - gaussian_log_prob(loc, scale, z) + per_cluster
    torch.testing.assert_close(-loss.detach(), expected.sum(), rtol=1e-5, atol=1e-4)
    assert ("logits" in dict(m.prior.named_parameters())) == (weights == "learned")


def test_gmvae_trains_with_enum_and_its_clusters_follow_the_digits(digits, single_thread):
    pyro.set_rng_seed(0)
    m = GMVAE(SHAPE, z_dim=8, hidden=[64], clusters=10)  # uniform weights
    run = pyrovae.train(model=m, data=digits, estimator="enum", binarize="dynamic", epochs=25,
                        batch_size=64, lr=3e-3, progress=False, figures=False)
    assert math.isfinite(run.metrics[-1]["test_elbo"])
    assert run.metrics[-1]["test_elbo"] > run.metrics[0]["test_elbo"]
    score = cluster_purity(m, digits.test_x, digits.test_y)
    # random clusters score 0.21-0.25 on these 180 digits; trained ones 0.41-0.54 over seeds 0-3
    chance = purity(torch.randint(0, 10, (180,), generator=torch.Generator().manual_seed(0)), digits.test_y)
    assert chance < 0.26 and score > 0.35, (score, chance)


def test_purity_by_hand():
    clusters = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([3, 3, 1, 2, 2, 0])
    assert purity(clusters, labels) == pytest.approx((2 + 2 + 1) / 6)
    with pytest.raises(PyrovaeError, match="as many cluster indices as labels"):
        purity(clusters, labels[:5])


def test_gmvae_options_are_checked_and_kept_in_the_spec():
    m = GMVAE(SHAPE, clusters=3, weights="uniform", **SMALL)
    spec = m.spec
    assert spec["model"] == "gmvae" and spec["clusters"] == 3 and spec["weights"] == "uniform"
    again = GMVAE(**{k: v for k, v in spec.items() if k != "model"})
    again.load_state_dict(m.state_dict())
    assert again.spec == spec
    with pytest.raises(PyrovaeError, match="clusters must be a whole number >= 1"):
        GMVAE(SHAPE, clusters=0)
    with pytest.raises(PyrovaeError, match="weights must be one of learned, uniform"):
        GMVAE(SHAPE, weights="equal")
    with pytest.raises(PyrovaeError, match="cluster_purity needs images"):
        cluster_purity(m, torch.zeros(4, 64), torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- cvae


def class_means(x, y, classes=10):
    return torch.stack([x[y == k].mean(0) for k in range(classes)])


def test_cvae_trains_reloads_and_samples_each_class(digits, tmp_path, single_thread):
    pyro.set_rng_seed(0)
    m = CVAE(SHAPE, z_dim=4, hidden=[64])
    run = pyrovae.train(model=m, data=digits, binarize="dynamic", epochs=20, batch_size=64, lr=3e-3,
                        run_dir=tmp_path / "run", progress=False, figures=False)
    assert run.inputs == ("x", "y")
    test = (digits.test_x, digits.test_y)
    pyro.set_rng_seed(3)
    ll = pyrovae.log_likelihood(m, test, 10)

    pyro.clear_param_store()
    pyro.set_rng_seed(99)
    back = pyrovae.load_run(tmp_path / "run", model=CVAE(SHAPE, z_dim=4, hidden=[64]), data=digits)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(pyrovae.log_likelihood(back.model, test, 10), ll)

    # 50 samples per class through the generic sampler; each class's mean sample is nearest to
    # that class's mean held-out digit
    labels = torch.arange(10).repeat_interleave(50)
    inputs = (torch.zeros(len(labels), *SHAPE), labels)
    images = pyrovae.sample(back.model, len(labels), seed=0, inputs=inputs)
    assert images.shape == (500, *SHAPE)
    torch.testing.assert_close(images, pyrovae.sample(back.model, 500, seed=0, inputs=inputs))
    sample_means = class_means(images, labels).flatten(1)
    target = class_means(digits.test_x, digits.test_y).flatten(1)
    nearest = torch.cdist(sample_means, target).argmin(1)
    assert (nearest == torch.arange(10)).sum() >= 9, nearest


def test_cvae_decoding_depends_on_the_label(single_thread):
    m = CVAE(SHAPE, **SMALL)
    z = torch.randn(5, 3)
    a, b = m.decode(z, torch.full((5,), 2)), m.decode(z, torch.full((5,), 7))
    assert not torch.allclose(a, b)
    # the decoder reads [z, onehot(y)]: written out, the same numbers
    logits = m.decoder(torch.cat([z, F.one_hot(torch.full((5,), 7), 10).float()], -1))
    torch.testing.assert_close(b, torch.sigmoid(logits))


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_labelled_encoder_broadcasts_enumerated_labels(net):
    """The encoder q(z|x,y) of every label at once equals one label at a time."""
    shape = (1, 8, 8)
    m = CVAE(shape, z_dim=3, hidden=[16], net=net, classes=4)
    x = torch.rand(5, *shape)
    every = m.encoder(x, torch.eye(4).reshape(4, 1, 4))[0]  # (4, 5, 3)
    assert every.shape == (4, 5, 3)
    for k in range(4):
        one = m.encoder(x, one_hot(torch.full((5,), k), 4))[0]
        torch.testing.assert_close(every[k], one)


def test_cvae_refuses_labels_outside_its_classes(digits):
    m = CVAE(SHAPE, classes=5, **SMALL)
    x, y = binary_batch(digits, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(PyrovaeError, match=r"labels y must be 0..4, got values in \[0, 7\].*classes=8"):
        pyrovae.make_elbo("trace").loss(m.model, m.guide, x, y)
    with pytest.raises(PyrovaeError, match=r"training labels must be 0..4, got values in \[-1, 3\]: fix"):
        m.check_inputs(digits.train_x[:2], torch.tensor([-1, 3]), "training labels")
    M2(SHAPE, classes=5, **SMALL).check_inputs(digits.train_x[:2], torch.tensor([-1, 3]))  # M2 takes -1
    with pytest.raises(PyrovaeError, match="classes must be a whole number >= 2"):
        CVAE(SHAPE, classes=1)
    with pytest.raises(PyrovaeError, match="integer class labels"):
        m.decode(torch.zeros(2, 3), torch.zeros(2))


# --------------------------------------------------------------------------- m2


def m2_reference_loss(m, x, y, alpha):
    """The paper's loss written out (Kingma et al. 2014, eqs. 6-9), for the guide's draws:
    labelled: L = -(log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)), plus -alpha * mean log q(y|x);
    unlabelled: U = sum_y q(y|x) L(x, y) - H(q(y|x)). z is drawn for every label at once, (K, N, D),
    as the enumerating guide draws it."""
    k = m.classes
    with torch.no_grad():
        codes = torch.eye(k).reshape(k, 1, k).expand(k, len(x), k)
        loc, scale = m.encoder(x, codes)
        z = dist.Normal(loc, scale).rsample()  # (K, N, D)
        log_px = bernoulli_log_px(m.decoder(torch.cat([z, codes], -1)), x)  # (K, N)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        neg_l = log_px - math.log(k) + log_pz - gaussian_log_prob(loc, scale, z)  # -L(x, y), (K, N)
        log_q_y = F.log_softmax(m.classifier(x), -1).T  # (K, N)
        known = y >= 0
        n = torch.arange(len(x))
        labelled_part = neg_l[y.clamp(min=0), n][known]
        unlabelled_part = ((log_q_y.exp() * (neg_l - log_q_y)).sum(0))[~known]
        loss = -(labelled_part.sum() + unlabelled_part.sum())
        if alpha and known.any():
            loss = loss - alpha * log_q_y[y.clamp(min=0), n][known].mean()
    return loss


@pytest.mark.parametrize("known", ["all", "none", "half"])
@pytest.mark.parametrize("alpha", [None, 3.0])
def test_m2_loss_is_the_papers_formula(digits, known, alpha, single_thread):
    m = M2(SHAPE, alpha=alpha, **SMALL)
    x, y = binary_batch(digits, 6)
    if known == "none":
        y = torch.full_like(y, UNKNOWN)
    elif known == "half":
        y = torch.where(torch.arange(6) % 2 == 0, y, UNKNOWN)
    elbo = make_elbo("enum", 1, m.max_plate_nesting)
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(m.model, m.guide, x, y)
    pyro.set_rng_seed(5)
    weight = 0.1 * len(x) if alpha is None else alpha  # the paper's 0.1 N, N the batch
    torch.testing.assert_close(loss.detach(), m2_reference_loss(m, x, y, weight), rtol=1e-5, atol=1e-4)

    m.eval()  # evaluation: the bound alone, without the classifier term
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(m.model, m.guide, x, y)
    pyro.set_rng_seed(5)
    torch.testing.assert_close(loss.detach(), m2_reference_loss(m, x, y, 0.0), rtol=1e-5, atol=1e-4)


def test_m2_gradient_reaches_the_classifier_from_unlabelled_data(digits):
    m = M2(SHAPE, **SMALL)
    x, _ = binary_batch(digits, 6)
    loss = make_elbo("enum", 1, 1).differentiable_loss(m.model, m.guide, x, torch.full((6,), UNKNOWN))
    loss.backward()
    grad = next(m.classifier.parameters()).grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_m2_learns_digits_from_a_few_labels(digits, single_thread):
    few = hide_labels(digits, 50, seed=0)
    pyro.set_rng_seed(0)
    m = M2(SHAPE, z_dim=8, hidden=[64])
    run = pyrovae.train(model=m, data=few, estimator="enum", binarize="dynamic", epochs=15,
                        batch_size=64, lr=3e-3, progress=False, figures=False)
    assert math.isfinite(run.metrics[-1]["test_elbo"])
    accuracy = classification_accuracy(m, digits.test_x, digits.test_y)
    assert accuracy > 0.6, accuracy


def test_m2_options_and_accuracy_checks(digits):
    m = M2(SHAPE, alpha=0.0, **SMALL)
    assert m.spec["alpha"] == 0.0 and m.spec["classes"] == 10 and m.spec["model"] == "m2"
    again = M2(**{k: v for k, v in m.spec.items() if k != "model"})
    again.load_state_dict(m.state_dict())
    with pytest.raises(PyrovaeError, match="alpha must be a finite number >= 0"):
        M2(SHAPE, alpha=-1.0)
    with pytest.raises(PyrovaeError, match="every label in y is -1"):
        classification_accuracy(m, digits.test_x[:4], torch.full((4,), UNKNOWN))
    with pytest.raises(PyrovaeError, match="labels y must be -1 \\(unknown\\) or 0..9"):
        x, _ = binary_batch(digits, 4)
        make_elbo("enum", 1, 1).loss(m.model, m.guide, x, torch.tensor([0, 1, 12, -1]))
    # accuracy of a plain classifier network, by hand
    net = Classifier("mlp", SHAPE, [16], 10)
    with torch.no_grad():
        pred = net(digits.test_x).argmax(-1)
    expected = (pred == digits.test_y).float().mean().item()
    assert classification_accuracy(net, digits.test_x, digits.test_y) == pytest.approx(expected)


# --------------------------------------------------------------------------- hide_labels


def test_hide_labels_keeps_a_seeded_class_balanced_subset(digits):
    few = hide_labels(digits, 43, seed=1)
    known = few.train_y >= 0
    assert int(known.sum()) == 43
    counts = torch.bincount(few.train_y[known], minlength=10)
    assert counts.min() == 4 and counts.max() == 5 and int((counts == 5).sum()) == 3
    assert torch.equal(few.train_y[known], digits.train_y[known])  # the true labels where kept
    assert ((few.train_y == UNKNOWN) | known).all()
    assert torch.equal(few.test_y, digits.test_y) and few.train_x is digits.train_x
    assert torch.equal(hide_labels(digits, 43, seed=1).train_y, few.train_y)
    assert not torch.equal(hide_labels(digits, 43, seed=2).train_y, few.train_y)
    assert torch.equal(hide_labels(digits, len(digits.train_y)).train_y, digits.train_y)
    assert (hide_labels(digits, 0).train_y == UNKNOWN).all()
    kept = labelled(few)
    assert len(kept.train_x) == 43 and (kept.train_y >= 0).all()


def test_hide_labels_errors(digits):
    with pytest.raises(PyrovaeError, match="n_labelled = 5000 is more than the"):
        hide_labels(digits, 5000)
    with pytest.raises(PyrovaeError, match="n_labelled must be a whole number >= 0"):
        hide_labels(digits, -1)
    no_labels = pyrovae.Dataset("x", digits.train_x, digits.test_x)
    with pytest.raises(PyrovaeError, match="has no training labels to hide"):
        hide_labels(no_labels, 10)
    bad = pyrovae.Dataset("bad", digits.train_x[:3], digits.test_x, torch.tensor([0, -1, 1]), digits.test_y)
    with pytest.raises(PyrovaeError, match="train_y must hold class labels 0..K-1"):
        hide_labels(bad, 1)


def test_hide_labels_gives_a_small_class_all_it_has(digits):
    """10 labels of 28 zeros and 2 ones: both ones, and the zeros take their share."""
    skewed = pyrovae.Dataset("skewed", digits.train_x[:30], digits.test_x,
                             torch.tensor([0] * 28 + [1] * 2), digits.test_y)
    kept = hide_labels(skewed, 10).train_y
    assert torch.bincount(kept[kept >= 0]).tolist() == [8, 2]
    assert (hide_labels(skewed, 30).train_y >= 0).all()
