"""Convolutional layers: Conv2D, MaxPooling2D, AveragePooling2D, Flatten, Reshape, Dropout.

Oracles: a direct numpy convolution/pooling (independent of the C++ im2col path), the C++
naive twin (CHAINRULE_CONV_NAIVE=1), central finite differences in float64, and PyTorch
(same network, same weights, NHWC<->NCHW converted) when it is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import act_reference
import chainrule as cr
from chainrule.layers import (AveragePooling2D, Conv2D, Dense, Dropout, Flatten, MaxPooling2D,
                              Reshape)
from chainrule.optimizers import SGD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(REPO, "..", "shared", "data", "mnist")


# ------------------------------------------------------------------ numpy reference (NHWC)

def tf_pads(size, window, stride, padding):
    """(out, pad_before, pad_after) along one axis, TensorFlow's definition."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + window - size, 0)
        return out, total // 2, total - total // 2
    return (size - window) // stride + 1, 0, 0


def conv2d_ref(x, k, b, strides, padding):
    """Direct convolution: x (n, H, W, Ci), k (KH, KW, Ci, Co) -> (n, OH, OW, Co)."""
    n, H, W, _ = x.shape
    KH, KW, _, Co = k.shape
    oh, pt, pb = tf_pads(H, KH, strides[0], padding)
    ow, pl, pr = tf_pads(W, KW, strides[1], padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = np.zeros((n, oh, ow, Co)) + b
    for i in range(KH):
        for j in range(KW):
            patch = xp[:, i:i + strides[0] * (oh - 1) + 1:strides[0], j:j + strides[1] * (ow - 1) + 1:strides[1], :]
            y += np.einsum("nhwc,co->nhwo", patch, k[i, j])
    return y


def pool_ref(x, pool, strides, padding, op):
    """Max/mean over the in-bounds part of each window (padding never counts)."""
    n, H, W, C = x.shape
    oh, pt, _ = tf_pads(H, pool[0], strides[0], padding)
    ow, pl, _ = tf_pads(W, pool[1], strides[1], padding)
    y = np.zeros((n, oh, ow, C))
    for a in range(oh):
        for b in range(ow):
            h0, w0 = a * strides[0] - pt, b * strides[1] - pl
            win = x[:, max(h0, 0):min(h0 + pool[0], H), max(w0, 0):min(w0 + pool[1], W), :]
            y[:, a, b] = win.max(axis=(1, 2)) if op == "max" else win.mean(axis=(1, 2))
    return y


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# ------------------------------------------------------------------ helpers

def compiled(layers, input_shape, dtype="float64", loss="mse", seed=0, optimizer=None):
    m = cr.Sequential(layers, dtype=dtype, seed=seed)
    m.build(input_shape)
    m.compile(optimizer=optimizer or SGD(0.01), loss=loss)
    return m


def fd_check(model, x, y, tol=1e-6, eps=1e-6, max_per_tensor=40, rng=None):
    """Central differences of the batch-mean loss against compute_gradients, for a sample of
    the entries of every parameter tensor."""
    rng = rng or np.random.default_rng(0)
    _, grads = model.compute_gradients(x, y)
    weights = model.get_weights()
    for t, (w, g) in enumerate(zip(weights, grads)):
        flat = w.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, max_per_tensor), replace=False)
        for i in idx:
            ws = [v.copy() for v in weights]
            ws[t].reshape(-1)[i] = flat[i] + eps
            model.set_weights(ws)
            lp = model.evaluate(x, y, batch_size=len(x))
            ws[t].reshape(-1)[i] = flat[i] - eps
            model.set_weights(ws)
            lm = model.evaluate(x, y, batch_size=len(x))
            num = (lp - lm) / (2 * eps)
            ana = g.reshape(-1)[i]
            assert abs(num - ana) <= tol * max(1.0, abs(num)), (t, i, num, ana)
        model.set_weights(weights)


CONV_CASES = [
    # (input (H, W, Ci), filters, kernel, strides, padding)
    ((7, 7, 1), 2, (3, 3), (1, 1), "valid"),
    ((7, 6, 3), 4, (3, 3), (2, 2), "valid"),
    ((7, 7, 2), 3, (3, 3), (1, 1), "same"),
    ((8, 7, 3), 2, (4, 2), (2, 2), "same"),     # even kernel: extra padding bottom/right
    ((5, 9, 2), 3, (2, 3), (1, 2), "same"),
    ((9, 9, 2), 2, (5, 5), (3, 3), "same"),
    ((5, 5, 4), 3, (1, 1), (1, 1), "valid"),    # pointwise: no im2col
    ((6, 6, 3), 2, (1, 1), (2, 2), "valid"),
    ((4, 4, 2), 2, (4, 4), (1, 1), "valid"),    # kernel = input: one output pixel
    ((9, 8, 1), 3, (3, 2), (2, 2), "same"),     # one input channel: the direct path
    ((6, 7, 1), 9, (2, 3), (1, 1), "same"),     # direct path, a full and a partial channel block
    ((7, 5, 1), 8, (3, 3), (1, 2), "valid"),
]


# ------------------------------------------------------------------ forward vs oracle

@pytest.mark.parametrize("shape,filters,kernel,strides,padding", CONV_CASES)
@pytest.mark.parametrize("naive", [False, True])
def test_conv2d_forward_matches_direct_convolution(shape, filters, kernel, strides, padding, naive, monkeypatch):
    if naive:
        monkeypatch.setenv("CHAINRULE_CONV_NAIVE", "1")
    rng = np.random.default_rng(1)
    m = compiled([Conv2D(filters, kernel, strides=strides, padding=padding)], shape)
    k = rng.normal(size=m.get_weights()[0].shape)
    b = rng.normal(size=(filters,))
    m.set_weights([k, b])
    x = rng.normal(size=(3,) + shape)
    want = conv2d_ref(x, k, b, strides, padding)
    got = m.predict(x)
    assert got.shape == want.shape == (3,) + m.output_shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv2d_chunked_batch_matches_oracle():
    # 64x64x16 input, 5x5 kernel: the float64 im2col of one sample is ~13 MB, so a batch of
    # 11 is processed in several chunks under the 64 MB bound.
    rng = np.random.default_rng(2)
    m = compiled([Conv2D(3, 5, padding="same", activation="tanh"), Flatten(), Dense(2)], (64, 64, 16))
    x = rng.normal(size=(11, 64, 64, 16))
    k, b = m.get_weights()[:2]
    h = np.tanh(conv2d_ref(x, k, b, (1, 1), "same"))
    want = h.reshape(11, -1) @ m.get_weights()[2] + m.get_weights()[3]
    np.testing.assert_allclose(m.predict(x, batch_size=11), want, rtol=1e-10, atol=1e-10)
    # gradients of the chunked path equal the single-chunk naive twin's
    y = rng.normal(size=(11, 2))
    _, g_fast = m.compute_gradients(x, y)
    os.environ["CHAINRULE_CONV_NAIVE"] = "1"
    try:
        n = compiled([Conv2D(3, 5, padding="same", activation="tanh"), Flatten(), Dense(2)], (64, 64, 16))
    finally:
        del os.environ["CHAINRULE_CONV_NAIVE"]
    n.set_weights(m.get_weights())
    _, g_naive = n.compute_gradients(x, y)
    for a, b_ in zip(g_fast, g_naive):
        assert rel_err(a, b_) < 1e-10


@pytest.mark.parametrize("op,cls", [("max", MaxPooling2D), ("mean", AveragePooling2D)])
@pytest.mark.parametrize("shape,pool,strides,padding", [
    ((6, 6, 2), (2, 2), None, "valid"),
    ((7, 5, 3), (2, 2), None, "valid"),
    ((7, 5, 3), (3, 2), (2, 1), "same"),
    ((5, 5, 1), (3, 3), (2, 2), "same"),
    ((8, 8, 4), (3, 3), (1, 1), "valid"),
])
def test_pooling_forward_matches_oracle(op, cls, shape, pool, strides, padding):
    rng = np.random.default_rng(3)
    m = compiled([cls(pool, strides=strides, padding=padding)], shape)
    x = rng.normal(size=(4,) + shape)
    want = pool_ref(x, pool, strides or pool, padding, op)
    got = m.predict(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


# Float32, one input channel, valid windows, filters a multiple of 8: the per-target SIMD
# kernels (conv_kernels_impl.h). Odd widths leave a tail after the pixel blocks (4/8/12 per
# target), a 10-wide kernel splits its taps into blocks of 8 + 2, strides take the general
# addressing. Each target runs in its own process (CHAINRULE_CPU_TARGET picks it, as for
# sgemm) and is compared with the naive twin (forward, all gradients) and the numpy oracle.
C1_SIMD_CASES = [
    # (input (H, W, 1), filters, kernel, strides, activation)
    ((28, 28, 1), 8, (5, 5), (1, 1), "relu"),     # LeNet's first layer
    ((9, 11, 1), 16, (3, 2), (2, 1), None),
    ((13, 7, 1), 8, (4, 4), (3, 2), "relu"),
    ((6, 14, 1), 24, (2, 10), (1, 1), "relu"),
    ((5, 5, 1), 8, (5, 5), (1, 1), "tanh"),       # one output pixel; tanh: portable epilogue
    # Stride 1 with a 3/5/7-wide kernel takes the sweep form (AVX2: up to 5, AVX-512: up to
    # 7), and with AVX-512 16 channels per register where Cout allows (24 = 16 + 8).
    ((12, 30, 1), 16, (3, 3), (1, 1), "relu"),    # OW 28: two 12-pixel blocks + a tail of 4
    ((11, 40, 1), 24, (2, 7), (1, 1), None),      # 7 wide; 16 + 8 channels
    ((28, 28, 1), 32, (5, 5), (1, 1), "relu"),    # the example CNN's shape, 2 x 16 channels
]

_C1_SIMD_SCRIPT = r"""
import json, os, sys
import numpy as np
import chainrule as cr
from chainrule import system
from chainrule.layers import Conv2D, Dense, Flatten
from chainrule.optimizers import SGD
cases = json.loads(sys.argv[1])
out = {"kernel": system.cpu_info()["kernel"], "cases": []}
rng = np.random.default_rng(21)
for shape, filters, kernel, strides, act in cases:
    def build():
        m = cr.Sequential([Conv2D(filters, kernel, strides=strides, activation=act), Flatten(),
                           Dense(3)], dtype="float32", seed=1)
        m.build(tuple(shape))
        m.compile(optimizer=SGD(0.01), loss="mse")
        return m
    fast = build()
    os.environ["CHAINRULE_CONV_NAIVE"] = "1"
    naive = build()
    del os.environ["CHAINRULE_CONV_NAIVE"]
    w = fast.get_weights()
    w[1] = rng.normal(size=w[1].shape).astype(np.float32)  # nonzero conv bias
    fast.set_weights(w)
    naive.set_weights(w)
    x = rng.normal(size=(5,) + tuple(shape)).astype(np.float32)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    conv_only = cr.Sequential([Conv2D(filters, kernel, strides=strides, activation=act)],
                              dtype="float32", seed=1)
    conv_only.build(tuple(shape))
    conv_only.set_weights(w[:2])
    _, gf = fast.compute_gradients(x, y)
    _, gn = naive.compute_gradients(x, y)
    out["cases"].append({"y": conv_only.predict(x).tolist(), "x": x.tolist(), "k": w[0].tolist(),
                         "b": w[1].tolist(),
                         "grad_err": [float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
                                      for a, b in zip(gf, gn)]})
print(json.dumps(out))
"""


@pytest.mark.parametrize("target", ["generic", "avx2", "avx512"])
def test_conv2d_one_channel_simd_kernels_match_naive_twin(target):
    env = dict(os.environ, CHAINRULE_CPU_TARGET=target)
    env.pop("CHAINRULE_CONV_NAIVE", None)
    proc = subprocess.run([sys.executable, "-c", _C1_SIMD_SCRIPT, json.dumps(C1_SIMD_CASES)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["kernel"] != target:
        pytest.skip(f"this CPU does not run the {target} kernels")
    for (shape, filters, kernel, strides, act), r in zip(C1_SIMD_CASES, res["cases"]):
        want = conv2d_ref(np.array(r["x"], np.float64), np.array(r["k"], np.float64),
                          np.array(r["b"], np.float64), strides, "valid")
        if act == "relu":
            want = np.maximum(want, 0)
        elif act == "tanh":
            want = np.tanh(want)
        assert rel_err(np.array(r["y"]).reshape(want.shape), want) < 1e-5, (shape, kernel)
        assert max(r["grad_err"]) < 1e-5, (shape, kernel, r["grad_err"])


_C1_BITS_SCRIPT = r"""
import sys
import numpy as np
import chainrule as cr
from chainrule import system
from chainrule.layers import Conv2D
rng = np.random.default_rng(3)
outs = []
for shape, filters, kernel, strides in [((28, 28, 1), 16, 5, 1), ((12, 30, 1), 16, 3, 1),
                                        ((11, 40, 1), 24, 7, 1), ((9, 20, 1), 8, 6, 1),
                                        ((13, 29, 1), 32, 5, 2), ((28, 28, 1), 40, 5, 1)]:
    m = cr.Sequential([Conv2D(filters, kernel, strides=strides, activation="relu")],
                      dtype="float32", seed=1)
    m.build(shape)
    w = m.get_weights()
    w[1] = rng.normal(size=w[1].shape).astype(np.float32)
    m.set_weights(w)
    outs.append(m.predict(rng.normal(size=(3,) + shape).astype(np.float32)))
np.savez(sys.argv[1], *outs)
print(system.cpu_info()["kernel"])
"""


def test_conv2d_one_channel_kernels_same_bits_on_avx2_and_avx512(tmp_path):
    # The AVX-512 kernels run 16 channels per register and sweep stride-1 rows up to 7 taps
    # wide; the AVX2 ones 8 channels and sweep up to 5 taps. Each output's multiply-adds come
    # in the same order in every form, so the two targets give the same bits.
    outs = {}
    for target in ("avx2", "avx512"):
        env = dict(os.environ, CHAINRULE_CPU_TARGET=target)
        env.pop("CHAINRULE_CONV_NAIVE", None)
        path = tmp_path / f"{target}.npz"
        proc = subprocess.run([sys.executable, "-c", _C1_BITS_SCRIPT, str(path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        if proc.stdout.strip().splitlines()[-1] != target:
            pytest.skip(f"this CPU does not run the {target} kernels")
        outs[target] = np.load(path)
    for k in outs["avx2"].files:
        np.testing.assert_array_equal(outs["avx2"][k], outs["avx512"][k])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv2d_inference_chunks_match_oracle_and_single_samples(threads, dtype):
    # predict runs im2col + GEMM on L2-sized chunks of samples (18 per chunk here in float64,
    # 37 in float32), in parallel when there are enough chunks: a batch of 80 is several
    # chunks with a short last one. Every sample equals the oracle and, bit for bit, the same
    # sample predicted alone.
    rng = np.random.default_rng(7)
    m = compiled([Conv2D(5, 3, padding="same", activation="relu"), Flatten()], (8, 8, 3), dtype=dtype)
    w = m.get_weights()
    w[1] = rng.normal(size=w[1].shape).astype(dtype)
    m.set_weights(w)
    x = rng.normal(size=(80, 8, 8, 3)).astype(dtype)
    before = cr.get_num_threads()
    cr.set_num_threads(threads)
    try:
        got = m.predict(x, batch_size=80)
        one = np.concatenate([m.predict(x[i:i + 1]) for i in range(len(x))])
    finally:
        cr.set_num_threads(before)
    want = np.maximum(conv2d_ref(x.astype(np.float64), w[0].astype(np.float64),
                                 w[1].astype(np.float64), (1, 1), "same"), 0).reshape(80, -1)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(got, one)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_in_cache_sized_passes_equals_sample_by_sample(dtype):
    # A conv net whose first layer writes 230 KB per sample: predict runs a batch in passes
    # of 64 samples (fewer than fit in L2, but not below 64), the last one short. Every row
    # equals the same sample predicted alone, bit for bit (the 3-unit head has 32 inputs,
    # below the dot-form GEMM's K: the same kernel at any row count), and the float64 oracle.
    rng = np.random.default_rng(11)
    layers = [Conv2D(64, 3, activation="relu"), MaxPooling2D(2), Conv2D(4, 3, activation="relu"),
              Flatten(), Dense(32, activation="tanh"), Dense(3)]
    m = compiled(layers, (32, 32, 1), dtype=dtype)
    x = rng.normal(size=(150, 32, 32, 1)).astype(dtype)
    got = m.predict(x, batch_size=150)
    for bs in (1, 64, 100, 1000):
        np.testing.assert_array_equal(m.predict(x, batch_size=bs), got)
    one = np.concatenate([m.predict(x[i:i + 1]) for i in range(0, 150, 7)])
    np.testing.assert_array_equal(got[::7], one)
    w = [a.astype(np.float64) for a in m.get_weights()]
    h = np.maximum(conv2d_ref(x.astype(np.float64), w[0], w[1], (1, 1), "valid"), 0)
    h = pool_ref(h, (2, 2), (2, 2), "valid", "max")
    h = np.maximum(conv2d_ref(h, w[2], w[3], (1, 1), "valid"), 0)
    want = np.tanh(h.reshape(150, -1) @ w[4] + w[5]) @ w[6] + w[7]
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


_BIG_COL_SCRIPT = r"""
import resource, sys
import numpy as np
import chainrule as cr
from chainrule.layers import Conv2D
cr.set_num_threads(8)
m = cr.Sequential([Conv2D(16, 5)], dtype="float32", seed=0)
m.build((132, 132, 16))
x = np.random.default_rng(0).normal(size=(1, 132, 132, 16)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = m.predict(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024.0)
"""


def test_inference_col_buffer_is_not_multiplied_by_threads_for_big_samples():
    # One 132x132x16 sample with a 5x5 kernel has a 26 MB col matrix. Inference keeps one col
    # slice per thread only while the slices together stay under the training bound (64 MB):
    # at 8 threads that is 2 slices, not 8 (210 MB). Peak RSS growth of the first predict.
    proc = subprocess.run([sys.executable, "-c", _BIG_COL_SCRIPT], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="8"))
    assert proc.returncode == 0, proc.stderr
    grown_mb = float(proc.stdout.strip().splitlines()[-1])
    assert grown_mb < 120, grown_mb


def test_cpu_info_reports_the_l2_size_the_system_gives():
    # Against glibc's getconf, where there is one (the same sysconf value, read by another
    # program); 1 MiB where the system does not say.
    info = cr.cpu_info()
    assert isinstance(info["l2_bytes"], int) and info["l2_bytes"] > 0
    try:
        out = subprocess.run(["getconf", "LEVEL2_CACHE_SIZE"], capture_output=True, text=True, timeout=30)
        l2 = int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0
    except OSError:
        pytest.skip("no getconf here")
    assert info["l2_bytes"] == (l2 if l2 > 0 else 1 << 20)


# Conv2D's paths for every activation in the core's table: the im2col GEMM, pointwise (no
# im2col), the one-channel direct loops (with and without its SIMD kernels: Cout % 8 == 0 and
# no padding) and the naive twin; then bias + activation on each output row.
ACT_CONV_CASES = [
    ((7, 6, 3), 5, (3, 3), (2, 2), "same"),    # im2col
    ((5, 5, 4), 6, (1, 1), (1, 1), "valid"),   # pointwise
    ((9, 8, 1), 3, (3, 2), (2, 2), "same"),    # direct, padded
    ((9, 9, 1), 8, (3, 3), (1, 1), "valid"),   # direct, the SIMD kernels' shape
]


@pytest.mark.parametrize("spec", act_reference.specs(), ids=act_reference.spec_id)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("naive", [False, True])
def test_conv2d_every_activation_matches_numpy(spec, dtype, naive, monkeypatch):
    if naive:
        monkeypatch.setenv("CHAINRULE_CONV_NAIVE", "1")
    name, alpha = spec
    rng = np.random.default_rng(7)
    for shape, filters, kernel, strides, padding in ACT_CONV_CASES:
        m = compiled([Conv2D(filters, kernel, strides=strides, padding=padding,
                             activation=act_reference.make(spec))], shape, dtype=dtype)
        k = rng.normal(size=m.get_weights()[0].shape)
        b = rng.normal(size=(filters,))  # distinct per channel: a misplaced bias shows
        m.set_weights([k.astype(dtype), b.astype(dtype)])
        x = rng.normal(size=(5,) + shape).astype(dtype)
        z = conv2d_ref(x.astype(np.float64), k.astype(dtype).astype(np.float64),
                       b.astype(dtype).astype(np.float64), strides, padding)
        want = act_reference.forward(name, z, alpha)  # softmax: over the channels of a pixel
        tol = 1e-12 if dtype == "float64" else 2e-5
        np.testing.assert_allclose(m.predict(x), want, rtol=tol, atol=tol,
                                   err_msg=f"{shape} {kernel} {strides} {padding}")


@pytest.mark.parametrize("spec", act_reference.specs(), ids=act_reference.spec_id)
@pytest.mark.parametrize("case", ACT_CONV_CASES[:3], ids=["im2col", "pointwise", "direct"])
def test_conv2d_every_activation_gradients(spec, case):
    """The fused activation + bias-gradient pass of Conv2D's backward, for every activation
    in the table, against central differences (weights, bias, and the input through the
    Dense in front)."""
    shape, filters, kernel, strides, padding = case
    rng = np.random.default_rng(8)
    n_in = 4
    m = compiled([Dense(int(np.prod(shape)), activation="tanh"), Reshape(shape),
                  Conv2D(filters, kernel, strides=strides, padding=padding,
                         activation=act_reference.make(spec)),
                  Flatten(), Dense(3)], (n_in,), loss="mse")
    # nonzero biases keep pre-activations off the ReLU kink (an all-zero field sits on it)
    m.set_weights([w if w.ndim > 1 else rng.normal(size=w.shape) for w in m.get_weights()])
    x = rng.normal(size=(3, n_in))
    y = rng.normal(size=(3, 3))
    fd_check(m, x, y, rng=rng)


# ------------------------------------------------------------------ gradients (float64 FD)

@pytest.mark.parametrize("shape,filters,kernel,strides,padding", CONV_CASES)
def test_conv2d_gradients_finite_differences(shape, filters, kernel, strides, padding):
    """Weights, bias and — through the Dense + Reshape in front (its bias gradient is the
    batch sum of the conv's input gradient, element by element) — the input gradient."""
    rng = np.random.default_rng(4)
    n_in = 5
    m = compiled([Dense(int(np.prod(shape)), activation="tanh"), Reshape(shape),
                  Conv2D(filters, kernel, strides=strides, padding=padding, activation="tanh"),
                  Flatten(), Dense(3)], (n_in,), loss="mse")
    x = rng.normal(size=(4, n_in))
    y = rng.normal(size=(4, 3))
    fd_check(m, x, y)


def test_conv2d_relu_same_stride2_gradients_with_naive_twin(monkeypatch):
    rng = np.random.default_rng(5)
    layers = lambda: [Conv2D(4, 3, strides=2, padding="same", activation="relu"),
                      Conv2D(3, (2, 3), padding="same", activation="leaky_relu"), Flatten(),
                      Dense(4, activation="softmax")]
    m = compiled(layers(), (9, 8, 3), loss="sparse_categorical_crossentropy")
    monkeypatch.setenv("CHAINRULE_CONV_NAIVE", "1")
    n = compiled(layers(), (9, 8, 3), loss="sparse_categorical_crossentropy")
    monkeypatch.delenv("CHAINRULE_CONV_NAIVE")
    # nonzero biases: with zero ones a receptive field of all-zero ReLU outputs puts the
    # second layer exactly on leaky ReLU's kink, where finite differences average the slopes
    m.set_weights([w if w.ndim > 1 else rng.normal(size=w.shape) for w in m.get_weights()])
    n.set_weights(m.get_weights())
    x = rng.normal(size=(6, 9, 8, 3))
    y = rng.integers(0, 4, size=6)
    lf, gf = m.compute_gradients(x, y)
    ln, gn = n.compute_gradients(x, y)
    assert abs(lf - ln) < 1e-12
    for a, b in zip(gf, gn):
        assert rel_err(a, b) < 1e-12
    fd_check(m, x, y)


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("shape,pool,strides,padding", [
    ((6, 6, 2), (2, 2), None, "valid"),
    ((7, 5, 3), (3, 2), (2, 1), "same"),
    ((5, 5, 2), (3, 3), (1, 1), "valid"),   # overlapping windows
    ((5, 4, 1), (2, 2), (2, 2), "same"),
])
def test_pooling_gradients_finite_differences(cls, shape, pool, strides, padding):
    rng = np.random.default_rng(6)
    m = compiled([Dense(int(np.prod(shape))), Reshape(shape), cls(pool, strides=strides, padding=padding),
                  Flatten(), Dense(2)], (4,), loss="mse")
    x = rng.normal(size=(3, 4))
    y = rng.normal(size=(3, 2))
    fd_check(m, x, y, max_per_tensor=60)


def test_maxpool_gradient_goes_to_the_argmax_only():
    # 1 sample, one 2x2 window: the input gradient (read as the bias gradient of a Dense in
    # front) is nonzero only at the window's maximum.
    m = compiled([Dense(4), Reshape((2, 2, 1)), MaxPooling2D(2), Flatten()], (1,), loss="mse")
    m.set_weights([np.zeros((1, 4)), np.array([0.1, 0.7, -0.2, 0.3])])
    _, g = m.compute_gradients(np.ones((1, 1)), np.zeros((1, 1)))
    np.testing.assert_allclose(g[1], [0.0, 2 * 0.7, 0.0, 0.0], atol=1e-15)


def maxpool_grad_ref(x, dy, pool, strides, padding):
    """dx of max pooling: each dy to the first maximum of its window in row-major order."""
    n, H, W, C = x.shape
    oh, pt, _ = tf_pads(H, pool[0], strides[0], padding)
    ow, pl, _ = tf_pads(W, pool[1], strides[1], padding)
    dx = np.zeros(x.shape)
    for s in range(n):
        for a in range(oh):
            for b in range(ow):
                h0, w0 = max(a * strides[0] - pt, 0), max(b * strides[1] - pl, 0)
                h1, w1 = min(a * strides[0] - pt + pool[0], H), min(b * strides[1] - pl + pool[1], W)
                for c in range(C):
                    win = x[s, h0:h1, w0:w1, c]
                    i, j = np.unravel_index(np.argmax(win), win.shape)  # first maximum
                    dx[s, h0 + i, w0 + j, c] += dy[s, a, b, c]
    return dx


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,pool,strides,padding", [
    ((6, 6, 8), (2, 2), None, "valid"),    # the 2x2 fast path, whole vectors of channels
    ((7, 9, 11), (2, 2), None, "valid"),   # fast path: odd last row/column unread, ragged C
    ((8, 6, 3), (2, 2), None, "same"),     # even sizes: 'same' has no padding, fast path
    ((7, 5, 6), (2, 2), None, "same"),     # ceil mode: last windows hang over, general path
    ((6, 6, 4), (2, 2), (1, 1), "valid"),  # overlapping windows, general path
])
def test_maxpool_ties_and_odd_shapes_route_gradient_to_first_max(dtype, shape, pool, strides, padding):
    """Small integers make ties in most windows: the gradient must go to the first maximum
    in row-major window order (PyTorch's choice) on the 2x2 path and the general path, and
    rows/columns that no window reads must get exactly zero."""
    rng = np.random.default_rng(11)
    n = 3
    size = int(np.prod(shape))
    m = compiled([Dense(size), Reshape(shape), MaxPooling2D(pool, strides=strides, padding=padding),
                  Flatten()], (size,), dtype=dtype, loss="mse")
    x = rng.integers(-2, 3, size=(n,) + shape).astype(np.float64)
    # Identity Dense: its input is the pooling input; its weight gradient is then x^T . dx
    # and its bias gradient the batch sum of dx, so feed one sample at a time.
    m.set_weights([np.eye(size), np.zeros(size)])
    y_pool = m.predict(x.reshape(n, -1))
    want_y = pool_ref(x, pool, strides or pool, padding, "max")
    np.testing.assert_array_equal(y_pool, want_y.reshape(n, -1))
    for s in range(n):
        target = rng.normal(size=(1, y_pool.shape[1]))
        _, g = m.compute_gradients(x[s:s + 1].reshape(1, -1), target)
        dy = 2.0 * (y_pool[s:s + 1] - target) / target.size  # mse gradient
        want = maxpool_grad_ref(x[s:s + 1], dy.reshape((1,) + want_y.shape[1:]), pool,
                                strides or pool, padding)
        tol = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(g[1], want.reshape(-1), rtol=tol, atol=tol)


def test_avgpool_gradient_spreads_evenly():
    m = compiled([Dense(4), Reshape((2, 2, 1)), AveragePooling2D(2), Flatten()], (1,), loss="mse")
    m.set_weights([np.zeros((1, 4)), np.array([0.1, 0.7, -0.2, 0.3])])
    _, g = m.compute_gradients(np.ones((1, 1)), np.zeros((1, 1)))
    np.testing.assert_allclose(g[1], [2 * 0.225 / 4] * 4, atol=1e-15)


def test_flatten_reshape_are_free_and_gradients_pass_through():
    rng = np.random.default_rng(7)
    m = compiled([Reshape((2, 3, 2)), Flatten(), Reshape((-1, 4)), Flatten(), Dense(3)], (12,))
    assert m.output_shape == (3,)
    assert [l.output_shape for l in m.layers[:4]] == [(2, 3, 2), (12,), (3, 4), (12,)]
    ref = compiled([Dense(3)], (12,))
    ref.set_weights(m.get_weights())
    x = rng.normal(size=(5, 12))
    y = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(m.predict(x), ref.predict(x))
    for a, b in zip(m.compute_gradients(x, y)[1], ref.compute_gradients(x, y)[1]):
        np.testing.assert_array_equal(a, b)
    fd_check(m, x, y)


# ------------------------------------------------------------------ dropout

def test_dropout_inference_is_identity():
    rng = np.random.default_rng(8)
    m = compiled([Dropout(0.5)], (6, 5, 2))
    x = rng.normal(size=(4, 6, 5, 2))
    np.testing.assert_array_equal(m.predict(x), x)
    # evaluate sees no dropout either: the mse against x itself is exactly 0
    assert m.evaluate(x, x.reshape(4, -1)) == 0.0


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_training_mask_and_gradients(rate):
    # Dense0 (zero kernel, bias 1) -> Dropout -> Dense1 (identity, bias 0), mse against 0,
    # batch of one. Then the Dropout output is (1/(1-rate) or 0) per unit, and with B = 1
    # the bias gradient of Dense1 is (2/d) * that output (it exposes the training mask), and
    # the bias gradient of Dense0 is mask * scale * (that gradient).
    d = 4000
    m = compiled([Dense(d), Dropout(rate), Dense(d)], (1,), loss="mse")
    m.set_weights([np.zeros((1, d)), np.ones(d), np.eye(d), np.zeros(d)])
    scale = 1.0 / (1.0 - rate)
    _, g = m.compute_gradients(np.zeros((1, 1)), np.zeros((1, d)))
    out = g[3] * d / 2.0          # the dropout layer's training output
    kept = out != 0.0
    np.testing.assert_allclose(out[kept], scale, rtol=1e-12)
    assert abs((1.0 - kept.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / d)
    np.testing.assert_allclose(g[1], np.where(kept, scale * g[3], 0.0), rtol=1e-12, atol=1e-300)
    # a new forward draws a new mask
    _, g2 = m.compute_gradients(np.zeros((1, 1)), np.zeros((1, d)))
    assert ((g2[3] != 0) != kept).any()


def test_dropout_masks_follow_fit_seed():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(64, 10))
    y = rng.normal(size=(64, 2))
    runs = []
    for seed in (3, 3, 4):
        m = compiled([Dense(16, activation="relu"), Dropout(0.5), Dense(2)], (10,), seed=0)
        m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=seed)
        runs.append(m.get_weights()[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


# ------------------------------------------------------------------ shapes and errors

def test_shapes_flow_through_and_summary():
    m = cr.Sequential([Conv2D(6, 5, padding="same", activation="relu", input_shape=(28, 28, 1)),
                       MaxPooling2D(), Conv2D(16, 5, activation="relu"), AveragePooling2D(2),
                       Flatten(), Dropout(0.25), Dense(10, activation="softmax")])
    m.build()
    assert [l.output_shape for l in m.layers] == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16),
                                                  (400,), (400,), (10,)]
    assert m.count_params() == (25 * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 10 + 10)
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    for s in ("(None, 28, 28, 6)", "(None, 14, 14, 6)", "(None, 10, 10, 16)", "(None, 5, 5, 16)", "2416"):
        assert s in text


def test_three_d_input_is_one_channel():
    rng = np.random.default_rng(10)
    x3 = rng.normal(size=(5, 8, 8))
    inferred = compiled([Conv2D(2, 3), Flatten(), Dense(2)], (8, 8))
    assert inferred.layers[0].output_shape == (6, 6, 2)
    declared = cr.Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)], dtype="float64")
    declared.build()
    declared.set_weights(inferred.get_weights())
    np.testing.assert_array_equal(declared.predict(x3), inferred.predict(x3))
    np.testing.assert_array_equal(declared.predict(x3[..., None]), inferred.predict(x3))
    # lazily built from (n, H, W) data
    lazy = cr.Sequential([Conv2D(2, 3), Flatten(), Dense(2)], dtype="float64")
    lazy.compile(loss="mse")
    lazy.fit(x3, rng.normal(size=(5, 2)), epochs=1, verbose=0)
    assert lazy.layers[0].output_shape == (6, 6, 2)


@pytest.mark.parametrize("layers,shape,words", [
    ([Conv2D(2, 5)], (4, 4, 1), ["conv", "(5, 5)", "(4, 4, 1)", "valid"]),
    ([Conv2D(2, (3, 7))], (9, 6, 2), ["conv", "(3, 7)", "(9, 6, 2)"]),
    ([Conv2D(2, 3)], (10,), ["Conv2D", "(10,)"]),
    ([Conv2D(2, 3)], (4, 4, 4, 1), ["Conv2D", "(4, 4, 4, 1)"]),
    ([MaxPooling2D(3)], (2, 5, 1), ["max_pool", "(3, 3)", "(2, 5, 1)"]),
    ([AveragePooling2D(2)], (6, 6), ["AveragePooling2D", "(6, 6)"]),
    ([Reshape((5, 5))], (24,), ["Reshape", "(24,)", "(5, 5)"]),
    ([Conv2D(2, 3), Dense(3)], (5, 5, 1), ["Dense", "(3, 3, 2)", "Flatten"]),
])
def test_bad_shapes_raise_value_error_naming_layer_and_shapes(layers, shape, words):
    m = cr.Sequential(layers)
    with pytest.raises(ValueError) as e:
        m.build(shape)
    msg = str(e.value)
    for w in words:
        assert w.lower() in msg.lower(), msg


@pytest.mark.parametrize("make", [
    lambda: Conv2D(0, 3), lambda: Conv2D(2, 0), lambda: Conv2D(2, -1), lambda: Conv2D(2, 3, strides=0),
    lambda: Conv2D(2, (3, 3, 3)), lambda: Conv2D(2, 3, padding="full"), lambda: MaxPooling2D(0),
    lambda: AveragePooling2D(2, strides=(1, 0)), lambda: Dropout(1.0), lambda: Dropout(-0.1),
    lambda: Reshape((0, 3)), lambda: Reshape((-1, -1)),
])
def test_bad_configuration_raises(make):
    with pytest.raises(ValueError):
        make()


def test_cpp_rejects_bad_specs_before_running():
    from chainrule import _core
    good = {"kind": "conv2d", "h": 5, "w": 5, "cin": 1, "filters": 2, "kh": 3, "kw": 3, "sh": 1,
            "sw": 1, "same": 0, "activation": 0}
    _core.Network64([good])
    for key, val in [("kh", 6), ("h", 0), ("sw", 0), ("filters", 0)]:
        with pytest.raises(ValueError, match="Conv2D"):
            _core.Network64([{**good, key: val}])
    pool = {"kind": "maxpool2d", "h": 2, "w": 2, "c": 1, "ph": 3, "pw": 3, "sh": 1, "sw": 1, "same": 0}
    with pytest.raises(ValueError, match="MaxPooling2D"):
        _core.Network64([pool])
    with pytest.raises(ValueError, match="Dropout"):
        _core.Network64([{"kind": "dropout", "size": 4, "rate": 1.0}])


def test_cnn_config_and_save_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    m = cr.Sequential([Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="relu", input_shape=(7, 6, 2)),
                       MaxPooling2D((2, 2), strides=1), AveragePooling2D(2, padding="same"), Flatten(),
                       Dropout(0.3), Reshape((-1,)), Dense(3, activation="softmax")], seed=1)
    m.compile(optimizer=SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    x = rng.normal(size=(6, 7, 6, 2)).astype(np.float32)
    m.fit(x, rng.integers(0, 3, size=6), epochs=1, verbose=0)
    m.save(tmp_path / "cnn.npz")
    back = cr.load_model(tmp_path / "cnn.npz")
    assert [type(l) for l in back.layers] == [type(l) for l in m.layers]
    assert back.layers[0].strides == (2, 1) and back.layers[0].padding == "same"
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


# ------------------------------------------------------------------ PyTorch parity

def _torch_cnn(torch, weights, dtype):
    """conv(4,3x3,relu) -> maxpool2 -> conv(6,3x3,same,relu) -> avgpool2 -> flatten ->
    dense(5): PyTorch modules with chainrule's weights (kernels transposed to OIHW; the
    flatten runs on NHWC so the Dense kernel is the Linear weight transposed)."""
    nn = torch.nn
    c1 = nn.Conv2d(2, 4, 3).to(dtype)
    c2 = nn.Conv2d(4, 6, 3, padding=1).to(dtype)
    fc = nn.Linear(2 * 2 * 6, 5).to(dtype)
    with torch.no_grad():
        c1.weight.copy_(torch.from_numpy(weights[0].transpose(3, 2, 0, 1).copy()))
        c1.bias.copy_(torch.from_numpy(weights[1]))
        c2.weight.copy_(torch.from_numpy(weights[2].transpose(3, 2, 0, 1).copy()))
        c2.bias.copy_(torch.from_numpy(weights[3]))
        fc.weight.copy_(torch.from_numpy(weights[4].T.copy()))
        fc.bias.copy_(torch.from_numpy(weights[5]))

    def forward(x_nhwc):
        F = torch.nn.functional
        h = torch.relu(c1(x_nhwc.permute(0, 3, 1, 2)))
        h = F.max_pool2d(h, 2)
        h = torch.relu(c2(h))
        h = F.avg_pool2d(h, 2)
        return fc(h.permute(0, 2, 3, 1).flatten(1))

    params = [c1.weight, c1.bias, c2.weight, c2.bias, fc.weight, fc.bias]
    return forward, params


def _to_keras(p, i):
    a = p.detach().numpy()
    return a.transpose(2, 3, 1, 0) if i in (0, 2) else a.T if i == 4 else a


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-5), ("float32", 1e-4)])
def test_pytorch_parity_small_cnn(dtype, tol):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    rng = np.random.default_rng(12)
    m = cr.Sequential([Conv2D(4, 3, activation="relu", input_shape=(10, 10, 2)), MaxPooling2D(2),
                       Conv2D(6, 3, padding="same", activation="relu"), AveragePooling2D(2), Flatten(),
                       Dense(5, activation="softmax")], dtype=dtype, seed=3)
    m.build()
    m.compile(optimizer=SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    x = rng.normal(size=(8, 10, 10, 2)).astype(dtype)
    y = rng.integers(0, 5, size=8)
    fwd, params = _torch_cnn(torch, m.get_weights(), tdtype)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    logits = fwd(xt)
    np.testing.assert_array_less(rel_err(m.predict(x), torch.softmax(logits, 1).detach().numpy()), tol)
    loss_t = torch.nn.functional.cross_entropy(logits, yt)
    loss_t.backward()
    loss_c, grads = m.compute_gradients(x, y)
    assert abs(loss_c - loss_t.item()) <= tol * abs(loss_t.item())
    for i, (g, p) in enumerate(zip(grads, params)):
        assert rel_err(g, _to_keras(p.grad, i)) < tol, i

    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for step in range(4):
        xb, yb = x[2 * step:2 * step + 4], y[2 * step:2 * step + 4]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(fwd(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
        m.train_on_batch(xb, yb)
    for i, (w, p) in enumerate(zip(m.get_weights(), params)):
        assert rel_err(w, _to_keras(p, i)) < tol, i


def test_pytorch_parity_strided_same_padding_even_kernel():
    """TensorFlow 'same' padding with an even kernel and stride 2 pads asymmetrically (extra
    at the bottom/right): PyTorch gets the same result with an explicit F.pad."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(13)
    m = compiled([Conv2D(3, (4, 2), strides=2, padding="same", activation="tanh"), Flatten(), Dense(2)],
                 (9, 8, 2), loss="mse")
    w = m.get_weights()
    x = rng.normal(size=(3, 9, 8, 2))
    y = rng.normal(size=(3, 2))
    _, pt, pb = tf_pads(9, 4, 2, "same")
    _, pl, pr = tf_pads(8, 2, 2, "same")
    k = torch.tensor(w[0].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    b = torch.tensor(w[1], requires_grad=True)
    d = torch.tensor(w[2], requires_grad=True)
    db = torch.tensor(w[3], requires_grad=True)
    xt = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pl, pr, pt, pb))
    h = torch.tanh(F.conv2d(xt, k, b, stride=2))
    out = h.permute(0, 2, 3, 1).flatten(1) @ d + db
    np.testing.assert_allclose(m.predict(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    loss = ((out - torch.from_numpy(y)) ** 2).mean()
    loss.backward()
    _, g = m.compute_gradients(x, y)
    assert rel_err(g[0], k.grad.numpy().transpose(2, 3, 1, 0)) < 1e-10
    assert rel_err(g[1], b.grad.numpy()) < 1e-10


# ------------------------------------------------------------------ MNIST

def _load_mnist():
    if not os.path.isdir(MNIST_DIR) or not os.path.exists(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"MNIST files not found in {os.path.abspath(MNIST_DIR)}")
    from chainrule.datasets import load_mnist
    return load_mnist(MNIST_DIR, download=False, normalize=True)


def test_mnist_cnn_reaches_98_percent():
    (xtr, ytr), (xte, yte) = _load_mnist()
    t0 = time.perf_counter()
    m = cr.Sequential([Conv2D(16, 5, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2),
                       Conv2D(32, 5, activation="relu"), MaxPooling2D(2), Flatten(),
                       Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0, seed=0)   # (n, 28, 28): one channel
    loss, acc = m.evaluate(xte, yte)
    print(f"MNIST CNN: test accuracy {acc:.4f}, loss {loss:.4f}, {time.perf_counter() - t0:.1f} s")
    assert acc >= 0.98
