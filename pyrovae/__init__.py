"""pyrovae: variational autoencoders as Pyro model/guide pairs.

Train a pair by SVI, evaluate it, and compare ELBO estimators on it::

    from pyrovae import load_dataset, train
    from pyrovae.models import VAE
    run = train(VAE(z_dim=20), load_dataset("fashion-mnist"), epochs=5, out="runs/x")
"""

from pyrovae.data import Dataset, Split, load_dataset
from pyrovae.errors import PyrovaeError
from pyrovae.pairs import register
from pyrovae.runs import Run, load_run
from pyrovae.train import Callback, train

__version__ = "0.1.0"
__all__ = ["Dataset", "Split", "load_dataset", "train", "Callback", "Run", "load_run", "register", "PyrovaeError"]
