"""The per-epoch progress bar of ``fit(verbose=1)`` (and ``predict(verbose=1)``), updated from
the C++ loop every N batches (N chosen for about 50 updates an epoch, so it costs nothing
measurable). With an unknown number of steps (a generator) it counts steps without a bar."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total_steps, metric_names=(), stream=None, width=30, updates=50):
        self.total = total_steps  # None: unknown
        self.names = list(metric_names)
        self.stream = stream or sys.stdout
        self.width = width
        self.every = max(1, total_steps // updates) if total_steps else 10
        self.t0 = time.perf_counter()

    def _bar(self, done, total):
        filled = int(self.width * done / max(total, 1))
        if done < total:
            return "=" * max(filled - 1, 0) + ">" + "." * (self.width - max(filled, 1))
        return "=" * self.width

    def update(self, done, total, loss, metrics):
        """(steps done, steps in all or None, running loss or None, running metric means)."""
        elapsed = time.perf_counter() - self.t0
        items = "" if loss is None else f" - loss: {loss:.4f}"
        items += "".join(f" - {n}: {v:.4f}" for n, v in zip(self.names, metrics))
        if total:
            eta = elapsed / done * (total - done) if done else 0.0
            self.stream.write(f"\r{done}/{total} [{self._bar(done, total)}] - ETA: {eta:.0f}s{items}")
        else:
            self.stream.write(f"\r{done}/Unknown - {elapsed:.0f}s{items}")
        self.stream.flush()
        return True

    def finish(self, logs, steps=None):
        """The epoch's last line: ``steps`` taken (the planned total when None)."""
        elapsed = time.perf_counter() - self.t0
        total = self.total if self.total else steps
        done = steps if steps is not None else total
        items = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
        bar = f"{done}/{total} [{self._bar(done, total)}]" if total else f"{done}/{done}"
        self.stream.write(f"\r{bar} - {elapsed:.2f}s" + (f" - {items}" if items else "") + "\n")
        self.stream.flush()
