"""Streaming data: :class:`Dataset` (batches of in-memory or memory-mapped arrays) and the
background reader that feeds ``fit``, ``evaluate`` and ``predict`` from any iterable of
batches while the C++ core trains on the current one.

``fit(data)`` accepts, besides arrays, any of:

- a :class:`Dataset`: ``Dataset(x, y, batch_size=32, shuffle=True)``, or the tf.data-like
  ``Dataset.from_tensor_slices((x, y)).shuffle().batch(32)``;
- an iterable of batches (anything with ``__iter__`` other than a list, tuple or array, such
  as a ``torch.utils.data.DataLoader``), iterated afresh every epoch;
- an iterator or generator of batches, consumed continuously across epochs (give
  ``steps_per_epoch`` when it runs for more than one epoch, as in Keras).

Each batch is ``(x, y)`` or ``(x, y, sample_weight)`` (``x`` alone, or ``(x,)``, for
``predict``), as numpy arrays or anything ``numpy.asarray`` takes. A background thread reads
the next batches, checks them and converts them into buffers allocated once and reused, in
chunks of consecutive batches (about 16 MB of inputs, at most 256 batches; two chunks ahead
at most). The
C++ core trains on a whole chunk, batch by batch, in one call with the GIL released, while the
thread fills the next: reading and conversion overlap training, and Python runs once per chunk
on the training side, not once per batch.

Data larger than memory: save it as ``.npy`` and open it with ``np.load(path,
mmap_mode="r")``. ``fit`` then takes the memory-mapped arrays directly, without copying them,
when they are C-contiguous and of the model's dtype (float32 by default): the core reads the
rows of each batch from the mapped file, and the operating system keeps in memory what fits.
Of another dtype (``uint8`` images, say) ``fit`` would convert the whole array in memory;
``Dataset(x_mmap, y, batch_size=...)`` converts a chunk of batches (about 16 MB) at a time
instead.
"""

from __future__ import annotations

import numbers
import queue
import threading

import numpy as np

from . import _checks

__all__ = ["Dataset", "is_stream"]


class Dataset:
    """Mini-batches of arrays ``x``, ``y`` (optional) and ``sample_weight`` (optional), all
    with the same first dimension; they may be memory-mapped (``np.load(mmap_mode="r")``):
    a batch reads only its rows.

    Iterating yields ``(x_batch, y_batch)`` (``(x_batch, y_batch, sw_batch)`` with sample
    weights, ``x_batch`` alone without ``y``). With ``shuffle`` every iteration (every epoch
    of ``fit``) draws a new order of the samples, seeded from ``seed`` and the iteration
    count, so a run is reproducible; without it the batches are views in order.
    ``drop_remainder`` leaves out a last, smaller batch. ``len(dataset)`` is the number of
    batches per iteration.
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=32, shuffle=False, seed=None,
                 drop_remainder=False):
        self._arrays = _slices_of(x, y, sample_weight)
        self._has_y = y is not None
        self._has_sw = sample_weight is not None
        self.batch_size = None if batch_size is None else _checks.positive_int("Dataset: batch_size", batch_size)
        self.shuffle_samples = _checks.flag("Dataset: shuffle", shuffle)
        self.drop_remainder = _checks.flag("Dataset: drop_remainder", drop_remainder)
        seed = _checks.seed(seed, "Dataset: seed")
        self.seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else seed
        self._iterations = 0
        if self.drop_remainder and self.batch_size is not None and self.batch_size > self.cardinality:
            raise ValueError(f"Dataset: drop_remainder=True with batch_size={self.batch_size} leaves no batch "
                             f"of the {self.cardinality} samples")

    # -- the tf.data-like spelling -----------------------------------------------------------
    @classmethod
    def from_tensor_slices(cls, tensors):
        """A dataset of the samples of ``tensors``: an array ``x``, or a tuple ``(x,)``,
        ``(x, y)`` or ``(x, y, sample_weight)``. Call :meth:`batch` before training on it."""
        if isinstance(tensors, (tuple, list)):
            if not 1 <= len(tensors) <= 3:
                raise ValueError("Dataset.from_tensor_slices: expected x, (x,), (x, y) or (x, y, sample_weight); "
                                 f"received a {type(tensors).__name__} of {len(tensors)}")
            return cls(*tensors, batch_size=None)
        return cls(tensors, batch_size=None)

    def shuffle(self, buffer_size=None, seed=None, reshuffle_each_iteration=True):
        """The same data, shuffled anew every iteration. The whole dataset is permuted
        (``buffer_size``, tf.data's window, is accepted and has no effect: the data is in
        memory or memory-mapped); ``reshuffle_each_iteration`` must be True."""
        if buffer_size is not None:
            _checks.positive_int("Dataset.shuffle: buffer_size", buffer_size)
        if reshuffle_each_iteration is not True:
            raise ValueError("Dataset.shuffle: reshuffle_each_iteration must be True (a new order every epoch)")
        return self._copy(shuffle_samples=True, seed=self.seed if seed is None else _checks.seed(seed, "seed"))

    def batch(self, batch_size, drop_remainder=False):
        """The same data in batches of ``batch_size`` samples."""
        if self.batch_size is not None:
            raise ValueError(f"Dataset.batch: this dataset is already batched (batch_size={self.batch_size})")
        out = self._copy(batch_size=_checks.positive_int("Dataset.batch: batch_size", batch_size),
                         drop_remainder=_checks.flag("Dataset.batch: drop_remainder", drop_remainder))
        if out.drop_remainder and out.batch_size > out.cardinality:
            raise ValueError(f"Dataset.batch: drop_remainder=True with batch_size={batch_size} leaves no batch "
                             f"of the {out.cardinality} samples")
        return out

    def _copy(self, **changes):
        out = object.__new__(Dataset)
        out.__dict__.update(self.__dict__)
        out.__dict__.update(changes)
        out._iterations = 0
        return out

    # -- iteration ---------------------------------------------------------------------------
    @property
    def cardinality(self):
        """The number of samples."""
        return int(self._arrays[0].shape[0])

    def __len__(self):
        if self.batch_size is None:
            return self.cardinality
        full, rest = divmod(self.cardinality, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def __iter__(self):
        for idx in self.index_batches():
            parts = tuple(a[idx] for a in self._arrays)
            yield parts[0] if len(parts) == 1 else parts

    def index_batches(self):
        """One pass (an iteration) as the rows of each batch: a slice in order, an index
        array when shuffled. ``fit`` reads these to gather rows straight into its buffers."""
        n = self.cardinality
        if self.batch_size is None:
            raise ValueError("Dataset: iterate a batched dataset: call .batch(batch_size) first")
        order = None
        if self.shuffle_samples:
            ss = np.random.SeedSequence([self.seed, self._iterations])
            order = np.random.default_rng(ss).permutation(n)
        self._iterations += 1
        b = self.batch_size
        for start in range(0, n, b):
            stop = min(start + b, n)
            if stop - start < b and self.drop_remainder:
                return
            yield slice(start, stop) if order is None else order[start:stop]

    @property
    def arrays(self):
        """(x, y, sample_weight) as given (None for those not given)."""
        it = iter(self._arrays)
        x = next(it)
        y = next(it) if self._has_y else None
        sw = next(it) if self._has_sw else None
        return x, y, sw

    def __repr__(self):
        shapes = ", ".join(str(a.shape) for a in self._arrays)
        return (f"Dataset({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle_samples}, "
                f"drop_remainder={self.drop_remainder})")


def _slices_of(x, y, sample_weight):
    arrays = []
    for name, a in (("x", x), ("y", y), ("sample_weight", sample_weight)):
        if a is None:
            if name == "x":
                raise TypeError("Dataset: x must be an array; received None")
            continue
        arr = _checks.as_array(f"Dataset: {name}", a)
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise ValueError(f"Dataset: {name} must hold at least one sample; received shape {arr.shape}")
        if arrays and arr.shape[0] != arrays[0].shape[0]:
            raise ValueError(f"Dataset: x and {name} must have the same number of samples; received "
                             f"{arrays[0].shape[0]} and {arr.shape[0]}")
        arrays.append(arr)
    return tuple(arrays)


def is_stream(x):
    """Whether ``fit``/``evaluate``/``predict`` read ``x`` as batches (a Dataset, an iterator
    or another iterable that is not a list, tuple, string or array)."""
    if isinstance(x, Dataset):
        return True
    if isinstance(x, (np.ndarray, list, tuple, str, bytes, dict, numbers.Number)) or x is None:
        return False
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def is_iterator(x):
    """A one-pass source (consumed across epochs) rather than a re-iterable one."""
    return hasattr(x, "__next__") and iter(x) is x


def unpack(batch, what, need_y=True):
    """(x, y, sample_weight) of one batch as yielded: x, (x,), (x, y) or (x, y, sw)."""
    if isinstance(batch, (tuple, list)):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{what}: each batch must be (x, y) or (x, y, sample_weight); received a "
                             f"{type(batch).__name__} of {len(batch)}")
        parts = tuple(batch) + (None,) * (3 - len(batch))
    else:
        parts = (batch, None, None)
    if need_y and parts[1] is None:
        raise ValueError(f"{what}: each batch must be (x, y) or (x, y, sample_weight); received "
                         f"{'x alone' if not isinstance(batch, (tuple, list)) else '(x,)'}")
    return parts


class ChunkBuffers:
    """Consecutive batches appended into buffers that are reused from chunk to chunk:
    ``rows_for(key, n, cols, dtype)`` is where the next batch's ``n`` rows go (the buffer grows,
    keeping the rows before, only when a chunk is larger than any before); ``commit(n)`` ends
    the batch; ``view(key)`` is the chunk so far."""

    def __init__(self, capacity_rows=1):
        self._buffers = {}
        self.capacity = capacity_rows  # rows a buffer is first allocated for
        self.rows = 0
        self.sizes = []

    def reset(self):
        self.rows = 0
        self.sizes = []

    def rows_for(self, key, n, cols, dtype):
        buf = self._buffers.get(key)
        need = self.rows + n
        if buf is None or buf.shape[1] != cols or buf.dtype != dtype or buf.shape[0] < need:
            rows = max(need, self.capacity if buf is None else 2 * buf.shape[0])
            grown = np.empty((rows, cols), dtype=dtype)
            if buf is not None and self.rows and buf.shape[1] == cols and buf.dtype == dtype:
                grown[:self.rows] = buf[:self.rows]
            buf = self._buffers[key] = grown
        return buf[self.rows:need]

    def whole(self, key, cols, dtype):
        """Buffer ``key`` for every row of the chunk so far (its earlier contents not kept)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape[1] != cols or buf.dtype != dtype or buf.shape[0] < self.rows:
            buf = self._buffers[key] = np.empty((max(self.rows, self.capacity), cols), dtype=dtype)
        return buf[:self.rows]

    def commit(self, n):
        self.rows += n
        self.sizes.append(n)

    def view(self, key):
        return self._buffers[key][:self.rows]


# A chunk (one core call) holds batches until about this many bytes of inputs, or this many
# batches. Each core call has a fixed cost (it starts the OpenMP threads' floating-point mode
# and ends it), tens of microseconds on an idle machine, milliseconds on a loaded one.
CHUNK_BYTES = 16 << 20
MAX_CHUNK_BATCHES = 256

_END = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def chunk_buffers(row_bytes, depth=2, chunk_bytes=None):
    """The ``depth + 1`` sets of buffers a Prefetcher cycles through, for rows of
    ``row_bytes`` bytes of input."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return [ChunkBuffers(max(1, chunk_bytes // max(row_bytes, 1))) for _ in range(depth + 1)]


class Prefetcher:
    """Reads ``limit`` batches (all, when None) of ``iterator`` in a background thread and
    hands them on in chunks of consecutive batches: ``add(raw_batch, buffers)`` converts one
    batch into a :class:`ChunkBuffers` (and commits it), ``finish(buffers)`` turns a chunk
    into what iterating yields. A chunk holds batches until about ``chunk_bytes`` of
    ``buffers.rows`` or ``max_batches`` batches, so the consumer makes one call per chunk
    and the reader's Python work overlaps it. At most ``depth`` chunks are read ahead; each
    set of buffers is reused once the consumer asks for the chunk after the one it holds. An
    exception in the thread (in the user's generator, or in ``add``) is raised in the
    consumer. ``first``: a batch already taken from the iterator, delivered first.
    ``buffers``: the ``depth + 1`` ChunkBuffers to use (from :func:`chunk_buffers`), so that a
    caller reading several passes allocates them once; new ones when None."""

    def __init__(self, iterator, add, finish, limit=None, depth=2, first=_END, chunk_bytes=None,
                 max_batches=None, row_bytes=1, buffers=None):
        chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        max_batches = MAX_CHUNK_BATCHES if max_batches is None else max_batches
        self._it = iterator
        self._add, self._finish = add, finish
        self._limit = limit
        self._first = first
        self._max_batches = max(1, min(max_batches, chunk_bytes // max(row_bytes, 1)))
        self._chunk_rows = max(1, chunk_bytes // max(row_bytes, 1))
        self._free = queue.Queue()
        for b in buffers if buffers is not None else chunk_buffers(row_bytes, depth, chunk_bytes):
            self._free.put(b)
        self._ready = queue.Queue()
        self._stop = threading.Event()
        self.exhausted = False  # the iterator ended (before `limit` batches, if one was given)
        self._thread = threading.Thread(target=self._run, name="chainrule-prefetch", daemon=True)
        self._thread.start()

    def _next_raw(self):
        if self._first is not _END:
            raw, self._first = self._first, _END
            return raw
        return next(self._it)

    def _run(self):
        try:
            count = 0
            # The first chunks are small, so that training starts soon; they double up to
            # chunk_rows (the consumer waits for the first chunk of every pass).
            target = max(1, self._chunk_rows // 16)
            while not self.exhausted and (self._limit is None or count < self._limit):
                buffers = self._free.get()
                if self._stop.is_set() or buffers is None:
                    return
                buffers.reset()
                # another batch while it fits (judged by the last one's size) and the chunk is
                # not full of batches
                while (len(buffers.sizes) < self._max_batches
                       and (not buffers.sizes or buffers.rows + buffers.sizes[-1] <= target)
                       and (self._limit is None or count < self._limit)):
                    try:
                        raw = self._next_raw()
                    except StopIteration:
                        self.exhausted = True
                        break
                    if self._stop.is_set():
                        return
                    self._add(raw, buffers)
                    count += 1
                if not buffers.sizes:
                    break
                self._ready.put((buffers, self._finish(buffers)))
                target = min(self._chunk_rows, 2 * target)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._ready.put(_Failure(e))
            return
        self._ready.put(_END)

    def __iter__(self):
        held = None
        try:
            while True:
                if held is not None:  # the consumer is done with the previous chunk
                    self._free.put(held)
                    held = None
                item = self._ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                held, chunk = item
                yield chunk
        finally:
            self.close()

    def close(self):
        """Stop the thread (after the batch it is reading, if any)."""
        self._stop.set()
        self._free.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10.0)
