"""Lowering of an ONNX model into the simulated device's program (``aa_sim_program``).

The program is built through the builder calls of ``cdefs/sim.h``; the C side checks every
node (op, attributes, dtypes) at finalize, so anything the kernels do not support is refused
here, with a :class:`GraphError` naming the op type and node, and never gives a wrong answer
at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ._errors import GraphError
from ._graph import NUMPY_TO_GE

__all__ = ["MIN_OPSET", "lower_model", "max_opset", "onnx_to_ge_dtype"]

MIN_OPSET = 13

# onnx.TensorProto.DataType -> ge::DataType (AA_DT_*)
_ONNX_TO_GE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 0,
    onnx.TensorProto.FLOAT16: 1,
    onnx.TensorProto.INT8: 2,
    onnx.TensorProto.INT32: 3,
    onnx.TensorProto.UINT8: 4,
    onnx.TensorProto.INT16: 6,
    onnx.TensorProto.UINT16: 7,
    onnx.TensorProto.UINT32: 8,
    onnx.TensorProto.INT64: 9,
    onnx.TensorProto.UINT64: 10,
    onnx.TensorProto.DOUBLE: 11,
    onnx.TensorProto.BOOL: 12,
}
_DT_UNDEFINED = 28
_DEFAULT_DOMAINS = ("", "ai.onnx")


def max_opset() -> int:
    """The newest default-domain opset the installed onnx knows."""
    return int(onnx.defs.onnx_opset_version())


def onnx_to_ge_dtype(elem_type: int, what: str) -> int:
    """The ge::DataType of an ONNX element type, or GraphError naming ``what``."""
    try:
        return _ONNX_TO_GE[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise GraphError(f"{what}: dtype {name} is not supported") from None


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    raise GraphError("the model imports no default-domain (ai.onnx) opset")


class _Builder:
    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi = ffi
        self.lib = lib
        raw = lib.aa_sim_program_new()
        if raw == ffi.NULL:
            raise MemoryError("aa_sim_program_new failed")
        self.prog = ffi.gc(raw, lib.aa_sim_program_release)
        self.ids: dict[str, int] = {}

    def fail(self, context: str = "") -> GraphError:
        text = self.ffi.string(self.lib.aa_sim_program_error(self.prog)).decode("utf-8", "replace")
        return GraphError(f"{context}{text}" if context else text)

    def check(self, rc: int) -> int:
        if rc < 0:
            raise self.fail()
        return rc

    def add_value(self, name: str, dtype: int, dims: list[int] | None) -> int:
        if dims is None:
            vid = self.lib.aa_sim_program_add_value(self.prog, name.encode(), dtype, -1, self.ffi.NULL)
        else:
            arr = self.ffi.new("int64_t[]", dims or [0])
            vid = self.lib.aa_sim_program_add_value(self.prog, name.encode(), dtype, len(dims), arr)
        self.check(vid)
        self.ids[name] = int(vid)
        return int(vid)

    def add_constant(self, name: str, array: np.ndarray) -> int:
        dtype = _numpy_to_ge(array.dtype, f"initializer '{name}'")
        array = np.ascontiguousarray(array)
        vid = self.add_value(name, dtype, list(array.shape))
        buf = self.ffi.from_buffer(array) if array.nbytes else self.ffi.NULL
        self.check(self.lib.aa_sim_program_set_initializer(self.prog, vid, buf, array.nbytes))
        return vid


def _numpy_to_ge(dtype: np.dtype[Any], what: str) -> int:
    try:
        return NUMPY_TO_GE[np.dtype(dtype)]
    except KeyError:
        raise GraphError(f"{what}: dtype {dtype} is not supported") from None


def _value_type(vi: onnx.ValueInfoProto, what: str) -> tuple[int, list[int] | None]:
    if not vi.type.HasField("tensor_type"):
        raise GraphError(f"{what} '{vi.name}': only tensor values are supported")
    tt = vi.type.tensor_type
    dtype = onnx_to_ge_dtype(tt.elem_type, f"{what} '{vi.name}'")
    if not tt.HasField("shape"):
        return dtype, None
    dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    return dtype, dims


def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} (node '{node.name}')"


def _constant_array(node: onnx.NodeProto) -> np.ndarray:
    if len(node.attribute) != 1:
        raise GraphError(f"Constant (node '{node.name}'): exactly one value attribute expected")
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    raise GraphError(f"Constant (node '{node.name}'): attribute '{attr.name}' is not supported")


def _add_attribute(b: _Builder, nid: int, node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    lib, ffi, prog = b.lib, b.ffi, b.prog
    name = attr.name.encode()
    kind = attr.type
    A = onnx.AttributeProto
    if kind == A.INT:
        rc = lib.aa_sim_program_attr_int(prog, nid, name, attr.i)
    elif kind == A.FLOAT:
        rc = lib.aa_sim_program_attr_float(prog, nid, name, attr.f)
    elif kind == A.INTS:
        vals = list(attr.ints)
        rc = lib.aa_sim_program_attr_ints(prog, nid, name, ffi.new("int64_t[]", vals or [0]), len(vals))
    elif kind == A.FLOATS:
        fl = list(attr.floats)
        rc = lib.aa_sim_program_attr_floats(prog, nid, name, ffi.new("float[]", fl or [0.0]), len(fl))
    elif kind == A.STRING:
        rc = lib.aa_sim_program_attr_string(prog, nid, name, attr.s)
    elif kind == A.TENSOR:
        arr = np.ascontiguousarray(numpy_helper.to_array(attr.t))
        dt = _numpy_to_ge(arr.dtype, f"{node.op_type} (node '{node.name}') attribute '{attr.name}'")
        dims = ffi.new("int64_t[]", list(arr.shape) or [0])
        buf = ffi.from_buffer(arr) if arr.nbytes else ffi.NULL
        rc = lib.aa_sim_program_attr_tensor(prog, nid, name, dt, arr.ndim, dims, buf, arr.nbytes)
    else:
        kname = A.AttributeType.Name(kind)
        raise GraphError(f"{_where(node)}: attribute '{attr.name}' of type {kname} is not supported")
    b.check(rc)


def lower_model(model: onnx.ModelProto, ffi: Any, lib: Any) -> Any:
    """Lowers ``model`` to a finalized ``aa_sim_program*`` (released by the garbage collector).

    Raises GraphError for anything the simulated device does not support.
    """
    opset = _default_opset(model)
    newest = max_opset()
    if opset < MIN_OPSET or opset > newest:
        raise GraphError(f"opset {opset} is not supported (ai.onnx {MIN_OPSET} to {newest})")
    graph = model.graph
    b = _Builder(ffi, lib)
    init_names = {t.name for t in graph.initializer}

    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise GraphError(f"initializer '{t.name}': external data is not supported")
        b.add_constant(t.name, numpy_helper.to_array(t))
    for t in graph.sparse_initializer:
        raise GraphError(f"sparse initializer '{t.values.name}' is not supported")

    for vi in graph.input:
        if vi.name in init_names:
            continue  # an initializer with a default value: a constant of the program
        dtype, dims = _value_type(vi, "input")
        if dims is None:
            raise GraphError(f"input '{vi.name}': the shape (rank) must be known")
        vid = b.add_value(vi.name, dtype, dims)
        b.check(lib.aa_sim_program_add_input(b.prog, vid))

    # Graph outputs produced by nodes carry their declared dtype: finalize refuses a mismatch.
    produced = {n for node in graph.node if node.op_type != "Constant" for n in node.output}
    for vi in graph.output:
        if vi.name in produced and vi.name not in b.ids and vi.type.HasField("tensor_type"):
            elem = vi.type.tensor_type.elem_type
            declared = onnx_to_ge_dtype(elem, f"output '{vi.name}'") if elem else _DT_UNDEFINED
            b.add_value(vi.name, declared, None)

    for node in graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            raise GraphError(f"{node.op_type} (node '{node.name}'): domain '{node.domain}' is not supported")
        if node.op_type == "Constant":
            if len(node.output) != 1:
                raise GraphError(f"Constant (node '{node.name}'): one output expected")
            b.add_constant(node.output[0], _constant_array(node))
            continue
        ins: list[int] = []
        for name in node.input:
            if not name:
                ins.append(-1)
            elif name in b.ids:
                ins.append(b.ids[name])
            else:
                ins.append(b.add_value(name, _DT_UNDEFINED, None))
        outs: list[int] = []
        for name in node.output:
            if not name:
                raise GraphError(f"{_where(node)}: omitted optional outputs are not supported")
            outs.append(b.ids[name] if name in b.ids else b.add_value(name, _DT_UNDEFINED, None))
        nid = b.check(
            lib.aa_sim_program_add_node(
                b.prog,
                node.op_type.encode(),
                node.name.encode(),
                opset,
                len(ins),
                ffi.new("int32_t[]", ins or [0]),
                len(outs),
                ffi.new("int32_t[]", outs or [0]),
            )
        )
        for attr in node.attribute:
            if attr.ref_attr_name:
                raise GraphError(f"{node.op_type} (node '{node.name}'): attribute references are not supported")
            _add_attribute(b, nid, node, attr)

    for vi in graph.output:
        if vi.name not in b.ids:
            raise GraphError(f"output '{vi.name}' is not produced by the graph")
        b.check(lib.aa_sim_program_add_output(b.prog, b.ids[vi.name]))

    if lib.aa_sim_program_finalize(b.prog) != 0:
        raise b.fail()
    return b.prog
