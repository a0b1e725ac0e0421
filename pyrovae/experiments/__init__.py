"""Experiments built on the library: the beta sweep, the estimator comparison, the auto-encoder
baselines and the Bernoulli-latent toy."""
