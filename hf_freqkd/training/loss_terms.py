"""Named loss terms in the training logs: the mean of each since the last log."""

from __future__ import annotations

import torch


class LossTermMeans:
    """Running sums of named loss terms between two training logs; their means, averaged over processes."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._sums[name] = self._sums.get(name, torch.zeros((), device=value.device)) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def pop_means(self, accelerator) -> dict[str, float]:
        """The mean of each term since the last call (then reset), reduced over processes."""
        means = {
            name: round(float(accelerator.reduce(total / self._counts[name], reduction="mean")), 6) for name, total in self._sums.items()
        }
        self._sums, self._counts = {}, {}
        return means
