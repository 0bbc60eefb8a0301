"""Per-stage latency statistics in constant memory (a soak run must not grow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class StageStats:
    """Mean over every frame; p50/p90 over the last ``window`` frames; an EMA for the HUD.

    Memory is fixed at ``len(stages) * window`` floats however long the run is.
    """

    def __init__(self, stages: Sequence[str], window: int = 65536, ema: float = 0.1) -> None:
        self.stages = tuple(stages)
        self._ring = np.zeros((window, len(self.stages)), np.float64)
        self._sum = np.zeros(len(self.stages), np.float64)
        self._ema = np.zeros(len(self.stages), np.float64)
        self._alpha = ema
        self.count = 0

    def add(self, ms: dict[str, float]) -> None:
        row = np.fromiter((ms[s] for s in self.stages), np.float64, len(self.stages))
        self._ring[self.count % len(self._ring)] = row
        self._sum += row
        self._ema = row if self.count == 0 else (1 - self._alpha) * self._ema + self._alpha * row
        self.count += 1

    def recent(self) -> dict[str, float]:
        """Smoothed latest latency per stage, for the HUD."""
        return dict(zip(self.stages, self._ema.tolist()))

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"mean", "p50", "p90"}}`` in ms; zeros before the first frame."""
        n = min(self.count, len(self._ring))
        if n == 0:
            return {s: {"mean": 0.0, "p50": 0.0, "p90": 0.0} for s in self.stages}
        p50, p90 = np.percentile(self._ring[:n], [50, 90], axis=0)
        mean = self._sum / self.count
        return {
            s: {"mean": round(float(mean[i]), 3), "p50": round(float(p50[i]), 3), "p90": round(float(p90[i]), 3)}
            for i, s in enumerate(self.stages)
        }
