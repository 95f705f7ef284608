"""Named tensors as they travel between clients and server: numpy arrays, keyed as in :mod:`keys`.

The server side (strategies, aggregation, validation) works on numpy only, as Flower's strategies
do; the runtime converts to and from torch at the model's boundary.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

TensorDict = dict[str, np.ndarray]


def tensor_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    return int(sum(t.nbytes for t in tensors.values()))


def squared_norm(*arrays: np.ndarray) -> float:
    """The sum of squares of every entry of ``arrays``, in float64: a module's squared norm over its tensors."""
    return float(sum(np.square(np.asarray(a, dtype=np.float64)).sum() for a in arrays))
