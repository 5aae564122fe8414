"""ge::DataType values <-> numpy dtypes (graph/types.h numbering); a leaf module that every
other module may import.

bfloat16 (``DT_BF16`` = 27) is numpy's ``ml_dtypes.bfloat16`` (the dtype ``onnx`` gives a
bfloat16 tensor). ``ml_dtypes`` takes about half a second to import, so its entries join the
tables on the first lookup that needs them, not at ``import ascend_async``: every other lookup
is a plain dict lookup. A bfloat16 array or graph cannot exist before ``ml_dtypes`` is imported
(onnx imports it to read a model), so no lookup misses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CARRIED", "DT_BF16", "GE_TO_NUMPY", "NUMPY_TO_GE", "ge_dtype", "numpy_dtype"]

DT_BF16 = 27

#: The dtypes GE tensors carry, for messages.
CARRIED = "float32, float16, bfloat16, float64, int8/16/32/64, uint8/16/32/64, bool"


def _bfloat16() -> np.dtype[Any]:
    import ml_dtypes

    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


class _GeToNumpy(dict[int, "np.dtype[Any]"]):
    def __missing__(self, key: int) -> np.dtype[Any]:
        if key == DT_BF16:
            dtype = self[key] = _bfloat16()  # idempotent: a racing thread stores the same value
            return dtype
        raise KeyError(key)


class _NumpyToGe(dict["np.dtype[Any]", int]):
    def __missing__(self, key: np.dtype[Any]) -> int:
        if getattr(key, "name", None) == "bfloat16" and key == _bfloat16():
            self[key] = DT_BF16
            return DT_BF16
        raise KeyError(key)


GE_TO_NUMPY: dict[int, np.dtype[Any]] = _GeToNumpy(
    {
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
)
NUMPY_TO_GE: dict[np.dtype[Any], int] = _NumpyToGe({v: k for k, v in GE_TO_NUMPY.items()})


def ge_dtype(dtype: Any) -> int | None:
    """The ge::DataType of a numpy dtype, or None when GE tensors cannot carry it."""
    try:
        return NUMPY_TO_GE[np.dtype(dtype)]
    except (KeyError, TypeError):
        return None


def numpy_dtype(ge: int) -> np.dtype[Any] | None:
    """The numpy dtype of a ge::DataType value, or None when the library has none for it."""
    try:
        return GE_TO_NUMPY[ge]
    except KeyError:
        return None
