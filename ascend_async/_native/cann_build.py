"""Builder for the CANN backend module (only when a CANN toolkit is installed)."""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI


def cann_home() -> str | None:
    """The CANN install root from the environment set_env.sh exports, or None."""
    return os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or None


def make_cann_ffi(shared_cdefs: str, native_dir: Path) -> FFI | None:
    home = cann_home()
    if home is None:
        print("ascend_async: CANN not found (ASCEND_HOME_PATH unset): building the sim backend only")
        return None
    raise RuntimeError("the CANN backend build is not written yet")
