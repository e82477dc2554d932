"""chainrule: backpropagation for fully connected (and convolutional) networks on CPUs,
with the whole training epoch in a C++ core."""

from typing import TYPE_CHECKING

from . import system  # first: it sets how the core's OpenMP threads wait before the core loads
from . import (activations, callbacks, data, initializers, layers, losses, metrics, optimizers, regularizers,
               schedules)
from .gradcheck import gradient_check
from .diagnostics import InputRangeWarning
from .models import GradientWarning, History, NonFiniteWarning, Sequential
from .saving import ModelFormatError, load_model
from .system import cpu_info, get_num_threads, set_num_threads

from ._version import __version__

if TYPE_CHECKING:  # for type checkers; at run time datasets is imported on first use (below)
    from . import datasets

__all__ = ["Sequential", "gradient_check", "History", "load_model", "ModelFormatError", "GradientWarning",
           "NonFiniteWarning", "InputRangeWarning", "layers", "optimizers", "losses", "metrics", "data",
           "activations", "initializers", "regularizers", "schedules", "callbacks", "datasets",
           "cpu_info", "set_num_threads", "get_num_threads", "__version__"]


def __getattr__(name):
    # datasets is imported lazily: it is not needed to train on arrays one already has;
    # sklearn (the scikit-learn estimators) imports scikit-learn, an optional dependency.
    if name in ("datasets", "sklearn"):
        import importlib
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'chainrule' has no attribute {name!r}")
