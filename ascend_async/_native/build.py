"""cffi builders (API mode, out of line) for the two backend modules.

``ffi_sim`` is always built: the simulated device plus the common helpers. ``ffi_cann`` is
built only when a CANN toolkit is found (``ASCEND_HOME_PATH`` or ``ASCEND_TOOLKIT_HOME``);
see ``cann_build.py``. Both modules read the very same cdef files for the shared ABI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CDEFS = HERE / "cdefs"
SHARED_CDEFS = ("acl_rt.h", "ge_session.h", "support.h", "acl_mdl.h", "offline.h")

# -O3 (which vectorises loops); no -march=native (wheels must run on any x86-64 / aarch64).
C_FLAGS = ["-std=gnu11", "-O3", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]


def read_cdefs(*names: str) -> str:
    """The cdef text of the named files, in order."""
    return "\n".join((CDEFS / name).read_text() for name in names)


def _rel(paths: list[Path]) -> list[str]:
    # setuptools wants paths relative to the project root (where setup.py runs).
    root = HERE.parent.parent
    return sorted(str(p.relative_to(root)) for p in paths)


def make_sim_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(read_cdefs(*SHARED_CDEFS, "sim.h"))
    sources = list((HERE / "sim").glob("*.c")) + list((HERE / "common").glob("*.c"))
    ffi.set_source(
        "ascend_async._native._sim",
        '#include "sim/sim_api.h"',
        sources=_rel(sources),
        include_dirs=[str(HERE.relative_to(HERE.parent.parent))],
        extra_compile_args=C_FLAGS,
        extra_link_args=["-pthread"],
        libraries=["m", "dl"],
    )
    return ffi


ffi_sim = make_sim_ffi()


def _cann_ffi() -> FFI | None:
    sys.path.insert(0, str(HERE))
    try:
        from cann_build import make_cann_ffi  # type: ignore[import-not-found]
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    return make_cann_ffi(read_cdefs(*SHARED_CDEFS), HERE)


ffi_cann = _cann_ffi()

if __name__ == "__main__":
    ffi_sim.compile(verbose=bool(os.environ.get("VERBOSE")))
