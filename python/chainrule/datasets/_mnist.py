"""MNIST from the four standard gzipped IDX files: lookup, checked download, robust parsing."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Any

import numpy as np

__all__ = [
    "load_mnist",
    "read_idx",
    "mnist_cache_dir",
    "DatasetDownloadError",
    "MNIST_FILES",
    "MNIST_MIRRORS",
]

#: The four files, by role.  Uncompressed copies (same names without ``.gz``) are accepted too.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: Base URLs tried in order by the downloader (each + file name).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# SHA-256 of the original files (gzipped, and their uncompressed IDX content).
_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_MAX_DOWNLOAD_BYTES = 64 << 20  # the largest file is ~9.9 MB
_MAX_IDX_BYTES = 1 << 34  # refuse headers that promise more than 16 GiB
_DOWNLOAD_TIMEOUT_S = 60

# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetDownloadError(OSError):
    """Raised when a dataset file could not be downloaded from any mirror."""


# --------------------------------------------------------------------------- IDX parsing


def _read_exact(f, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = f.readinto(view[got:])
        if not r:
            break
        got += r
    del view
    if got < n:
        del buf[got:]
    return buf


def _parse_idx(f, name: str) -> np.ndarray:
    header = _read_exact(f, 4)
    if len(header) < 4:
        raise ValueError(f"{name}: not an IDX file: truncated header ({len(header)} of 4 bytes)")
    if header[0] != 0 or header[1] != 0 or header[2] not in _IDX_TYPES or header[3] == 0:
        raise ValueError(
            f"{name}: not an IDX file: bad magic number 0x{bytes(header).hex()} "
            "(expected 0x0000TTDD with a known type code TT and DD >= 1 dimensions)"
        )
    dtype = _IDX_TYPES[header[2]]
    ndim = header[3]
    raw_dims = _read_exact(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions announced)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    count = 1
    for d in dims:
        count *= d
    nbytes = count * dtype.itemsize
    if nbytes > _MAX_IDX_BYTES:
        raise ValueError(f"{name}: implausible IDX dimensions {dims}")
    data = _read_exact(f, nbytes)
    if len(data) < nbytes:
        raise ValueError(
            f"{name}: truncated IDX file: dimensions {dims} need {nbytes} bytes of data, "
            f"found only {len(data)}"
        )
    if f.read(1):
        raise ValueError(f"{name}: IDX file has trailing bytes after the {nbytes} bytes of data for {dims}")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(filename: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not; detected from the content) into an ndarray.

    Checks the magic number, the dimensions and that the data size matches the
    header exactly; raises ValueError naming the file if the file is not valid
    IDX, is truncated, has trailing bytes, or is a corrupted gzip stream.
    """
    name = os.fspath(filename)
    with open(name, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not is_gzip:
            return _parse_idx(raw, name)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _parse_idx(f, name)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{name}: corrupted or truncated gzip data ({exc})") from exc


# --------------------------------------------------------------------------- locating files


def mnist_cache_dir() -> str:
    """The folder that :func:`load_mnist` downloads into.

    ``$CHAINRULE_DATA_DIR/mnist`` if that variable is set, else
    ``$XDG_CACHE_HOME/chainrule/mnist``, else ``~/.cache/chainrule/mnist``.
    """
    root = os.environ.get("CHAINRULE_DATA_DIR")
    if root:
        return os.path.join(os.path.expanduser(root), "mnist")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "chainrule", "mnist")


def _find(folder: str, gz_name: str) -> str | None:
    for candidate in (gz_name, gz_name[: -len(".gz")]):
        p = os.path.join(folder, candidate)
        if os.path.isfile(p):
            return p
    return None


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _how_to_provide(folder: str) -> str:
    names = ", ".join(MNIST_FILES.values())
    return (
        f"Provide the files ({names}; gzipped or not) by placing them in {folder}, "
        "or put them in any folder and pass load_mnist(path=FOLDER) or set the "
        "CHAINRULE_MNIST_DIR environment variable to it."
    )


# --------------------------------------------------------------------------- download


def _fetch(url: str, dest: str, expected_sha256: str) -> None:
    """Download ``url`` to ``dest`` atomically; raise ValueError on a checksum mismatch."""
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part", dir=folder)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                while True:
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    size += len(block)
                    if size > _MAX_DOWNLOAD_BYTES:
                        raise ValueError(f"response larger than {_MAX_DOWNLOAD_BYTES} bytes")
                    h.update(block)
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != expected_sha256:
            raise ValueError(f"SHA-256 mismatch: got {digest}, expected {expected_sha256} ({size} bytes)")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _download(gz_name: str, folder: str) -> str:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DatasetDownloadError(
            f"cannot create the MNIST cache folder {folder}: {exc}. " + _how_to_provide(folder)
        ) from exc
    dest = os.path.join(folder, gz_name)
    failures = []
    for base in MNIST_MIRRORS:
        url = base + gz_name
        try:
            _fetch(url, dest, _SHA256[gz_name])
            return dest
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
            failures.append(f"  {url}: {type(exc).__name__}: {exc}")
    raise DatasetDownloadError(
        f"could not download MNIST file {gz_name} into {folder}; every mirror failed:\n"
        + "\n".join(failures)
        + "\n"
        + _how_to_provide(folder)
    )


# --------------------------------------------------------------------------- loading


def _load_split(img_path: str, lbl_path: str):
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lbl_path}: expected uint8 labels of shape (n,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


def load_mnist(path: str | os.PathLike[str] | None = None, download: bool = True, *, normalize: bool = False,
               flatten: bool = False, verify: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST: ``(x_train, y_train), (x_test, y_test)`` (60,000 and 10,000 images).

    Images are uint8 of shape ``(n, 28, 28)``; ``normalize=True`` gives float32
    in ``[0, 1]`` (``x / 255``), ``flatten=True`` gives shape ``(n, 784)``.
    Labels are int64 in 0..9.

    Where the files are looked for, in order:

    1. ``path`` if given;
    2. else the folder in the ``CHAINRULE_MNIST_DIR`` environment variable;
    3. else the cache folder :func:`mnist_cache_dir` (``$CHAINRULE_DATA_DIR/mnist``
       or ``~/.cache/chainrule/mnist``).

    Each folder must hold the four standard files (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
    ``t10k-labels-idx1-ubyte.gz``); uncompressed copies without ``.gz`` work too.
    A folder from (1) or (2) is never written to: a missing file there raises
    FileNotFoundError naming the folder and the file.  Only the cache folder (3)
    is downloaded into, when ``download=True``: each missing file is fetched
    from :data:`MNIST_MIRRORS` in turn, checked against its known SHA-256, and
    moved into place atomically (no partial file is ever left under the final
    name).  If every mirror fails, :class:`DatasetDownloadError` (an OSError)
    is raised, listing what was tried and how to provide the files.

    ``verify=True`` also checks the SHA-256 of files that were already present
    (ValueError on mismatch).  Downloaded files are always checked.  Files are
    parsed strictly (:func:`read_idx`); corrupted or truncated files raise
    ValueError naming the file.
    """
    if path is not None:
        folder, source, writable = os.fspath(path), "the path argument", False
    elif os.environ.get("CHAINRULE_MNIST_DIR"):
        folder, source, writable = os.environ["CHAINRULE_MNIST_DIR"], "CHAINRULE_MNIST_DIR", False
    else:
        folder, source, writable = mnist_cache_dir(), "the cache folder", True
    folder = os.path.expanduser(folder)

    found = {}
    for role, gz_name in MNIST_FILES.items():
        p = _find(folder, gz_name)
        if p is not None and verify:
            expected = _SHA256[os.path.basename(p)]
            actual = _sha256_file(p)
            if actual != expected:
                raise ValueError(f"{p}: SHA-256 mismatch: got {actual}, expected {expected}")
        if p is None:
            if not writable:
                raise FileNotFoundError(
                    f"MNIST file {gz_name} not found in {folder} (given by {source}). "
                    + _how_to_provide(folder)
                )
            if not download:
                raise FileNotFoundError(
                    f"MNIST file {gz_name} not found in the cache folder {folder} and download=False. "
                    + _how_to_provide(folder)
                )
            p = _download(gz_name, folder)
        found[role] = p

    (x_tr, y_tr) = _load_split(found["train_images"], found["train_labels"])
    (x_te, y_te) = _load_split(found["test_images"], found["test_labels"])
    out = []
    for x in (x_tr, x_te):
        if normalize:
            x = x.astype(np.float32) / np.float32(255.0)
        if flatten:
            x = x.reshape(x.shape[0], -1)
        out.append(x)
    return (out[0], y_tr), (out[1], y_te)
