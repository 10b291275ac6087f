"""The bundled model/guide pairs. Importing this package registers each under its name."""

from pyrovae.models.vae import VAE

__all__ = ["VAE"]
