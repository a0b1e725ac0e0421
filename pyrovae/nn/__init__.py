"""Networks and observation models: encoder/decoder pairs and likelihoods ``p(x | decoder(z))``."""

from pyrovae.nn.likelihoods import LIKELIHOODS, ContinuousBernoulliLogits, Likelihood, build_likelihood
from pyrovae.nn.nets import build_networks

__all__ = ["LIKELIHOODS", "ContinuousBernoulliLogits", "Likelihood", "build_likelihood", "build_networks"]
