"""User-style models shared by several test files (a user's own site names, plates and params)."""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


class ConditionalVAE(nn.Module):
    """A user's conditional VAE on 8x8 digits: the label is one-hot coded into encoder and decoder;
    its own plate (``batch``) and site names (``code``, ``pixels``); Bernoulli pixels whose logits
    carry a learned per-pixel bias, a ``pyro.param`` (it lives in Pyro's param store)."""

    inputs = ("x", "y")

    def __init__(self, z_dim=3, hidden=32, classes=10, pixels=64):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.enc = nn.Sequential(nn.Linear(pixels + classes, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * z_dim))
        self.dec = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.Tanh(),
                                 nn.Linear(hidden, pixels))

    def join(self, h, y):
        y = F.one_hot(y, self.classes).to(h.dtype)
        return torch.cat([h, y.expand(*h.shape[:-1], self.classes)], -1)  # h may carry particle dims

    def model(self, x, y):
        pyro.module("decoder", self.dec)
        bias = pyro.param("pixel_bias", lambda: torch.zeros(x[0].numel(), device=x.device))
        with pyro.plate("batch", x.shape[0]):
            code = pyro.sample("code", dist.Normal(x.new_zeros(()), 1.0).expand([self.z_dim]).to_event(1))
            logits = self.dec(self.join(code, y)) + bias
            pyro.sample("pixels", dist.Bernoulli(logits=logits).to_event(1), obs=x.flatten(1))

    def guide(self, x, y):
        pyro.module("encoder", self.enc)
        with pyro.plate("batch", x.shape[0]):
            loc, raw = self.enc(self.join(x.flatten(1), y)).chunk(2, -1)
            pyro.sample("code", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))
