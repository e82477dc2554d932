"""Model files as untrusted input: load_model on damaged, foreign and crafted files raises
ModelFormatError (never another exception, never a large allocation, never a model that
trains into NaN), saved files get open()'s permissions, and round trips still work."""

import copy
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule import ModelFormatError
from chainrule.layers import AveragePooling2D, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Reshape


# -- fixtures: a few valid model files --------------------------------------------------------
def _dense_model(dtype="float32", optimizer=None, fit=True):
    m = cr.Sequential([Dense(5, activation="relu", input_shape=(4,)), Dropout(0.2),
                       Dense(3, activation="softmax", kernel_regularizer="l2")], seed=3, dtype=dtype, name="net")
    m.build()
    if optimizer is not None:
        m.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        if fit:
            rng = np.random.default_rng(0)
            m.fit(rng.normal(size=(16, 4)), rng.integers(0, 3, 16), epochs=2, batch_size=4, verbose=0, seed=1)
    return m


def _conv_model(compiled=False):
    m = cr.Sequential([Conv2D(2, (3, 2), strides=(2, 1), padding="same", activation="relu", input_shape=(7, 6, 1)),
                       MaxPooling2D(2), AveragePooling2D((1, 2), padding="same"), Flatten(), Dropout(0.3),
                       Reshape((-1,)), Dense(2, activation="sigmoid")], seed=5)
    m.build()
    if compiled:
        m.compile(optimizer=cr.optimizers.RMSprop(0.01, momentum=0.5), loss="binary_crossentropy")
        rng = np.random.default_rng(1)
        m.fit(rng.normal(size=(8, 7, 6, 1)), rng.integers(0, 2, (8, 2)).astype(float), epochs=1, batch_size=4,
              verbose=0, seed=2)
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> path of a valid model file."""
    folder = tmp_path_factory.mktemp("valid")
    models = {"adam": _dense_model(optimizer=cr.optimizers.Adam(0.01, amsgrad=True)),
              "plain": _dense_model(),
              "conv": _conv_model(),
              "conv_rmsprop": _conv_model(compiled=True)}
    paths = {}
    for name, m in models.items():
        paths[name] = str(folder / f"{name}.npz")
        m.save(paths[name])
    return paths


def _parts(path):
    """(metadata dict, {entry name: array}) of a valid file."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__chainrule__"}
        meta = json.loads(bytes(data["__chainrule__"]).decode("utf-8"))
    return meta, arrays


def _write(path, meta, arrays):
    """A model file with this metadata (a dict, or JSON text / bytes as is) and these arrays."""
    if isinstance(meta, dict):
        meta = json.dumps(meta)
    if isinstance(meta, str):
        meta = meta.encode("utf-8")
    np.savez(path, __chainrule__=np.frombuffer(meta, dtype=np.uint8), **arrays)
    return path


def _rejects(path, pattern=None):
    with pytest.raises(ModelFormatError, match=pattern) as info:
        cr.load_model(path)
    assert repr(str(path)) in str(info.value)
    return info.value


def test_model_format_error_is_exported_value_error():
    assert cr.ModelFormatError is ModelFormatError and "ModelFormatError" in cr.__all__
    assert issubclass(ModelFormatError, ValueError)


# -- damaged files ------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    _rejects(p, r"is not a chainrule model file \(not a zip archive")


def test_truncated_files(tmp_path, saved):
    raw = open(saved["adam"], "rb").read()
    for n in sorted({1, 4, 22, 30, 64, 100, 200, 500, len(raw) // 2, len(raw) - 100, len(raw) - 22,
                     len(raw) - 1}):
        p = tmp_path / f"trunc{n}.npz"
        p.write_bytes(raw[:n])
        _rejects(p)


def test_bit_flips(tmp_path, saved):
    """Every single-bit flip either leaves a file that loads to the very same model (fields
    nobody reads: timestamps, the local CRC copy) or raises ModelFormatError."""
    raw = open(saved["conv_rmsprop"], "rb").read()
    ref = cr.load_model(saved["conv_rmsprop"])
    p = tmp_path / "flip.npz"
    for i in range(0, len(raw), max(1, len(raw) // 400)):
        b = bytearray(raw)
        b[i] ^= 1 << (i % 8)
        p.write_bytes(bytes(b))
        try:
            m = cr.load_model(p)
        except ModelFormatError:
            continue
        assert m.get_config() == ref.get_config()
        for a, c in zip(m.get_weights() + m._core.get_optimizer_state(),
                        ref.get_weights() + ref._core.get_optimizer_state()):
            assert np.array_equal(a, c)


def test_flipped_weight_byte_fails_the_crc(tmp_path, saved):
    raw = open(saved["plain"], "rb").read()
    at = raw.index(b"\x93NUMPY", raw.index(b"param_000.npy")) + 128 + 8  # inside the first kernel's data
    b = bytearray(raw)
    b[at] ^= 0x10
    p = tmp_path / "crc.npz"
    p.write_bytes(bytes(b))
    _rejects(p)


def test_missing_file_and_folder_keep_their_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        cr.load_model(tmp_path / "nope.npz")
    with pytest.raises(IsADirectoryError):
        cr.load_model(tmp_path)


def test_foreign_archives(tmp_path):
    p = tmp_path / "foreign.npz"
    np.savez(p, a=np.zeros(3))
    _rejects(p, r"is not a chainrule model file \(no __chainrule__ entry\)")
    p = tmp_path / "text.npz"
    p.write_text("hello")
    _rejects(p, r"not a zip archive")
    p = tmp_path / "pickled.npz"
    np.savez(p, __chainrule__=np.array([{"format": "chainrule.model"}], dtype=object))
    _rejects(p, r"allow_pickle")


# -- crafted metadata -------------------------------------------------------------------------
@pytest.mark.parametrize("text,pattern", [
    ("[1, 2, 3]", r"must be a JSON object; it is a list"),
    ('"chainrule.model"', r"must be a JSON object; it is a str"),
    ("null", r"must be a JSON object"),
    ("[" * 100000 + "]" * 100000, r"nested too deeply"),
    ('{"a":' * 50 + "1" + "}" * 50, r"nested|not a chainrule model file"),
    ("{not json", r"not valid UTF-8 JSON"),
    (b"\xff\xfe{}", r"not valid UTF-8 JSON"),
    ('{"format": "keras"}', r"is not a chainrule model file \(format 'keras'\)"),
    ('{"format": "chainrule.model", "version": 2}', r"newer chainrule \(format version 2\)"),
    ('{"format": "chainrule.model", "version": true}', r"version must be a positive integer"),
    ('{"format": "chainrule.model", "version": 1}', r"'config' must be an object"),
])
def test_metadata_that_is_not_a_model(tmp_path, text, pattern):
    _rejects(_write(tmp_path / "m.npz", text, {}), pattern)


def test_deep_nesting_inside_a_valid_file(tmp_path, saved):
    meta, arrays = _parts(saved["plain"])
    meta["config"]["layers"][0]["config"]["name"] = "@@DEEP@@"
    text = json.dumps(meta).replace('"@@DEEP@@"', "[" * 200 + "]" * 200)
    _rejects(_write(tmp_path / "deep.npz", text, arrays), r"nested 3\d+ levels deep")


@pytest.mark.parametrize("where,key", [
    ((), "config"), ((), "format"), ((), "version"), (("config",), "layers"), (("config",), "input_shape"),
    (("config",), "dtype"), (("compile",), "loss"), (("compile",), "optimizer"), (("compile",), "metrics"),
    (("compile",), "optimizer_step"), (("compile",), "lr_scale"), (("compile",), "optimizer_slots"),
    (("config", "layers", 0), "class_name"), (("config", "layers", 0), "config"),
    (("config", "layers", 0, "config"), "units"), (("compile", "optimizer"), "class_name"),
])
def test_missing_keys(tmp_path, saved, where, key):
    meta, arrays = _parts(saved["adam"])
    d = meta
    for k in where:
        d = d[k]
    del d[key]
    _rejects(_write(tmp_path / "m.npz", meta, arrays))


def test_huge_input_shape_is_refused_without_allocating(tmp_path):
    meta = {"format": "chainrule.model", "version": 1,
            "config": {"name": "m", "dtype": "float32", "seed": None, "input_shape": [10 ** 12],
                       "layers": [{"class_name": "Dense", "config": {"units": 10 ** 6}}]}}
    p = _write(tmp_path / "huge.npz", meta, {})
    assert os.path.getsize(p) < 1000
    t0 = time.perf_counter()
    _rejects(p, r"input_shape")
    # Within the per-sample limit but with weights not in the file: refused before building.
    meta["config"]["input_shape"] = [2 ** 30]
    meta["config"]["layers"][0]["config"]["units"] = 1
    _rejects(_write(tmp_path / "big.npz", meta, {}), r"holds 0 weight arrays; .* with 2")
    meta["config"]["input_shape"] = [46340, 46340]
    meta["config"]["layers"] = [{"class_name": "Conv2D", "config": {"filters": 100, "kernel_size": 1}},
                                {"class_name": "Flatten", "config": {}},
                                {"class_name": "Dense", "config": {"units": 10 ** 6}}]
    _rejects(_write(tmp_path / "big2.npz", meta, {}), r"config is invalid|weight arrays")
    assert time.perf_counter() - t0 < 2.0


def test_absurd_conv_sizes_are_refused_before_the_core(tmp_path, saved):
    meta, arrays = _parts(saved["conv"])
    for ks in ([2 ** 31, 1], [2 ** 31 - 1, 2 ** 31 - 1], [2 ** 31 - 1, 1], 0, -3):
        meta["config"]["layers"][0]["config"]["kernel_size"] = ks
        meta["config"]["layers"][0]["config"]["padding"] = "same"
        _rejects(_write(tmp_path / "conv.npz", meta, arrays), r"config is invalid|shape|weight")


@pytest.mark.parametrize("field,value,pattern", [
    ("optimizer_step", -1, r"optimizer_step"), ("optimizer_step", True, r"optimizer_step"),
    ("optimizer_step", 2 ** 62, r"optimizer_step"), ("optimizer_step", 1.5, r"optimizer_step"),
    ("lr_scale", 0, r"lr_scale"), ("lr_scale", -1.0, r"lr_scale"), ("lr_scale", "1", r"lr_scale"),
    ("lr_scale", float("nan"), r"lr_scale"), ("lr_scale", float("inf"), r"lr_scale"),
    ("loss", "hinge", r"compile settings are invalid"), ("loss", 3, r"loss"),
    ("metrics", ["auc"], r"compile settings are invalid"), ("metrics", "accuracy", r"metrics"),
    ("optimizer", {"class_name": "Adam", "learning_rate": -1}, r"compile settings are invalid"),
    ("optimizer", {"class_name": "Adam", "beta_1": "x"}, r"compile settings are invalid"),
    ("optimizer", {"class_name": "Nadam"}, r"compile settings are invalid"),
    ("optimizer", {"class_name": "SGD"}, r"3 optimizer state arrays; .*SGD\) keeps 0"),
    ("optimizer", "adam", r"optimizer"),
    ("optimizer_slots", 2, r"metadata says 2"), ("optimizer_slots", -1, r"optimizer_slots"),
])
def test_crafted_compile_settings(tmp_path, saved, field, value, pattern):
    meta, arrays = _parts(saved["adam"])
    meta["compile"][field] = value
    _rejects(_write(tmp_path / "m.npz", meta, arrays), pattern)


def test_step_minus_one_no_longer_trains_into_nan(tmp_path, saved):
    meta, arrays = _parts(saved["adam"])
    meta["compile"]["optimizer_step"] = -1
    _rejects(_write(tmp_path / "m.npz", meta, arrays), r"optimizer_step")
    # the honest file trains on with finite weights
    m = cr.load_model(saved["adam"])
    m.train_on_batch(np.ones((2, 4)), np.array([0, 1]))
    assert all(np.isfinite(w).all() for w in m.get_weights())


@pytest.mark.parametrize("field,value", [
    ("dtype", "float16"), ("dtype", None), ("seed", -1), ("seed", 1.5), ("seed", True), ("name", 7),
    ("input_shape", []), ("input_shape", [0]), ("input_shape", [-4]), ("input_shape", [4.0]),
    ("input_shape", [True]), ("input_shape", "4"), ("input_shape", None), ("input_shape", [2, 2]),
    ("layers", []), ("layers", {}), ("layers", [1]), ("layers", [{"class_name": "Lambda", "config": {}}]),
    ("layers", [{"class_name": "Dense", "config": {"units": 5, "activation": "__import__('os')"}}]),
    ("layers", [{"class_name": "Dense", "config": {"units": 5, "bogus": 1}}]),
    ("layers", [{"class_name": "Dense", "config": {"units": "5"}}]),
    ("layers", [{"class_name": "Dense", "config": {"units": -5}}]),
    ("layers", [{"class_name": "Dense", "config": []}]),
    ("extra", 1),
])
def test_crafted_model_config(tmp_path, saved, field, value):
    meta, arrays = _parts(saved["adam"])
    meta["config"][field] = value
    e = _rejects(_write(tmp_path / "m.npz", meta, arrays))
    if isinstance(e.__cause__, (ValueError, TypeError)) and not isinstance(e.__cause__, ModelFormatError):
        assert "config is invalid" in str(e) or "compile settings" in str(e)


def test_duplicate_layer_names(tmp_path, saved):
    meta, arrays = _parts(saved["plain"])
    for layer in meta["config"]["layers"]:
        layer["config"]["name"] = "same"
    _rejects(_write(tmp_path / "m.npz", meta, arrays), r"config is invalid: .*unique")


# -- crafted arrays -------------------------------------------------------------------------------
def test_wrong_weight_count_shape_and_dtype(tmp_path, saved):
    meta, arrays = _parts(saved["adam"])
    p = tmp_path / "m.npz"
    a = dict(arrays)
    del a["param_003"]
    _rejects(_write(p, meta, a), r"holds 3 weight arrays; the saved config builds a model with 4")
    a = dict(arrays, param_004=np.zeros(3, np.float32))
    _rejects(_write(p, meta, a), r"weight arrays")
    a = dict(arrays)
    del a["param_001"]
    _rejects(_write(p, meta, a), r"lacks entry param_001")
    a = dict(arrays, param_000=arrays["param_000"].T.copy())
    _rejects(_write(p, meta, a), r"'param_000' \(the kernel of layer 'dense'\) has shape \(5, 4\); .*\(4, 5\)")
    a = dict(arrays, param_001=arrays["param_001"].astype(np.float64))
    _rejects(_write(p, meta, a), r"'param_001' .* has dtype float64; the model needs float32")
    for dt in (np.int32, np.float16, np.complex64, np.bool_, "U3"):
        a = dict(arrays, param_001=arrays["param_001"].astype(dt))
        _rejects(_write(p, meta, a), r"has dtype")
    a = dict(arrays, param_001=np.array([{}, 1, 2, 3, 4], dtype=object))
    _rejects(_write(p, meta, a), r"allow_pickle")
    a = dict(arrays, extra=np.zeros(2))
    _rejects(_write(p, meta, a), r"unexpected archive entry 'extra.npy'")
    a = dict(arrays, param_0001=np.zeros(2))
    _rejects(_write(p, meta, a), r"unexpected archive entry")


def test_fortran_order_and_big_endian_weights_load(tmp_path, saved):
    meta, arrays = _parts(saved["plain"])
    a = dict(arrays, param_000=np.asfortranarray(arrays["param_000"]), param_002=arrays["param_002"].astype(">f4"))
    m = cr.load_model(_write(tmp_path / "m.npz", meta, a))
    for got, want in zip(m.get_weights(), [arrays[f"param_{i:03d}"] for i in range(4)]):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("entry,value", [("param_000", np.nan), ("param_003", np.inf), ("optimizer_001", -np.inf),
                                         ("optimizer_000", np.nan)])
def test_non_finite_arrays(tmp_path, saved, entry, value):
    meta, arrays = _parts(saved["adam"])
    a = dict(arrays)
    a[entry] = a[entry].copy()
    a[entry].flat[1] = value
    _rejects(_write(tmp_path / "m.npz", meta, a), rf"'{entry}' .* NaN or infinite values \(first at index")


def test_optimizer_state_checks(tmp_path, saved):
    meta, arrays = _parts(saved["adam"])
    p = tmp_path / "m.npz"
    a = dict(arrays, optimizer_001=-np.abs(arrays["optimizer_001"]) - 1)  # Adam's v
    _rejects(_write(p, meta, a), r"'optimizer_001' holds negative values")
    a = dict(arrays, optimizer_000=-np.abs(arrays["optimizer_000"]) - 1)  # Adam's m may be negative
    cr.load_model(_write(p, meta, a))
    a = dict(arrays, optimizer_002=arrays["optimizer_002"][:-1])
    _rejects(_write(p, meta, a), r"'optimizer_002' .* has shape \(42,\); the model needs shape \(43,\)")
    a = dict(arrays)
    del a["optimizer_002"]
    _rejects(_write(p, meta, a), r"2 optimizer state arrays; its metadata says 3")
    meta2 = dict(meta, compile=dict(meta["compile"], optimizer_slots=2))
    _rejects(_write(p, meta2, a), r"2 optimizer state arrays; its optimizer \(Adam\) keeps 3")
    meta3 = {k: v for k, v in meta.items() if k != "compile"}
    _rejects(_write(p, meta3, arrays), r"3 optimizer state arrays but no compile settings")


def test_compressed_entries_and_zip_bombs(tmp_path, saved):
    meta, arrays = _parts(saved["plain"])
    p = tmp_path / "deflated.npz"
    np.savez_compressed(p, __chainrule__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    _rejects(p, r"is compressed")
    # an .npy header declaring a huge array over a few bytes of data (with a correct CRC)
    with zipfile.ZipFile(saved["plain"]) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    hdr_small = b"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"
    hdr_huge = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    assert entries["param_001.npy"].count(hdr_small + b" " * 12) == 1  # the first layer's bias
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        for name, blob in entries.items():
            z.writestr(name, blob.replace(hdr_small + b" " * 12, hdr_huge) if name == "param_001.npy" else blob)
    t0 = time.perf_counter()
    _rejects(p, r"entry 'param_001' declares shape \(1000000000000,\) of float32 \(4000000000000 bytes\) "
                r"but holds 20 bytes")
    # a zip directory declaring a huge entry
    p = tmp_path / "bomb2.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        for name, blob in entries.items():
            z.writestr(name, blob)
    cr.load_model(p)  # valid as written
    raw = bytearray(p.read_bytes())
    cd = raw.index(b"PK\x01\x02")
    raw[cd + 20:cd + 28] = b"\xff\xff\xff\x7f" * 2  # compressed and uncompressed sizes
    p.write_bytes(bytes(raw))
    _rejects(p, r"declares 2147483647 bytes")
    assert time.perf_counter() - t0 < 1.0


def test_special_files(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    _rejects(fifo, r"not a regular file")


# -- saving: permissions, atomicity --------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_mode_follows_the_umask(tmp_path):
    m = _dense_model()
    old = os.umask(0o022)
    try:
        m.save(tmp_path / "a.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644
        os.umask(0o077)
        m.save(tmp_path / "b.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "b.npz").st_mode) == 0o600
        os.umask(0o002)
        m.save(tmp_path / "c.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "c.npz").st_mode) == 0o664
        # replacing a file keeps its permissions, as open(path, "wb") would
        os.chmod(tmp_path / "a.npz", 0o640)
        m.save(tmp_path / "a.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o640
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz", "c.npz"]  # no temporary left behind
    cr.load_model(tmp_path / "a.npz")


def test_failed_save_leaves_no_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    m = _dense_model()
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert os.listdir(tmp_path) == ["m.npz"] and path.read_bytes() == before


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", [None, "adam", "sgd", "adagrad", "rmsprop"])
def test_dense_round_trip(tmp_path, dtype, opt):
    optimizer = {None: None, "adam": cr.optimizers.AdamW(0.01, amsgrad=True),
                 "sgd": cr.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                 "adagrad": cr.optimizers.Adagrad(0.05), "rmsprop": cr.optimizers.RMSprop(0.01)}[opt]
    m = _dense_model(dtype=dtype, optimizer=optimizer)
    m.save(tmp_path / "m.crm")
    back = cr.load_model(tmp_path / "m.crm")
    assert back.get_config() == m.get_config() and back._compiled == m._compiled
    for a, b in zip(back.get_weights(), m.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    if optimizer is not None:
        assert back.optimizer.get_config() == m.optimizer.get_config()
        assert back._core.step_count == m._core.step_count == 8
        for a, b in zip(back._core.get_optimizer_state(), m._core.get_optimizer_state()):
            assert np.array_equal(a, b)
        x, y = np.random.default_rng(4).normal(size=(6, 4)), np.array([0, 1, 2, 0, 1, 2])
        m.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=9)  # same dropout masks and batches
        back.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=9)
        for a, b in zip(back.get_weights(), m.get_weights()):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("compiled", [False, True])
def test_conv_round_trip(tmp_path, compiled):
    m = _conv_model(compiled)
    m.save(tmp_path / "c.npz")
    back = cr.load_model(tmp_path / "c.npz")
    assert back.get_config() == m.get_config()
    x = np.random.default_rng(3).normal(size=(3, 7, 6, 1))
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


def test_round_trip_with_over_a_thousand_weight_arrays(tmp_path):
    m = cr.Sequential([Dense(1, input_shape=(1,))] + [Dense(1) for _ in range(504)], seed=0)
    m.build()
    m.save(tmp_path / "deep.npz")
    with zipfile.ZipFile(tmp_path / "deep.npz") as z:
        assert "param_1009.npy" in z.namelist()
    back = cr.load_model(tmp_path / "deep.npz")
    for a, b in zip(back.get_weights(), m.get_weights()):
        assert np.array_equal(a, b)


# -- fuzzing -----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_damaged_bytes(tmp_path, saved, data):
    """Random truncations, byte flips, insertions and deletions of valid files: a load either
    succeeds or raises ModelFormatError."""
    name = data.draw(st.sampled_from(sorted(saved)), label="file")
    raw = bytearray(open(saved[name], "rb").read())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "set"]), label="kind")
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
        if kind == "truncate":
            del raw[at:]
        elif kind == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        elif kind == "delete":
            del raw[at:at + data.draw(st.integers(1, 16), label="n")]
        elif raw:
            raw[at:at + 4] = data.draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                        b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]))
    p = tmp_path / "fuzz.npz"
    p.write_bytes(bytes(raw))
    try:
        cr.load_model(p)
    except ModelFormatError:
        pass


_POOL = [None, True, False, 0, 1, 2, 3, -1, -(10 ** 12), 2 ** 31 - 1, 2 ** 31, 2 ** 62, 2 ** 63, 10 ** 12,
         10 ** 100, 0.5, -0.5, 1e-300, 1e308, float("nan"), float("inf"), float("-inf"), "", "x", "float16",
         "float64", "relu", "same", "Dense", [], [0], [-1], [1, 1], [10 ** 12], [46340, 46340, 1], [3, 3],
         [2 ** 31 - 1, 1], {}, {"class_name": "Dense", "config": {"units": 3}},
         {"class_name": "Flatten", "config": {}}, {"class_name": "CosineDecay", "initial_learning_rate": 0.1,
                                                  "decay_steps": 10}, "@@DEEP40@@", "@@DEEP100000@@", "y" * 5000]
_KEYS = ["units", "filters", "kernel_size", "strides", "padding", "rate", "input_shape", "target_shape",
         "pool_size", "name", "activation", "amsgrad", "momentum", "bogus", "class_name", "config"]


def _paths(obj, prefix=()):
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _array_damage(arr, how):
    if how == "float64":
        return arr.astype(np.float64)
    if how == "float32":
        return arr.astype(np.float32)
    if how == "int":
        return arr.astype(np.int64)
    if how == "shorter":
        return arr.reshape(-1)[:-1]
    if how == "flat":
        return arr.reshape(-1)
    if how == "nan":
        return np.full(arr.shape, np.nan, arr.dtype)
    if how == "negative":
        return -np.abs(arr) - 1
    if how == "longer":
        return np.concatenate([arr.reshape(-1), [1.0]]).astype(arr.dtype)
    return None  # drop


_RUNNER = textwrap.dedent("""
    import math, sys, warnings
    import numpy as np
    import chainrule as cr
    warnings.simplefilter("ignore")
    for path in sys.argv[1:]:
        print("start", path, flush=True)
        try:
            m = cr.load_model(path)
        except cr.ModelFormatError:
            print("result", path, "ModelFormatError", flush=True)
            continue
        except BaseException as e:
            print("result", path, type(e).__name__, repr(str(e)[:300]), flush=True)
            continue
        sizes = [math.prod(m.input_shape)] + [math.prod(l.output_shape) for l in m.layers]
        if max(sizes) <= 10 ** 5:  # the loaded model also runs
            out = m.predict(np.zeros((2,) + tuple(m.input_shape)))
            assert out.shape[0] == 2
        print("result", path, "ok", flush=True)
""")


def test_fuzz_crafted_metadata(tmp_path, saved):
    """Random type/value/key mutations of valid files' metadata (and of their arrays), all
    loaded in one subprocess (a crash of the interpreter is a failure too): each load either
    succeeds (and the model predicts) or raises ModelFormatError."""
    cases = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(data=st.data())
    def collect(data):
        name = data.draw(st.sampled_from(sorted(saved)), label="file")
        meta, arrays = _parts(saved[name])
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            paths = _paths(meta)
            path = data.draw(st.sampled_from(paths[1:]), label="path")
            parent = meta
            for k in path[:-1]:
                parent = parent[k]
            op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "copy"]), label="op")
            # Values are deep-copied: a later mutation must not change the shared _POOL
            # (hypothesis replays a case and needs the same draws).
            if op == "replace":
                parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(_POOL), label="value"))
            elif op == "delete":
                del parent[path[-1]]
            elif op == "add":
                target = parent[path[-1]]
                if isinstance(target, dict):
                    target[data.draw(st.sampled_from(_KEYS), label="key")] = copy.deepcopy(
                        data.draw(st.sampled_from(_POOL)))
                elif isinstance(target, list):
                    target.insert(data.draw(st.integers(0, len(target)), label="at"),
                                  copy.deepcopy(data.draw(st.sampled_from(_POOL))))
            elif isinstance(parent, list):  # copy: duplicate a list element (a layer, a dimension)
                parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
        if data.draw(st.booleans(), label="damage arrays") and arrays:
            key = data.draw(st.sampled_from(sorted(arrays)), label="array")
            how = data.draw(st.sampled_from(["float64", "float32", "int", "shorter", "flat", "nan", "negative",
                                             "longer", "drop"]), label="how")
            new = _array_damage(arrays[key], how)
            if new is None:
                del arrays[key]
            else:
                arrays[key] = new
        text = json.dumps(meta)
        for depth in (40, 100000):
            text = text.replace(f'"@@DEEP{depth}@@"', "[" * depth + "]" * depth)
        p = tmp_path / f"case{len(cases):03d}.npz"
        _write(p, text, arrays)
        cases.append(str(p))

    collect()
    assert len(cases) >= 150
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *cases], capture_output=True, text=True, timeout=120)
    results = {}
    started = []
    for line in proc.stdout.splitlines():
        word, path, *rest = line.split(" ", 2)
        if word == "start":
            started.append(path)
        else:
            results[path] = rest[0]
    crashed = [p for p in started if p not in results]
    assert proc.returncode == 0 and not crashed, (
        f"the loader subprocess died (rc {proc.returncode}) on {crashed}: metadata "
        f"{bytes(np.load(crashed[0])['__chainrule__']).decode()[:2000] if crashed else ''}\n{proc.stderr[-3000:]}")
    assert len(results) == len(cases)
    wrong = {p: r for p, r in results.items() if r not in ("ok", "ModelFormatError")}
    assert not wrong, {p: (r, bytes(np.load(p)["__chainrule__"]).decode()[:1000]) for p, r in list(wrong.items())[:3]}
    outcomes = list(results.values())
    assert outcomes.count("ModelFormatError") > len(outcomes) // 2  # the fuzzer does reach the checks



def test_save_refuses_nonfinite_weights_and_keeps_the_old_file(tmp_path):
    """A file the loader would refuse (NaN or infinite weights, here from a diverged fit) is
    never written: save raises ValueError naming the tensor, and a file already at the path
    stays as it was."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)) * 1e3
    y = rng.normal(size=(64, 1)) * 1e3
    model = cr.Sequential([cr.layers.Dense(8, activation="relu", input_shape=(4,)), cr.layers.Dense(1)],
                          seed=0)
    model.compile(optimizer=cr.optimizers.SGD(10.0), loss="mse")
    path = tmp_path / "m.crm"
    model.save(str(path))
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, stop_on_nonfinite=False)
    assert not all(np.isfinite(w).all() for w in model.get_weights())
    with pytest.raises(ValueError, match=r"kernel of layer 'dense'\) holds NaN or infinite values"):
        model.save(str(path))
    assert path.read_bytes() == before
    assert not (tmp_path / "other.crm").exists()
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.save(str(tmp_path / "other.crm"))
    assert not (tmp_path / "other.crm").exists()


def test_checkpoint_of_a_diverged_model_is_skipped_with_a_warning(tmp_path):
    """ModelCheckpoint after an epoch that left NaN weights (stop_on_nonfinite=False): no
    unreadable file, no exception ending the fit, a NonFiniteWarning, and the checkpoints of
    the finite epochs stay loadable."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4))
    y = rng.normal(size=(64, 1))
    model = cr.Sequential([cr.layers.Dense(8, activation="relu", input_shape=(4,)), cr.layers.Dense(1)],
                          seed=0)
    model.compile(optimizer=cr.optimizers.SGD(0.01), loss="mse")
    ckpt = cr.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}.crm"))
    blow_up = cr.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 if epoch < 2 else 1e12)  # from epoch 3
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h = model.fit(x, y, epochs=5, batch_size=16, verbose=0, stop_on_nonfinite=False, callbacks=[blow_up, ckpt])
    assert len(h.history["loss"]) == 5
    finite = [all(np.isfinite(w).all() for w in cr.load_model(str(tmp_path / f"ckpt-{e}.crm")).get_weights())
              for e in range(1, 6) if (tmp_path / f"ckpt-{e}.crm").exists()]
    assert finite and all(finite)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "ckpt-1.crm" in saved and "ckpt-2.crm" in saved and len(saved) < 5, saved  # not all saved ...
    msgs = [str(w.message) for w in rec if issubclass(w.category, cr.NonFiniteWarning)
            and "ModelCheckpoint" in str(w.message)]
    assert msgs and "not saved" in msgs[0], [str(w.message) for w in rec]  # ... and it said so
