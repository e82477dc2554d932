"""Pickling and copying models: every state a model can be in (empty, unbuilt, compiled,
trained; float32 and float64; every layer and optimizer kind) round-trips through pickle
(protocols 2-5), copy.deepcopy and copy.copy, with bit-identical predictions and training
that continues bit for bit; copies are independent; the bytes are read by the model-file
loader (damage raises ModelFormatError); a model trained in a spawned worker process comes
back; pickling during another thread's fit raises; the parts a user may pickle alone do."""

import concurrent.futures
import copy
import copyreg
import io
import multiprocessing
import pickle
import threading
import warnings
import zipfile

import numpy as np
import pytest

import chainrule as cr
from chainrule import ModelFormatError
from chainrule import callbacks as C
from chainrule import optimizers as O
from chainrule import schedules as S
from chainrule.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                              GlobalAveragePooling2D, Input, MaxPooling2D, Reshape)
from chainrule.saving import model_from_bytes, model_to_bytes

PROTOCOLS = [2, 3, 4, 5]


def _data(n=24, seed=0, shape=(5,), classes=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape), rng.integers(0, classes, n)


def _mlp(dtype="float32", dropout=True, seed=3, **dense_kw):
    layers = [Dense(7, activation="relu", kernel_regularizer=cr.regularizers.L1L2(1e-3, 1e-2), **dense_kw)]
    if dropout:
        layers.append(Dropout(0.25))
    layers += [Dense(6, activation=cr.activations.LeakyReLU(0.2)), Dense(3, activation="softmax")]
    return cr.Sequential(layers, seed=seed, dtype=dtype, name="mlp")


def _cnn(dtype="float32", seed=4):
    return cr.Sequential([Reshape((6, 7, 2), input_shape=(84,)),
                          Conv2D(3, (3, 2), strides=(1, 2), padding="same", activation="tanh"),
                          MaxPooling2D(2, padding="same"), Dropout(0.2),
                          Conv2D(4, 2, activation="relu", kernel_regularizer="l2"),
                          AveragePooling2D((2, 1)), Flatten(), Dense(3, activation="softmax")],
                         seed=seed, dtype=dtype, name="cnn")


def _bn(dtype="float32", seed=5):
    """BatchNormalization (moving statistics: state), a frozen layer, Input, Activation and
    GlobalAveragePooling2D."""
    return cr.Sequential([Input(shape=(84,)), Reshape((6, 7, 2)), Conv2D(3, 3, padding="same"),
                          BatchNormalization(momentum=0.8), Activation("relu"), GlobalAveragePooling2D(),
                          Dense(4, trainable=False), BatchNormalization(center=False, gamma_regularizer="l2"),
                          Dense(3, activation="softmax")], seed=seed, dtype=dtype, name="bn")


OPTIMIZERS = {
    "sgd": lambda: O.SGD(0.05),
    "sgd_momentum": lambda: O.SGD(0.05, momentum=0.9, clipvalue=0.5),
    "sgd_nesterov": lambda: O.SGD(S.StepDecay(0.05, drop_every=3, factor=0.5), momentum=0.8, nesterov=True),
    "adam": lambda: O.Adam(0.01, clipnorm=1.0),
    "adam_amsgrad": lambda: O.Adam(S.ExponentialDecay(0.01, 4, 0.7), amsgrad=True),
    "adamw": lambda: O.AdamW(S.CosineDecay(0.01, decay_steps=20, warmup_steps=3), weight_decay=0.05,
                             amsgrad=True),
    "rmsprop": lambda: O.RMSprop(0.005),
    "rmsprop_momentum": lambda: O.RMSprop(0.005, momentum=0.5, clipnorm=2.0),
    "adagrad": lambda: O.Adagrad(0.05, initial_accumulator_value=0.2, clipvalue=1.0),
}


def _trained(model, optimizer="adam", epochs=2, shape=(5,)):
    opt = OPTIMIZERS[optimizer]() if isinstance(optimizer, str) else optimizer
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _data(shape=shape)
    model.fit(x, y, epochs=epochs, batch_size=5, verbose=0, seed=7)
    return model


def _roundtrip(model, how):
    if how == "deepcopy":
        return copy.deepcopy(model)
    if how == "copy":
        return copy.copy(model)
    return pickle.loads(pickle.dumps(model, protocol=how))


def _assert_same(a, b):
    """Everything a model is, compared exactly."""
    assert type(a) is type(b)
    assert a.get_config() == b.get_config()
    assert (a.built, a._compiled, a.dtype, a.seed, a.name) == (b.built, b._compiled, b.dtype, b.seed, b.name)
    assert a.stop_on_nonfinite == b.stop_on_nonfinite
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v)
    if a._compiled:
        assert (a.loss, a.metrics) == (b.loss, b.metrics)
        assert type(a.optimizer) is type(b.optimizer) and a.optimizer.get_config() == b.optimizer.get_config()
        assert a.optimizer is not b.optimizer
    if a._compiled and a.built:
        assert a._core.step_count == b._core.step_count
        assert a.lr_scale == b.lr_scale and a.learning_rate == b.learning_rate
        sa, sb = a._core.get_optimizer_state(), b._core.get_optimizer_state()
        assert len(sa) == len(sb) and all(np.array_equal(u, v) for u, v in zip(sa, sb))
    if a.built:
        assert a._core is not b._core
    assert all(la is not lb for la, lb in zip(a.layers, b.layers))


# -- every state of a model ---------------------------------------------------------------------
STATES = {
    "empty": lambda dt: cr.Sequential(dtype=dt),
    "unbuilt": lambda dt: _mlp(dt),
    "unbuilt_declared_shape": lambda dt: _mlp(dt, input_shape=(5,)),
    "unbuilt_compiled": lambda dt: _compiled(_mlp(dt)),
    "built": lambda dt: _built(_mlp(dt)),
    "compiled_untrained": lambda dt: _compiled(_built(_mlp(dt))),
    "trained": lambda dt: _trained(_mlp(dt)),
    "cnn_built": lambda dt: _built(_cnn(dt)),
    "cnn_trained": lambda dt: _trained(_cnn(dt), "sgd_momentum", shape=(84,)),
    "bn_unbuilt": lambda dt: _bn(dt),
    "bn_built": lambda dt: _built(_bn(dt)),
    "bn_trained": lambda dt: _trained(_bn(dt), "adamw", shape=(84,)),
}


def _built(m):
    m.build((5,) if m.name == "mlp" else None)
    return m


def _compiled(m):
    m.compile(optimizer=O.RMSprop(0.01, momentum=0.3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


@pytest.mark.parametrize("how", PROTOCOLS + ["deepcopy", "copy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("state", list(STATES))
def test_every_state_round_trips(state, dtype, how):
    m = STATES[state](dtype)
    back = _roundtrip(m, how)
    _assert_same(m, back)
    if m.built:
        x = _data(shape=m.input_shape)[0]
        assert np.array_equal(back.predict(x), m.predict(x))
        if m._compiled:
            _, y = _data(shape=m.input_shape)
            assert back.evaluate(x, y) == m.evaluate(x, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unbuilt_copy_builds_and_trains_like_the_original(dtype):
    m = _compiled(_mlp(dtype))
    back = pickle.loads(pickle.dumps(m))
    x, y = _data()
    for model in (m, back):
        model.fit(x, y, epochs=2, batch_size=6, verbose=0, seed=1)
    _assert_same(m, back)


def test_pickle_bytes_are_the_model_file_format(tmp_path):
    """The pickle holds model_to_bytes' archive: the file format (save_model / load_model)."""
    m = _trained(_mlp())
    state = m.__getstate__()
    assert set(state) == {"model", "stop_on_nonfinite", "attributes"}
    with zipfile.ZipFile(io.BytesIO(state["model"])) as z:
        names = z.namelist()
    assert names[0] == "__chainrule__.npy" and "param_000.npy" in names and "optimizer_000.npy" in names
    (tmp_path / "m.crm").write_bytes(state["model"])
    _assert_same(m, cr.load_model(tmp_path / "m.crm"))
    m.save(tmp_path / "f.crm")
    _assert_same(m, model_from_bytes((tmp_path / "f.crm").read_bytes()))
    _assert_same(m, model_from_bytes(model_to_bytes(m)))
    # a file never holds an unbuilt model: load_model refuses such bytes; save_model refuses to write one
    (tmp_path / "u.crm").write_bytes(model_to_bytes(_mlp()))
    with pytest.raises(ModelFormatError, match=r"input_shape"):
        cr.load_model(tmp_path / "u.crm")
    with pytest.raises(ValueError, match=r"not built"):
        _mlp().save(tmp_path / "v.crm")


def test_model_from_bytes_rejects_non_bytes():
    with pytest.raises(TypeError, match=r"model_from_bytes: data must be bytes; received str"):
        model_from_bytes("PK")


# -- training continues bit for bit --------------------------------------------------------------
def _continue_fit(m, shape=(5,), initial_epoch=2, epochs=4):
    x, y = _data(seed=1, shape=shape)
    m.fit(x, y, epochs=epochs, batch_size=5, verbose=0, seed=7, initial_epoch=initial_epoch)


def _continue_batches(m, shape=(5,), steps=3):
    x, y = _data(n=6, seed=2, shape=shape)
    return [m.train_on_batch(x, y) for _ in range(steps)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_fit_and_train_on_batch_continue_identically(opt, dtype):
    m = _trained(_mlp(dtype), opt)
    m.lr_scale = 0.75  # ReduceLROnPlateau's factor is state too
    for how in (4, "deepcopy"):
        a, b = copy.deepcopy(m), _roundtrip(m, how)
        _continue_fit(a)
        _continue_fit(b)
        _assert_same(a, b)
    # train_on_batch (no dropout: a copy's dropout stream starts afresh; fit reseeds it)
    m = _trained(_mlp(dtype, dropout=False), opt)
    copy_ = pickle.loads(pickle.dumps(m, protocol=5))
    assert _continue_batches(copy_) == _continue_batches(m)
    _assert_same(m, copy_)


@pytest.mark.parametrize("make", [_cnn, _bn], ids=["cnn", "batchnorm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cnn_continues_identically(dtype, make):
    m = _trained(make(dtype), "adam_amsgrad", shape=(84,))
    back = pickle.loads(pickle.dumps(m))
    _continue_fit(m, shape=(84,))
    _continue_fit(back, shape=(84,))
    _assert_same(m, back)
    x = _data(shape=(84,))[0]
    assert np.array_equal(back.predict(x), m.predict(x))


def test_resuming_equals_an_uninterrupted_run():
    """Pickle after epoch 2 and resume with initial_epoch=2: as if never interrupted."""
    x, y = _data(seed=5)
    whole = _compiled(_mlp(seed=9))
    whole.fit(x, y, epochs=4, batch_size=5, verbose=0, seed=11)
    part = _compiled(_mlp(seed=9))
    part.fit(x, y, epochs=2, batch_size=5, verbose=0, seed=11)
    resumed = pickle.loads(pickle.dumps(part))
    resumed.fit(x, y, epochs=4, batch_size=5, verbose=0, seed=11, initial_epoch=2)
    _assert_same(whole, resumed)


def test_stop_on_nonfinite_lr_scale_and_step_round_trip():
    m = _trained(_mlp(), "adam")
    m.stop_on_nonfinite = True
    m.lr_scale = 0.125
    back = pickle.loads(pickle.dumps(m))
    assert back.stop_on_nonfinite is True and back.lr_scale == 0.125 and back._core.step_count == 10
    u = _mlp()
    u.stop_on_nonfinite = True
    back = pickle.loads(pickle.dumps(u))
    assert back.stop_on_nonfinite is True
    back.build((5,))
    assert back.stop_on_nonfinite is True


def test_history_and_last_epoch_stats_are_not_copied():
    m = _trained(_mlp())
    assert m.history is not None and m.last_epoch_stats
    back = copy.deepcopy(m)
    assert back.history is None and back.last_epoch_stats == {} and back.stop_training is False


# -- independence -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "copy", 5])
def test_copies_are_independent(how):
    m = _trained(_mlp(dropout=False))
    before = copy.deepcopy(m)
    c = _roundtrip(m, how)
    _continue_batches(c)
    c.lr_scale = 0.5
    c.layers[0].name = "renamed"
    c.optimizer.learning_rate = 123.0
    _assert_same(m, before)  # the original did not move
    _continue_fit(m)
    assert not np.array_equal(c.get_weights()[0], m.get_weights()[0])
    assert c._core.step_count == 13 and m._core.step_count == 20


# -- the bytes are untrusted input ------------------------------------------------------------
def _pickle_with_state(state):
    """A pickle that makes a Sequential and hands ``state`` to __setstate__ (what a pickle
    of a model is, with any state)."""
    class Forged:
        def __reduce__(self):
            return (copyreg._reconstructor, (cr.Sequential, object, None), state)
    return pickle.dumps(Forged(), protocol=4)


def _valid_state(model=None):
    return (model or _trained(_mlp())).__getstate__()


def _flip(data, pos):
    b = bytearray(data)
    b[pos] ^= 0xFF
    return bytes(b)


def test_damaged_weight_bytes_in_a_pickle():
    m = _trained(_mlp())
    raw = pickle.dumps(m, protocol=5)
    state = m.__getstate__()["model"]
    start = raw.index(b"PK\x03\x04")  # the archive sits in the pickle as it is
    with zipfile.ZipFile(io.BytesIO(state)) as z:
        info = z.getinfo("param_002.npy")
    pos = start + info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3
    with pytest.raises(ModelFormatError, match=r"the pickled model is damaged .*param_002.*(CRC|could not be read)"):
        pickle.loads(_flip(raw, pos))


def test_random_damage_inside_the_archive_raises_model_format_error():
    m = _trained(_cnn(), "adagrad", shape=(84,))
    data = m.__getstate__()["model"]
    rng = np.random.default_rng(0)
    x = _data(shape=(84,))[0]
    outcomes = {"rejected": 0, "loaded": 0}
    for _ in range(150):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
            damaged[pos] ^= int(rng.integers(1, 256))
        state = {**_valid_state(m), "model": bytes(damaged)}
        try:
            back = pickle.loads(_pickle_with_state(state))
        except ModelFormatError:
            outcomes["rejected"] += 1
            continue
        # a flip in a field nothing reads (a timestamp, a header's padding): still the same model
        outcomes["loaded"] += 1
        assert np.array_equal(back.predict(x), m.predict(x))
    assert outcomes["rejected"] > 100


def test_truncated_archive_and_foreign_bytes():
    good = _valid_state()
    for data in (good["model"][:-100], good["model"][:40], b"", b"not a zip", pickle.dumps([1, 2])):
        with pytest.raises(ModelFormatError, match=r"the pickled model (is damaged|is not a chainrule model)"):
            pickle.loads(_pickle_with_state({**good, "model": data}))
    buf = io.BytesIO()
    np.savez(buf, __chainrule__=np.array([{"format": "chainrule.model"}], dtype=object))
    with pytest.raises(ModelFormatError, match=r"allow_pickle"):
        pickle.loads(_pickle_with_state({**good, "model": buf.getvalue()}))


@pytest.mark.parametrize("state,pattern", [
    ("not a dict", r"its state must be a dict with keys"),
    ({"model": b""}, r"its state must be a dict with keys"),
    ({"model": "text", "stop_on_nonfinite": False, "attributes": {}}, r"'model' must be bytes"),
    ({"model": b"", "stop_on_nonfinite": 1, "attributes": {}}, r"'stop_on_nonfinite' must be True or False"),
    ({"model": b"", "stop_on_nonfinite": False, "attributes": {"_core": None}}, r"'attributes' must map names"),
    ({"model": b"", "stop_on_nonfinite": False, "attributes": {3: 4}}, r"'attributes' must map names"),
    ({"model": b"", "stop_on_nonfinite": False, "attributes": []}, r"'attributes' must map names"),
])
def test_crafted_state(state, pattern):
    if isinstance(state, dict) and state.get("model") == b"":
        state = {**state, "model": _valid_state()["model"]}
    with pytest.raises(ModelFormatError, match=pattern):
        pickle.loads(_pickle_with_state(state))


def test_crafted_unbuilt_model_bytes():
    """Unbuilt models' bytes: no weights, no optimizer state, step 0, lr_scale 1."""
    import json
    u = _compiled(_mlp())
    data = u.__getstate__()["model"]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        meta = json.loads(np.load(io.BytesIO(z.read("__chainrule__.npy"))).tobytes())

    def forge(meta, **arrays):
        buf = io.BytesIO()
        np.savez(buf, __chainrule__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return pickle.loads(_pickle_with_state({**u.__getstate__(), "model": buf.getvalue()}))

    assert forge(meta).get_config() == u.get_config()
    no_step = r"not built, so its optimizer has taken no step: optimizer_step must be 0"
    with pytest.raises(ModelFormatError, match=no_step + r".*received 5, 1.0 and 0"):
        forge({**meta, "compile": {**meta["compile"], "optimizer_step": 5}})
    with pytest.raises(ModelFormatError, match=no_step + r".*received 0, 0.5 and 0"):
        forge({**meta, "compile": {**meta["compile"], "lr_scale": 0.5}})
    with pytest.raises(ModelFormatError, match=r"not built \(input_shape null\) but it holds 1 weight"):
        forge(meta, param_000=np.zeros(3, np.float32))
    bad_layer = {**meta, "config": {**meta["config"], "layers": [{"class_name": "Dense", "config": {"units": -1}}]}}
    with pytest.raises(ModelFormatError, match=r"its model config is invalid: Dense: units"):
        forge(bad_layer)
    with pytest.raises(ModelFormatError, match=r"unknown class_name 'os.system'"):
        forge({**meta, "config": {**meta["config"], "layers": [{"class_name": "os.system", "config": {}}]}})
    bad_opt = {**meta, "compile": {**meta["compile"], "optimizer": {"class_name": "SGD", "learning_rate": -1}}}
    with pytest.raises(ModelFormatError, match=r"its compile settings are invalid: SGD: learning_rate"):
        forge(bad_opt)


def test_non_finite_weights_cannot_be_pickled():
    m = cr.Sequential([Dense(2, input_shape=(3,))], seed=0)
    m.compile(optimizer=O.SGD(1e30), loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(np.full((4, 3), 1e10), np.zeros((4, 2)), epochs=2, verbose=0, seed=0, stop_on_nonfinite=False)
    assert not np.isfinite(m.get_weights()[0]).all()
    with pytest.raises(ValueError, match=r"pickle/copy: model 'sequential': weights\[0\] \(kernel of layer 'dense'\) "
                                         r"holds NaN or infinite values"):
        pickle.dumps(m)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        copy.deepcopy(m)


# -- threads --------------------------------------------------------------------------------------
def test_pickling_during_another_threads_fit_raises_and_the_training_thread_may():
    m = _compiled(_mlp())
    x, y = _data()
    inside, release = threading.Event(), threading.Event()
    from_callback = []

    def on_epoch_end(epoch, logs):
        from_callback.append(pickle.loads(pickle.dumps(m)))  # the training thread itself
        inside.set()
        release.wait(30)

    t = threading.Thread(target=lambda: m.fit(x, y, epochs=1, batch_size=6, verbose=0, seed=0,
                                              callbacks=[C.LambdaCallback(on_epoch_end=on_epoch_end)]))
    t.start()
    try:
        assert inside.wait(30)
        for action in (lambda: pickle.dumps(m), lambda: copy.deepcopy(m), lambda: model_to_bytes(m)):
            with pytest.raises(RuntimeError, match=r"model is training \(fit is running in another thread\)"):
                action()
        with pytest.raises(RuntimeError, match=r"save: model is training"):
            m.save("never-written.crm")
    finally:
        release.set()
        t.join(30)
    assert not t.is_alive()
    assert from_callback[0]._core.step_count == m._core.step_count == 4
    _assert_same(m, from_callback[0])  # taken after the last step: the trained model
    _assert_same(m, pickle.loads(pickle.dumps(m)))  # after fit returned


# -- in a worker process ----------------------------------------------------------------------
def _train_in_worker(model, threads, seed):
    """Runs in a spawned process: the model arrives pickled, trains, and goes back pickled."""
    import chainrule
    chainrule.set_num_threads(threads)
    x, y = _data(seed=3, shape=model.input_shape)
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, seed=seed, initial_epoch=1)
    return model, chainrule.get_num_threads()


def test_train_in_a_spawned_worker_process():
    m = _trained(_cnn(), "rmsprop_momentum", epochs=1, shape=(84,))
    threads = cr.get_num_threads()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        back, used = pool.submit(_train_in_worker, m, threads, 21).result(timeout=300)
    assert used == threads
    local, _ = _train_in_worker(copy.deepcopy(m), threads, 21)
    _assert_same(local, back)
    assert back._core.step_count == m._core.step_count + 2 * 6
    x = _data(shape=(84,))[0]
    assert np.array_equal(back.predict(x), local.predict(x))


# -- subclasses, attributes, parts ----------------------------------------------------------------
class Tagged(cr.Sequential):
    def __init__(self, *args, tag=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag


def test_subclass_and_added_attributes_survive():
    m = Tagged([Dense(2, input_shape=(3,))], tag={"run": 7}, seed=1)
    m.build()
    m.notes = ["a", "b"]
    for how in PROTOCOLS + ["deepcopy"]:
        back = _roundtrip(m, how)
        assert type(back) is Tagged and back.tag == {"run": 7} and back.notes == ["a", "b"]
        _assert_same(m, back)
    assert copy.deepcopy(m).notes is not m.notes
    assert copy.copy(m).notes is m.notes  # a shallow copy shares what the user added


def test_a_model_referring_to_itself():
    m = _trained(_mlp())
    m.me = m
    back = pickle.loads(pickle.dumps(m))
    assert back.me is back


PARTS = [Dense(3, activation=cr.activations.LeakyReLU(0.3), kernel_regularizer=cr.regularizers.L1L2(0.1, 0.2)),
         Conv2D(2, (3, 2), strides=2, padding="same"), MaxPooling2D(3, strides=1), AveragePooling2D(),
         Flatten(), Reshape((2, -1)), Dropout(0.3)] + [f() for f in OPTIMIZERS.values()] + [
         S.StepDecay(0.1, 10), S.ExponentialDecay(0.1, 10, 0.5, staircase=True), S.CosineDecay(0.1, 100, 0.1, 5),
         cr.regularizers.L2(0.3), cr.activations.Activation("tanh")]


@pytest.mark.parametrize("part", PARTS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_pickle_alone(part, protocol):
    back = pickle.loads(pickle.dumps(part, protocol=protocol))
    assert type(back) is type(part)
    if hasattr(part, "get_config"):
        assert back.get_config() == part.get_config()
    else:
        assert vars(back) == vars(part)


def test_built_layers_losses_callbacks_and_history_pickle():
    m = _trained(_cnn(), shape=(84,))
    for layer in m.layers:
        back = pickle.loads(pickle.dumps(layer))
        assert back.get_config() == layer.get_config() and back.output_shape == layer.output_shape
    for loss in (cr.losses.MeanSquaredError(), cr.losses.SparseCategoricalCrossentropy()):
        assert cr.losses.get(pickle.loads(pickle.dumps(loss))) == cr.losses.get(loss)
    h = pickle.loads(pickle.dumps(m.history))
    assert h.history == m.history.history and h.epoch == m.history.epoch and h.layer_stats == m.history.layer_stats
    es = C.EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    ck = C.ModelCheckpoint("ckpt-{epoch}.crm", monitor="loss")
    for cb in (es, ck, C.ReduceLROnPlateau(factor=0.5), C.TerminateOnNaN()):
        cb.set_model(m)
        back = pickle.loads(pickle.dumps(cb))
        assert type(back) is type(cb) and back.model is not m
        _assert_same(m, back.model)
