"""Trace: one training step laid open — every layer's input, z, a, δ, gradients and updates —
and its rendering as text tables (``print(trace)``) and as a figure (``trace.plot()``).

It only stores and draws what ``Sequential.trace`` (tracing.py) hands it; it computes no
gradients itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._typing import PathLike

__all__ = ["LayerTrace", "Trace"]

# Rendering thresholds: a layer with more units (Dense units / conv channels) than this is
# summarised; a unit with more incoming weights than this shows the norm of their gradient
# instead of one column per weight; a batch larger than this shows the batch mean.
MAX_UNITS = 16
MAX_WEIGHT_COLUMNS = 4
MAX_EXAMPLE_COLUMNS = 4
_COL = 12


@dataclass
class LayerTrace:
    name: str
    kind: str
    input: np.ndarray
    z: np.ndarray | None
    a: np.ndarray
    delta: np.ndarray
    weights: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    updates: dict[str, np.ndarray]
    winners: np.ndarray | None = None
    stateful: tuple = ()  # the parameters the layer updates itself (moving statistics): no gradient

    @property
    def num_units(self) -> int:
        """Units of a Dense layer, channels of an image layer (the last axis of the output)."""
        return int(self.a.shape[-1]) if self.a.ndim > 1 else 1

    @property
    def is_image(self) -> bool:
        return self.a.ndim == 4

    def unit_values(self, arr: np.ndarray) -> np.ndarray:
        """(B, units): ``arr`` per example and unit; image layers average over H×W."""
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 4:
            return arr.mean(axis=(1, 2))
        return arr.reshape(arr.shape[0], -1)

    def per_unit(self, param_dict: dict[str, np.ndarray], key: str) -> np.ndarray:
        """(units, fan_in) view of a kernel-like tensor (last axis = unit), or (units,) bias."""
        t = np.asarray(param_dict[key], dtype=np.float64)
        if key == "bias":
            return t.reshape(-1)
        return t.reshape(-1, t.shape[-1]).T

    def grad_norms(self) -> dict[str, float]:
        """{param: L2 norm of its gradient}."""
        return {k: float(np.linalg.norm(np.asarray(g, dtype=np.float64))) for k, g in self.grads.items()}

    def __repr__(self):
        return (f"LayerTrace({self.name!r}, {self.kind}, input {tuple(self.input.shape)} -> "
                f"output {tuple(self.a.shape)}, params {sorted(self.weights)})")


@dataclass
class Trace:
    layers: list[LayerTrace]
    loss: float
    output: np.ndarray
    output_grad: np.ndarray
    targets: np.ndarray
    learning_rate: float

    @property
    def batch_size(self) -> int:
        return int(np.asarray(self.output).shape[0])

    def __getitem__(self, key: int | str) -> LayerTrace:
        """The LayerTrace by position or by layer name."""
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(key)
        return self.layers[key]

    def __repr__(self):
        return (f"Trace(loss={self.loss:.6g}, batch_size={self.batch_size}, "
                f"learning_rate={self.learning_rate:g}, layers={[l.name for l in self.layers]})")

    # ---------------------------------------------------------------- text rendering
    def _example_columns(self):
        b = self.batch_size
        return [f"ex{i}" for i in range(b)] if b <= MAX_EXAMPLE_COLUMNS else ["mean"]

    def _per_example(self, values):
        """values (B, units) -> (units, columns) as the header from _example_columns says."""
        if values.shape[0] <= MAX_EXAMPLE_COLUMNS:
            return values.T
        return values.mean(axis=0)[:, None]

    def __str__(self):
        out = []
        w = out.append
        b = self.batch_size
        w(f"Trace of one training step: loss {_num(self.loss).strip()}, learning rate "
          f"{self.learning_rate:g}, batch size {b}")
        w("Legend: z = pre-activation (x·W + b), a = activation (the layer's output), "
          "δ = ∂L/∂z (∂L/∂a for layers")
        w("        without an activation), ∂L/∂w = gradient, Δ = update the optimizer applies "
          "(new − old).")
        cols = "examples " + ", ".join(self._example_columns()) if b <= MAX_EXAMPLE_COLUMNS \
            else f"the mean over the {b} examples"
        w(f"        Columns z/a/δ show {cols}; image layers show the mean over H×W per channel.")
        w("")
        w("=== Forward pass (input -> output) " + "=" * 40)
        for i, lt in enumerate(self.layers):
            w(_layer_heading(i, lt))
            if lt.num_units > MAX_UNITS:
                if lt.z is not None:
                    w(_summary("z", lt.z))
                w(_summary("a", lt.a))
            else:
                blocks = ([("z", lt.z)] if lt.z is not None else []) + [("a", lt.a)]
                self._unit_table(out, lt, blocks, [])
            if lt.winners is not None:
                self._winners(out, lt)
        w("")
        w("=== Backward pass (output -> input) " + "=" * 38)
        og = np.asarray(self.output_grad, dtype=np.float64)
        w(f"output gradient ∂L/∂(last pre-activation, when softmax/sigmoid is fused into the "
          f"loss, else ∂L/∂output), shape {tuple(og.shape)}:")
        ex = self._per_example(og.mean(axis=(1, 2)) if og.ndim == 4 else og.reshape(og.shape[0], -1))
        if ex.shape[0] <= MAX_UNITS:
            w(f"{'unit':>7}" + "".join(_head(f"∂L/∂out[{c}]") for c in self._example_columns()))
            for j, row in enumerate(ex):
                w(f"{j:>7}" + "".join(_num(v) for v in row))
        else:
            w(_summary("∂L/∂out", og))
        for i in range(len(self.layers) - 1, -1, -1):
            lt = self.layers[i]
            w(_layer_heading(i, lt))
            if lt.num_units > MAX_UNITS or not _unit_shaped(lt, lt.grads):
                w(_summary("δ", lt.delta))
                for k in sorted(lt.grads):
                    w(_summary(f"∂L/∂{k}", lt.grads[k]))
            else:
                self._unit_table(out, lt, [("δ", lt.delta)], [(lt.grads, "∂L/∂")])
        w("")
        w("=== Updates (Δ = new − old, what the optimizer adds to each weight) " + "=" * 6)
        for i, lt in enumerate(self.layers):
            if not lt.updates:
                continue
            w(_layer_heading(i, lt))
            if lt.num_units > MAX_UNITS or not _unit_shaped(lt, lt.updates):
                for k in sorted(lt.updates):
                    w(_summary(f"Δ{k}", lt.updates[k]))
            else:
                self._unit_table(out, lt, [], [(lt.weights, ""), (lt.updates, "Δ")])
        return "\n".join(out)

    def _unit_table(self, out, lt, blocks, param_blocks):
        """One row per unit: the per-example columns of each (label, array) in ``blocks``,
        then for each (dict, prefix) in ``param_blocks`` the bias and the incoming weights."""
        excols = self._example_columns()
        header = [f"{'channel' if lt.is_image else 'unit':>7}"]
        columns = []  # per column: (units,) array
        for label, arr in blocks:
            vals = self._per_example(lt.unit_values(arr))
            for c, name in enumerate(excols):
                header.append(_head(f"{label}[{name}]" if len(excols) > 1 or name != "ex0"
                                    else label))
                columns.append(vals[:, c])
        for pd, prefix in param_blocks:
            if "bias" in pd:
                header.append(_head(f"{prefix}b"))
                columns.append(lt.per_unit(pd, "bias"))
            if "kernel" in pd:
                k = lt.per_unit(pd, "kernel")  # (units, fan_in)
                if k.shape[1] <= MAX_WEIGHT_COLUMNS:
                    for r in range(k.shape[1]):
                        header.append(_head(f"{prefix}w[in{r}]"))
                        columns.append(k[:, r])
                else:
                    header.append(_head(f"‖{prefix}w‖({k.shape[1]})"))
                    columns.append(np.linalg.norm(k, axis=1))
            for key, label in _PER_UNIT_LABELS.items():
                if key in pd and not (prefix == "∂L/∂" and key in lt.stateful):
                    header.append(_head(f"{prefix}{label}"))
                    columns.append(np.asarray(pd[key], dtype=np.float64).reshape(-1))
        if param_blocks and not any(pd for pd, _ in param_blocks) and not blocks:
            return
        out.append("".join(header))
        for j in range(lt.num_units):
            out.append(f"{j:>7}" + "".join(_num(col[j]) for col in columns))

    def _winners(self, out, lt):
        win = np.asarray(lt.winners)
        in_shape = lt.input.shape[1:]
        if win.ndim != 4 or len(in_shape) != 3 or win[0, ..., 0].size > 16 or lt.num_units > 4:
            out.append(f"  winners: int flat indices into each example's input (h, w, c), "
                       f"shape {tuple(win.shape)}")
            return
        out.append("  winners (example 0): output (h, w) <- input (h, w) of the max element")
        for c in range(win.shape[-1]):
            pairs = []
            for oh in range(win.shape[1]):
                for ow in range(win.shape[2]):
                    h, ww, _ = np.unravel_index(int(win[0, oh, ow, c]), in_shape)
                    pairs.append(f"({oh},{ow})<-({h},{ww})")
            out.append(f"    channel {c}: " + " ".join(pairs))

    # ---------------------------------------------------------------- figure
    def plot(self, path: PathLike | None = None, dpi: float = 100) -> Figure:
        """Per layer, heatmaps of the activations and of δ (units × examples; image layers
        show the channel mean over H×W), and a bar chart of every parameter tensor's gradient
        L2 norm on a log scale, as one matplotlib Figure (10 inches wide, 1.9 inches per
        layer plus 3 for the bar chart). Saves a PNG when ``path`` is given. Needs matplotlib
        (``pip install chainrule[plot]``)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("Trace.plot needs matplotlib: pip install matplotlib") from None
        if not self.layers:
            raise ValueError("Trace.plot: the trace has no layers")
        n = len(self.layers)
        fig = Figure(figsize=(10, 1.9 * n + 3.2), dpi=dpi)
        grid = fig.add_gridspec(n + 1, 2, height_ratios=[1.9] * n + [3.2])
        for i, lt in enumerate(self.layers):
            dtitle = "δ = ∂L/∂z" if lt.z is not None else "δ = ∂L/∂output"
            for col, (arr, title, cmap) in enumerate(((lt.a, "a (activation)", "viridis"),
                                                      (lt.delta, dtitle, "coolwarm"))):
                ax = fig.add_subplot(grid[i, col])
                m = lt.unit_values(arr).T  # (units, B)
                kw: dict[str, Any] = {}
                if cmap == "coolwarm":
                    lim = float(np.max(np.abs(m))) or 1.0
                    kw = {"vmin": -lim, "vmax": lim}
                im = ax.imshow(m, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
                fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
                if m.size <= 32:  # small enough to print each value in its cell
                    lo, hi = im.get_clim()
                    for (r, c), v in np.ndenumerate(m):
                        dark = cmap == "viridis" and v < (lo + hi) / 2  # dark end of viridis
                        ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")
                what = "channel (mean over H×W)" if lt.is_image else "unit"
                ax.set_title(f"{lt.name} ({lt.kind}): {title}", fontsize=9)
                ax.set_ylabel(what, fontsize=8)
                ax.tick_params(labelsize=7)
                if m.shape[1] <= 16:
                    ax.set_xticks(range(m.shape[1]))
                if m.shape[0] <= 16:
                    ax.set_yticks(range(m.shape[0]))
                if i == n - 1:
                    ax.set_xlabel("example", fontsize=8)
        ax = fig.add_subplot(grid[n, :])
        labels, norms = [], []
        for lt in self.layers:
            for k, v in lt.grad_norms().items():
                labels.append(f"{lt.name}\n{k}")
                norms.append(v)
        if norms:
            floor = 1e-30
            heights = [max(v, floor) for v in norms]
            colors = ["tab:red" if v < 1e-3 * max(norms) else "tab:blue" for v in norms]
            ax.bar(range(len(norms)), heights, color=colors)
            ax.set_xticks(range(len(norms)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_yscale("log")
            top = max(heights)
            ax.set_ylim(min(min(heights), top * 1e-4) / 3, top * 3)
            for x, v in enumerate(norms):
                ax.annotate(f"{v:.2g}", (x, max(v, floor)), ha="center", va="bottom", fontsize=7)
        ax.set_title("gradient L2 norm per parameter tensor (log scale; red = 1000× below the "
                     "largest: vanishing)", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), format="png")
        return fig


# Per-unit parameters other than kernel and bias (BatchNormalization's), by column label.
_PER_UNIT_LABELS = {"gamma": "γ", "beta": "β", "moving_mean": "mov_mean", "moving_variance": "mov_var"}


def _num(v):
    return f" {float(v):>{_COL}.6g}"


def _head(s):
    return f" {s:>{_COL}}"


def _summary(label, arr):
    a = np.asarray(arr, dtype=np.float64)
    return (f"  {label:<10} shape {str(tuple(a.shape)):<16} L2 norm {np.linalg.norm(a):.4g}, "
            f"min {a.min():.4g}, max {a.max():.4g}")


def _layer_heading(i, lt):
    return (f"-- layer {i}: {lt.name} ({lt.kind}), input {tuple(lt.input.shape)} -> "
            f"output {tuple(lt.a.shape)}")


def _unit_shaped(lt, params):
    """Whether each parameter tensor's last axis is the layer's unit axis (table-able)."""
    return all(np.asarray(v).shape[-1] == lt.num_units for v in params.values())
