"""Test helper: run an ONNX model synchronously through the sim module's public C ABI.

Only ``aclInit`` / ``aa_ge_initialize`` / ``aa_session_*`` are used (AddGraph from ONNX bytes,
then RunGraph with host tensors), so the tests exercise the same path GE's RunGraph takes.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx

from ascend_async._engine import open_engine
from ascend_async._errors import GraphError
from ascend_async._graph import GE_TO_NUMPY, NUMPY_TO_GE
from ascend_async._native import _sim

ffi = _sim.ffi
lib = _sim.lib

_ACL_ERROR_REPEAT_INITIALIZE = 100002
_GE_BF16 = 27  # ge::DT_BF16
_graph_ids = itertools.count(1)
_state: dict[str, Any] = {}


class RunError(RuntimeError):
    """A GE call failed while running a program."""


class AddGraphError(RunError):
    """AddGraph refused the model; the message carries GE's text."""


def _check(status: int, api: str, error: type[RunError] = RunError) -> None:
    if status != 0:
        buf = ffi.new("char[]", 2048)
        lib.aa_ge_get_error_msg(buf, 2048)
        raise error(f"{api} failed with status {status}: {ffi.string(buf).decode(errors='replace')}")


def _init() -> None:
    open_engine(ffi, lib)
    if not _state.get("initialized"):
        rc = lib.aclInit(ffi.NULL)
        if rc not in (0, _ACL_ERROR_REPEAT_INITIALIZE):
            raise RunError(f"aclInit failed with {rc}")
        _check(lib.aa_ge_initialize(ffi.NULL, 0), "aa_ge_initialize")
        _state["initialized"] = True


def _ge_dtype(dtype: np.dtype[Any]) -> int:
    if dtype in NUMPY_TO_GE:
        return NUMPY_TO_GE[dtype]
    if dtype.name == "bfloat16":  # ml_dtypes
        return _GE_BF16
    raise GraphError(f"dtype {dtype} has no ge::DataType")


def _np_dtype(ge: int) -> np.dtype[Any]:
    if ge in GE_TO_NUMPY:
        return GE_TO_NUMPY[ge]
    if ge == _GE_BF16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    raise RunError(f"ge::DataType {ge} has no numpy dtype")


def run_bytes_sync(model: bytes, inputs: list[np.ndarray], max_outputs: int = 16) -> list[np.ndarray]:
    """Runs the serialized model once in a fresh session (AddGraph, RunGraph, RemoveGraph).

    :raises RunError: naming the GE call that failed, with GE's text.
    """
    return _add_and_run(model, inputs, max_outputs, RunError)


def run_case(model: bytes, inputs: list[np.ndarray], max_outputs: int = 32) -> list[np.ndarray]:
    """As :func:`run_bytes_sync`, but an AddGraph refusal raises :class:`AddGraphError` (told
    apart from run failures by the conformance suite)."""
    return _add_and_run(model, inputs, max_outputs, AddGraphError)


def run_model(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs ``model`` once through RunGraph."""
    return run_bytes_sync(model.SerializeToString(), inputs)


def _add_and_run(model: bytes, inputs: list[np.ndarray], max_outputs: int, refused: type[RunError]) -> list[np.ndarray]:
    _init()
    out_session = ffi.new("aa_session **")
    _check(lib.aa_session_create(ffi.NULL, 0, out_session), "aa_session_create")
    session = out_session[0]
    graph_id = next(_graph_ids)
    try:
        _check(lib.aa_session_add_graph_onnx(session, graph_id, model, len(model), ffi.NULL, 0), "AddGraph", refused)
        try:
            return _run(session, graph_id, inputs, max_outputs)
        finally:
            _check(lib.aa_session_remove_graph(session, graph_id), "aa_session_remove_graph")
    finally:
        _check(lib.aa_session_destroy(session), "aa_session_destroy")


def _run(session: Any, graph_id: int, inputs: list[np.ndarray], max_outputs: int) -> list[np.ndarray]:
    """RunGraph with host tensors; the outputs copied into numpy arrays and released."""
    arrays = [np.ascontiguousarray(a) if np.ndim(a) else np.array(a) for a in inputs]
    tin = ffi.new("aa_tensor[]", max(1, len(arrays)))
    for t, a in zip(tin, arrays, strict=False):
        t.addr = ffi.from_buffer(a) if a.nbytes else ffi.NULL
        t.size = a.nbytes
        t.dtype = _ge_dtype(a.dtype)
        t.format = 2  # AA_FORMAT_ND
        t.placement = 1  # AA_PLACEMENT_HOST
        t.ndim = a.ndim
        for d, n in enumerate(a.shape):
            t.dims[d] = n
    tout = ffi.new("aa_tensor[]", max_outputs)
    n_out = ffi.new("size_t *", max_outputs)
    _check(lib.aa_session_run_graph(session, graph_id, tin, len(arrays), tout, n_out), "aa_session_run_graph")
    results: list[np.ndarray] = []
    try:
        for i in range(n_out[0]):
            t = tout[i]
            shape = tuple(t.dims[d] for d in range(t.ndim))
            dtype = _np_dtype(t.dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = bytes(ffi.buffer(t.addr, nbytes)) if nbytes else b""
            results.append(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())
    finally:
        for i in range(n_out[0]):
            lib.aa_tensor_release(ffi.addressof(tout, i))
    return results
