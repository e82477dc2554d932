"""The float32 Dense forward pass applies bias + activation inside the GEMM, tile by tile
(kernels/gemm.cpp GemmEpilogue). Check it against numpy in float64 across the GEMM's paths:
narrow N (dot-product and one-panel kernels), wide N, edge tiles, multi-threaded splits."""

import numpy as np
import pytest

import chainrule as cr


def reference(x, w, b, act, alpha=0.01):
    z = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    if act == "relu":
        return np.maximum(z, 0)
    if act == "leaky_relu":
        return np.where(z > 0, z, alpha * z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    return z


@pytest.mark.parametrize("act", ["linear", "relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("n,k,units", [(1, 3, 1), (7, 300, 10), (130, 256, 12), (33, 20, 37),
                                       (128, 784, 512), (257, 512, 256), (64, 129, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bias_activation_matches_numpy(act, n, k, units, threads):
    rng = np.random.default_rng(n * 1000 + k + units)
    model = cr.Sequential([cr.layers.Dense(units, activation=act)], seed=1)
    model.build((k,))
    w = rng.normal(0, 1 / np.sqrt(k), size=(k, units)).astype(np.float32)
    b = rng.normal(0, 0.5, size=units).astype(np.float32)  # distinct per column: a misplaced bias shows
    model.set_weights([w, b])
    x = rng.normal(size=(n, k)).astype(np.float32)
    old = cr.get_num_threads()
    cr.set_num_threads(threads)
    try:
        out = model.predict(x, batch_size=n)
    finally:
        cr.set_num_threads(old)
    np.testing.assert_allclose(out, reference(x, w, b, act), rtol=2e-5, atol=2e-5)
