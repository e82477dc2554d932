"""ONNX export (chainrule.onnx_export, Sequential.export): ONNX Runtime runs the exported file
and must give what Sequential.predict gives, for every layer and activation, float32 and
float64, any batch size. ONNX Runtime is the independent oracle here: it shares no code with
the C++ core."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr
from chainrule import _core

from act_reference import make as make_activation, spec_id, specs as activation_specs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from chainrule import onnx_export  # noqa: E402  (after the skips: it is fine without onnx, but only tested with it)

L = cr.layers
DTYPES = ["float32", "float64"]
# float32: the 1e-5 the export promises; float64: the export keeps double precision
# throughout (no float32 round trip anywhere), so far tighter.
ATOL = {"float32": 1e-5, "float64": 1e-12}
BATCHES = (1, 37)


def _randomize(model, seed=0):
    """Weights (biases included) drawn at a scale that keeps every layer's outputs O(1)."""
    rng = np.random.default_rng(seed)
    new = []
    for w in model.get_weights():
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 4
        new.append(rng.uniform(-1.0, 1.0, w.shape) * (1.5 / np.sqrt(fan_in)))
    model.set_weights(new)


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _export_and_compare(model, tmp_path, batches=BATCHES, seed=1, low=-1.0, high=1.0):
    """Export, check, run with ONNX Runtime at each batch size against predict; returns the
    loaded ModelProto."""
    path = tmp_path / "model.onnx"
    model.export(path, format="onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    sess = _session(path)
    rng = np.random.default_rng(seed)
    for n in batches:
        x = rng.uniform(low, high, (n,) + tuple(model.input_shape)).astype(model.dtype)
        (got,) = sess.run(None, {"input": x})
        want = model.predict(x)
        assert got.dtype == np.dtype(model.dtype)
        assert got.shape == want.shape == (n,) + tuple(model.output_shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL[model.dtype])
    return proto


# -- every activation --------------------------------------------------------------------

def test_every_activation_of_the_core_is_tested():
    exported = {name for name, _ in activation_specs()}
    assert exported == set(dict(_core.ACTIVATIONS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", activation_specs(), ids=spec_id)
def test_mlp_every_activation(spec, dtype, tmp_path):
    model = cr.Sequential([L.Dense(12, activation=make_activation(spec), input_shape=(7,)),
                           L.Dropout(0.3),
                           L.Dense(5, activation=make_activation(spec))], dtype=dtype, seed=3)
    model.build()
    _randomize(model)
    _export_and_compare(model, tmp_path, low=-3.0, high=3.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", activation_specs(), ids=spec_id)
def test_conv_every_activation(spec, dtype, tmp_path):
    # The convolution is the last layer: its activation (softmax: over the filters of each
    # pixel) is the output, in the channels-last layout of predict.
    model = cr.Sequential([L.Conv2D(4, 3, padding="same", activation=make_activation(spec),
                                    input_shape=(7, 6, 2))], dtype=dtype, seed=4)
    model.build()
    _randomize(model)
    _export_and_compare(model, tmp_path, low=-3.0, high=3.0)


# -- convolutional networks ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_cnn_every_layer(padding, strides, dtype, tmp_path):
    model = cr.Sequential([
        L.Conv2D(4, 3, strides=strides, padding=padding, activation="relu", input_shape=(23, 21, 3)),
        L.MaxPooling2D(2, strides=strides, padding=padding),
        L.Conv2D(5, (2, 3), strides=strides, padding=padding, activation="tanh"),
        L.AveragePooling2D(2, strides=1, padding=padding),
        L.Flatten(),
        L.Dropout(0.25),
        L.Dense(8, activation=cr.activations.LeakyReLU(0.2)),
        L.Dense(4, activation="softmax"),
    ], dtype=dtype, seed=5)
    model.build()
    _randomize(model)
    _export_and_compare(model, tmp_path, low=0.0, high=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [
    # (input sample shape, filters, kernel, strides, padding)
    ((9, 11, 3), 4, (3, 3), (1, 1), "same"),
    ((9, 11, 3), 4, (3, 3), (2, 2), "same"),      # odd sizes, stride 2: 1 before, 1 after
    ((8, 10, 2), 3, (2, 2), (1, 1), "same"),      # even kernel: 0 before, 1 after
    ((8, 10, 2), 3, (3, 3), (2, 2), "same"),      # even size, stride 2: 0 before, 1 after
    ((8, 10, 2), 3, (4, 5), (3, 2), "same"),
    ((9, 11, 3), 2, (4, 2), (2, 3), "valid"),     # leftover rows/columns are dropped
    ((7, 7, 5), 6, (1, 1), (1, 1), "valid"),      # pointwise
    ((7, 7, 5), 6, (1, 1), (2, 2), "same"),
    ((9, 8, 1), 3, (3, 2), (1, 2), "same"),       # one input channel
    ((9, 8), 3, (3, 3), (2, 1), "valid"),         # 2-D samples: one channel
    ((5, 6, 2), 3, (5, 6), (1, 1), "valid"),      # kernel as large as the image
], ids=lambda g: f"{g[0]}-k{g[2]}-s{g[3]}-{g[4]}")
def test_conv_geometry(geometry, dtype, tmp_path):
    shape, filters, kernel, strides, padding = geometry
    model = cr.Sequential([L.Conv2D(filters, kernel, strides=strides, padding=padding, input_shape=shape),
                           L.Flatten(), L.Dense(3)], dtype=dtype, seed=6)
    model.build()
    _randomize(model)
    _export_and_compare(model, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("config", [
    # (input sample shape, pool_size, strides, padding)
    ((8, 8, 3), 2, None, "valid"),
    ((9, 7, 3), 2, None, "valid"),      # odd sizes: the last row/column is dropped
    ((9, 7, 3), 2, None, "same"),       # 0 before, 1 after
    ((9, 7, 2), 3, 2, "same"),          # 1 before, 1 after
    ((8, 10, 2), 3, 2, "same"),         # 0 before, 1 after
    ((8, 10, 2), 2, 1, "same"),
    ((10, 9, 2), (3, 2), (2, 3), "same"),
    ((11, 11, 1), 2, 3, "same"),        # stride larger than the window
    ((11, 11, 1), 3, (1, 2), "valid"),
    ((5, 6, 4), (5, 6), None, "valid"),  # global pooling
], ids=lambda c: f"{c[0]}-p{c[1]}-s{c[2]}-{c[3]}")
def test_pooling(config, layer, dtype, tmp_path):
    shape, pool, strides, padding = config
    model = cr.Sequential([getattr(L, layer)(pool, strides=strides, padding=padding, input_shape=shape)],
                          dtype=dtype)
    model.build()
    # Negative inputs: a padded cell that took part in a max (as 0) or in an average's count
    # would show.
    _export_and_compare(model, tmp_path, low=-2.0, high=-0.5)
    _export_and_compare(model, tmp_path, low=-1.0, high=1.0, seed=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_flatten_dropout(dtype, tmp_path):
    model = cr.Sequential([
        L.Dense(24, activation="sigmoid", input_shape=(10,)),
        L.Reshape((4, 3, 2)),                 # features -> channels-last image
        L.Conv2D(3, 2, padding="same", activation="relu"),
        L.Dropout(0.5),
        L.MaxPooling2D(2, padding="same"),
        L.Reshape((-1, 3)),                   # image -> (pixels, channels)
        L.Reshape((3, 4)),                    # 2-D samples ...
        L.Conv2D(2, (1, 2)),                  # ... into a convolution, as one channel
        L.Flatten(),
        L.Flatten(),                          # of 1-D samples: nothing to do
        L.Dense(3, activation="softmax"),
    ], dtype=dtype, seed=7)
    model.build()
    _randomize(model)
    _export_and_compare(model, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_with_no_arithmetic_layer_but_dropout(dtype, tmp_path):
    model = cr.Sequential([L.Dropout(0.5, input_shape=(3, 4))], dtype=dtype)
    model.build()
    proto = _export_and_compare(model, tmp_path)
    assert [n.op_type for n in proto.graph.node] == ["Identity"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_after_flatten_uses_the_kernel_as_is(dtype, tmp_path):
    """The layout is restored to channels-last before Flatten, so the Dense kernel is the
    model's own (not a permuted copy), and each Conv/pool run is wrapped in one transpose pair."""
    model = cr.Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(6, 5, 2)),
                           L.MaxPooling2D(2, padding="same"),
                           L.Flatten(), L.Dense(4, name="head")], dtype=dtype, seed=8)
    model.build()
    _randomize(model)
    proto = _export_and_compare(model, tmp_path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    kernel, bias = model.get_weights()[2:]
    np.testing.assert_array_equal(inits["head/kernel"], kernel)
    np.testing.assert_array_equal(inits["head/bias"], bias)
    ops = [n.op_type for n in proto.graph.node]
    if dtype == "float32":
        assert ops == ["Transpose", "Conv", "Relu", "MaxPool", "Transpose", "Flatten", "Gemm"]
        np.testing.assert_array_equal(inits["conv2d/kernel"], model.get_weights()[0].transpose(3, 2, 0, 1))
    else:  # no double Conv in onnxruntime: im2col and MatMul, in double
        assert "Conv" not in ops and ops.count("MatMul") == 1
        assert all(t.data_type == onnx.TensorProto.DOUBLE for t in proto.graph.initializer
                   if onnx.numpy_helper.to_array(t).dtype.kind == "f")


# -- a trained model ------------------------------------------------------------------------

def test_trained_digits_cnn(tmp_path):
    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits(flatten=False)
    model = cr.Sequential([
        L.Conv2D(8, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(16, 3, activation="relu"),
        L.AveragePooling2D(2, padding="same"),
        L.Flatten(),
        L.Dropout(0.2),
        L.Dense(32, activation="relu"),
        L.Dense(10, activation="softmax"),
    ], seed=0)
    model.compile(optimizer=cr.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=32, seed=0, verbose=0)
    _, acc = model.evaluate(x_test, y_test)
    assert acc > 0.9  # it learned something: the weights are not the initial ones

    path = tmp_path / "digits.onnx"
    model.export(str(path))  # the default format is ONNX
    sess = _session(path)
    (probs,) = sess.run(["output"], {"input": x_test.astype(np.float32)})
    want = model.predict(x_test)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y_test) == pytest.approx(acc)
    for n in BATCHES:
        (p,) = sess.run(None, {"input": x_test[:n].astype(np.float32)})
        np.testing.assert_allclose(p, want[:n], rtol=0, atol=1e-5)


# -- the file itself --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_metadata_names_and_dynamic_batch(dtype, tmp_path):
    model = cr.Sequential([L.Conv2D(2, 3, input_shape=(6, 6, 1)), L.Flatten(), L.Dense(3, activation="sigmoid")],
                          name="tiny", dtype=dtype, seed=9)
    model.build()
    path = tmp_path / "tiny.onnx"
    model.export(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.producer_name == "chainrule"
    assert proto.producer_version == cr.__version__
    assert proto.ir_version == onnx_export.IR_VERSION == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", onnx_export.OPSET)]
    assert onnx_export.OPSET == 17
    assert proto.graph.name == "tiny"
    assert "'input'" in proto.doc_string and "channels-last" in proto.doc_string
    elem = onnx.TensorProto.DOUBLE if dtype == "float64" else onnx.TensorProto.FLOAT
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "output"
    for value, rest in ((inp, [6, 6, 1]), (out, [3])):
        assert value.type.tensor_type.elem_type == elem
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
        assert [d.dim_value for d in dims[1:]] == rest
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["chainrule.dtype"] == dtype
    assert json.loads(props["chainrule.config"]) == json.loads(json.dumps(model.get_config()))
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert sess.get_inputs()[0].shape[0] == "batch"
    for n in (1, 2, 37, 200):
        x = np.random.default_rng(n).random((n, 6, 6, 1)).astype(dtype)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.predict(x), rtol=0, atol=ATOL[dtype])


def test_to_onnx_returns_a_checked_model():
    model = cr.Sequential([L.Dense(2, input_shape=(3,))])
    model.build()
    proto = onnx_export.to_onnx(model)
    assert isinstance(proto, onnx.ModelProto)
    onnx.checker.check_model(proto, full_check=True)


def test_overwrite_and_external_weights(tmp_path, monkeypatch):
    model = cr.Sequential([L.Dense(40, activation="relu", input_shape=(30,)), L.Dense(2)], seed=10)
    model.build()
    path = tmp_path / "big.onnx"
    model.export(path)
    _randomize(model, seed=3)
    model.export(path)  # replaces the file
    x = np.random.default_rng(0).random((5, 30)).astype(np.float32)
    np.testing.assert_allclose(_session(path).run(None, {"input": x})[0], model.predict(x), atol=1e-5)

    # Above the threshold the weights go to "<file>.data" beside the model (the protobuf
    # limit is 2 GiB); exercised here with the threshold lowered.
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    ext = tmp_path / "ext.onnx"
    for _ in range(2):  # a second export replaces the data file rather than growing it
        model.export(ext)
        data = tmp_path / "ext.onnx.data"
        assert data.is_file()
        size = data.stat().st_size  # the first kernel at least (tensors under 1 KiB stay inline)
        assert model.get_weights()[0].nbytes <= size <= sum(w.nbytes for w in model.get_weights())
    assert os.path.getsize(ext) < 2000
    np.testing.assert_allclose(_session(ext).run(None, {"input": x})[0], model.predict(x), atol=1e-5)


# -- bad arguments ------------------------------------------------------------------------------

def _small_model():
    model = cr.Sequential([L.Dense(2, input_shape=(3,))])
    model.build()
    return model


def test_unbuilt_model_raises(tmp_path):
    model = cr.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("fmt, exc, match", [
    ("tf_saved_model", ValueError, "format 'tf_saved_model'"),
    ("h5", ValueError, "format 'h5'"),
    ("", ValueError, "format ''"),
    (None, TypeError, "format must be a string"),
    (3, TypeError, "format must be a string"),
])
def test_bad_format_raises(fmt, exc, match, tmp_path):
    with pytest.raises(exc, match=match):
        _small_model().export(tmp_path / "m.onnx", format=fmt)
    assert not (tmp_path / "m.onnx").exists()


def test_format_is_case_insensitive(tmp_path):
    _small_model().export(tmp_path / "m.onnx", format="ONNX")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))


@pytest.mark.parametrize("path, exc, match", [
    (None, TypeError, "path must be a file path"),
    (123, TypeError, "path must be a file path"),
    (True, TypeError, "path must be a file path"),
    (["m.onnx"], TypeError, "path must be a file path"),
    ("", ValueError, "path must be a non-empty file path"),
])
def test_bad_path_type_raises(path, exc, match):
    with pytest.raises(exc, match=match):
        _small_model().export(path)


def test_path_that_is_a_directory_or_in_a_missing_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        _small_model().export(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        _small_model().export(tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_layer_without_an_onnx_form_raises(tmp_path):
    class Squash(L.Flatten):  # a user's layer: the export must not guess what it does
        pass

    model = cr.Sequential([L.Dense(4, input_shape=(3,)), Squash(), L.Dense(2)])
    model.build()
    with pytest.raises(ValueError, match="Squash has no ONNX form"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_not_a_model_raises(tmp_path):
    with pytest.raises(TypeError, match="model must be a chainrule Sequential"):
        onnx_export.export(object(), tmp_path / "m.onnx")


def test_missing_onnx_package_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        _small_model().export(tmp_path / "m.onnx")


def test_import_chainrule_does_not_import_onnx():
    code = ("import sys, chainrule, chainrule.models; "
            "bad = [m for m in ('onnx', 'onnxruntime', 'chainrule.onnx_export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


# -- BatchNormalization, GlobalAveragePooling2D, Activation ------------------------------------

def _randomize_with_statistics(model, seed=0):
    """_randomize's weights, with moving variances drawn positive (a variance) and moving
    means away from 0."""
    rng = np.random.default_rng(seed)
    w = []
    for a in model.get_weights():
        fan_in = int(np.prod(a.shape[:-1])) if a.ndim > 1 else 4
        w.append(rng.uniform(-1.0, 1.0, a.shape) * (1.5 / np.sqrt(fan_in)))
    i = 0
    for layer in model.layers:
        for name, shape, *_ in layer.param_specs():
            if name == "moving_variance":
                w[i] = rng.uniform(0.2, 2.0, shape)
            elif name == "moving_mean":
                w[i] = rng.normal(0.0, 0.5, shape)
            i += 1
    model.set_weights(w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_batchnorm_global_pooling_and_activation_layers(keepdims, dtype, tmp_path):
    model = cr.Sequential([
        L.Input(shape=(9, 8, 3)),
        L.Conv2D(4, 3, padding="same"), L.BatchNormalization(epsilon=0.01), L.Activation("relu"),
        L.MaxPooling2D(2), L.BatchNormalization(center=False), L.Activation("softmax"),  # over channels
        L.GlobalAveragePooling2D(keepdims=keepdims), L.Flatten(),
        L.Dense(6), L.BatchNormalization(scale=False), L.Activation(cr.activations.LeakyReLU(0.2)),
        L.Dense(3), L.Activation("softmax"),
    ], dtype=dtype, seed=6)
    model.build()
    _randomize_with_statistics(model)
    proto = _export_and_compare(model, tmp_path, low=-2.0, high=2.0)
    ops = {n.op_type for n in proto.graph.node}
    if dtype == "float32":
        assert {"BatchNormalization", "GlobalAveragePool"} <= ops
    else:  # double: constants in double, ops onnxruntime runs in double
        assert "BatchNormalization" not in ops and "ReduceMean" in ops


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_over_the_last_axis_of_2d_samples(dtype, tmp_path):
    model = cr.Sequential([L.Input(shape=(5, 4)), L.BatchNormalization(), L.Activation("softmax"), L.Flatten(),
                           L.Dense(3)], dtype=dtype, seed=7)
    model.build()
    _randomize_with_statistics(model)
    _export_and_compare(model, tmp_path, low=-2.0, high=2.0)
