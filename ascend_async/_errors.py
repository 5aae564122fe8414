"""One exception hierarchy for everything ascend_async raises.

``AscendError`` is the root. Errors that come from a runtime call carry the numeric ``code``
(an ``aclError`` or a GE ``Status``), the ``api`` that returned it and the runtime's recent
error text (``aclGetRecentErrMsg`` / ``GEGetErrorMsgV3``) as ``detail``.
"""

from __future__ import annotations

import anyio

__all__ = [
    "AclError",
    "AscendError",
    "AscendWarning",
    "BackendUnavailableError",
    "DeviceError",
    "DeviceMemoryError",
    "GeError",
    "GraphError",
    "InputError",
    "ModeConflictError",
    "SessionClosedError",
    "WatcherError",
]


class AscendError(Exception):
    """Root of every error raised by ascend_async."""


class BackendUnavailableError(AscendError):
    """The requested backend is not built or cannot see a device; the message says what to do."""


class AclError(AscendError):
    """An AscendCL runtime call returned a non-zero ``aclError``."""

    def __init__(self, code: int, api: str, detail: str = "") -> None:
        self.code = code
        self.api = api
        self.detail = detail
        text = f"{api} failed with aclError {code}"
        name = ACL_ERROR_NAMES.get(code)
        if name:
            text += f" ({name})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.api, self.detail))


class DeviceError(AclError):
    """Device work failed (a faulted stream, a dead device): the run's results are lost."""


class DeviceMemoryError(AclError, MemoryError):
    """Device or page-locked host memory ran out."""


class GeError(AscendError):
    """A Graph Engine session call returned a non-success ``ge::Status``."""

    def __init__(self, code: int, api: str, detail: str = "") -> None:
        self.code = code
        self.api = api
        self.detail = detail
        name = GE_STATUS_NAMES.get(code, "")
        text = f"{api} failed with GE status {code}" + (f" ({name})" if name else "")
        if detail:
            text += f": {detail}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.api, self.detail))


class ModeConflictError(GeError):
    """The graph is already bound to another GE run mode (RunGraph / RunGraphAsync /
    RunGraphWithStreamAsync are exclusive per graph until it is removed)."""


class GraphError(AscendError, ValueError):
    """A model cannot be read, lowered or added (corrupt file, unsupported op/attribute/dtype)."""


class InputError(AscendError, ValueError):
    """Inputs do not match the graph's signature (names, count, dtype, shape, layout)."""


class SessionClosedError(AscendError, anyio.ClosedResourceError):
    """The session (or stream, tensor) was closed."""


class WatcherError(AscendError, anyio.BrokenResourceError):
    """The completion watcher died; pending and later runs fail with this error."""


class AscendWarning(RuntimeWarning):
    """A failure that cannot raise (a finalizer, a completion for a loop that has closed)."""


ACL_ERROR_NAMES: dict[int, str] = {
    100000: "ACL_ERROR_INVALID_PARAM",
    100001: "ACL_ERROR_UNINITIALIZE",
    100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100034: "ACL_ERROR_STREAM_NOT_SUBSCRIBE",
    100035: "ACL_ERROR_THREAD_NOT_SUBSCRIBE",
    200000: "ACL_ERROR_BAD_ALLOC",
    200002: "ACL_ERROR_INVALID_DEVICE",
    107000: "ACL_ERROR_RT_PARAM_INVALID",
    107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL",
    107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107011: "ACL_ERROR_RT_STREAM_SUBSCRIBE",
    107012: "ACL_ERROR_RT_THREAD_SUBSCRIBE",
    107017: "ACL_ERROR_RT_INVALID_HANDLE",
    207000: "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
    207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207002: "ACL_ERROR_RT_MEMORY_FREE",
    207007: "ACL_ERROR_RT_NO_EVENT_RESOURCE",
    207018: "ACL_ERROR_RT_DEVICE_OOM",
    507000: "ACL_ERROR_RT_INTERNAL_ERROR",
    507001: "ACL_ERROR_RT_TS_ERROR",
    507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507012: "ACL_ERROR_RT_REPORT_TIMEOUT",
    507015: "ACL_ERROR_RT_AICORE_EXCEPTION",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
    507047: "ACL_ERROR_RT_EVENT_SYNC_TIMEOUT",
    507053: "ACL_ERROR_RT_DEVICE_MEM_ERROR",
}

GE_STATUS_NAMES: dict[int, str] = {
    0xFFFFFFFF: "FAILED",
    1343225956: "UNSUPPORTED",
    1343225857: "PARAM_INVALID",
    1343225856: "MEMALLOC_FAILED",
    1343225957: "OUT_OF_MEMORY",
    545601: "ACL_ERROR_GE_MODEL_EXECUTE_TIMEOUT",
}

#: aclError codes that mean memory ran out.
MEMORY_CODES = frozenset({200000, 207001, 207018})
