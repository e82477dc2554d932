"""Datasets and input preprocessing for chainrule (numpy + standard library only).

* :func:`load_digits` -- the UCI 8x8 handwritten digits, bundled (no network).
* :func:`load_mnist` -- MNIST from the standard gzipped IDX files, with a
  checksum-verified download into a cache folder when they are absent.
* :func:`read_idx` -- a strict IDX file reader.
* :func:`scale`, :func:`to_unit_range`, :class:`Standardizer`, :func:`standardize`
  -- input normalisation (LeCun et al., "Efficient BackProp": normalised inputs).
* :func:`to_categorical`, :func:`train_test_split`, :func:`permutation`.
"""

from ._digits import load_digits
from ._mnist import (
    MNIST_FILES,
    MNIST_MIRRORS,
    DatasetDownloadError,
    load_mnist,
    mnist_cache_dir,
    read_idx,
)
from ._preprocessing import (
    Standardizer,
    permutation,
    scale,
    standardize,
    to_categorical,
    to_unit_range,
    train_test_split,
)

__all__ = [
    "load_digits",
    "load_mnist",
    "read_idx",
    "mnist_cache_dir",
    "DatasetDownloadError",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "scale",
    "to_unit_range",
    "Standardizer",
    "standardize",
    "to_categorical",
    "train_test_split",
    "permutation",
]
