"""History: the per-epoch record that ``Sequential.fit`` returns, and its plot.

It is a callback (Keras's ``callbacks.History``), called after the others at the end of each
epoch; it only stores and draws what the fit loop (``fit_loop.py``) hands it, and computes
nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._typing import PathLike

from .callbacks import Callback

__all__ = ["History"]


class History(Callback):
    """Per-epoch metrics returned by :meth:`Sequential.fit`.

    ``history.history`` maps each metric name (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, …) to a list with one value per epoch; ``history["loss"]`` and
    ``history.loss`` are shortcuts. As in Keras, ``fit`` records into the History passed
    among its ``callbacks`` (and returns it), or into a new one; ``on_train_begin`` clears
    ``epoch``, while ``history`` keeps growing when the same History is passed to several fits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}
        # layer name -> statistic -> one value per epoch: kernel_grad_norm / bias_grad_norm
        # (mean over the epoch's steps of the L2 norm), kernel_grad_norm_max,
        # kernel_update_ratio (mean ||Δw|| / ||w||), kernel_weight_norm, and for ReLU-family
        # layers dead_fraction (units never positive on any training sample of the epoch).
        self.layer_stats: dict[str, dict[str, list[float]]] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record(epoch, logs or {})
        if self.model is not None:
            self.model.history = self

    def _record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def _record_layers(self, stats: dict[str, dict[str, float]]) -> None:
        for layer, values in stats.items():
            dst = self.layer_stats.setdefault(layer, {})
            for k, v in values.items():
                dst.setdefault(k, []).append(v)

    def plot(self, path: PathLike | None = None, dpi: float = 100) -> Figure:
        """Loss and the first metric (train and validation), the learning rate, and per-layer
        gradient norms on a log scale, as one matplotlib Figure (1000x800 pixels at the
        default dpi). Saves a PNG when ``path`` is given. Needs matplotlib
        (``pip install chainrule[plot]``)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from None
        if not self.epoch:
            raise ValueError("History.plot: the history is empty (no epoch was recorded)")
        epochs = [e + 1 for e in self.epoch]
        fig = Figure(figsize=(10, 8), dpi=dpi)
        axes = fig.subplots(2, 2)
        # the first metric logged (accuracy, as a rule), by the name it is logged under
        metric = next((k for k in self.history if k not in ("loss", "lr", "learning_rate")
                       and not k.startswith("val_")), "accuracy")
        for ax, key, title in ((axes[0, 0], "loss", "loss"), (axes[0, 1], metric, metric)):
            for k, style in ((key, "-"), ("val_" + key, "--")):
                if k in self.history:
                    ax.plot(epochs, self.history[k], style, marker="o", label=k)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        ax = axes[1, 0]
        if "lr" in self.history:
            ax.plot(epochs, self.history["lr"], marker="o")
        ax.set_title("learning rate")
        ax.set_xlabel("epoch")
        ax = axes[1, 1]
        for layer, st in self.layer_stats.items():
            g = st.get("kernel_grad_norm")
            if g and any(v > 0 for v in g):
                ax.plot(epochs[: len(g)], [max(v, 1e-30) for v in g], marker="o", label=layer)
        ax.set_yscale("log")
        ax.set_title("gradient L2 norm per layer (kernel)")
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), format="png")
        return fig

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __getattr__(self, key: str) -> list[float]:
        history = self.__dict__.get("history", {})
        if key in history:
            return history[key]
        raise AttributeError(key)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"
