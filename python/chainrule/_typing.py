"""Type aliases of chainrule's public API, for annotations only: the modules import this one
under ``typing.TYPE_CHECKING``, so nothing here runs when chainrule is imported."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, Union

import numpy as np
import numpy.typing as npt

# What predict, get_weights and the gradients return: float32 arrays, or float64 for a
# Sequential(dtype="float64").
FloatArray = npt.NDArray[np.floating[Any]]
# What the data arguments accept: anything numpy turns into a numeric array.
ArrayLike = npt.ArrayLike
DTypeLike = npt.DTypeLike
# A per-sample shape: one size or a sequence of sizes, without the batch dimension.
ShapeLike = Union[int, Sequence[int]]
# An int or a (rows, cols) pair: kernel sizes, strides, pool sizes.
IntPair = Union[int, Sequence[int]]
# The config dicts of get_config / from_config (JSON values).
Config = dict[str, Any]
# Per-epoch logs handed to callbacks: metric name -> value.
Logs = dict[str, float]
PathLike = Union[str, "os.PathLike[str]"]
# A weight initializer: (shape, fan_in, fan_out, numpy Generator) -> array.
Initializer = Callable[[tuple[int, ...], int, int, np.random.Generator], npt.NDArray[np.float64]]
