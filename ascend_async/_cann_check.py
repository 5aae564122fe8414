"""Would CANN's ONNX parser take this model? The check the sim cannot make by running it.

GE's ONNX parser (hicann/ge ``parser/parser/onnx/onnx_parser.cc``) turns every node into the key
``"<domain>::<opset>::<OpType>"``, where ``<domain>`` is the node's domain (``ai.onnx`` when empty)
and ``<opset>`` is **the model's** ``opset_import`` version for that domain, not the op's
since-version. A key no op plugin registered fails the parse (error E16002). ``Constant``,
``FileConstant`` and graph inputs are mapped inside the parser. A root graph with no input or no
output is refused (E16001), and the parser maps only some ONNX element types to ``ge::DataType``
(``onnx_util.cc``); the rest become ``DT_UNDEFINED``.

The registrations come from ``cann_onnx_ops.tsv`` beside this module: read from the public
operator repositories at the commits its header names (rebuild it with
``tools/cann_ops_table.py``). A shipped CANN may register more, so a "not registered" verdict is
what the public plugins say, and the table is a lower bound.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from ._dtypes import numpy_dtype
from ._errors import GraphError

if TYPE_CHECKING:
    import onnx

#: Session option (and environment variable) choosing what the sim does at add_graph with a model
#: CANN's parser would refuse: "warn" (an AscendWarning, the default), "error" (GraphError), "off".
CHECK_OPTION = "sim.cann_check"
CHECK_ENV = "ASCEND_ASYNC_CANN_CHECK"
CHECK_MODES = ("warn", "error", "off")

__all__ = ["ModelCheck", "NodeVerdict", "Problem", "cann_registrations", "check_model", "fix_opset"]

ModelSource = Union[str, "os.PathLike[str]", bytes, "onnx.ModelProto"]
Verdict = Literal["registered", "internal", "not registered", "opset not registered", "no opset"]
Severity = Literal["error", "warning", "info"]

_TABLE = Path(__file__).with_name("cann_onnx_ops.tsv")
#: Ops the parser maps itself (kOnnxOpMap): never looked up in the plugin registry.
_INTERNAL_OPS = frozenset({"Constant", "FileConstant"})
#: Protocol buffers cannot serialize a message of 2 GiB or more: larger weights must be external.
PROTOBUF_LIMIT = 2**31 - 1
#: ONNX element type -> the ge::DataType GE's parser maps it to (onnx_util.cc); any other
#: element type becomes DT_UNDEFINED, which no GE tensor carries.
_ONNX_TO_GE = {
    1: 0,  # FLOAT -> DT_FLOAT
    2: 4,  # UINT8
    3: 2,  # INT8
    4: 7,  # UINT16
    5: 6,  # INT16
    6: 3,  # INT32
    7: 9,  # INT64
    8: 13,  # STRING
    9: 12,  # BOOL
    10: 1,  # FLOAT16
    11: 11,  # DOUBLE
    12: 8,  # UINT32
    13: 10,  # UINT64
    14: 16,  # COMPLEX64
    15: 17,  # COMPLEX128
    16: 27,  # BFLOAT16 -> DT_BF16
    17: 36,  # FLOAT8E4M3FN
    19: 35,  # FLOAT8E5M2
    22: 29,  # INT4
}


@dataclass(frozen=True)
class Registrations:
    """The registry of op plugin keys: (domain, op type) -> the opsets registered, and sources."""

    opsets: dict[tuple[str, str], frozenset[int]]
    sources: tuple[str, ...]

    def versions(self, domain: str, op_type: str) -> frozenset[int]:
        return self.opsets.get((domain, op_type), frozenset())

    def __contains__(self, key: tuple[str, int, str]) -> bool:
        domain, opset, op_type = key
        return opset in self.versions(domain, op_type)

    def max_opset(self, domain: str = "ai.onnx") -> int:
        """The highest opset at which any op of ``domain`` is registered."""
        return max((v for (d, _), vs in self.opsets.items() if d == domain for v in vs), default=0)


@cache
def cann_registrations(path: str | None = None) -> Registrations:
    """The registration table (the packaged one unless ``path`` names another)."""
    opsets: dict[tuple[str, str], set[int]] = {}
    sources: list[str] = []
    with open(path or _TABLE, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                if "at commit" in line:
                    sources.append(line.lstrip("# ").strip())
                continue
            key = line.split("\t", 1)[0]
            if not key or key == "key":
                continue
            domain, version, op_type = key.split("::")
            opsets.setdefault((domain, op_type), set()).add(int(version))
    return Registrations({k: frozenset(v) for k, v in opsets.items()}, tuple(sources))


@dataclass(frozen=True)
class NodeVerdict:
    """One node: where it is, the key GE's parser looks up, and whether a plugin registers it."""

    graph: str
    name: str
    domain: str
    opset: int | None
    op_type: str
    verdict: Verdict
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.domain}::{self.opset}::{self.op_type}"

    @property
    def refused(self) -> bool:
        return self.verdict not in ("registered", "internal")


@dataclass(frozen=True)
class Problem:
    """A model-level finding: refused nodes summarised, dtypes, symbolic dims, external data, size."""

    kind: str
    severity: Severity
    where: str
    message: str


@dataclass(frozen=True)
class ModelCheck:
    """What CANN's ONNX parser would make of a model. ``ok`` is False when it would refuse it."""

    source: str
    opsets: dict[str, int]
    nodes: tuple[NodeVerdict, ...]
    problems: tuple[Problem, ...]
    table_sources: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def refused(self) -> tuple[NodeVerdict, ...]:
        """The nodes whose key no public plugin registers."""
        return tuple(n for n in self.nodes if n.refused)

    def refusal(self) -> str:
        """One line for a warning or an error: every error, the refused nodes by name, the fix."""
        errors = [p.message for p in self.problems if p.severity == "error"]
        named = ", ".join(f"{n.name} ({n.key})" for n in self.refused[:8])
        more = f" and {len(self.refused) - 8} more" if len(self.refused) > 8 else ""
        nodes = f" Nodes: {named}{more}." if named else ""
        return (
            f"CANN's ONNX parser would refuse {self.source}: "
            + "; ".join(errors)
            + "."
            + nodes
            + " See `ascend-async check MODEL.onnx` (and --fix)."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "opsets": self.opsets,
            "refused": [asdict(n) | {"key": n.key} for n in self.refused],
            "problems": [asdict(p) for p in self.problems],
            "nodes": len(self.nodes),
            "op_types": sorted({f"{n.domain}::{n.op_type}" for n in self.nodes}),
            "table_sources": list(self.table_sources),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One paragraph: the verdict, then every error (the nodes CANN would refuse, by name)."""
        head = f"{self.source}: " + (
            "CANN's ONNX parser would accept it" if self.ok else "CANN's ONNX parser would refuse it"
        )
        lines = [head + f" ({len(self.nodes)} nodes, opsets {_fmt_opsets(self.opsets)})"]
        lines += [f"  {p.severity}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    def format(self) -> str:
        """A table for people: one row per refused node, then every problem."""
        out = [self.summary()]
        if self.refused:
            out.append("")
            out.append(f"  {'node':<32} {'key GE looks up':<40} verdict")
            for n in self.refused:
                where = n.name if n.graph == "main" else f"{n.graph}/{n.name}"
                out.append(f"  {where[:32]:<32} {n.key[:40]:<40} {n.detail or n.verdict}")
        if self.table_sources:
            out.append("")
            out.append("  registrations read from: " + "; ".join(self.table_sources))
        return "\n".join(out)


def _fmt_opsets(opsets: dict[str, int]) -> str:
    return ", ".join(f"{d}={v}" for d, v in sorted(opsets.items())) or "none"


def _load(source: ModelSource) -> tuple[onnx.ModelProto, str, int | None]:
    """The model (external data not loaded), a label for it, and its serialized size if known."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source, source.graph.name or "model", None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = "model"
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise GraphError(f"cannot read model {label!r}: {exc}") from exc
    else:
        raise GraphError(f"cannot check {type(source).__name__}: pass a path, bytes or onnx.ModelProto")
    try:
        return onnx.load_model_from_string(data), label, len(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise GraphError(
            f"{label}: not a valid ONNX model{offline_model_hint(data)} ({type(exc).__name__}: {exc})"
        ) from exc


def offline_model_hint(data: bytes) -> str:
    """For bytes that are an offline model rather than ONNX, what to do instead; else ""."""
    if data.startswith((b"ASCEND_ASYNC simulated offline model", b"IMOD")):
        return ": it is an offline model (.om), which runs through session.load_model(...), not add_graph or check"
    return ""


def _str(value: str | bytes) -> str:
    """A protobuf string field as text: a corrupt model can hold bytes that are not UTF-8."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def _graphs(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies), each with a path naming it."""
    yield where, graph
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                yield from _graphs(sub, f"{where}/{_str(node.name) or f'#{index}'}.{_str(attr.name)}")


def _verdict(reg: Registrations, domain: str, opset: int | None, op_type: str) -> tuple[Verdict, str]:
    if op_type in _INTERNAL_OPS and domain == "ai.onnx":
        return "internal", "mapped by the parser itself"
    if opset is None:
        return "no opset", f"the model imports no opset for domain {domain!r} (GE: PARAM_INVALID)"
    if (domain, opset, op_type) in reg:
        return "registered", ""
    versions = reg.versions(domain, op_type)
    if not versions:
        return "not registered", f"no plugin registers {domain}::{op_type} at any opset"
    top = max(versions)
    if opset > top:
        return "opset not registered", f"opset {opset} is past what CANN registers for {op_type} (up to {top})"
    near = ", ".join(map(str, sorted(versions)))
    return "opset not registered", f"{op_type} is registered at opsets {near}, not {opset}"


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.TensorProto.DataType.Name(elem_type))
    except ValueError:
        return f"type {elem_type}"


def check_model(source: ModelSource, *, table: str | None = None) -> ModelCheck:
    """What CANN's ONNX parser would make of ``source`` (a path, bytes or ``onnx.ModelProto``).

    Every node, subgraphs included, gets the key GE looks up and a verdict; the model gets the
    problems that would stop it (or slow it) on an NPU. Nothing is run. External data is not read.

    :raises GraphError: when ``source`` is not an ONNX model at all.
    """
    model, label, size = _load(source)
    return _check(model, label, size, cann_registrations(table))


def _check(model: onnx.ModelProto, label: str, size: int | None, reg: Registrations) -> ModelCheck:
    opsets = {(_str(i.domain) or "ai.onnx"): int(i.version) for i in model.opset_import}
    local = {(_str(f.domain) or "ai.onnx", _str(f.name)) for f in model.functions}
    nodes: list[NodeVerdict] = []
    problems: list[Problem] = []

    for where, graph in _graphs(model.graph, "main"):
        for index, node in enumerate(graph.node):
            domain, op_type = _str(node.domain) or "ai.onnx", _str(node.op_type)
            opset = opsets.get(domain)
            verdict, detail = _verdict(reg, domain, opset, op_type)
            if verdict != "registered" and (domain, op_type) in local:
                detail = "a model-local function: GE does not expand it (inline it: onnx.inliner)"
            name = _str(node.name) or f"{op_type}_{index}"
            nodes.append(NodeVerdict(where, name, domain, opset, op_type, verdict, detail))

    refused = [n for n in nodes if n.refused]
    if refused:
        kinds = sorted({n.key for n in refused})
        problems.append(
            Problem(
                "op",
                "error",
                "nodes",
                f"{len(refused)} node(s) use {len(kinds)} key(s) no public CANN plugin registers: "
                + ", ".join(kinds[:12])
                + (" ..." if len(kinds) > 12 else "")
                + _fix_hint(reg, model, opsets),
            )
        )

    g = model.graph
    inits = {_str(t.name) for t in g.initializer}
    real_inputs = [vi for vi in g.input if _str(vi.name) not in inits]
    if not real_inputs:
        problems.append(Problem("graph", "error", "inputs", "the graph has no input (GE's parser: E16001)"))
    if not g.output:
        problems.append(Problem("graph", "error", "outputs", "the graph has no output (GE's parser: E16001)"))

    for role, vis in (("input", real_inputs), ("output", list(g.output))):
        for vi in vis:
            if not vi.type.HasField("tensor_type"):
                problems.append(
                    Problem(
                        "dtype",
                        "error",
                        _str(vi.name),
                        f"{role} {_str(vi.name)!r} is not a tensor: GE tensors carry tensors",
                    )
                )
                continue
            et = vi.type.tensor_type.elem_type
            if et not in _ONNX_TO_GE:
                problems.append(
                    Problem(
                        "dtype",
                        "error",
                        _str(vi.name),
                        f"{role} {_str(vi.name)!r} is {_dtype_name(et)}: GE's ONNX parser has no ge::DataType for it",
                    )
                )
            elif numpy_dtype(_ONNX_TO_GE[et]) is None:
                problems.append(
                    Problem(
                        "dtype",
                        "error",
                        _str(vi.name),
                        f"{role} {_str(vi.name)!r} is {_dtype_name(et)}: GE carries it, but ascend_async "
                        "cannot pass it from numpy",
                    )
                )
    problems.extend(
        Problem(
            "dtype",
            "error",
            _str(t.name),
            f"initializer {_str(t.name)!r} is {_dtype_name(t.data_type)}: GE's ONNX parser has no ge::DataType",
        )
        for t in g.initializer
        if t.data_type not in _ONNX_TO_GE
    )

    for vi in real_inputs:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            problems.append(
                Problem(
                    "shape", "warning", _str(vi.name), f"input {_str(vi.name)!r} has no declared rank: GE needs one"
                )
            )
            continue
        unknown = [
            str(i) + (f" ({d.dim_param})" if d.dim_param else "")
            for i, d in enumerate(tt.shape.dim)
            if not d.HasField("dim_value") or d.dim_value <= 0
        ]
        if unknown:
            problems.append(
                Problem(
                    "shape",
                    "info",
                    _str(vi.name),
                    f"input {_str(vi.name)!r} has unknown dim(s) {', '.join(unknown)}: on an NPU GE builds a "
                    "dynamic-shape graph (slower), unless you give static shapes or gears "
                    "(ge.inputShape / ge.dynamicDims)",
                )
            )

    external = sorted(
        {
            next((_str(e.value) for e in t.external_data if e.key == "location"), "?")
            for where, graph in _graphs(model.graph, "main")
            for t in graph.initializer
            if t.data_location == 1  # TensorProto.EXTERNAL
        }
    )
    if external:
        problems.append(
            Problem(
                "external",
                "info",
                "initializers",
                f"weights in external file(s) {', '.join(external)}: GE's parser finds them beside the model only "
                "when it parses the file (aclgrphParseONNX); from memory they are not resolved",
            )
        )
    if size is not None and size > PROTOBUF_LIMIT:
        problems.append(
            Problem(
                "size",
                "error",
                "model",
                f"the serialized model is {size / 2**30:.2f} GiB: protobuf cannot parse 2 GiB or more; save the "
                "weights as external data (onnx.save(..., save_as_external_data=True))",
            )
        )
    return ModelCheck(label, opsets, tuple(nodes), tuple(problems), reg.sources)


def _ranges(versions: frozenset[int]) -> str:
    """{8, 9, 10, 12} -> '8-10, 12'."""
    out: list[str] = []
    for v in sorted(versions):
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def ops_markdown(reg: Registrations | None = None) -> str:
    """docs/ops.md's table: every standard ONNX op onnx knows, the ai.onnx opsets at which a
    public CANN plugin registers it (the key GE looks up uses the model's opset), and the newest."""
    import onnx

    reg = reg or cann_registrations()
    ops = sorted({s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")})
    rows = ["| ONNX op | CANN registers it at opsets | up to |", "| --- | --- | --- |"]
    for op in ops:
        versions = reg.versions("ai.onnx", op)
        rows.append(f"| {op} | {_ranges(versions) or 'no'} | {max(versions) if versions else '-'} |")
    registered = sum(1 for op in ops if reg.versions("ai.onnx", op))
    head = (
        f"{registered} of the {len(ops)} standard ops onnx {onnx.__version__} defines are registered at some opset "
        f"(read from: {'; '.join(reg.sources)})."
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


def _fix_hint(reg: Registrations, model: onnx.ModelProto, opsets: dict[str, int]) -> str:
    custom = sorted(
        {
            f"{_str(node.domain)}::{_str(node.op_type)}"
            for _, graph in _graphs(model.graph, "main")
            for node in graph.node
            if (_str(node.domain) or "ai.onnx") != "ai.onnx" and not reg.versions(_str(node.domain), _str(node.op_type))
        }
    )
    if custom:  # no opset conversion touches another domain's ops
        return (
            f". No opset conversion helps: no public plugin registers {', '.join(custom)} (a CANN with a custom "
            "plugin for that domain may)"
        )
    target = fix_opset(model, reg)
    if target is not None:
        if target == opsets.get("ai.onnx"):
            return ""
        return f". Every standard op is registered at opset {target}: run `ascend-async check MODEL --fix OUT.onnx`"
    orphans = sorted(op for op in _standard_ops(model) if not reg.versions("ai.onnx", op))
    if orphans:
        return f". No opset helps: no public plugin registers {', '.join(orphans)} at any opset (replace them)"
    return ". No single opset registers every op the model uses"


def _standard_ops(model: onnx.ModelProto) -> set[str]:
    return {
        _str(node.op_type)
        for _, graph in _graphs(model.graph, "main")
        for node in graph.node
        if (_str(node.domain) or "ai.onnx") == "ai.onnx" and _str(node.op_type) not in _INTERNAL_OPS
    }


def fix_opset(model: onnx.ModelProto, reg: Registrations | None = None) -> int | None:
    """The highest ai.onnx opset at which a public plugin registers every standard op of the
    model, or None. (onnx's version converter may still be unable to reach it.)"""
    reg = reg or cann_registrations()
    standard = _standard_ops(model)
    if not standard:  # no standard op: converting the opset changes nothing
        return None
    for opset in range(reg.max_opset("ai.onnx"), 0, -1):
        if all(("ai.onnx", opset, op) in reg for op in standard):
            return opset
    return None
