"""The bundled UCI 8x8 optical handwritten digits (1,797 images, no network needed)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
from importlib import resources
from typing import Literal, overload

import numpy as np

from ._preprocessing import _split_indices

__all__ = ["load_digits", "DIGITS_TEST_SIZE", "DIGITS_SEED"]

_DIGITS_FILE = "optdigits.csv.gz"
_DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
_N_DIGITS = 1797
DIGITS_TEST_SIZE = 360
DIGITS_SEED = 0


def _data_bytes() -> bytes:
    return resources.files(__package__).joinpath("data").joinpath(_DIGITS_FILE).read_bytes()


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    raw = _data_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _DIGITS_SHA256:
        raise ValueError(
            f"bundled data file chainrule/datasets/data/{_DIGITS_FILE} is corrupted: "
            f"SHA-256 {digest}, expected {_DIGITS_SHA256}; reinstall chainrule"
        )
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (_N_DIGITS, 65):
        raise ValueError(f"bundled {_DIGITS_FILE} has shape {table.shape}, expected ({_N_DIGITS}, 65)")
    x, y = table[:, :64], table[:, 64]
    if x.min() < 0 or x.max() > 16 or y.min() < 0 or y.max() > 9:
        raise ValueError(f"bundled {_DIGITS_FILE} has values out of range")
    x = x.astype(np.uint8)
    y = np.ascontiguousarray(y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


_Split = tuple[np.ndarray, np.ndarray]


@overload
def load_digits(return_split: Literal[True] = ..., *, normalize: bool = ..., flatten: bool = ...,
                seed: int = ...) -> tuple[_Split, _Split]: ...
@overload
def load_digits(return_split: Literal[False], *, normalize: bool = ..., flatten: bool = ...,
                seed: int = ...) -> _Split: ...
@overload
def load_digits(return_split: bool = ..., *, normalize: bool = ..., flatten: bool = ...,
                seed: int = ...) -> tuple[_Split, _Split] | _Split: ...


def load_digits(return_split: bool = True, *, normalize: bool = True, flatten: bool = True,
                seed: int = DIGITS_SEED) -> tuple[_Split, _Split] | _Split:
    """Load the UCI "Optical Recognition of Handwritten Digits" 8x8 set bundled with chainrule.

    1,797 images of handwritten digits 0-9 (about 180 per class), each an 8x8
    grid of counts 0..16.  E. Alpaydin and C. Kaynak (1998), UCI Machine Learning
    Repository, https://archive.ics.uci.edu/dataset/80, DOI 10.24432/C50P49,
    licensed CC BY 4.0 (see ``chainrule/datasets/data/NOTICE``).

    Parameters
    ----------
    return_split : bool
        ``True`` (default): return ``(x_train, y_train), (x_test, y_test)`` with
        1,437 train and 360 test images.  ``False``: return ``(x, y)``, all
        1,797 images in file order.
    normalize : bool
        ``True`` (default): ``x`` is float32 in ``[0, 1]`` (counts divided by 16).
        ``False``: ``x`` is uint8 with the raw counts 0..16.
    flatten : bool
        ``True`` (default): ``x`` has shape ``(n, 64)``; ``False``: ``(n, 8, 8)``.
    seed : int
        Seed of the split.  The default ``0`` gives the documented, fixed split.

    The split is stratified (each digit keeps its share of the 360 test images:
    37 for digits 1 and 3, 35 for 2 and 8, 36 for the others) and deterministic: it uses
    :func:`chainrule.datasets.permutation`, a splitmix64-based shuffle that does
    not depend on numpy's RNG, so it is identical on every platform and numpy
    version.  Both parts come in shuffled order.

    Labels ``y`` are int64 in 0..9.  Every call returns fresh, writable arrays.
    """
    x, y = _load_raw()
    if return_split:
        tr, te = _split_indices(y, y.shape[0], DIGITS_TEST_SIZE, seed, True)
        parts = [(x[tr], y[tr]), (x[te], y[te])]
    else:
        parts = [(x.copy(), y.copy())]
    out = []
    for xs, ys in parts:
        xs = (xs.astype(np.float32) / np.float32(16.0)) if normalize else xs
        if not flatten:
            xs = xs.reshape(-1, 8, 8)
        out.append((xs, ys))
    return (out[0], out[1]) if return_split else out[0]
