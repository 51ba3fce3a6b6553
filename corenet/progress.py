"""Progress output for ``corenet train``: a live bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    """Prints a bar with the live loss when ``stream`` is a terminal, else one line an epoch."""

    def __init__(self, epochs: int, stream=None, width: int = 30):
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self._last_draw = 0.0

    def on_batch(self, epoch: int, batch: int, n_batches: int, loss: float) -> None:
        now = time.monotonic()
        if not self.live or (now - self._last_draw < 0.05 and batch + 1 < n_batches):
            return
        self._last_draw = now
        done = (batch + 1) * self.width // n_batches
        bar = "#" * done + "-" * (self.width - done)
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] loss {loss:.4f}")
        self.stream.flush()

    def on_epoch(self, epoch: int, mean_loss: float, extra: str = "") -> None:
        prefix = "\r" if self.live else ""
        line = f"epoch {epoch + 1}/{self.epochs} train_loss {mean_loss:.4f}{extra}"
        self.stream.write(prefix + line.ljust(self.width + 40) + "\n")
        self.stream.flush()
