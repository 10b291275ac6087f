"""The bundled model/guide pairs. Importing this package registers each under its name."""

from pyrovae.models.linear import LinearVAE
from pyrovae.models.vae import VAE

__all__ = ["LinearVAE", "VAE"]
