"""The bundled model/guide pairs. Importing this package registers each under its name."""

from pyrovae.models.autoencoder import AutoEncoder
from pyrovae.models.cvae import CVAE, CVAEBaseline
from pyrovae.models.gmvae import GMVAE
from pyrovae.models.linear import LinearVAE
from pyrovae.models.vae import VAE

__all__ = ["AutoEncoder", "CVAE", "CVAEBaseline", "GMVAE", "LinearVAE", "VAE"]
