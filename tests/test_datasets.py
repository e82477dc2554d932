"""Tests for chainrule.datasets (pure Python; needs no compiled extension, no network)."""

import gzip
import hashlib
import io
import os
import struct
import urllib.error
import urllib.request
from importlib import resources

import numpy as np
import pytest

import chainrule.datasets as ds
from chainrule.datasets import (
    DatasetDownloadError,
    Standardizer,
    load_digits,
    load_mnist,
    permutation,
    read_idx,
    scale,
    standardize,
    to_categorical,
    to_unit_range,
    train_test_split,
)
from chainrule.datasets import _digits, _mnist

DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
DIGIT_TEST_COUNTS = [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _digest(x, y):
    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + y.astype("<i8").tobytes()).hexdigest()


def _sort_rows(x, y):
    rows = np.concatenate([x.reshape(len(x), -1).astype(np.int64), y[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


# ============================================================================ digits


def test_digits_split_shapes_dtypes_range():
    (xt, yt), (xs, ys) = load_digits()
    assert xt.shape == (1437, 64) and xs.shape == (360, 64)
    assert yt.shape == (1437,) and ys.shape == (360,)
    assert xt.dtype == np.float32 and xs.dtype == np.float32
    assert yt.dtype == np.int64 and ys.dtype == np.int64
    both = np.concatenate([xt, xs])
    assert both.min() == 0.0 and both.max() == 1.0
    np.testing.assert_array_equal(both * 16, np.round(both * 16))  # counts / 16
    assert set(np.unique(np.concatenate([yt, ys]))) == set(range(10))


def test_digits_label_counts_and_stratification():
    (xt, yt), (xs, ys) = load_digits()
    assert np.bincount(np.concatenate([yt, ys]), minlength=10).tolist() == DIGIT_COUNTS
    assert np.bincount(ys, minlength=10).tolist() == DIGIT_TEST_COUNTS


def test_digits_split_is_a_partition_of_the_full_set():
    (xt, yt), (xs, ys) = load_digits(normalize=False)
    x, y = load_digits(return_split=False, normalize=False)
    np.testing.assert_array_equal(
        _sort_rows(np.concatenate([xt, xs]), np.concatenate([yt, ys])), _sort_rows(x, y)
    )


def test_digits_split_is_deterministic_and_pinned():
    a = load_digits(normalize=False)
    b = load_digits(normalize=False)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    (xt, yt), (xs, ys) = a
    # the documented split must never drift (numpy version, platform)
    assert ys[:10].tolist() == [7, 9, 2, 1, 7, 1, 0, 0, 5, 8]
    assert _digest(xs, ys) == "c530a467de367cf5b83b576ef5e64dc0bb2daf5d07671e88ec1042ab178e93d4"
    assert _digest(xt, yt) == "18c16307ebe2d11267b07f6248fefe7d313ca0161bae7553ede6b8d987417daa"


def test_digits_other_seed_gives_other_split():
    (_, _), (xs0, ys0) = load_digits(normalize=False)
    (_, _), (xs1, ys1) = load_digits(normalize=False, seed=1)
    assert np.bincount(ys1, minlength=10).tolist() == DIGIT_TEST_COUNTS
    assert _digest(xs0, ys0) != _digest(xs1, ys1)


def test_digits_full_set_in_file_order_and_options():
    x, y = load_digits(return_split=False, normalize=False)
    assert x.shape == (1797, 64) and x.dtype == np.uint8 and x.max() == 16
    assert x[0, :16].tolist() == [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0]
    assert y[:3].tolist() == [0, 1, 2]
    x8, y8 = load_digits(return_split=False, flatten=False)
    assert x8.shape == (1797, 8, 8) and x8.dtype == np.float32
    np.testing.assert_array_equal(x8.reshape(1797, 64) * 16, x)
    (xt, _), (xs, _) = load_digits(flatten=False)
    assert xt.shape == (1437, 8, 8) and xs.shape == (360, 8, 8)


def test_digits_returns_fresh_writable_arrays():
    x, y = load_digits(return_split=False, normalize=False)
    x[:] = 99
    y[:] = 99
    x2, y2 = load_digits(return_split=False, normalize=False)
    assert x2.max() == 16 and y2.max() == 9


def test_digits_bundled_file_checksum_and_notice():
    data = resources.files("chainrule.datasets").joinpath("data")
    raw = data.joinpath("optdigits.csv.gz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == _digits._DIGITS_SHA256
    notice = data.joinpath("NOTICE").read_text()
    for needed in ("Alpaydin", "Kaynak", "https://archive.ics.uci.edu/dataset/80",
                   "10.24432/C50P49", "CC BY 4.0"):
        assert needed in notice


def test_digits_corrupted_bundle_is_detected(monkeypatch):
    raw = bytearray(_digits._data_bytes())
    raw[100] ^= 0xFF
    _digits._load_raw.cache_clear()
    monkeypatch.setattr(_digits, "_data_bytes", lambda: bytes(raw))
    try:
        with pytest.raises(ValueError, match="optdigits.csv.gz.*corrupted"):
            load_digits()
    finally:
        _digits._load_raw.cache_clear()


# ============================================================================ IDX parsing


def _idx_bytes(arr, type_code=0x08):
    arr = np.asarray(arr)
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(dt).tobytes()


def _write(path, payload, gz=True):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip_uint8(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = _write(tmp_path / "a.idx", _idx_bytes(arr), gz)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 7  # writable


@pytest.mark.parametrize("code,dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_other_types_big_endian(tmp_path, code, dtype):
    arr = (np.arange(6) - 3).astype(dtype).reshape(3, 2) * 3
    out = read_idx(_write(tmp_path / "b.idx.gz", _idx_bytes(arr, code)))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_bad_magic(tmp_path, gz):
    payload = bytearray(_idx_bytes(np.zeros((2, 2), np.uint8)))
    payload[0] = 0x12
    p = _write(tmp_path / "badmagic.gz", bytes(payload), gz)
    with pytest.raises(ValueError, match="badmagic.gz.*magic"):
        read_idx(p)


def test_read_idx_unknown_type_code(tmp_path):
    payload = bytearray(_idx_bytes(np.zeros((2, 2), np.uint8)))
    payload[2] = 0x07
    with pytest.raises(ValueError, match="magic"):
        read_idx(_write(tmp_path / "t.gz", bytes(payload)))


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_truncated_data(tmp_path, gz):
    payload = _idx_bytes(np.ones((4, 28, 28), np.uint8))[:-5]
    p = _write(tmp_path / "short-idx3-ubyte.gz", payload, gz)
    with pytest.raises(ValueError, match="short-idx3-ubyte.gz.*truncated"):
        read_idx(p)


def test_read_idx_truncated_header(tmp_path):
    p = _write(tmp_path / "hdr", _idx_bytes(np.ones((4, 5), np.uint8))[:6], gz=False)
    with pytest.raises(ValueError, match="hdr.*truncated"):
        read_idx(p)
    p = _write(tmp_path / "tiny", b"\x00\x00", gz=False)
    with pytest.raises(ValueError, match="tiny.*truncated"):
        read_idx(p)


def test_read_idx_truncated_gzip_stream(tmp_path):
    comp = gzip.compress(_idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 28, 28))))
    p = tmp_path / "cut.gz"
    p.write_bytes(comp[: len(comp) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(p)


def test_read_idx_trailing_bytes(tmp_path):
    p = _write(tmp_path / "long.gz", _idx_bytes(np.ones((2, 2), np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="long.gz.*trailing"):
        read_idx(p)


# ============================================================================ load_mnist (synthetic)

N_TR, N_TE = 7, 3


def _fake_mnist_files(seed=0, n_tr=N_TR, n_te=N_TE):
    """name -> gzipped bytes for a tiny MNIST-format set."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": gzip.compress(_idx_bytes(rng.integers(0, 256, (n_tr, 28, 28)))),
        "train-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(rng.integers(0, 10, n_tr))),
        "t10k-images-idx3-ubyte.gz": gzip.compress(_idx_bytes(rng.integers(0, 256, (n_te, 28, 28)))),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(rng.integers(0, 10, n_te))),
    }


def _write_folder(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MNIST env vars; the cache lives in tmp_path/cache; any network use fails the test."""
    monkeypatch.delenv("CHAINRULE_MNIST_DIR", raising=False)
    monkeypatch.setenv("CHAINRULE_DATA_DIR", str(tmp_path / "cache"))

    def no_network(*a, **k):
        raise AssertionError("unexpected network access")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "cache" / "mnist"


def test_load_mnist_from_path(tmp_path, clean_env):
    files = _fake_mnist_files()
    folder = _write_folder(tmp_path / "m", files)
    (xt, yt), (xs, ys) = load_mnist(folder)
    assert xt.shape == (N_TR, 28, 28) and xt.dtype == np.uint8
    assert xs.shape == (N_TE, 28, 28)
    assert yt.dtype == np.int64 and ys.dtype == np.int64 and yt.shape == (N_TR,)
    np.testing.assert_array_equal(xt, read_idx(folder / "train-images-idx3-ubyte.gz"))
    (xt2, _), (xs2, _) = load_mnist(str(folder), normalize=True, flatten=True)
    assert xt2.shape == (N_TR, 784) and xt2.dtype == np.float32 and xs2.shape == (N_TE, 784)
    np.testing.assert_allclose(xt2, xt.reshape(N_TR, 784) / 255.0, rtol=1e-6)
    assert not os.path.exists(clean_env)  # nothing written to the cache


def test_load_mnist_accepts_uncompressed_files(tmp_path, clean_env):
    files = {k[:-3]: gzip.decompress(v) for k, v in _fake_mnist_files().items()}
    folder = _write_folder(tmp_path / "raw", files)
    (xt, _), (xs, _) = load_mnist(folder)
    assert xt.shape == (N_TR, 28, 28) and xs.shape == (N_TE, 28, 28)


def test_load_mnist_env_var(tmp_path, clean_env, monkeypatch):
    folder = _write_folder(tmp_path / "viaenv", _fake_mnist_files())
    monkeypatch.setenv("CHAINRULE_MNIST_DIR", str(folder))
    (xt, _), _ = load_mnist()
    assert xt.shape == (N_TR, 28, 28)


def test_load_mnist_explicit_path_missing_file(tmp_path, clean_env):
    files = _fake_mnist_files()
    del files["t10k-labels-idx1-ubyte.gz"]
    folder = _write_folder(tmp_path / "partial", files)
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist(folder)  # download=True, but an explicit folder is never written to
    assert str(folder) in str(ei.value) and "t10k-labels-idx1-ubyte.gz" in str(ei.value)
    assert sorted(os.listdir(folder)) == sorted(files)


def test_load_mnist_env_dir_missing_file(tmp_path, clean_env, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CHAINRULE_MNIST_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="CHAINRULE_MNIST_DIR"):
        load_mnist()


def test_load_mnist_cache_without_download(clean_env):
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist(download=False)
    assert str(clean_env) in str(ei.value) and "download=False" in str(ei.value)


def test_load_mnist_inconsistent_files(tmp_path, clean_env):
    files = _fake_mnist_files()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(_idx_bytes(np.zeros(N_TE + 1)))
    with pytest.raises(ValueError, match="t10k-images.*labels"):
        load_mnist(_write_folder(tmp_path / "a", files))
    files = _fake_mnist_files()
    files["train-labels-idx1-ubyte.gz"] = gzip.compress(_idx_bytes(np.full(N_TR, 10)))
    with pytest.raises(ValueError, match="train-labels.*out of range"):
        load_mnist(_write_folder(tmp_path / "b", files))
    files = _fake_mnist_files()
    files["train-images-idx3-ubyte.gz"] = gzip.compress(_idx_bytes(np.zeros((N_TR, 27, 28))))
    with pytest.raises(ValueError, match="train-images.*28, 28"):
        load_mnist(_write_folder(tmp_path / "c", files))


def test_load_mnist_corrupted_file_names_it(tmp_path, clean_env):
    files = _fake_mnist_files()
    files["train-images-idx3-ubyte.gz"] = files["train-images-idx3-ubyte.gz"][:-40]
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_mnist(_write_folder(tmp_path / "c", files))


def test_load_mnist_verify_rejects_unknown_files(tmp_path, clean_env):
    folder = _write_folder(tmp_path / "v", _fake_mnist_files())
    load_mnist(folder)  # not verified by default
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_mnist(folder, verify=True)


# ============================================================================ download (offline)


class _FakeResponse(io.BytesIO):
    def __init__(self, data, fail_after=None):
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None:
            if self.tell() >= self.fail_after:
                raise ConnectionResetError("connection dropped mid-download")
            n = self.fail_after - self.tell() if n < 0 else min(n, self.fail_after - self.tell())
        return super().read(n)


class FakeMirrors:
    """Stands in for urllib.request.urlopen; serves url -> bytes | Exception | ('drop', bytes, k)."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, url, timeout=None, **kw):
        self.calls.append(url)
        item = self.table.get(url, urllib.error.HTTPError(url, 404, "Not Found", {}, None))
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, tuple):
            return _FakeResponse(item[1], fail_after=item[2])
        return _FakeResponse(item)


def _serve(monkeypatch, table):
    fake = FakeMirrors(table)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    return fake


def _patch_checksums(monkeypatch, files):
    table = dict(_mnist._SHA256)
    table.update({k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    monkeypatch.setattr(_mnist, "_SHA256", table)


M1, M2 = _mnist.MNIST_MIRRORS[0], _mnist.MNIST_MIRRORS[1]


def test_download_rejects_wrong_checksum_then_accepts_good_mirror(clean_env, monkeypatch):
    good = _fake_mnist_files(0)
    bad = _fake_mnist_files(1)
    _patch_checksums(monkeypatch, good)
    table = {M1 + k: bad[k] for k in good}
    table.update({M2 + k: v for k, v in good.items()})
    fake = _serve(monkeypatch, table)
    (xt, yt), (xs, ys) = load_mnist()
    assert xt.shape == (N_TR, 28, 28) and ys.shape == (N_TE,)
    assert sorted(os.listdir(clean_env)) == sorted(good)  # no *.part left behind
    for k, v in good.items():
        assert (clean_env / k).read_bytes() == v
    assert len(fake.calls) == 8 and all(u.startswith(M1) for u in fake.calls[::2])
    # second call uses the cache, no network
    fake.calls.clear()
    load_mnist()
    assert fake.calls == []


def test_download_all_mirrors_fail(clean_env, monkeypatch):
    good = _fake_mnist_files(0)
    bad = _fake_mnist_files(1)
    _patch_checksums(monkeypatch, good)
    table = {M1 + k: urllib.error.URLError("no route to host") for k in good}
    table.update({M2 + k: bad[k] for k in good})
    _serve(monkeypatch, table)
    with pytest.raises(DatasetDownloadError) as ei:
        load_mnist()
    msg = str(ei.value)
    assert isinstance(ei.value, OSError)
    assert str(clean_env) in msg and "CHAINRULE_MNIST_DIR" in msg and "path=" in msg
    assert "no route to host" in msg and "SHA-256 mismatch" in msg
    assert M1 + "train-images-idx3-ubyte.gz" in msg and M2 + "train-images-idx3-ubyte.gz" in msg
    assert os.listdir(clean_env) == []  # rejected bytes never land, not even as temp files


def test_download_interrupted_leaves_no_partial_file(clean_env, monkeypatch):
    good = _fake_mnist_files(0)
    _patch_checksums(monkeypatch, good)
    name = "train-images-idx3-ubyte.gz"
    table = {M1 + name: ("drop", good[name], len(good[name]) // 2),
             M2 + name: ("drop", good[name], 10)}
    _serve(monkeypatch, table)
    with pytest.raises(DatasetDownloadError, match="connection dropped"):
        load_mnist()
    assert os.listdir(clean_env) == []


def test_download_interrupted_by_keyboard_interrupt_cleans_up(clean_env, monkeypatch):
    good = _fake_mnist_files(0)
    _patch_checksums(monkeypatch, good)
    _serve(monkeypatch, {M1 + "train-images-idx3-ubyte.gz": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        load_mnist()
    assert os.listdir(clean_env) == []


def test_download_only_missing_files(clean_env, monkeypatch):
    good = _fake_mnist_files(0)
    _patch_checksums(monkeypatch, good)
    _write_folder(clean_env, {k: v for k, v in good.items() if "t10k" not in k})
    fake = _serve(monkeypatch, {M1 + k: v for k, v in good.items()})
    load_mnist()
    assert sorted(fake.calls) == sorted(M1 + k for k in good if "t10k" in k)


# ============================================================================ real MNIST


def test_real_mnist_checksums_match_hardcoded(mnist_dir):
    for name in _mnist.MNIST_FILES.values():
        with open(os.path.join(mnist_dir, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == _mnist._SHA256[name], name


def test_real_mnist_load(mnist_dir, clean_env):
    (xt, yt), (xs, ys) = load_mnist(mnist_dir, verify=True)
    assert xt.shape == (60000, 28, 28) and xt.dtype == np.uint8
    assert xs.shape == (10000, 28, 28) and xs.dtype == np.uint8
    assert yt.shape == (60000,) and ys.shape == (10000,) and yt.dtype == np.int64
    assert yt.min() == 0 and yt.max() == 9 and ys.min() == 0 and ys.max() == 9
    assert np.bincount(yt).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ys).tolist() == MNIST_TEST_COUNTS
    assert xt.max() == 255 and xt.min() == 0


def test_real_mnist_normalized_flat_via_env(mnist_dir, clean_env, monkeypatch):
    monkeypatch.setenv("CHAINRULE_MNIST_DIR", mnist_dir)
    (xt, _), (xs, _) = load_mnist(normalize=True, flatten=True)
    assert xt.shape == (60000, 784) and xs.shape == (10000, 784) and xt.dtype == np.float32
    assert xt.min() == 0.0 and xt.max() == 1.0


def test_real_mnist_download_path_with_hardcoded_checksums(mnist_dir, clean_env, monkeypatch):
    real = {}
    for name in _mnist.MNIST_FILES.values():
        with open(os.path.join(mnist_dir, name), "rb") as f:
            real[name] = f.read()
    flipped = bytearray(real["train-labels-idx1-ubyte.gz"])
    flipped[-20] ^= 1
    table = {M2 + k: v for k, v in real.items()}
    table[M1 + "train-labels-idx1-ubyte.gz"] = bytes(flipped)  # corrupted copy on mirror 1
    _serve(monkeypatch, table)
    (xt, yt), (xs, ys) = load_mnist()
    assert xt.shape == (60000, 28, 28) and ys.shape == (10000,)
    for k, v in real.items():
        assert (clean_env / k).read_bytes() == v
    assert sorted(os.listdir(clean_env)) == sorted(real)


# ============================================================================ scaling


def test_scale_uint8_to_unit():
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    before = x.copy()
    out = scale(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 128 / 255, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(scale([2.0, 4.0], lo=2, hi=4, dtype=np.float64), [0.0, 1.0])


def test_scale_does_not_alias_float_input():
    x = np.linspace(0, 255, 10, dtype=np.float32)
    before = x.copy()
    out = scale(x)
    out[:] = -1
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("bad,exc,match", [
    (np.array(["a", "b"]), TypeError, "x must be a real numeric"),
    (np.array([1.0, np.nan]), ValueError, "x contains a non-finite value nan"),
    ([[1, 2], [3]], ValueError, "x could not be converted"),
])
def test_scale_rejects_bad_x(bad, exc, match):
    with pytest.raises(exc, match=match):
        scale(bad)


def test_scale_rejects_bad_bounds():
    with pytest.raises(ValueError, match="hi must be greater than lo.*lo=5.*hi=5"):
        scale([1, 2], lo=5, hi=5)
    with pytest.raises(TypeError, match="lo must be a real number"):
        scale([1, 2], lo="0")
    with pytest.raises(TypeError, match="dtype"):
        scale([1, 2], dtype=np.int32)


def test_to_unit_range():
    x = np.array([[-2.0, 0.0], [2.0, 6.0]])
    np.testing.assert_allclose(to_unit_range(x), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(to_unit_range([0.0, 5.0], lo=0, hi=10), [0.0, 0.5])
    np.testing.assert_array_equal(to_unit_range(np.full(3, 7.0)), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="empty"):
        to_unit_range(np.array([]))


# ============================================================================ standardisation


def _data(seed=0, shape=(200, 5)):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, shape) * np.arange(1, shape[1] + 1)
    x[:, 0] = 4.0  # constant feature
    return x


def test_standardizer_statistics():
    x = _data()
    before = x.copy()
    st = Standardizer()
    z = st.fit_transform(x)
    np.testing.assert_array_equal(x, before)  # no in-place modification
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(st.mean_, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.std_[1:], x.std(axis=0)[1:], rtol=1e-12)
    assert st.std_[0] == 1.0  # zero-std guard
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, 1:].std(axis=0), 1.0, rtol=1e-5)
    assert np.all(z[:, 0] == 0.0) and np.isfinite(z).all()


def test_standardizer_uses_train_statistics_for_test():
    xtr, xte = _data(0), _data(1)
    st = Standardizer().fit(xtr)
    expected = (xte - xtr.mean(0)) / np.where(xtr.std(0) < 1e-7, 1.0, xtr.std(0))
    np.testing.assert_allclose(st.transform(xte), expected, rtol=1e-5, atol=1e-5)
    a, b = standardize(xtr, xte)
    np.testing.assert_array_equal(a, st.transform(xtr))
    np.testing.assert_array_equal(b, st.transform(xte))
    (only,) = standardize(xtr)
    np.testing.assert_array_equal(only, a)


def test_standardizer_inverse_and_images_and_chunks():
    x = np.random.default_rng(2).integers(0, 256, (5000, 4, 3)).astype(np.uint8)  # > one chunk
    st = Standardizer(dtype=np.float64).fit(x)
    np.testing.assert_allclose(st.mean_, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.std_, x.std(axis=0), rtol=1e-10)
    z = st.transform(x)
    assert z.dtype == np.float64 and z.shape == (5000, 4, 3)
    np.testing.assert_allclose(st.inverse_transform(z), x, atol=1e-9)
    z_before = z.copy()
    st.inverse_transform(z)
    np.testing.assert_array_equal(z, z_before)


def test_standardizer_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        Standardizer().transform(np.zeros((2, 2)))
    st = Standardizer().fit(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"feature shape \(5,\)"):
        st.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="x must have shape"):
        Standardizer().fit(np.zeros(5))
    with pytest.raises(ValueError, match="x contains a non-finite value inf"):
        Standardizer().fit(np.array([[1.0], [np.inf]]))
    with pytest.raises(ValueError, match="at least one sample"):
        Standardizer().fit(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="x must be a real numeric"):
        Standardizer().fit(np.array([["a"]], dtype=object))
    with pytest.raises(ValueError, match="eps"):
        Standardizer(eps=-1)


def test_standardizer_config_roundtrip():
    st = Standardizer(eps=1e-3, dtype="float64")
    cfg = st.get_config()
    assert cfg == {"eps": 1e-3, "dtype": "float64"}
    clone = Standardizer.from_config(cfg)
    assert clone.get_config() == cfg and clone.mean_ is None


# ============================================================================ labels & split


def test_to_categorical():
    y = np.array([0, 2, 1, 2])
    oh = to_categorical(y)
    assert oh.dtype == np.float32 and oh.shape == (4, 3)
    np.testing.assert_array_equal(oh, np.eye(3, dtype=np.float32)[y])
    assert to_categorical([1, 0], num_classes=5).shape == (2, 5)
    assert to_categorical(np.array([[1], [0]]), 2).shape == (2, 1, 2)
    np.testing.assert_array_equal(to_categorical(np.array([1.0, 0.0])), [[0, 1], [1, 0]])


def test_to_categorical_errors():
    with pytest.raises(ValueError, match="y contains a negative label -1"):
        to_categorical([0, -1, 2])
    with pytest.raises(ValueError, match="y contains label 3 .*>= num_classes=3"):
        to_categorical([0, 3], num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        to_categorical([0], num_classes=0)
    with pytest.raises(TypeError, match="num_classes"):
        to_categorical([0], num_classes=2.5)
    with pytest.raises(ValueError, match="integer class labels, got 0.5"):
        to_categorical([0.5])
    with pytest.raises(TypeError, match="y must be a real numeric"):
        to_categorical(["a"])
    with pytest.raises(ValueError, match="empty"):
        to_categorical([])


def test_permutation_is_pinned():
    assert permutation(10, 0).tolist() == [5, 7, 1, 4, 2, 8, 0, 6, 3, 9]
    assert permutation(10, 1).tolist() == [8, 6, 7, 9, 0, 5, 1, 3, 2, 4]
    p = permutation(1000, 3)
    assert sorted(p.tolist()) == list(range(1000))


def test_train_test_split():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    (xt, yt), (xs, ys) = train_test_split(x, y, test_size=0.2, seed=0)
    assert xt.shape == (40, 2) and xs.shape == (10, 2)
    np.testing.assert_array_equal(xt[:, 0] // 2, yt)  # rows stay paired
    assert sorted(np.concatenate([yt, ys]).tolist()) == list(range(50))
    (_, yt2), (_, ys2) = train_test_split(x, y, test_size=0.2, seed=0)
    np.testing.assert_array_equal(ys, ys2)
    (_, _), (_, ys3) = train_test_split(x, y, test_size=0.2, seed=1)
    assert ys.tolist() != ys3.tolist()
    (_, _), (_, ys4) = train_test_split(x, y, test_size=7)
    assert ys4.shape == (7,)
    assert train_test_split(x, y, test_size=0.01)[1][1].shape == (1,)  # ceil
    xs[:] = -1
    assert x.min() == 0  # copies


def test_train_test_split_stratified():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    x = np.arange(100)
    (_, yt), (_, ys) = train_test_split(x, y, test_size=0.3, seed=5, stratify=True)
    assert np.bincount(ys).tolist() == [18, 9, 3]
    assert np.bincount(yt).tolist() == [42, 21, 7]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(test_size=0.0), ValueError, "test_size"),
    (dict(test_size=1.5), ValueError, "test_size"),
    (dict(test_size=10), ValueError, "test_size"),
    (dict(test_size="a"), TypeError, "test_size"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_train_test_split_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        train_test_split(np.zeros((10, 2)), np.zeros(10), **kwargs)
    with pytest.raises(ValueError, match="same number of samples"):
        train_test_split(np.zeros((10, 2)), np.zeros(9))


def test_package_imports_only_numpy_and_stdlib():
    import ast
    import sys

    folder = os.path.dirname(ds.__file__)
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__"}
    for name in os.listdir(folder):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            assert set(tops) <= allowed, (name, tops)
