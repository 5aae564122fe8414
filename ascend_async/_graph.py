"""Graph: an ONNX model, its signature, and the checks that run before anything is submitted."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ._cann_check import ModelCheck, _check, cann_registrations, offline_model_hint
from ._dtypes import DT_BF16, GE_TO_NUMPY, NUMPY_TO_GE
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


def _load_model(source: GraphSource) -> tuple[onnx.ModelProto, bytes, str | None]:
    """The model, its serialized bytes, and the folder of the file it came from (None for
    bytes and ModelProto: they have no folder)."""
    import onnx

    folder: str | None = None
    where = f"{os.path.basename(os.fspath(source))}: " if isinstance(source, (str, os.PathLike)) else ""
    try:
        if isinstance(source, onnx.ModelProto):
            return source, source.SerializeToString(), None
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                data = f.read()
            folder = os.path.dirname(os.path.abspath(os.fspath(source)))
        else:
            raise GraphError(f"cannot read a graph from {type(source).__name__}: pass a path, bytes or onnx.ModelProto")
        model = onnx.load_model_from_string(data)
    except GraphError:
        raise
    except OSError as exc:
        raise GraphError(f"cannot read model {source!r}: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        hint = offline_model_hint(data) if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) else ""
        raise GraphError(f"{where}not a valid ONNX model{hint} ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node and not model.graph.output:
        raise GraphError(f"{where}not a valid ONNX model: it has no graph")
    return model, data, folder


#: AddGraph options of our own (cdefs/sim.h): the folder a model's external data is read from,
#: and a stamp of the weight files (part of the sim's compiled-model key).
OPTION_EXTERNAL_DATA_DIR = b"ascend_async.external_data_dir"
OPTION_EXTERNAL_DATA_STAMP = b"ascend_async.external_data_stamp"

#: ONNX element types a GE tensor can carry (the sim's engine maps exactly these).
_GE_ELEM_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16})
#: GE tensors have at most this many dims (AA_MAX_DIMS, cdefs/ge_session.h).
_MAX_DIMS = 25


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor the model holds, with a label: initializers (sparse ones too) and tensor
    attributes, in the main graph, every subgraph and every local function."""

    def in_nodes(nodes: Any, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
        for index, node in enumerate(nodes):
            label = f"{node.op_type} node {node.name or f'#{index}'}{where}"
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield f"attribute {attr.name!r} of {label}", attr.t
                for t in attr.tensors:
                    yield f"attribute {attr.name!r} of {label}", t
                if attr.HasField("sparse_tensor"):
                    yield f"attribute {attr.name!r} of {label}", attr.sparse_tensor.values
                    yield f"attribute {attr.name!r} of {label}", attr.sparse_tensor.indices
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    yield from in_graph(sub, f" in a subgraph of {label}")

    def in_graph(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
        for t in graph.initializer:
            yield f"initializer {t.name!r}{where}", t
        for st in graph.sparse_initializer:
            yield f"initializer {st.values.name!r}{where}", st.values
            yield f"initializer {st.indices.name or st.values.name!r} (indices){where}", st.indices
        yield from in_nodes(graph.node, where)

    yield from in_graph(model.graph, "")
    for f in model.functions:
        yield from in_nodes(f.node, f" in function {f.name!r}")


def _external_data(model: onnx.ModelProto, base: str | None) -> tuple[str, str] | None:
    """For a model with external data: (the folder, a stamp of its weight files); None for a
    model without any.

    Every location must name a file inside ``base`` (the model's folder): absolute paths, ``..``
    and symlinks that leave it are refused, as are missing files and ranges past a file's end.

    :raises GraphError: naming every tensor whose location is refused, and the location; or,
        without a ``base``, saying that bytes and ModelProto need ``base_dir=``.
    """
    import onnx

    external: list[tuple[str, dict[str, str]]] = []
    for label, t in _tensors(model):
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL:
            external.append((label, {e.key: e.value for e in t.external_data}))
    if not external:
        return None
    if base is None:
        first = external[0]
        raise GraphError(
            f"the model keeps {len(external)} tensor(s) in external data ({first[0]} at "
            f"{first[1].get('location', '')!r}); a model given as bytes or an onnx.ModelProto has no folder "
            "to read them from: pass base_dir= (the folder the weight files are in), or add the model by its path"
        )
    root = os.path.realpath(base)
    if not os.path.isdir(root):
        raise GraphError(f"base_dir {base!r} is not a folder")
    problems: list[str] = []
    stamps: dict[str, str] = {}
    for label, info in external:
        location = info.get("location", "")
        where = f"{label}: external data location {location!r}"
        parts = location.replace("\\", "/").split("/")
        if not location:
            problems.append(f"{label}: external data without a location")
            continue
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            problems.append(f"{where} is an absolute path (locations are relative to the model's folder {root!r})")
            continue
        if ".." in parts:
            problems.append(f"{where} contains '..' (locations must stay inside the model's folder {root!r})")
            continue
        path = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, path]) != root:
            problems.append(
                f"{where} resolves to {path!r}, outside the model's folder {root!r} (a symlink that leaves it)"
            )
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(f"{where}: cannot read {path!r} ({exc.strerror or exc})")
            continue
        if not os.path.isfile(path):
            problems.append(f"{where}: {path!r} is not a regular file")
            continue
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else st.st_size - offset
        except ValueError:
            problems.append(f"{where}: offset {info.get('offset')!r} or length {info.get('length')!r} is not a number")
            continue
        if offset < 0 or length < 0 or offset + length > st.st_size:
            problems.append(
                f"{where}: bytes {offset}..{offset + length} lie outside the {st.st_size}-byte file {path!r}"
            )
            continue
        stamps[location] = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    if problems:
        raise GraphError(f"{len(problems)} external data location(s) refused: " + "; ".join(problems))
    return root, ";".join(f"{k}={v}" for k, v in sorted(stamps.items()))


def _structure_problems(model: onnx.ModelProto) -> list[str]:
    """What GE's rules forbid in the graph's structure, all of it (empty: nothing): no outputs,
    duplicate or empty names, a name produced twice, an output nothing produces, and inputs or
    outputs GE tensors cannot carry (not a tensor, an element type GE has no dtype for, more
    than 25 dims). onnxruntime accepts some of these; GE refuses them or cannot return them."""
    from onnx import TensorProto

    g = model.graph
    problems: list[str] = []
    init_names = [t.name for t in g.initializer] + [t.values.name for t in g.sparse_initializer]

    def dups(kind: str, names: list[str]) -> None:
        seen: set[str] = set()
        for n in names:
            if n in seen:
                problems.append(f"{kind} name {n!r} is used more than once")
            seen.add(n)
        if any(not n for n in names):
            problems.append(f"a graph {kind} has an empty name")

    if not g.output:
        problems.append("the graph has no outputs (GE needs at least one)")
    dups("input", [v.name for v in g.input])
    dups("output", [v.name for v in g.output])
    dups("initializer", init_names)

    produced: dict[str, str] = {}
    for n in [v.name for v in g.input] + init_names:
        produced.setdefault(n, "a graph input" if n not in init_names else "an initializer")
    for index, node in enumerate(g.node):
        label = f"{node.op_type} node {node.name or f'#{index}'}"
        for out in node.output:
            if not out:
                continue  # an optional output left out
            if out in produced:
                problems.append(f"{out!r} is produced by {label} but is already {produced[out]}")
            else:
                produced[out] = label
    problems.extend(
        f"output {v.name!r} is not produced by any node, input or initializer"
        for v in g.output
        if v.name and v.name not in produced
    )

    init_set = set(init_names)
    for kind, vis in (("input", [v for v in g.input if v.name not in init_set]), ("output", list(g.output))):
        for vi in vis:
            which = vi.type.WhichOneof("value")
            if which != "tensor_type":
                problems.append(
                    f"{kind} {vi.name!r} is a {which or 'value of no type'}, not a tensor "
                    "(GE graphs take and return tensors only)"
                )
                continue
            tt = vi.type.tensor_type
            if tt.elem_type not in _GE_ELEM_TYPES:
                try:
                    type_name = TensorProto.DataType.Name(tt.elem_type).lower()
                except ValueError:
                    type_name = f"element type {tt.elem_type}"
                problems.append(f"{kind} {vi.name!r} has dtype {type_name}, which GE tensors cannot carry")
            if tt.HasField("shape") and len(tt.shape.dim) > _MAX_DIMS:
                problems.append(
                    f"{kind} {vi.name!r} has rank {len(tt.shape.dim)}; GE tensors have at most {_MAX_DIMS} dims"
                )
    return problems


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
            # Unknown, each on its own (as onnxruntime and GE read them): no value or name, a
            # negative value (paddle2onnx writes -1), and the names "" and "?". Only a real name
            # ties dims across inputs.
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value) if d.dim_value >= 0 else None)
            elif d.HasField("dim_param") and d.dim_param not in ("", "?"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorSpec(vi.name, dtype, shape)


class Graph:
    """An ONNX model with its signature, ready to add to a :class:`Session`.

    Build it from a path, the serialized bytes or an ``onnx.ModelProto``. The signature
    (``inputs``/``outputs``) is known before anything runs; symbolic dims resolve per run.

    External data is read from the model's own folder (a path's directory), or from
    ``base_dir`` (required for bytes and ModelProto that have external data); never from the
    working directory. Every location must stay inside that folder.

    :raises GraphError: an unreadable model; one error listing every structural problem GE
        refuses (see ``_structure_problems``); or every refused external-data location.
    """

    def __init__(
        self, source: GraphSource, *, name: str | None = None, base_dir: str | os.PathLike[str] | None = None
    ) -> None:
        model, data, folder = _load_model(source)
        init_names = {t.name for t in model.graph.initializer}
        file_name = os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None
        #: What errors, reprs and metrics call the graph: ``name``, else the file name of a model
        #: read from a path, else the ONNX graph's own name (often an exporter's, such as "Model
        #: from PaddlePaddle."), else "graph".
        self.name: str = name or file_name or model.graph.name or "graph"
        problems = _structure_problems(model)
        if problems:
            raise GraphError(f"{self.name}: {len(problems)} problem(s) GE refuses: " + "; ".join(problems))
        try:
            external = _external_data(model, os.fspath(base_dir) if base_dir is not None else folder)
        except GraphError as exc:
            raise GraphError(f"{self.name}: {exc}") from None
        #: The serialized model: what AddGraph parses (the weights are kept once, here).
        self.model_bytes: bytes = data
        label = file_name or self.name
        # What CANN's ONNX parser would make of it (node keys against the registered plugins):
        # computed from the model parsed here, so add_graph on the sim needs no second parse.
        self._cann_check = _check(model, label, len(data), cann_registrations())
        #: For a model with external data: the folder its weights are read from (the model's
        #: own folder, or ``base_dir``), never the working directory; None otherwise.
        self.external_data_dir: str | None = external[0] if external else None
        self._external_stamp: str | None = external[1] if external else None
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(vi) for vi in model.graph.input if vi.name not in init_names)
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(vi) for vi in model.graph.output)
        self._input_names = tuple(s.name for s in self.inputs)
        symbols = {d for spec in self.inputs for d in (spec.shape or ()) if isinstance(d, str)}
        #: Every output's shape follows from the input shapes (known rank; each dim fixed or a
        #: symbol an input binds): outputs may be sized by the signature alone. False for
        #: value-dependent shapes (NonZero, a Shape-fed Reshape) and undeclared ones.
        self.static_outputs: bool = all(
            spec.shape is not None and all(isinstance(d, int) or d in symbols for d in spec.shape)
            for spec in self.outputs
        )
        # The last signature bind accepted, as (dtype, shape) per input: a call that matches it
        # needs no checks beyond the comparison (bind's fast path; races only cost a re-check).
        self._accepted: tuple[tuple[np.dtype[Any], tuple[int, ...]], ...] | None = None

    def _add_options(self, ffi: Any) -> tuple[Any, int, Any]:
        """AddGraph's options for this graph: (an aa_option array or NULL, its length, what
        keeps its strings alive: hold it until AddGraph returns). Only a model with external
        data has any: its folder and the stamp of its weight files."""
        if self.external_data_dir is None:
            return ffi.NULL, 0, None
        keep = [
            ffi.new("char[]", OPTION_EXTERNAL_DATA_DIR),
            ffi.new("char[]", os.fsencode(self.external_data_dir)),
            ffi.new("char[]", OPTION_EXTERNAL_DATA_STAMP),
            ffi.new("char[]", (self._external_stamp or "").encode()),
        ]
        opts = ffi.new("aa_option[2]")
        opts[0].key, opts[0].value, opts[1].key, opts[1].value = keep
        return opts, 2, keep

    @property
    def cann_check(self) -> ModelCheck:
        """What CANN's ONNX parser would make of this model (see :func:`ascend_async.check_model`)."""
        return self._cann_check

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
                values = [*map(inputs.__getitem__, self._input_names)]
            except KeyError:
                return self._bind(inputs)
            for v, (dtype, shape) in zip(values, accepted, strict=False):  # (same length: checked above)
                if type(v) is np.ndarray:
                    d = v.dtype  # (numpy's builtin dtypes are singletons: `is` first, == only if not)
                    if v.shape != shape or (d is not dtype and d != dtype) or not v.flags.c_contiguous:
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
