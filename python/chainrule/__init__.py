"""chainrule: backpropagation for fully connected (and convolutional) networks on CPUs,
with the whole training epoch in a C++ core."""

from . import activations, initializers, layers, losses, optimizers
from .models import History, Sequential, load_model

__version__ = "0.1.0"

__all__ = ["Sequential", "History", "load_model", "layers", "optimizers", "losses", "activations",
           "initializers", "datasets", "__version__"]


def __getattr__(name):
    # datasets is imported lazily: it is not needed to train on arrays one already has.
    if name == "datasets":
        import importlib
        return importlib.import_module(".datasets", __name__)
    raise AttributeError(f"module 'chainrule' has no attribute {name!r}")
