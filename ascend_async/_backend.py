"""Choose and load a backend module, and turn return codes into exceptions.

``ASCEND_ASYNC_BACKEND`` = ``auto`` (default) | ``sim`` | ``cann``. ``auto`` picks CANN only when
its module is built *and* a device is visible, otherwise the simulated device. Both modules
expose the same cffi declarations for AscendCL and the session ABI; the sim adds its extras.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any

from ._errors import AclError, AscendError, BackendUnavailableError
from ._errors import acl_error as _acl_error
from ._errors import ge_error as _ge_error

__all__ = ["Backend", "backend_info", "get_backend"]


@dataclass(frozen=True)
class Backend:
    """A loaded backend module: its cffi ``ffi``/``lib`` and why it was chosen."""

    name: str
    ffi: Any
    lib: Any
    reason: str

    @property
    def is_sim(self) -> bool:
        return self.name == "sim"

    def acl_message(self) -> str:
        """The calling thread's recent AscendCL error text (read and cleared)."""
        p = self.lib.aclGetRecentErrMsg()
        return "" if p == self.ffi.NULL else str(self.ffi.string(p).decode(errors="replace"))

    def ge_message(self) -> str:
        """The calling thread's GE error text (GEGetErrorMsgV3: read and cleared)."""
        buf = self.ffi.new("char[2048]")
        self.lib.aa_ge_get_error_msg(buf, 2048)
        return str(self.ffi.string(buf).decode(errors="replace"))

    def check(self, rc: int, api: str) -> None:
        """Raise the typed error for a non-zero aclError ``rc`` returned by ``api``."""
        if rc:
            raise self.acl_error(rc, api)

    def acl_error(self, rc: int, api: str, detail: str | None = None) -> AclError:
        """The table's error for ``rc`` (_errors.CODES), with the runtime's recent error text."""
        return _acl_error(rc, api, self.acl_message() if detail is None else detail)

    def check_ge(self, status: int, api: str) -> None:
        """Raise for a non-success GE status, with GE's error text."""
        if status:
            raise self.ge_error(status, api)

    def ge_error(self, status: int, api: str, *, bound_mode: str | None = None, mode: str | None = None) -> AscendError:
        """The table's error for GE ``status`` (_errors.CODES), with GE's error text; classified
        by code and by the run modes the caller knows, never by that text."""
        return _ge_error(status, api, self.ge_message(), bound_mode=bound_mode, mode=mode)


_lock = threading.Lock()
_cached: Backend | None = None


def _load_sim(reason: str) -> Backend:
    from ._engine import open_engine

    mod = importlib.import_module("ascend_async._native._sim")
    open_engine(mod.ffi, mod.lib)
    return Backend("sim", mod.ffi, mod.lib, reason)


def _load_cann(reason: str) -> Backend:
    path = os.environ.get("ASCEND_ASYNC_CANN_MODULE")
    try:
        if path:  # a module built elsewhere (the stand-in contract tests use this)
            spec = importlib.util.spec_from_file_location("ascend_async._native._cann", path)
            if spec is None or spec.loader is None:
                raise ImportError(path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module("ascend_async._native._cann")
    except ImportError as exc:
        raise BackendUnavailableError(
            "the CANN backend is not built: source the CANN environment "
            "(e.g. `source /usr/local/Ascend/cann/set_env.sh`, which sets ASCEND_HOME_PATH) and "
            f"reinstall ascend_async (`pip install .`) so the GE shim is compiled ({exc})"
        ) from exc
    return Backend("cann", mod.ffi, mod.lib, reason)


def _cann_devices(backend: Backend) -> int:
    count = backend.ffi.new("uint32_t*")
    if backend.lib.aclrtGetDeviceCount(count):
        return 0
    return int(count[0])


def get_backend() -> Backend:
    """The process's backend, chosen once (thread-safe)."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = _choose()
        return _cached


def _choose() -> Backend:
    want = os.environ.get("ASCEND_ASYNC_BACKEND", "auto").strip().lower() or "auto"
    if want == "sim":
        return _load_sim("ASCEND_ASYNC_BACKEND=sim")
    if want == "cann":
        backend = _load_cann("ASCEND_ASYNC_BACKEND=cann")
        if not _cann_devices(backend):
            raise BackendUnavailableError(
                "ASCEND_ASYNC_BACKEND=cann but no Ascend device is visible "
                "(check the driver, `npu-smi info` and ASCEND_RT_VISIBLE_DEVICES)"
            )
        return backend
    if want != "auto":
        raise BackendUnavailableError(f"ASCEND_ASYNC_BACKEND={want!r} is not a backend: use auto, sim or cann")
    try:
        backend = _load_cann("auto: the CANN module is built and a device is visible")
    except BackendUnavailableError:
        return _load_sim("auto: the CANN module is not built (no CANN toolkit at install time)")
    if _cann_devices(backend):
        return backend
    return _load_sim("auto: the CANN module is built but no Ascend device is visible")


def backend_info() -> dict[str, object]:
    """Which backend this process uses and why, plus what is built."""
    backend = get_backend()
    cann_built = importlib.util.find_spec("ascend_async._native._cann") is not None
    info: dict[str, object] = {
        "backend": backend.name,
        "reason": backend.reason,
        "cann_module_built": cann_built,
        "ascend_home": os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME"),
    }
    count = backend.ffi.new("uint32_t*")
    info["devices"] = int(count[0]) if backend.lib.aclrtGetDeviceCount(count) == 0 else 0
    if backend.is_sim:
        cfg = backend.ffi.new("aa_sim_config*")
        backend.lib.aa_sim_get_config(cfg)
        info["sim"] = {
            "device_count": cfg.device_count,
            "workers": cfg.workers,
            "memory_bytes": cfg.memory_bytes,
            "max_events": cfg.max_events,
            "engine_threads": cfg.engine_threads,
        }
    from . import _ge
    from ._ge_options import OPTIONS

    # GE's global options (set_ge_options) and what this backend does with each option it takes
    info["ge_options"] = {
        "global": _ge.global_options(),
        "backend": {k: (o.sim if backend.is_sim else "passed to GE") for k, o in OPTIONS.items()},
    }
    return info
