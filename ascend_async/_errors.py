"""One exception hierarchy for everything ascend_async raises, and the one table that maps
each AscendCL / GE code to its class.

``AscendError`` is the root. Errors that come from a runtime call carry the numeric ``code``
(an ``aclError`` or a GE ``Status``), the ``api`` that returned it and the runtime's recent
error text (``aclGetRecentErrMsg`` / ``GEGetErrorMsgV3``) as ``detail``.

Every coded error the library raises is built by :func:`acl_error`, :func:`ge_error` or
:func:`device_fault` below, from ``CODES``: classification is by code and by what the library
knows at the call (the API, the graph's bound run mode, that a stream faulted), never by the
runtime's message text.
"""

from __future__ import annotations

import anyio

__all__ = [
    "AclError",
    "AscendError",
    "AscendTimeoutError",
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
    "acl_error",
    "device_fault",
    "ge_error",
]


class AscendError(Exception):
    """Root of every error raised by ascend_async."""


class BackendUnavailableError(AscendError):
    """The requested backend is not built or cannot see a device; the message says what to do."""


def _text(code: int, api: str, detail: str) -> str:
    name = CODES.get(code, ("", None))[0]
    word = "GE status" if code in GE_STATUS_NAMES else "aclError"
    text = f"{api} failed with {word} {code}" + (f" ({name})" if name else "")
    return text + (f": {detail}" if detail else "")


class AclError(AscendError):
    """An AscendCL runtime call returned a non-zero ``aclError``."""

    def __init__(self, code: int, api: str, detail: str = "") -> None:
        self.code = code
        self.api = api
        self.detail = detail
        super().__init__(_text(code, api, detail))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.api, self.detail))


class DeviceError(AclError):
    """Device work failed (a faulted stream, a dead device): the run's results are lost."""


class DeviceMemoryError(AclError, MemoryError):
    """Device or page-locked host memory ran out (``code`` says which call and why)."""


class AscendTimeoutError(AclError, TimeoutError):
    """A wait ran out of time (``aclrtSynchronizeEventWithTimeout`` and friends); nothing was
    lost: the work is still queued and may complete later."""


class GeError(AscendError):
    """A Graph Engine session call returned a non-success ``ge::Status``."""

    def __init__(self, code: int, api: str, detail: str = "") -> None:
        self.code = code
        self.api = api
        self.detail = detail
        super().__init__(_text(code, api, detail))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.api, self.detail))


#: What to do about a :class:`ModeConflictError`, part of its message.
MODE_ADVICE = (
    "GE runs each added graph in one mode only (RunGraph, RunGraphAsync or RunGraphWithStreamAsync), "
    "bound by its first run until the graph is removed. To run the model in another mode as well, "
    "add it again as a second graph (session.add_graph with the same path, bytes or ModelProto "
    "returns a new Graph) and use that one in the other mode; or session.remove_graph(graph) to bind "
    "this one anew."
)


class ModeConflictError(GeError):
    """The graph is already bound to another GE run mode (RunGraph / RunGraphAsync /
    RunGraphWithStreamAsync are exclusive per graph until it is removed). The message says
    what to do: add the model again as a second graph for the other mode."""

    def __init__(self, code: int, api: str, detail: str = "") -> None:
        if MODE_ADVICE not in detail:
            detail = f"{detail}. {MODE_ADVICE}" if detail else MODE_ADVICE
        super().__init__(code, api, detail)


class GraphError(AscendError, ValueError):
    """A model cannot be read, lowered or added (corrupt file, unsupported op/attribute/dtype)."""


class InputError(AscendError, ValueError):
    """Inputs do not match the graph's signature (names, count, dtype, shape, layout)."""


class SessionClosedError(AscendError, anyio.ClosedResourceError):
    """The session (or stream, tensor, batcher) was closed."""


class WatcherError(AscendError, anyio.BrokenResourceError):
    """The completion watcher died; pending and later runs fail with this error."""


class AscendWarning(RuntimeWarning):
    """A failure that cannot raise (a finalizer, a completion for a loop that has closed)."""


# -- the table -------------------------------------------------------------------------------------

_TIMEOUT = AscendTimeoutError
_MEMORY = DeviceMemoryError
_DEVICE = DeviceError

#: code -> (name, class). ``None``: the family default (AclError for an aclError, GeError for a
#: GE status). aclError numbering (acl_base_rt.h, rt_error_codes.h): 1xxxxx a bad call, 2xxxxx a
#: resource, 5xxxxx the runtime or the device (the run is lost). GE statuses are ge::Status.
CODES: dict[int, tuple[str, type[AscendError] | None]] = {
    # parameters and usage: the call was wrong, nothing ran
    100000: ("ACL_ERROR_INVALID_PARAM", None),
    100001: ("ACL_ERROR_UNINITIALIZE", None),
    100002: ("ACL_ERROR_REPEAT_INITIALIZE", None),
    100034: ("ACL_ERROR_STREAM_NOT_SUBSCRIBE", None),
    100035: ("ACL_ERROR_THREAD_NOT_SUBSCRIBE", None),
    100036: ("ACL_ERROR_WAIT_CALLBACK_TIMEOUT", _TIMEOUT),
    100037: ("ACL_ERROR_REPEAT_FINALIZE", None),
    # offline models (acl_mdl.h): a bad file or model, or datasets that do not fit it
    100003: ("ACL_ERROR_INVALID_FILE", None),
    100005: ("ACL_ERROR_INVALID_FILE_SIZE", None),
    100006: ("ACL_ERROR_PARSE_FILE", None),
    100011: ("ACL_ERROR_INVALID_MODEL_ID", None),
    100012: ("ACL_ERROR_DESERIALIZE_MODEL", None),
    100013: ("ACL_ERROR_PARSE_MODEL", None),
    100014: ("ACL_ERROR_READ_MODEL_FAILURE", None),
    100015: ("ACL_ERROR_MODEL_SIZE_INVALID", None),
    100016: ("ACL_ERROR_MODEL_MISSING_ATTR", None),
    100017: ("ACL_ERROR_MODEL_INPUT_NOT_MATCH", None),
    100018: ("ACL_ERROR_MODEL_OUTPUT_NOT_MATCH", None),
    100019: ("ACL_ERROR_MODEL_NOT_DYNAMIC", None),
    107000: ("ACL_ERROR_RT_PARAM_INVALID", None),
    107001: ("ACL_ERROR_RT_INVALID_DEVICEID", None),
    107002: ("ACL_ERROR_RT_CONTEXT_NULL", None),
    107003: ("ACL_ERROR_RT_STREAM_CONTEXT", None),
    107011: ("ACL_ERROR_RT_STREAM_SUBSCRIBE", None),
    107012: ("ACL_ERROR_RT_THREAD_SUBSCRIBE", None),
    107017: ("ACL_ERROR_RT_INVALID_HANDLE", None),
    107019: ("ACL_ERROR_RT_WAIT_TIMEOUT", _TIMEOUT),
    # resources
    200000: ("ACL_ERROR_BAD_ALLOC", _MEMORY),
    200002: ("ACL_ERROR_INVALID_DEVICE", None),
    207000: ("ACL_ERROR_RT_FEATURE_NOT_SUPPORT", None),
    207001: ("ACL_ERROR_RT_MEMORY_ALLOCATION", _MEMORY),
    207002: ("ACL_ERROR_RT_MEMORY_FREE", None),
    207007: ("ACL_ERROR_RT_NO_EVENT_RESOURCE", None),
    207008: ("ACL_ERROR_RT_NO_STREAM_RESOURCE", None),
    207018: ("ACL_ERROR_RT_DEVICE_OOM", _MEMORY),
    245000: ("ACL_ERROR_GE_MEMORY_ALLOCATION", _MEMORY),
    # the runtime or the device: work on the stream is lost
    500000: ("ACL_ERROR_INTERNAL_ERROR", _DEVICE),
    507000: ("ACL_ERROR_RT_INTERNAL_ERROR", _DEVICE),
    507001: ("ACL_ERROR_RT_TS_ERROR", _DEVICE),
    507011: ("ACL_ERROR_RT_MODEL_EXECUTE", _DEVICE),
    507012: ("ACL_ERROR_RT_REPORT_TIMEOUT", _TIMEOUT),
    507014: ("ACL_ERROR_RT_AICORE_TIMEOUT", _DEVICE),
    507015: ("ACL_ERROR_RT_AICORE_EXCEPTION", _DEVICE),
    507018: ("ACL_ERROR_RT_AICPU_EXCEPTION", _DEVICE),
    507046: ("ACL_ERROR_RT_STREAM_SYNC_TIMEOUT", _TIMEOUT),
    507047: ("ACL_ERROR_RT_EVENT_SYNC_TIMEOUT", _TIMEOUT),
    507053: ("ACL_ERROR_RT_DEVICE_MEM_ERROR", _DEVICE),
    545601: ("ACL_ERROR_GE_MODEL_EXECUTE_TIMEOUT", _DEVICE),
    # GE statuses (ge::Status)
    0xFFFFFFFF: ("FAILED", None),
    1343225956: ("UNSUPPORTED", None),
    1343225857: ("PARAM_INVALID", None),
    1343225856: ("MEMALLOC_FAILED", _MEMORY),
    1343225957: ("OUT_OF_MEMORY", _MEMORY),
}

#: GE statuses (the rest of CODES are aclErrors).
GE_STATUS_NAMES: dict[int, str] = {
    code: CODES[code][0] for code in (0xFFFFFFFF, 1343225956, 1343225857, 1343225856, 1343225957)
}
ACL_ERROR_NAMES: dict[int, str] = {c: n for c, (n, _) in CODES.items() if c not in GE_STATUS_NAMES}
_GE_UNSUPPORTED = 1343225956
#: The run APIs whose UNSUPPORTED means "the graph is bound to another run mode" (GE §2.11).
_MODE_APIS = frozenset({"RunGraph", "RunGraphAsync", "RunGraphWithStreamAsync"})


def _family_default(code: int) -> type[AclError]:
    # An aclError not in the table: 5xxxxx is the runtime/device family (work lost).
    return DeviceError if 500000 <= code < 600000 else AclError


def acl_error(code: int, api: str, detail: str = "") -> AclError:
    """The error for a non-zero ``aclError`` returned by ``api``."""
    cls = CODES.get(code, ("", None))[1]
    if cls is None or not issubclass(cls, AclError):
        cls = _family_default(code)
    return cls(code, api, detail)


def ge_error(
    status: int, api: str, detail: str = "", *, bound_mode: str | None = None, mode: str | None = None
) -> AscendError:
    """The error for a non-success GE ``status`` returned by ``api``.

    ``bound_mode``/``mode``: the run mode the graph is bound to and the one this call used, when
    the caller knows them; a run refused while they differ is a :class:`ModeConflictError`, as
    is UNSUPPORTED from a run API (GE's documented answer to a mode conflict).
    """
    if api in _MODE_APIS and (status == _GE_UNSUPPORTED or (bound_mode is not None and bound_mode != mode)):
        return ModeConflictError(status, api, detail)
    cls = CODES.get(status, ("", None))[1]
    if cls is not None and issubclass(cls, AclError):  # memory ran out inside GE
        return cls(status, api, detail)
    return GeError(status, api, detail)


def device_fault(code: int, api: str, detail: str = "") -> AclError:
    """The error of a run lost because its stream faulted with ``code`` (whatever the code's
    family: the library knows the stream failed). Memory faults stay DeviceMemoryError."""
    err = acl_error(code, api, detail)
    if isinstance(err, (DeviceError, DeviceMemoryError)):
        return err
    return DeviceError(code, api, detail)
