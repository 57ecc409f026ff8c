"""The packed sequences of one batch, as the attention kernels take them."""

from __future__ import annotations

import numpy as np


class Sequences:
    """Sequences packed as row ranges ``[starts[i], starts[i] + lengths[i])``, with an optional
    additive attention bias (MPNet's relative-position bias) and a ``cache`` that lives as
    long as the batch: the layers' attention calls (or a replay's recorded steps) keep what
    they plan and check from these sequences there, so it is done once per batch."""

    def __init__(self, starts: np.ndarray, lengths: np.ndarray, bias: np.ndarray | None = None) -> None:
        self.starts, self.lengths, self.bias = starts, lengths, bias
        self.cache: dict = {}
