"""Graph: an ONNX model, its signature, and the checks that run before anything is submitted."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ._dtypes import CARRIED, DT_BF16, GE_TO_NUMPY, NUMPY_TO_GE, ge_dtype
from ._errors import GraphError, InputError
from ._memory import DeviceTensor

if TYPE_CHECKING:
    import onnx


__all__ = ["GE_TO_NUMPY", "NUMPY_TO_GE", "Graph", "TensorSpec"]

Dim = int | str | None
GraphSource = Union[str, "os.PathLike[str]", bytes, "onnx.ModelProto"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph: name, dtype and shape (ints, symbolic names or None)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...] | None

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def _load_model(source: GraphSource) -> tuple[onnx.ModelProto, bytes]:
    import onnx

    try:
        if isinstance(source, onnx.ModelProto):
            return source, source.SerializeToString()
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                data = f.read()
        else:
            raise GraphError(f"cannot read a graph from {type(source).__name__}: pass a path, bytes or onnx.ModelProto")
        model = onnx.load_model_from_string(data)
    except GraphError:
        raise
    except OSError as exc:
        raise GraphError(f"cannot read model {source!r}: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise GraphError(f"not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node and not model.graph.output:
        raise GraphError("not a valid ONNX model: it has no graph")
    return model, data


_DEFAULT_DOMAINS = ("", "ai.onnx")


def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """onnxruntime's CPU kernels: (domain, op) -> the op versions each one covers."""
    from onnxruntime.capi import _pybind_state

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in _pybind_state.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            kernels.setdefault((k.domain, k.op_name), []).append(tuple(k.version_range))
    return kernels


def unsupported_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node, subgraphs included, whose op onnxruntime's CPU provider cannot run at the
    model's opset: no kernel, and no ONNX function body to expand it into. Unnamed nodes are
    named by their index and op."""
    import onnx

    kernels = _cpu_kernels()
    opsets = {("" if i.domain in _DEFAULT_DOMAINS else i.domain): int(i.version) for i in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    found: list[str] = []

    def supported(node: onnx.NodeProto) -> bool:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        if (node.domain, node.op_type) in local:
            return True
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        except Exception:  # onnx.defs.SchemaError: an op onnx does not know
            schema = None
        since = schema.since_version if schema is not None else opsets.get(domain, 1)
        if any(lo <= since <= hi for lo, hi in kernels.get((domain, node.op_type), ())):
            return True
        # An op defined by an ONNX function body is expanded by onnxruntime when it has no kernel.
        return schema is not None and bool(
            getattr(schema, "has_function", False) or getattr(schema, "has_context_dependent_function", False)
        )

    def walk(graph: onnx.GraphProto, where: str) -> None:
        for index, node in enumerate(graph.node):
            if not supported(node):
                label = f"'{node.name}'" if node.name else f"#{index}"
                found.append(f"{node.op_type} (node {label}{where})")
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    walk(sub, f" in a subgraph of {node.op_type} node {node.name or f'#{index}'}")

    walk(model.graph, "")
    return found


def _spec(vi: Any) -> TensorSpec:
    from onnx import TensorProto, helper

    tt = vi.type.tensor_type
    try:  # bfloat16 by its ge::DataType: older onnx releases name it uint16, its storage type
        dtype = (
            GE_TO_NUMPY[DT_BF16]
            if tt.elem_type == TensorProto.BFLOAT16
            else np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        )
    except Exception as exc:
        raise GraphError(f"{vi.name!r} has an unsupported element type {tt.elem_type}") from exc
    shape: tuple[Dim, ...] | None = None
    if tt.HasField("shape"):
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorSpec(vi.name, dtype, shape)


class Graph:
    """An ONNX model with its signature, ready to add to a :class:`Session`.

    Build it from a path, the serialized bytes or an ``onnx.ModelProto``. The signature
    (``inputs``/``outputs``) is known before anything runs; symbolic dims resolve per run.
    """

    def __init__(self, source: GraphSource, *, name: str | None = None) -> None:
        model, data = _load_model(source)
        init_names = {t.name for t in model.graph.initializer}
        #: The serialized model: what AddGraph parses (the weights are kept once, here).
        self.model_bytes: bytes = data
        self.name: str = name or model.graph.name or "graph"
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(vi) for vi in model.graph.input if vi.name not in init_names)
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(vi) for vi in model.graph.output)
        uncarried = [
            f"{k} {s}"
            for k, ss in (("input", self.inputs), ("output", self.outputs))
            for s in ss
            if ge_dtype(s.dtype) is None
        ]
        if uncarried:  # refused here, before add_graph: nothing could pass or read them back
            raise GraphError(f"{self.name}: GE tensors cannot carry {'; '.join(uncarried)} (they carry {CARRIED})")
        self._input_names = tuple(s.name for s in self.inputs)
        # The last signature bind accepted, as (dtype, shape) per input: a call that matches it
        # needs no checks beyond the comparison (bind's fast path; races only cost a re-check).
        self._accepted: tuple[tuple[np.dtype[Any], tuple[int, ...]], ...] | None = None

    @property
    def model(self) -> onnx.ModelProto:
        """The model, parsed anew from :attr:`model_bytes` (a Graph keeps only the bytes)."""
        import onnx

        return onnx.load_model_from_string(self.model_bytes)

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"<Graph {self.name!r} ({ins}) -> ({outs})>"

    def explain_refusal(self, detail: str) -> str:
        """The backend's reason for refusing this model, with every node whose op has no kernel.

        onnxruntime (the sim's engine) stops at the first op it cannot place; this names them all.
        """
        missing = unsupported_nodes(self.model)
        if not missing:
            return detail
        return f"{len(missing)} node(s) use an op the backend does not implement: {'; '.join(missing)}. ({detail})"

    def bind(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray | DeviceTensor]:
        """Check inputs against the signature; return them in signature order.

        :raises InputError: naming the input and the mismatch (names, count, dtype, shape,
            layout), before anything is allocated or submitted.
        """
        accepted = self._accepted
        if accepted is not None and type(inputs) is dict and len(inputs) == len(accepted):
            # The fast path: open DeviceTensors and C-contiguous arrays, with the signature bind
            # accepted last.
            try:
                values = [inputs[n] for n in self._input_names]
            except KeyError:
                return self._bind(inputs)
            for v, (dtype, shape) in zip(values, accepted, strict=True):
                if type(v) is np.ndarray:
                    if v.shape != shape or v.dtype != dtype or not v.flags.c_contiguous:
                        return self._bind(inputs)
                elif type(v) is not DeviceTensor or v.is_closed or v.shape != shape or v.dtype != dtype:
                    return self._bind(inputs)
            return values
        return self._bind(inputs)

    def _bind(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray | DeviceTensor]:
        specs = self.inputs
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in self._input_names]
            if unknown:
                raise InputError(
                    f"{self.name}: unknown input {unknown[0]!r}; the graph takes " + ", ".join(map(str, specs))
                )
            missing = [n for n in self._input_names if n not in inputs]
            if missing:
                raise InputError(
                    f"{self.name}: missing input {missing[0]!r} ({specs[self._input_names.index(missing[0])]})"
                )
            values = [inputs[n] for n in self._input_names]
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            if len(inputs) != len(specs):
                raise InputError(f"{self.name}: takes {len(specs)} inputs, got {len(inputs)}")
            values = list(inputs)
        else:
            raise InputError(
                f"{self.name}: inputs must be a mapping by name or a sequence, not {type(inputs).__name__}"
            )

        symbols: dict[str, tuple[int, str]] = {}
        for spec, v in zip(specs, values, strict=True):
            if isinstance(v, DeviceTensor):
                v.check_open()
                dtype, shape = v.dtype, v.shape
            elif isinstance(v, np.ndarray):
                dtype, shape = v.dtype, v.shape
                if not v.flags.c_contiguous:
                    raise InputError(
                        f"{self.name}: input {spec.name!r} is not C-contiguous (pass np.ascontiguousarray(x))"
                    )
            else:
                raise InputError(
                    f"{self.name}: input {spec.name!r} must be a numpy array or DeviceTensor, not {type(v).__name__}"
                )
            if dtype != spec.dtype:
                raise InputError(f"{self.name}: input {spec.name!r} has dtype {dtype}, the graph expects {spec.dtype}")
            if spec.shape is None:
                continue
            if len(shape) != len(spec.shape):
                raise InputError(
                    f"{self.name}: input {spec.name!r} has shape {tuple(shape)}, the graph expects rank "
                    f"{len(spec.shape)} {spec}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"{self.name}: input {spec.name!r} has shape {tuple(shape)}, dim {axis} must be {want} ({spec})"
                    )
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (got, spec.name))
                    if seen[0] != got:
                        raise InputError(
                            f"{self.name}: symbolic dim {want!r} is {seen[0]} in input {seen[1]!r} "
                            f"but {got} in input {spec.name!r}"
                        )
        if all(type(v) in (np.ndarray, DeviceTensor) for v in values):
            self._accepted = tuple((v.dtype, v.shape) for v in values)
        return values
