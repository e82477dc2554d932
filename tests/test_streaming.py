"""fit / evaluate / predict on streamed batches: cr.data.Dataset, iterables and generators
(the same numbers as the in-memory path), steps_per_epoch / validation_steps / initial_epoch,
the background reader (buffers reused, errors raised in the caller, no thread left behind),
and memory-mapped arrays (no copy of a whole file)."""

import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import chainrule as cr
from chainrule.data import Dataset
from chainrule.layers import Dense


def _data(n=200, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.argmax(x @ rng.normal(size=(d, c)), axis=1)
    return x, labels


def _model(seed=0, dtype="float32", dropout=False):
    layers = [Dense(16, activation="relu", input_shape=(6,))]
    if dropout:
        layers.append(cr.layers.Dropout(0.3))
    layers.append(Dense(3, activation="softmax"))
    m = cr.Sequential(layers, seed=seed, dtype=dtype)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy", "sparse_top_k_categorical_accuracy"])
    return m


def _batches(x, y, b, sw=None):
    for s in range(0, len(x), b):
        yield (x[s:s + b], y[s:s + b]) if sw is None else (x[s:s + b], y[s:s + b], sw[s:s + b])


def _same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "chainrule-prefetch" and t.is_alive()]


# -- the same numbers as arrays --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_dataset_in_order_trains_exactly_as_the_arrays(dtype):
    x, y = _data()
    sw = np.linspace(0.2, 2.0, len(x))
    a, b = _model(dtype=dtype, dropout=True), _model(dtype=dtype, dropout=True)
    ha = a.fit(x, y, epochs=3, batch_size=32, shuffle=False, seed=1, verbose=0, sample_weight=sw,
               validation_data=(x[:50], y[:50]))
    hb = b.fit(Dataset(x, y, sample_weight=sw, batch_size=32), epochs=3, seed=1, verbose=0,
               validation_data=Dataset(x[:50], y[:50], batch_size=7))
    _same_weights(a, b)
    assert list(ha.history) == list(hb.history)
    for k in ha.history:
        np.testing.assert_allclose(hb.history[k], ha.history[k], rtol=1e-12 if k.startswith("val_") else 0)
    assert a.history.layer_stats == b.history.layer_stats
    assert hb.params["steps"] == 7 and a._core.step_count == b._core.step_count == 21


def test_a_generator_with_steps_per_epoch_is_consumed_across_epochs():
    x, y = _data()

    def forever():
        while True:
            yield from _batches(x, y, 40)

    a, b = _model(), _model()
    a.fit(x, y, epochs=4, batch_size=40, shuffle=False, seed=2, verbose=0)
    h = b.fit(forever(), steps_per_epoch=5, epochs=4, seed=2, verbose=0)
    _same_weights(a, b)
    assert h.epoch == [0, 1, 2, 3] and h.params["steps"] == 5
    # resuming at initial_epoch with a generator continues the same numbers
    c = _model()
    c.fit(forever(), steps_per_epoch=5, epochs=2, seed=2, verbose=0)
    h2 = c.fit(forever(), steps_per_epoch=5, epochs=4, initial_epoch=2, seed=2, verbose=0)
    assert h2.epoch == [2, 3]
    _same_weights(a, c)


def test_an_iterable_is_read_afresh_every_epoch_and_steps_takes_its_first_batches():
    x, y = _data()

    class Batches:  # a re-iterable: each iter() starts over
        def __iter__(self):
            return _batches(x, y, 50)

        def __len__(self):
            return 4

    a, b = _model(), _model()
    a.fit(x[:100], y[:100], epochs=3, batch_size=50, shuffle=False, seed=3, verbose=0)
    h = b.fit(Batches(), epochs=3, steps_per_epoch=2, seed=3, verbose=0)
    _same_weights(a, b)
    assert h.params["steps"] == 2
    c = _model()
    hc = c.fit(Batches(), epochs=2, seed=3, verbose=0)
    assert hc.params["steps"] == 4 and c._core.step_count == 8


def test_class_weight_applies_to_streamed_batches_as_to_arrays():
    x, y = _data()
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    a, b = _model(), _model()
    a.fit(x, y, epochs=2, batch_size=25, shuffle=False, seed=0, verbose=0, class_weight=cw)
    b.fit(_batches_forever(x, y, 25), steps_per_epoch=8, epochs=2, seed=0, verbose=0, class_weight=cw)
    _same_weights(a, b)


def _batches_forever(x, y, b):
    while True:
        yield from _batches(x, y, b)


def test_evaluate_and_predict_take_streams():
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=2, verbose=0, seed=0)
    want = m.evaluate(x, y, return_dict=True)
    got = m.evaluate(Dataset(x, y, batch_size=33), return_dict=True)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6)
    assert m.evaluate(_batches(x, y, 50), steps=2) == pytest.approx(m.evaluate(x[:100], y[:100]), rel=1e-6)
    p = m.predict(x)
    np.testing.assert_array_equal(m.predict(Dataset(x, batch_size=64)), p)
    np.testing.assert_array_equal(m.predict(_batches(x, y, 64)), p)  # targets ignored
    np.testing.assert_array_equal(m.predict((xb for xb, _ in _batches(x, y, 64)), steps=2), p[:128])


def test_a_shuffled_dataset_is_reproducible_and_new_each_epoch():
    x, y = _data()
    ds = Dataset(x, y, batch_size=16, shuffle=True, seed=11)
    first = np.concatenate([b for _, b in ds])
    second = np.concatenate([b for _, b in ds])
    assert not np.array_equal(first, second) and sorted(first) == sorted(y)
    again = np.concatenate([b for _, b in Dataset(x, y, batch_size=16, shuffle=True, seed=11)])
    np.testing.assert_array_equal(first, again)
    a, b = _model(), _model()
    a.fit(Dataset(x, y, batch_size=16, shuffle=True, seed=11), epochs=2, seed=0, verbose=0)
    b.fit(Dataset.from_tensor_slices((x, y)).shuffle(1000, seed=11).batch(16), epochs=2, seed=0, verbose=0)
    _same_weights(a, b)
    assert a.evaluate(x, y, return_dict=True)["accuracy"] > 0.8
    assert len(Dataset(x, y, batch_size=16, drop_remainder=True)) == 12 and len(ds) == 13


# -- ends of data and mistakes ----------------------------------------------------------------------
def test_a_generator_that_runs_out_stops_training_with_a_warning():
    x, y = _data()
    m = _model()
    with pytest.warns(UserWarning, match=r"x ran out of data in epoch 2 .*steps_per_epoch \* epochs"):
        h = m.fit(_batches(x, y, 50), epochs=5, verbose=0)  # 4 batches, then nothing
    assert h.epoch == [0]
    m2 = _model()
    with pytest.warns(UserWarning, match=r"ran out of data in epoch 2 \(it must give steps_per_epoch=3"):
        h2 = m2.fit(_batches(x, y, 40), steps_per_epoch=3, epochs=5, verbose=0)  # 5 batches
    assert h2.epoch == [0, 1] and m2._core.step_count == 5


@pytest.mark.parametrize("kwargs,match", [
    ({"y": np.zeros(10)}, r"y must not be given"),
    ({"batch_size": 8}, r"batch_size must not be given"),
    ({"sample_weight": np.ones(10)}, r"sample_weight must not be given"),
    ({"validation_split": 0.2}, r"validation_split needs x and y as arrays"),
])
def test_array_arguments_with_a_stream_raise(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        _model().fit(Dataset(x, y, batch_size=10), verbose=0, **kwargs)


def test_stream_arguments_with_arrays_raise():
    x, y = _data()
    m = _model()
    with pytest.raises(ValueError, match="steps_per_epoch applies to a generator"):
        m.fit(x, y, steps_per_epoch=3, verbose=0)
    with pytest.raises(ValueError, match="validation_steps applies when validation_data is a generator"):
        m.fit(x, y, validation_data=(x, y), validation_steps=3, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        m.fit(Dataset(x, y), steps_per_epoch=0, verbose=0)
    with pytest.raises(TypeError, match="y is required"):
        m.fit(x, verbose=0)
    with pytest.raises(ValueError, match="validation_data is an iterator, .* pass validation_steps"):
        m.fit(Dataset(x, y), validation_data=_batches(x, y, 10), epochs=2, verbose=0)


@pytest.mark.parametrize("batch,match", [
    ((np.zeros((4, 5)), np.zeros(4)), r"x must have shape \(None, 6\); received shape \(4, 5\)"),
    ((np.zeros((4, 6)), np.array([0, 1, 2, 3])), r"y must hold integer class labels in \[0, 3\) .*received "
                                                  r"3\.0 at batch 1, row 3"),
    ((np.zeros((4, 6)), np.zeros(3)), r"same number of samples"),
    ((np.full((4, 6), np.nan), np.zeros(4)), r"x contains NaN or infinite values.*\(first at batch 1, row 0, "
                                             r"feature 0: nan\)"),
    ((np.zeros((4, 6)), np.zeros(4), -np.ones(4)), r"sample_weight must be finite and >= 0; received -1\.0"),
    ((np.zeros((4, 6)), np.zeros(4), np.ones(3)), r"sample_weight must have shape \(4,\)"),
    ((np.zeros((4, 6)),), r"each batch must be \(x, y\)"),
    ((np.zeros((4, 6)), np.zeros(4), np.ones(4), 1), r"each batch must be \(x, y\)"),
])
def test_a_bad_batch_raises_in_the_caller_and_leaves_no_thread(batch, match):
    x, y = _data()

    def gen():
        yield (x[:10], y[:10]) + ((np.ones(10),) if len(batch) == 3 else ())
        yield batch

    m = _model()
    with pytest.raises(ValueError, match=match):
        m.fit(gen(), epochs=1, verbose=0)
    assert not _prefetch_threads()


def test_bad_values_in_a_dataset_are_named_by_batch_and_row():
    x, y = _data()
    xb = x.copy()
    xb[37, 2] = np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or infinite .*\(first at batch 1, row 5, feature 2: inf\)"):
        _model().fit(Dataset(xb, y, batch_size=32), verbose=0)
    yb = y.copy()
    yb[70] = 7
    with pytest.raises(ValueError, match=r"y must hold integer class labels in \[0, 3\).*7\.0 at batch 2, row 6"):
        _model().fit(Dataset(x, yb, batch_size=32), verbose=0)
    with pytest.raises(ValueError, match=r"the Dataset has no y"):
        _model().fit(Dataset(x, batch_size=32), verbose=0)
    with pytest.raises(ValueError, match=r"y must have shape \(200,\) for sparse_categorical_crossentropy"):
        _model().fit(Dataset(x, np.eye(3)[y], batch_size=32), verbose=0)
    assert not _prefetch_threads()


def test_a_dataset_is_checked_on_its_first_full_pass_of_a_fit():
    x, y = _data()
    ds = Dataset(x, y, batch_size=32, shuffle=True, seed=0)
    m = _model()
    m.fit(ds, epochs=2, verbose=0)
    xb = ds.arrays[0]
    xb[5, 0] = np.nan  # changed between fits: the next fit checks again
    with pytest.raises(ValueError, match=r"x contains NaN"):
        m.fit(ds, epochs=1, verbose=0)
    # partial passes (steps_per_epoch) are checked every epoch: a bad row that the first epochs
    # do not read is found in the epoch that reads it
    xc = x.copy()
    part = Dataset(xc, y, batch_size=32, shuffle=True, seed=3)
    first = np.concatenate([next(iter(part.index_batches())) for _ in range(1)])
    unread = np.setdiff1d(np.arange(len(x)), first)[0]
    xc[unread, 0] = np.nan
    part = Dataset(xc, y, batch_size=32, shuffle=True, seed=3)
    m2 = _model()
    with pytest.raises(ValueError, match=r"x contains NaN"):
        m2.fit(part, steps_per_epoch=1, epochs=40, verbose=0)
    assert m2._core.step_count >= 1  # the first epoch, which does not read it, trained


def test_batches_with_and_without_sample_weights_do_not_mix():
    x, y = _data()

    def gen():
        yield x[:10], y[:10]
        yield x[10:20], y[10:20], np.ones(10)

    with pytest.raises(ValueError, match="every batch must carry sample weights, or none; batch 1 has them"):
        _model().fit(gen(), verbose=0)


def test_an_exception_in_the_generator_propagates_unchanged():
    x, y = _data()

    def gen():
        yield x[:10], y[:10]
        yield x[10:20], y[10:20]
        raise KeyError("the user's generator failed")

    m = _model()
    with pytest.raises(KeyError, match="the user's generator failed"):
        m.fit(gen(), epochs=1, verbose=0)
    assert not _prefetch_threads()
    m.fit(x, y, epochs=1, verbose=0)  # the model still trains


def test_an_empty_stream_raises():
    m = _model()
    with pytest.raises(ValueError, match="x yielded no batches"):
        m.fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="Dataset: x must hold at least one sample"):
        Dataset(np.zeros((0, 6)))
    with pytest.raises(ValueError, match="call .batch"):
        m.fit(Dataset.from_tensor_slices((np.zeros((4, 6)), np.zeros(4))), verbose=0)


def test_verbose_streams_print_a_bar(capsys):
    x, y = _data()
    m = _model()
    m.fit(Dataset(x, y, batch_size=20), epochs=1, verbose=1)
    out = capsys.readouterr().out
    assert "10/10 [" in out and "sparse_top_k_categorical_accuracy" in out
    m.fit(_batches_forever(x, y, 20), steps_per_epoch=3, epochs=1, verbose=1)
    assert "3/3 [" in capsys.readouterr().out
    m.fit(_batches(x, y, 20), epochs=1, verbose=1)
    out = capsys.readouterr().out  # unknown length: counted, then the total at the end
    assert "10/Unknown - " in out and "10/10 [" in out


# -- the reader ---------------------------------------------------------------------------------------
def test_the_reader_chunks_batches_reuses_its_buffers_and_reads_at_most_two_chunks_ahead():
    from chainrule.data import Prefetcher
    produced = []

    def gen():
        for i in range(11):
            produced.append(i)
            yield np.full((4, 3), float(i))

    def add(raw, buffers):
        buffers.rows_for("x", raw.shape[0], raw.shape[1], np.float32)[...] = raw
        buffers.commit(raw.shape[0])

    def finish(buffers):
        return buffers.view("x"), list(buffers.sizes)

    # chunks of at most 3 batches: 3 x 4 rows of 4 bytes each fill chunk_bytes=48
    reader = Prefetcher(gen(), add, finish, depth=2, chunk_bytes=48, row_bytes=4)
    seen, sizes, buffers = [], [], set()
    for i, (x, sz) in enumerate(reader):
        if i == 1:
            import time
            time.sleep(0.2)  # the thread may run ahead while the consumer holds chunk 1
            assert len(produced) <= 3 * (i + 1 + 2)
        seen += [float(v) for v in x[::4, 0]]
        sizes.append(sz)
        buffers.add(x.__array_interface__["data"][0])
    assert seen == [float(i) for i in range(11)]
    # the first chunks are small (training starts soon), then they double up to 12 rows
    assert sizes == [[4], [4], [4], [4, 4], [4, 4, 4], [4, 4, 4]]
    assert len(buffers) == 3  # depth + 1 sets of buffers, allocated once and reused
    assert not _prefetch_threads()
    # a limit stops reading at that many batches, without reading one more
    produced.clear()
    assert sum(len(sz) for _, sz in Prefetcher(gen(), add, finish, limit=5, chunk_bytes=48, row_bytes=4)) == 5
    assert len(produced) == 5


# -- memory-mapped data -------------------------------------------------------------------------------
def test_fit_reads_a_float32_memmap_without_copying_it(tmp_path):
    x, y = _data(n=300)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    m = _model()
    X = cr._checks.prepare_x("x", xm, (6,), np.float32)
    assert np.shares_memory(X, xm)  # the core reads the mapped file itself
    a, b = _model(), _model()
    a.fit(x, y, epochs=2, seed=0, verbose=0)
    b.fit(xm, y, epochs=2, seed=0, verbose=0)
    _same_weights(a, b)
    del m


def test_a_dataset_over_a_uint8_memmap_converts_a_few_batches_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(cr.data, "CHUNK_BYTES", 1 << 20)  # chunks of 1 MB: memory is a few of them
    n, d = 80_000, 200  # 16 MB as uint8, 64 MB if converted to float32 at once
    rng = np.random.default_rng(0)
    raw = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(n, d))
    raw[:] = rng.integers(0, 256, size=(n, d), dtype=np.uint8)
    raw.flush()
    y = rng.integers(0, 2, size=n)
    del raw
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    m = cr.Sequential([Dense(4, activation="relu", input_shape=(d,)), Dense(2, activation="softmax")], seed=0)
    m.compile(optimizer=cr.optimizers.SGD(1e-4), loss="sparse_categorical_crossentropy")
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(Dataset(xm, y, batch_size=256, shuffle=True, seed=0), epochs=1, verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the reader's three chunk buffers (1 MB each) and a few batches: far below a whole conversion
    assert peak < 8 << 20, peak
    assert m._core.step_count == -(-n // 256)


def test_evaluate_and_predict_on_a_memmap_dataset_match_the_arrays(tmp_path):
    x, y = _data(n=300)
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    m = _model()
    m.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(m.predict(Dataset(xm, batch_size=100)), m.predict(x))
