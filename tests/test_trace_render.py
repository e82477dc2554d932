"""Rendering of chainrule.trace.Trace (print and plot) on Trace objects built by hand; does
not need Sequential.trace (that is tested in test_backprop_by_hand.py)."""

import re
import struct

import numpy as np
import pytest

from chainrule.trace import LayerTrace, Trace


def _sig(z):
    return 1 / (1 + np.exp(-z))


def small_dense_trace(batch=1):
    """The 2-2-2 Mazur network, values computed here."""
    x = np.tile([[0.05, 0.10]], (batch, 1))
    t = np.tile([[0.01, 0.99]], (batch, 1))
    k1, b1 = np.array([[0.15, 0.25], [0.20, 0.30]]), np.array([0.35, 0.35])
    k2, b2 = np.array([[0.40, 0.50], [0.45, 0.55]]), np.array([0.60, 0.60])
    z1 = x @ k1 + b1; a1 = _sig(z1)
    z2 = a1 @ k2 + b2; a2 = _sig(z2)
    g = 2 * (a2 - t) / a2.size
    d2 = g * a2 * (1 - a2); d1 = (d2 @ k2.T) * a1 * (1 - a1)
    l1 = LayerTrace("dense", "Dense", x, z1, a1, d1, {"kernel": k1, "bias": b1},
                    {"kernel": x.T @ d1, "bias": d1.sum(0)},
                    {"kernel": -0.5 * x.T @ d1, "bias": -0.5 * d1.sum(0)}, None)
    l2 = LayerTrace("dense_1", "Dense", a1, z2, a2, d2, {"kernel": k2, "bias": b2},
                    {"kernel": a1.T @ d2, "bias": d2.sum(0)},
                    {"kernel": -0.5 * a1.T @ d2, "bias": -0.5 * d2.sum(0)}, None)
    return Trace([l1, l2], float(np.mean((t - a2) ** 2)), a2, g, t, 0.5)


def big_dense_trace():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 100))
    k = rng.normal(size=(100, 40)); b = np.zeros(40)
    z = x @ k; a = np.maximum(z, 0); d = rng.normal(size=z.shape) * 1e-6
    gk = x.T @ d
    lt = LayerTrace("big", "Dense", x, z, a, d, {"kernel": k, "bias": b},
                    {"kernel": gk, "bias": d.sum(0)}, {"kernel": -0.1 * gk, "bias": -0.1 * d.sum(0)}, None)
    return Trace([lt], 1.5, a, d, np.zeros_like(a), 0.1), lt


def conv_pool_trace():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 1))
    k = rng.normal(size=(3, 3, 1, 2)); b = np.array([0.1, -0.2])
    z = rng.normal(size=(2, 4, 4, 2)); a = np.tanh(z); d = rng.normal(size=z.shape)
    conv = LayerTrace("conv2d", "Conv2D", x, z, a, d, {"kernel": k, "bias": b},
                      {"kernel": k * 0.01, "bias": b * 0.01}, {"kernel": k * -0.001, "bias": b * -0.001}, None)
    pooled = a.reshape(2, 2, 2, 2, 2, 2).max(axis=(2, 4))
    winners = np.zeros((2, 2, 2, 2), dtype=np.int64)
    for n in range(2):
        for oh in range(2):
            for ow in range(2):
                for c in range(2):
                    win = a[n, 2 * oh:2 * oh + 2, 2 * ow:2 * ow + 2, c]
                    h, w = np.unravel_index(np.argmax(win), (2, 2))
                    winners[n, oh, ow, c] = np.ravel_multi_index((2 * oh + h, 2 * ow + w, c), (4, 4, 2))
    pool = LayerTrace("max_pooling2d", "MaxPooling2D", a, None, pooled, rng.normal(size=pooled.shape),
                      {}, {}, {}, winners)
    return Trace([conv, pool], 0.7, pooled, pool.delta, np.zeros_like(pooled), 0.01), winners


def _rows(text, layer_heading_part, section):
    """Lines of one layer's table inside a section ('Forward', 'Backward', 'Updates')."""
    part = text.split("=== " + section)[1].split("\n=== ")[0]
    block = part.split(layer_heading_part)[1].split("\n-- ")[0]
    return block.strip("\n").splitlines()[1:]


def test_small_dense_tables_contain_the_numbers():
    tr = small_dense_trace()
    text = str(tr)
    assert text.startswith("Trace of one training step: loss 0.298371")
    assert "learning rate 0.5" in text and "batch size 1" in text
    assert "z = pre-activation" in text and "δ = ∂L/∂z" in text
    assert text.index("=== Forward") < text.index("=== Backward") < text.index("=== Updates")
    # forward: one row per unit with z and a (Mazur's out_h1, out_h2, out_o1, out_o2)
    fwd = _rows(text, "layer 0: dense (Dense)", "Forward")
    assert fwd[0].split() == ["unit", "z", "a"]
    assert fwd[1].split()[0] == "0" and float(fwd[1].split()[2]) == pytest.approx(0.593269992, abs=1e-6)
    assert float(fwd[2].split()[2]) == pytest.approx(0.596884378, abs=1e-6)
    out = _rows(text, "layer 1: dense_1 (Dense)", "Forward")
    assert float(out[1].split()[2]) == pytest.approx(0.75136507, abs=1e-6)
    assert float(out[2].split()[2]) == pytest.approx(0.772928465, abs=1e-6)
    # backward: the output layer comes first; δ, bias grad, one column per incoming weight
    bwd_part = text.split("=== Backward")[1]
    assert bwd_part.index("layer 1: dense_1") < bwd_part.index("layer 0: dense ")
    bwd = _rows(text, "layer 1: dense_1 (Dense)", "Backward")
    assert bwd[0].split() == ["unit", "δ", "∂L/∂b", "∂L/∂w[in0]", "∂L/∂w[in1]"]
    l2 = tr.layers[1]
    row0 = [float(v) for v in bwd[1].split()[1:]]
    assert row0 == pytest.approx([l2.delta[0, 0], l2.grads["bias"][0], *l2.grads["kernel"][:, 0]], rel=1e-5)
    assert row0[2] == pytest.approx(0.082167041, rel=1e-6)   # Mazur's ∂E/∂w5
    # updates: weights and Δ per unit
    upd = _rows(text, "layer 0: dense (Dense)", "Updates")
    assert upd[0].split() == ["unit", "b", "w[in0]", "w[in1]", "Δb", "Δw[in0]", "Δw[in1]"]
    vals = [float(v) for v in upd[1].split()[1:]]
    assert vals[:3] == pytest.approx([0.35, 0.15, 0.20])
    assert vals[4] == pytest.approx(-0.5 * 0.000438568, rel=1e-4)   # Δw1 = −lr · ∂E/∂w1
    assert repr(tr) == "Trace(loss=0.298371, batch_size=1, learning_rate=0.5, layers=['dense', 'dense_1'])"
    assert "\n" not in repr(tr.layers[0])


def test_batch_columns_then_batch_mean():
    text = str(small_dense_trace(batch=3))
    assert _rows(text, "layer 0: dense (Dense)", "Forward")[0].split() == \
        ["unit", "z[ex0]", "z[ex1]", "z[ex2]", "a[ex0]", "a[ex1]", "a[ex2]"]
    text = str(small_dense_trace(batch=10))
    assert "mean over the 10 examples" in text
    assert _rows(text, "layer 0: dense (Dense)", "Forward")[0].split() == ["unit", "z[mean]", "a[mean]"]


def test_large_layer_is_summarised():
    tr, lt = big_dense_trace()
    text = str(tr)
    assert "\n     39 " not in text   # no per-unit rows
    m = re.search(r"∂L/∂kernel shape \(100, 40\)\s+L2 norm (\S+), min (\S+), max (\S+)", text)
    assert m, text
    assert float(m.group(1).rstrip(",")) == pytest.approx(np.linalg.norm(lt.grads["kernel"]), rel=1e-3)
    assert float(m.group(2).rstrip(",")) == pytest.approx(lt.grads["kernel"].min(), rel=1e-3)
    assert re.search(r"a\s+shape \(8, 40\)\s+L2 norm", text)
    assert re.search(r"Δkernel\s+shape \(100, 40\)", text)


def test_conv_and_maxpool_winners():
    tr, winners = conv_pool_trace()
    text = str(tr)
    conv = tr.layers[0]
    fwd = _rows(text, "layer 0: conv2d (Conv2D)", "Forward")
    assert fwd[0].split() == ["channel", "z[ex0]", "z[ex1]", "a[ex0]", "a[ex1]"]
    assert float(fwd[2].split()[1]) == pytest.approx(conv.z[0, :, :, 1].mean(), rel=1e-5)  # channel mean
    bwd = _rows(text, "layer 0: conv2d (Conv2D)", "Backward")
    assert bwd[0].split()[-1] == "‖∂L/∂w‖(9)"   # 3×3×1 incoming weights per filter → norm
    assert float(bwd[1].split()[-1]) == pytest.approx(np.linalg.norm(conv.grads["kernel"][..., 0]), rel=1e-5)
    pool_fwd = text.split("layer 1: max_pooling2d (MaxPooling2D)")[1].split("=== Backward")[0]
    assert "winners (example 0)" in pool_fwd
    h, w, _ = np.unravel_index(int(winners[0, 1, 0, 1]), (4, 4, 2))
    line = [l for l in pool_fwd.splitlines() if "channel 1:" in l][0]
    assert f"(1,0)<-({h},{w})" in line
    assert "max_pooling2d" not in text.split("=== Updates")[1]   # no parameters, no update table


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("make", [small_dense_trace, lambda: big_dense_trace()[0], lambda: conv_pool_trace()[0]])
def test_plot_writes_png(tmp_path, make):
    pytest.importorskip("matplotlib")
    tr = make()
    path = tmp_path / "trace.png"
    fig = tr.plot(path, dpi=50)
    n = len(tr.layers)
    assert _png_size(path) == (500, round(50 * (1.9 * n + 3.2)))
    assert len(fig.axes) >= 2 * n + 1
    bars = fig.axes[-1]
    assert bars.get_yscale() == "log"
    norms = [p.get_height() for p in bars.patches]
    assert norms == pytest.approx([v for l in tr.layers for v in l.grad_norms().values()])


def test_plot_marks_vanishing_gradients_red():
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex
    tr = small_dense_trace()
    for k in ("kernel", "bias"):
        tr.layers[0].grads[k] = tr.layers[0].grads[k] * 1e-6   # first layer: vanishing
    fig = tr.plot()
    colors = [to_hex(p.get_facecolor()) for p in fig.axes[-1].patches]
    assert colors[:2] == [to_hex("tab:red")] * 2 and colors[2:] == [to_hex("tab:blue")] * 2
