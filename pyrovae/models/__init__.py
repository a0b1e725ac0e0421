"""Models: the contract any Pyro model/guide pair meets, and the built-ins written on it."""

from pyrovae.models.contract import Program, inputs_of, inspect_program
from pyrovae.models.linear_gaussian import LinearGaussianGuide, LinearGaussianModel
from pyrovae.models.registry import BUILTINS, build_model, from_spec, model_name
from pyrovae.models.vae import VAE, AutoEncoder, DenoisingAutoEncoder

__all__ = ["BUILTINS", "VAE", "AutoEncoder", "DenoisingAutoEncoder", "LinearGaussianGuide",
           "LinearGaussianModel", "Program", "build_model", "from_spec", "inputs_of",
           "inspect_program", "model_name"]
