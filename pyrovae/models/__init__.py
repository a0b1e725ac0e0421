"""Models: the contract any Pyro model/guide pair meets, and the built-ins written on it."""

from pyrovae.models.conditional import CVAE
from pyrovae.models.contract import Program, inputs_of, inspect_program
from pyrovae.models.flows import IAFVAE
from pyrovae.models.hierarchical import HierarchicalVAE
from pyrovae.models.linear_gaussian import LinearGaussianGuide, LinearGaussianModel
from pyrovae.models.mixture import GMVAE
from pyrovae.models.registry import (
           BUILTINS,
           OPTIONS,
           build_model,
           from_spec,
           model_name,
           parse_model,
           spec_name,
)
from pyrovae.models.semisupervised import M2
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder
from pyrovae.models.vamp import VampVAE

__all__ = ["BUILTINS", "CVAE", "GMVAE", "IAFVAE", "M2", "OPTIONS", "VAE", "AutoEncoder",
           "DenoisingAutoEncoder", "HierarchicalVAE", "LinearGaussianGuide", "LinearGaussianModel",
           "Program", "VampVAE", "build_model", "from_spec", "inputs_of", "inspect_program", "model_name",
           "parse_model", "spec_name"]
