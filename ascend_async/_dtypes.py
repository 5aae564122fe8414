"""ge::DataType values <-> numpy dtypes (graph/types.h numbering); a leaf module that every
other module may import."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GE_TO_NUMPY", "NUMPY_TO_GE"]

GE_TO_NUMPY: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.float16),
    2: np.dtype(np.int8),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    6: np.dtype(np.int16),
    7: np.dtype(np.uint16),
    8: np.dtype(np.uint32),
    9: np.dtype(np.int64),
    10: np.dtype(np.uint64),
    11: np.dtype(np.float64),
    12: np.dtype(np.bool_),
}
NUMPY_TO_GE: dict[np.dtype[Any], int] = {v: k for k, v in GE_TO_NUMPY.items()}
