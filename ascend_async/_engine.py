"""The sim's graph engine: find onnxruntime's shared library and open it in the sim module.

The sim computes graphs with onnxruntime's C API from its own device threads. The library is
the one the ``onnxruntime`` wheel ships (``onnxruntime/capi/libonnxruntime.so.*``); it is found
without importing onnxruntime's Python package. ``ASCEND_ASYNC_ORT_LIBRARY`` names another one.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from ._errors import BackendUnavailableError

__all__ = ["library_path", "open_engine"]

_lock = threading.Lock()
_opened: str | None = None


def library_path() -> str:
    """The path of onnxruntime's C library that the sim loads.

    :raises BackendUnavailableError: if onnxruntime is not installed or ships no library.
    """
    override = os.environ.get("ASCEND_ASYNC_ORT_LIBRARY")
    if override:
        return override
    spec = importlib.util.find_spec("onnxruntime")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        found = sorted(Path(location, "capi").glob("libonnxruntime.so*"), key=lambda p: len(p.name))
        if found:
            return str(found[0])
    raise BackendUnavailableError(
        "the simulated device computes graphs with onnxruntime, which is not installed: "
        "`pip install onnxruntime` (it is a dependency of ascend_async)"
    )


def open_engine(ffi: Any, lib: Any) -> str:
    """Open onnxruntime in the sim module (once per process); return the library's path.

    :raises BackendUnavailableError: if the library cannot be found or opened.
    """
    global _opened
    with _lock:
        if _opened is None:
            path = library_path()
            err = ffi.new("char[1024]")
            if lib.aa_sim_engine_open(path.encode(), err, 1024):
                raise BackendUnavailableError(
                    f"the simulated device cannot load its graph engine: {ffi.string(err).decode(errors='replace')}"
                )
            _opened = path
        return _opened
