"""The per-epoch progress bar of ``fit(verbose=1)``, updated from the C++ loop every N
batches (N chosen for about 50 updates an epoch, so it costs nothing measurable)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total_steps, stream=None, width=30, updates=50):
        self.total = total_steps
        self.stream = stream or sys.stdout
        self.width = width
        self.every = max(1, total_steps // updates)
        self.t0 = time.perf_counter()

    def _bar(self, done):
        filled = int(self.width * done / max(self.total, 1))
        if done < self.total:
            return "=" * max(filled - 1, 0) + ">" + "." * (self.width - max(filled, 1))
        return "=" * self.width

    def update(self, done, total, loss, accuracy):
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (total - done) if done else 0.0
        self.stream.write(f"\r{done}/{total} [{self._bar(done)}] - ETA: {eta:.0f}s - loss: {loss:.4f}"
                          f" - accuracy: {accuracy:.4f}")
        self.stream.flush()
        return True

    def finish(self, logs):
        elapsed = time.perf_counter() - self.t0
        items = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
        self.stream.write(f"\r{self.total}/{self.total} [{self._bar(self.total)}] - {elapsed:.2f}s - {items}\n")
        self.stream.flush()
