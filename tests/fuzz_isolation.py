"""A differential isolation fuzzer: random small ONNX models, run by several tenants at once,
every output compared with onnxruntime's own Python API.

What it generates (everything derives from ``--seed``; an *epoch* is a batch of models that
live together in the sessions for a while):

- models from several op families: elementwise unary and binary ops with broadcasting,
  MatMul/Gemm, reductions, Reshape/Transpose/Concat/Slice/Gather/Unsqueeze/Expand/Tile/Flatten,
  Cast between float32/float16/int32/int64/bool (and bfloat16), comparisons and Where, and
  value-dependent output shapes (NonZero, a Shape-fed Reshape); static and symbolic dims
  (``N``, ``M``); initializers; graph inputs listed as outputs (pass-through), outputs listed
  twice, empty graphs whose outputs are their inputs;
- the same model in several sessions (identical bytes; sometimes one ``Graph`` object shared),
  near-identical models that differ only in their weights, such twins whose bytes have the
  sim's former 64-bit FNV cache key of their sibling (forged through an unused initializer),
  and models whose weights are external data in a temporary folder (added by path, or as
  bytes/ModelProto with ``base_dir=``), with decoy weight files of the same relative name in
  the working directory, and twins of those whose ``.onnx`` bytes are identical but whose
  weight files differ;
- random inputs with special values (inf, nan, -0.0, denormals, extreme ints) and, at element
  0 of every non-bool input, a marker value distinct per tenant.

How it runs them: three Sessions (1, 2 and 3 streams) shared by tenants: event loops on
asyncio, uvloop and trio in their own threads (``await session.run``, device inputs and
outputs, random cancellations, ``remove_graph`` then add again, a few batcher requests, and
bursts past the device's event budget while the streams are held), and a plain thread
(``run_sync``, ``run_with_callback``). Every result is compared **exactly** (dtype, shape and
bytes) with ``onnxruntime.InferenceSession`` on the same model and inputs, built with the sim
engine's options (one intra-op thread, sequential, every graph optimisation), so the same
kernels run on both sides; no tolerance is used anywhere. An output that differs and holds
another tenant's marker is reported as a cross-tenant leak. Errors other than the ones the
API promises (a cancelled run, a batcher timeout, a run racing a successful ``remove_graph``
of its graph) are findings too.

Run it long (the CI slice is ``tests/test_isolation_fuzz.py``)::

    python tests/fuzz_isolation.py --runs 100000 --seed 1
    python tests/fuzz_isolation.py --replay SEED:EPOCH:CASE:RUN    # one case, one thread
    python tests/fuzz_isolation.py --replay SEED:EPOCH:CASE:RUN --dump /tmp/case   # model + inputs

``--features -burst,-remove`` turns generator features off (``+bf16`` forces one on); without
a flag, ``base_dir`` and ``bf16`` are on when the library has them (detected), the rest on.
Each finding prints its seed, epoch, case and run and a one-line replay command. Exit code 1
when anything was found.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import inspect
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Before the sim starts: stale pool reads show up as poison.
    os.environ.setdefault("ASCEND_ASYNC_SIM_POISON", "1")
    # The library of this checkout (its in-place build), not whatever else is installed.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(_root, "ascend_async")):
        sys.path.insert(0, _root)

import anyio
import anyio.lowlevel
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra on Linux
    uvloop = None

F32, F16, I32, I64, BOOL, BF16 = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.BOOL,
    TensorProto.BFLOAT16,
)
NP: dict[int, np.dtype[Any]] = {
    F32: np.dtype(np.float32),
    F16: np.dtype(np.float16),
    I32: np.dtype(np.int32),
    I64: np.dtype(np.int64),
    BOOL: np.dtype(np.bool_),
    BF16: np.dtype(ml_dtypes.bfloat16),
}
FLOATS = (F32, F16)
INTS = (I32, I64)
OPSET = 18
INT64_MAX = (1 << 63) - 1

Dim = int | str | None  # a static size, a symbol bound per run ("N", "M"), or unknown until run time

ALL_FEATURES = (
    "dynamic",  # value-dependent output shapes (NonZero, Shape-fed Reshape)
    "passthrough",  # graph inputs listed as outputs; empty graphs
    "duplicate",  # an output listed twice
    "extdata",  # weights as external data in a temporary folder, added by path
    "decoy",  # decoy weight files of the same relative name in the working directory
    "base_dir",  # add_graph(bytes | ModelProto, base_dir=...) for external data (new API)
    "bf16",  # bfloat16 inputs, casts and outputs (new in the library)
    "twins",  # identical models in several sessions, near-identical ones (other weights)
    "forge",  # twins with the sim's former FNV cache key of their sibling
    "cancel",  # cancelled runs
    "remove",  # remove_graph while other tenants run, then add again
    "batcher",  # a few requests through Session.batcher
    "burst",  # bursts past the device's event budget while the streams are held (sim only)
    "device_io",  # DeviceTensor inputs and outputs="device"
    "sync",  # run_sync from a plain thread
    "callback",  # run_with_callback from a plain thread
    "trio",  # a tenant on trio
    "uvloop",  # a tenant on uvloop
)


def detect_features() -> dict[str, str]:
    """The features the library under test has, by looking at its public API: ``base_dir`` when
    ``Session.add_graph`` takes it, ``bf16`` when a bfloat16 graph runs end to end. Maps each
    feature that is off to why."""
    off: dict[str, str] = {}
    if "base_dir" not in inspect.signature(aa.Session.add_graph).parameters:
        off["base_dir"] = "Session.add_graph has no base_dir parameter"
    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=F32)],
        "bf16_probe",
        [helper.make_tensor_value_info("x", BF16, [2])],
        [helper.make_tensor_value_info("y", F32, [2])],
    )
    probe = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    try:
        with aa.Session(streams=1) as s:
            out = s.run_sync(s.add_graph(probe), {"x": np.array([1.5, -2], ml_dtypes.bfloat16)})
        if out["y"].tolist() != [1.5, -2.0]:
            off["bf16"] = f"a bfloat16 input came back as {out['y']!r}"
    except Exception as exc:  # the library cannot represent bfloat16 yet
        off["bf16"] = f"a bfloat16 run raised {type(exc).__name__}: {exc}"
    if uvloop is None:
        off["uvloop"] = "uvloop is not installed"
    return off


def parse_features(spec: str | None, detected_off: dict[str, str]) -> tuple[frozenset[str], dict[str, str]]:
    """``spec``: comma-separated ``-name`` (off) / ``+name`` (on, even when not detected)."""
    on = set(ALL_FEATURES) - set(detected_off)
    why = dict(detected_off)
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name = item.lstrip("+-")
        if name not in ALL_FEATURES:
            raise SystemExit(f"unknown feature {name!r}; known: {', '.join(ALL_FEATURES)}")
        if item.startswith("-"):
            on.discard(name)
            why[name] = "turned off"
        else:
            on.add(name)
            why.pop(name, None)
    if "bf16" in on and not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
        on.discard("bf16")
        why["bf16"] = "this onnxruntime cannot take bfloat16 inputs from Python"
    return frozenset(on), why


# ----------------------------------------------------------------------------------------------
# Markers: a value per tenant and dtype that random data never produces


def marker(tenant: int, dtype: int) -> Any:
    """Tenant ``tenant``'s marker for ``dtype`` (exactly representable in it)."""
    if dtype == F32:
        return np.float32(4242.0 + 16 * tenant + 0.5)
    if dtype == F16:
        return np.float16(1000 + 8 * tenant)  # integers up to 2048 are exact in float16
    if dtype == BF16:
        return ml_dtypes.bfloat16(130 + 2 * tenant)  # integers up to 256 are exact in bfloat16
    if dtype == I32:
        return np.int32(900_000 + 1000 * tenant)
    if dtype == I64:
        return np.int64(9_000_000_000 + 1000 * tenant)
    return None


MAX_TENANTS = 32


# ----------------------------------------------------------------------------------------------
# The model generator


@dataclass
class Val:
    name: str
    dtype: int
    shape: tuple[Dim, ...]

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass
class InSpec:
    name: str
    dtype: int
    shape: tuple[Dim, ...]


def _numel(shape: Sequence[Dim]) -> int | None:
    n = 1
    for d in shape:
        if not isinstance(d, int):
            return None
        n *= d
    return n


def _prod_dim(dims: Sequence[Dim]) -> Dim:
    """The size of dims flattened together: static, one symbol times ones, or unknown."""
    n = _numel(dims)
    if n is not None:
        return n
    syms = [d for d in dims if not isinstance(d, int)]
    if len(syms) == 1 and isinstance(syms[0], str) and all(d == 1 for d in dims if isinstance(d, int)):
        return syms[0]
    return None


def _slice_len(d: int, start: int, end: int, step: int) -> int:
    """ONNX Slice's output length on one axis of size d."""
    if start < 0:
        start += d
    if end < 0:
        end += d
    if step > 0:
        start, end = min(max(start, 0), d), min(max(end, 0), d)
        return max(0, -(-(end - start) // step))
    start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
    return max(0, -(-(start - end) // -step))


class Builder:
    """Grows one random graph: values with tracked dtypes and shapes, nodes, initializers."""

    def __init__(self, rng: np.random.Generator, feats: frozenset[str], rowwise: bool) -> None:
        self.rng = rng
        self.feats = feats
        self.rowwise = rowwise  # every value keeps the batch dim first, rows independent (batcher)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[InSpec] = []
        self.vals: list[Val] = []
        self.n = 0
        self.dynamic = False

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def dtypes(self) -> list[int]:
        out = [F32, F32, F32, F16, I32, I64]
        if "bf16" in self.feats:
            out.append(BF16)
        return out

    def init(self, arr: np.ndarray, prefix: str = "w") -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def rand_array(self, dtype: int, shape: Sequence[int]) -> np.ndarray:
        rng = self.rng
        if dtype in FLOATS or dtype == BF16:
            a = np.round(rng.standard_normal(shape) * 2, 3)
        elif dtype in INTS:
            a = rng.integers(-6, 7, size=shape)
        else:
            a = rng.random(shape) < 0.5
        return np.asarray(a).astype(NP[dtype])

    def node(self, op: str, ins: list[str], dtype: int, shape: Sequence[Dim], **attrs: Any) -> Val:
        out = self.fresh(op.lower()[:4])
        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        v = Val(out, dtype, tuple(shape))
        self.vals.append(v)
        return v

    def add_input(self, dtype: int, shape: Sequence[Dim]) -> Val:
        name = self.fresh("in")
        self.inputs.append(InSpec(name, dtype, tuple(shape)))
        v = Val(name, dtype, tuple(shape))
        self.vals.append(v)
        return v

    def first_input(self) -> Val:
        rank = int(self.rng.integers(1, 4)) if not self.rowwise else int(self.rng.integers(2, 4))
        dims: list[Dim] = [int(self.rng.integers(1, 6)) for _ in range(rank)]
        if self.rowwise or self.chance(0.6):
            dims[0] = "N"
        if rank > 1 and self.chance(0.15):
            dims[int(self.rng.integers(1, rank))] = "M"
        return self.add_input(self.pick(self.dtypes()), dims)

    # -- partners: an operand broadcastable against v, of dtype ``dtype`` -------------------------

    def partner(self, v: Val, dtype: int) -> tuple[str, tuple[Dim, ...]]:
        """An operand for a binary op with v: an existing value of the same shape, a new graph
        input, or an initializer; its shape broadcasts with v's. Returns (name, result shape)."""
        same = [u for u in self.vals if u is not v and u.dtype == dtype and u.shape == v.shape and None not in u.shape]
        if same and self.chance(0.3):
            return self.pick(same).name, v.shape
        rank = len(v.shape)
        if self.rowwise:
            keep = rank  # the batch dim stays first
        else:
            keep = int(self.rng.integers(0, rank + 1)) if rank else 0
        dims: list[Dim] = []
        out = list(v.shape)
        for axis in range(rank - keep, rank):
            d = v.shape[axis]
            if d == 1 and not (self.rowwise and axis == 0) and self.chance(0.3):
                k = int(self.rng.integers(2, 4))
                dims.append(k)
                out[axis] = k
            elif isinstance(d, int) and self.chance(0.6):
                dims.append(d)
            elif isinstance(d, str) and self.rowwise and axis == 0:
                dims.append(d)
            else:
                dims.append(1)
        if self.chance(0.25) and (self.rowwise or (dims and dims[0] != 1) or True):
            if self.rowwise and dims:
                dims[0] = v.shape[0]
            v2 = self.add_input(dtype, dims)
            return v2.name, tuple(out)
        if self.rowwise and dims and isinstance(dims[0], str):
            dims[0] = 1
        static = [d if isinstance(d, int) else 1 for d in dims]
        return self.init(self.rand_array(dtype, static), "c"), tuple(out)

    # -- op families -------------------------------------------------------------------------------

    def op_unary(self, v: Val) -> Val | None:
        if v.dtype in FLOATS:
            op = self.pick(
                [
                    "Relu",
                    "Neg",
                    "Abs",
                    "Sigmoid",
                    "Tanh",
                    "Exp",
                    "Sqrt",
                    "Floor",
                    "Ceil",
                    "Reciprocal",
                    "Sin",
                    "Erf",
                    "Softplus",
                    "Log",
                    "Round",
                    "Sign",
                    "LeakyRelu",
                    "Identity",
                ]
            )
        elif v.dtype in INTS:
            op = self.pick(["Relu", "Neg", "Abs", "Sign", "Identity"])
        elif v.dtype == BOOL:
            op = self.pick(["Not", "Identity"])
        else:
            op = "Identity"
        attrs = {"alpha": float(self.pick([0.01, 0.5, 2.0]))} if op == "LeakyRelu" else {}
        return self.node(op, [v.name], v.dtype, v.shape, **attrs)

    def op_binary(self, v: Val) -> Val | None:
        if v.dtype in FLOATS:
            op = self.pick(["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Add", "Mul"])
        elif v.dtype in INTS:
            op = self.pick(["Add", "Sub", "Mul", "Max", "Min", "Div", "Mod"])
        elif v.dtype == BOOL:
            op = self.pick(["And", "Or", "Xor"])
        else:
            return None
        if v.dtype in INTS and op in ("Div", "Mod"):
            # Integer division by zero (or INT_MIN / -1) kills the process in onnxruntime: a
            # positive constant divisor only.
            div = self.rng.integers(2, 6, size=[d if isinstance(d, int) else 1 for d in v.shape[-1:]])
            return self.node(op, [v.name, self.init(div.astype(NP[v.dtype]), "d")], v.dtype, v.shape)
        name, shape = self.partner(v, v.dtype)
        ins = [v.name, name] if self.chance(0.7) else [name, v.name]
        return self.node(op, ins, v.dtype, shape)

    def op_matmul(self, v: Val) -> Val | None:
        if v.dtype not in (F32, F16, I32, I64) or not v.shape or not isinstance(v.shape[-1], int):
            return None
        k, p = v.shape[-1], int(self.rng.integers(1, 6))
        if self.rowwise and len(v.shape) < 2:
            return None
        if len(v.shape) == 2 and v.dtype == F32 and not self.rowwise and self.chance(0.4):
            trans_b = int(self.chance(0.5))
            w = self.init(self.rand_array(F32, [p, k] if trans_b else [k, p]))
            ins = [v.name, w]
            if self.chance(0.6):
                ins.append(self.init(self.rand_array(F32, [p] if self.chance(0.5) else [1, p]), "b"))
            alpha, beta = float(self.pick([1.0, 0.5, 2.0])), float(self.pick([1.0, 0.25]))
            return self.node("Gemm", ins, F32, (v.shape[0], p), transB=trans_b, alpha=alpha, beta=beta)
        w = self.init(self.rand_array(v.dtype, [k, p]))
        return self.node("MatMul", [v.name, w], v.dtype, (*v.shape[:-1], p))

    def op_reduce(self, v: Val) -> Val | None:
        if v.dtype not in (F32, F16, I32, I64) or not v.shape:
            return None
        rank = len(v.shape)
        first = 1 if self.rowwise else 0
        if rank - first < 1:
            return None
        if self.chance(0.15):
            axis = int(self.rng.integers(first, rank))
            keep = int(self.chance(0.5)) if not (self.rowwise and rank == 1) else 1
            shape = (
                tuple(1 if i == axis else d for i, d in enumerate(v.shape))
                if keep
                else v.shape[:axis] + v.shape[axis + 1 :]
            )
            return self.node("ArgMax", [v.name], I64, shape, axis=axis, keepdims=keep)
        op = self.pick(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum"])
        n_axes = int(self.rng.integers(1, rank - first + 1))
        axes = sorted(int(a) for a in self.rng.choice(np.arange(first, rank), n_axes, replace=False))
        keep = int(self.chance(0.5)) or int(self.rowwise and len(axes) == rank - 1 and False)
        ins = [v.name, self.init(np.array(axes, np.int64), "ax")]
        if keep:
            shape = tuple(1 if i in axes else d for i, d in enumerate(v.shape))
        else:
            shape = tuple(d for i, d in enumerate(v.shape) if i not in axes)
        return self.node(op, ins, v.dtype, shape, keepdims=keep)

    def op_shape(self, v: Val) -> Val | None:
        rank = len(v.shape)
        first = 1 if self.rowwise else 0
        choice = self.pick(["reshape", "transpose", "concat", "slice", "gather", "unsqueeze", "expand", "flatten"])
        static_axes = [i for i in range(first, rank) if isinstance(v.shape[i], int)]
        if choice == "transpose" and rank >= 2:
            perm = list(range(first)) + [int(i) + first for i in self.rng.permutation(rank - first)]
            return self.node("Transpose", [v.name], v.dtype, tuple(v.shape[i] for i in perm), perm=perm)
        if choice == "reshape" and rank >= 1:
            n = _numel(v.shape)
            if n is not None and not self.rowwise:
                dims: list[int] = []
                rest = n
                for _ in range(int(self.rng.integers(0, 3))):
                    divs = [d for d in range(1, rest + 1) if rest % d == 0] or [1]  # rest 0: an empty tensor
                    d = self.pick(divs)
                    dims.append(d)
                    rest //= d
                dims.append(rest)
                spec = list(dims)
                if self.chance(0.3):
                    spec[int(self.rng.integers(len(spec)))] = -1
                return self.node("Reshape", [v.name, self.init(np.array(spec, np.int64), "sh")], v.dtype, dims)
            if rank >= 2:  # keep dim 0, flatten the rest
                out: tuple[Dim, ...] = (v.shape[0], _prod_dim(v.shape[1:]))
                return self.node("Reshape", [v.name, self.init(np.array([0, -1], np.int64), "sh")], v.dtype, out)
            return None
        if choice == "concat" and static_axes:
            axis = self.pick(static_axes)
            others = [
                u for u in self.vals if u is not v and u.dtype == v.dtype and u.shape == v.shape and None not in u.shape
            ]
            if v.static and self.chance(0.5):
                k = int(self.rng.integers(1, 4))
                pshape = [k if i == axis else d for i, d in enumerate(v.shape)]
                parts = [v.name, self.init(self.rand_array(v.dtype, pshape), "cc")]  # type: ignore[arg-type]
                size = v.shape[axis] + k  # type: ignore[operator]
            else:
                u = self.pick(others) if others and self.chance(0.5) else v
                parts = [v.name, u.name] if self.chance(0.5) else [u.name, v.name]
                size = 2 * v.shape[axis]  # type: ignore[operator]
            shape = tuple(size if i == axis else d for i, d in enumerate(v.shape))
            axis_attr = axis - rank if self.chance(0.3) else axis
            return self.node("Concat", parts, v.dtype, shape, axis=axis_attr)
        if choice == "slice" and rank >= 1:
            axes = list(range(first, rank))
            if not axes:
                return None
            axis = self.pick(axes)
            d = v.shape[axis]
            if isinstance(d, int):
                step = int(self.pick([1, 1, 2, -1, -2, 3]))
                start, end = int(self.rng.integers(-d - 1, d + 2)), int(self.rng.integers(-d - 1, d + 2))
                size: Dim = _slice_len(d, start, end, step)
            elif self.chance(0.5):
                start, end, step, size = 0, INT64_MAX, 1, d
            else:
                start, end, step, size = -1, -INT64_MAX, -1, d  # reversed: same length
            ins = [v.name] + [self.init(np.array([x], np.int64), "sl") for x in (start, end, axis)]
            if step != 1 or self.chance(0.5):
                ins.append(self.init(np.array([step], np.int64), "st"))
            shape = tuple(size if i == axis else x for i, x in enumerate(v.shape))
            return self.node("Slice", ins, v.dtype, shape)
        if choice == "gather" and static_axes:
            axis = self.pick(static_axes)
            d = v.shape[axis]
            assert isinstance(d, int)
            if d < 1:
                return None
            ishape = self.pick([(), (int(self.rng.integers(1, 4)),), (2, int(self.rng.integers(1, 3)))])
            idx = self.rng.integers(-d, d, size=ishape).astype(np.int64)
            shape = (*v.shape[:axis], *ishape, *v.shape[axis + 1 :])
            if self.rowwise and not shape:
                return None
            return self.node("Gather", [v.name, self.init(idx, "ix")], v.dtype, shape, axis=axis)
        if choice == "unsqueeze":
            axis = int(self.rng.integers(first, rank + 1))
            shape = (*v.shape[:axis], 1, *v.shape[axis:])
            return self.node("Unsqueeze", [v.name, self.init(np.array([axis], np.int64), "ax")], v.dtype, shape)
        if choice == "expand" and rank >= 1 and v.dtype != BF16:
            target = [1 if not isinstance(d, int) else (int(self.rng.integers(2, 4)) if d == 1 else d) for d in v.shape]
            if self.rowwise:
                target[0] = 1
            lead: list[int] = [] if self.rowwise or not self.chance(0.3) else [2]
            shape = (*lead, *(t if t != 1 else d for t, d in zip(target, v.shape, strict=True)))
            return self.node("Expand", [v.name, self.init(np.array(lead + target, np.int64), "ex")], v.dtype, shape)
        if choice == "flatten" and rank >= 1 and not self.rowwise:
            axis = int(self.rng.integers(0, rank + 1))
            return self.node(
                "Flatten", [v.name], v.dtype, (_prod_dim(v.shape[:axis]), _prod_dim(v.shape[axis:])), axis=axis
            )
        return None

    def op_cast(self, v: Val) -> Val | None:
        to = self.pick(
            [t for t in (F32, F16, I32, I64, BOOL, *((BF16,) if "bf16" in self.feats else ())) if t != v.dtype]
        )
        return self.node("Cast", [v.name], to, v.shape, to=to)

    def op_where(self, v: Val) -> Val | None:
        if v.dtype not in (F32, F16, I32, I64):
            return None
        name, shape = self.partner(v, v.dtype)
        cmp = self.pick(["Greater", "Less", "Equal", "GreaterOrEqual"])
        cond = self.node(cmp, [v.name, name], BOOL, shape)
        if self.chance(0.3):
            return cond
        other, _ = self.partner(Val(v.name, v.dtype, shape), v.dtype) if shape == v.shape else (v.name, shape)
        a, b = (v.name, other) if self.chance(0.5) else (other, v.name)
        return self.node("Where", [cond.name, a, b], v.dtype, shape)

    def op_dynamic(self, v: Val) -> Val | None:
        if self.rowwise or "dynamic" not in self.feats:
            return None
        self.dynamic = True
        if self.chance(0.5) and v.dtype != BF16:
            return self.node("NonZero", [v.name], I64, (len(v.shape), None))
        # Reshape to (first dim, -1) through Shape/Gather/Concat: a shape from values at run time
        if len(v.shape) < 1:
            return None
        s = self.node("Shape", [v.name], I64, (len(v.shape),))
        g = self.node("Gather", [s.name, self.init(np.array([0], np.int64), "z")], I64, (1,), axis=0)
        c = self.node("Concat", [g.name, self.init(np.array([-1], np.int64), "m")], I64, (2,), axis=0)
        return self.node("Reshape", [v.name, c.name], v.dtype, (v.shape[0], _prod_dim(v.shape[1:])))

    def grow(self) -> Val | None:
        """One random op on a recent value (weighted families); None when it did not apply."""
        recent = self.vals[-4:]
        v = self.pick(recent) if self.chance(0.8) else self.pick(self.vals)
        if v.dtype == I64 and None in v.shape and self.chance(0.5):
            v = self.pick(self.vals)
        families: list[tuple[Callable[[Val], Val | None], float]] = [
            (self.op_unary, 3),
            (self.op_binary, 4),
            (self.op_matmul, 1.5),
            (self.op_reduce, 1.2),
            (self.op_shape, 3),
            (self.op_cast, 1.5),
            (self.op_where, 1.2),
            (self.op_dynamic, 0.4),
        ]
        w = np.array([f[1] for f in families])
        fn = families[int(self.rng.choice(len(families), p=w / w.sum()))][0]
        if v.dtype == BF16 and fn not in (self.op_cast, self.op_shape, self.op_unary):
            fn = self.op_cast
        if self.rowwise and fn in (self.op_dynamic,):
            return None
        return fn(v)


def _vi(name: str, dtype: int, shape: Sequence[Dim] | None) -> onnx.ValueInfoProto:
    if shape is None:
        return helper.make_tensor_value_info(name, dtype, None)
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _rowwise_ok(v: Val) -> bool:
    return len(v.shape) >= 1 and v.shape[0] == "N"


def generate_model(
    rng: np.random.Generator, feats: frozenset[str], rowwise: bool, name: str
) -> tuple[onnx.ModelProto, list[InSpec], bool]:
    """A random model: (proto, its input specs, whether any output shape depends on values)."""
    b = Builder(rng, feats, rowwise)
    b.first_input()
    empty = "passthrough" in feats and not rowwise and b.chance(0.04)
    if not empty:
        if b.chance(0.3):
            v0 = b.vals[0]
            b.add_input(b.pick([v0.dtype, *b.dtypes()]), v0.shape)
        target = int(rng.integers(1, 8))
        tries = 0
        while len(b.nodes) < target and tries < 40:
            tries += 1
            b.grow()
    produced = [v for v in b.vals if v.name not in {i.name for i in b.inputs}]
    if rowwise:
        produced = [v for v in produced if _rowwise_ok(v)]
    outs: list[Val] = []
    if produced:
        k = min(len(produced), int(rng.integers(1, 4)))
        outs = (
            [produced[-1]] + [produced[int(i)] for i in rng.choice(len(produced) - 1, k - 1, replace=False)]
            if len(produced) > 1
            else [produced[-1]]
        )
    ins_as_vals = [Val(i.name, i.dtype, i.shape) for i in b.inputs]
    if not outs or ("passthrough" in feats and b.chance(0.3)):
        outs.append(b.pick(ins_as_vals))
    if "duplicate" in feats and b.chance(0.15):
        outs.append(b.pick(outs))
    # unique node outputs; an initializer-only padding tensor whose bytes the forge may rewrite
    pad = numpy_helper.from_array(rng.integers(0, 256, 24).astype(np.uint8), "fz_pad")
    out_vis = []
    for v in outs:
        style = rng.random()
        if style < 0.5:
            out_vis.append(_vi(v.name, v.dtype, v.shape))
        elif style < 0.8:
            out_vis.append(_vi(v.name, v.dtype, [None] * len(v.shape)))
        else:
            out_vis.append(_vi(v.name, v.dtype, None))
    graph = helper.make_graph(
        b.nodes,
        name,
        [_vi(i.name, i.dtype, i.shape) for i in b.inputs],
        out_vis,
        [*b.inits, pad],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fuzz_isolation")
    model.ir_version = 8
    return model, b.inputs, b.dynamic


def reweight(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto | None:
    """The same graph with new values in every float initializer (same dtypes, shapes and byte
    size), or None when it has none."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    changed = False
    for i, t in enumerate(twin.graph.initializer):
        if t.data_type in (F32, F16) and t.name != "fz_pad":
            a = numpy_helper.to_array(t)
            new = (np.round(rng.standard_normal(a.shape) * 2, 3) + 0.125).astype(a.dtype)
            twin.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, t.name))
            changed = True
    return twin if changed else None


# -- the sim's former model-cache key (FNV-1a over 8-byte words, engine.c), and its inversion --

_FNV_OFF, _FNV_P = 1469598103934665603, 1099511628211
_FNV_PINV = pow(_FNV_P, -1, 1 << 64)
_M64 = (1 << 64) - 1


def fnv_words(data: bytes) -> int:
    """The key engine.c computed before it was fixed: FNV-1a over little-endian 8-byte words,
    then the tail bytes, xor the size."""
    h = _FNV_OFF
    n = len(data)
    words = np.frombuffer(data, "<u8", count=n // 8)
    for w in words.tolist():
        h = ((h ^ w) * _FNV_P) & _M64
    for c in data[n - n % 8 :]:
        h = ((h ^ c) * _FNV_P) & _M64
    return h ^ n


def forge_fnv(target: bytes, data: bytes, where: int) -> bytes | None:
    """``data`` with the 8-byte aligned word at or after offset ``where`` (which must lie in
    bytes free to change) rewritten so that fnv_words(result) == fnv_words(target); None when
    the sizes differ. FNV's multiply is invertible modulo 2**64, so the state needed after the
    word is found by running the rest of ``data`` backwards from the target's final state."""
    n = len(data)
    if len(target) != n:
        return None
    off = (where + 7) // 8 * 8
    if off + 8 > n - n % 8:
        return None
    h = _FNV_OFF
    words = np.frombuffer(data, "<u8", count=n // 8).tolist()
    for w in words[: off // 8]:
        h = ((h ^ w) * _FNV_P) & _M64
    need = fnv_words(target) ^ n  # the final state before the size is mixed in
    for c in reversed(data[n - n % 8 :]):
        need = ((need * _FNV_PINV) & _M64) ^ c
    for w in reversed(words[off // 8 + 1 :]):
        need = ((need * _FNV_PINV) & _M64) ^ w
    word = ((need * _FNV_PINV) & _M64) ^ h
    out = bytearray(data)
    out[off : off + 8] = word.to_bytes(8, "little")
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# The reference: onnxruntime's own Python API, with the options the sim's engine uses


class Reference:
    """onnxruntime.InferenceSession on the same model with the sim engine's options (one
    intra-op thread, one inter-op thread, sequential, every graph optimisation), so the same
    kernels run in the same order and results can be compared bit for bit."""

    def __init__(self, source: bytes | str) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 4
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs, as arrays of their own. Through OrtValues, not ``sess.run``: for an
        output that is a graph input, ``sess.run``'s array can borrow the input's buffer without
        keeping it alive (garbage once the input is freed; heap corruption seen), and
        onnxruntime's Python API has no numpy type for bfloat16 (read as raw bytes here)."""
        feed = {}
        for k, a in inputs.items():
            if a.dtype == NP[BF16]:
                feed[k] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), BF16)
            else:
                feed[k] = ort.OrtValue.ortvalue_from_numpy(a)
        res = {}
        for name, v in zip(self.names, self.sess.run_with_ort_values(None, feed), strict=True):
            shape = tuple(v.shape())
            if v.data_type() == "tensor(bfloat16)":
                n = math.prod(shape)
                raw = ctypes.string_at(v.data_ptr(), 2 * n) if n else b""
                res[name] = np.frombuffer(raw, NP[BF16]).reshape(shape).copy()
            else:
                res[name] = np.array(v.numpy(), copy=True)
        del feed  # the input OrtValues (and the arrays they borrow) lived until the copies were made
        return res


# ----------------------------------------------------------------------------------------------
# Cases: a model, how the library gets it, its reference and its inputs


@dataclass
class Case:
    idx: int
    model: onnx.ModelProto  # weights inline
    data: bytes  # what the library reads: the serialized model (for external data, without weights)
    inputs: list[InSpec]
    rowwise: bool
    dynamic: bool
    origin: str
    folder: Path | None = None  # external data: the model file and its weights live here
    path: Path | None = None  # the model file (external data: always; otherwise written on use)
    ref: Reference | None = None
    refused: str | None = None  # onnxruntime refused the model: the library must refuse it too

    @property
    def ext(self) -> bool:
        return self.folder is not None

    def describe(self) -> str:
        ins = ", ".join(f"{i.name}:{NP[i.dtype].name}{list(i.shape)}" for i in self.inputs)
        ops = Counter(n.op_type for n in self.model.graph.node)
        outs = [o.name for o in self.model.graph.output]
        kind = "external data" if self.ext else "inline"
        return f"{self.origin}, {kind}; inputs {ins}; outputs {outs}; ops {dict(ops)}"


def make_inputs(case: Case, rng: np.random.Generator, tenant: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs for one run: symbols bound per run, special values now and then, and the
    tenant's marker at element 0 of every non-bool input."""
    bind: dict[str, int] = {}
    if rows is not None:
        bind["N"] = rows
    else:
        bind["N"] = 0 if rng.random() < 0.02 else int(rng.integers(1, 6))
    bind["M"] = int(rng.integers(1, 4))
    out: dict[str, np.ndarray] = {}
    for spec in case.inputs:
        shape = tuple(d if isinstance(d, int) else bind[str(d)] for d in spec.shape)
        n = math.prod(shape)
        if spec.dtype in (F32, F16, BF16):
            flat = np.round(rng.standard_normal(n) * 3, 2)
            if n and rng.random() < 0.1:
                specials = np.array([np.inf, -np.inf, np.nan, -0.0, 1e30, 1e-40, 65504.0, -1e5])
                pos = rng.integers(0, n, size=min(n, 3))
                flat[pos] = rng.choice(specials, size=len(pos))
        elif spec.dtype in INTS:
            flat = rng.integers(-8, 9, n)
            if n and rng.random() < 0.05:
                info = np.iinfo(NP[spec.dtype])
                flat = flat.astype(np.int64)
                flat[int(rng.integers(n))] = int(rng.choice([info.min, info.max, info.max // 2]))
        else:
            flat = rng.random(n) < 0.5
        with np.errstate(over="ignore", invalid="ignore"):  # 1e30 -> inf in float16, on purpose
            a = flat.astype(NP[spec.dtype]).reshape(shape)
        m = marker(tenant, spec.dtype)
        if m is not None and n:
            a.reshape(-1)[0] = m
        out[spec.name] = a
    return out


def _write_external(model: onnx.ModelProto, folder: Path, location: str) -> bytes:
    """Save ``model`` as ``folder/model.onnx`` with every initializer's bytes in
    ``folder/location`` (written here: onnx's own saver checks for the file relative to the
    working directory, where the decoys are). Returns the .onnx bytes."""
    weights = folder / location
    weights.parent.mkdir(parents=True, exist_ok=True)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    blob = bytearray()
    for t in m.graph.initializer:
        raw = numpy_helper.to_array(t).tobytes()
        blob += bytes(-len(blob) % 64)  # aligned offsets, as onnx writes them
        offset = len(blob)
        blob += raw
        t.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(f)
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
    weights.write_bytes(bytes(blob))
    data = m.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    return data


DECOY_LOCATIONS = ("weights.bin", "sub/weights.bin")


def write_decoys(cwd: Path) -> None:
    """Weight files of the names external data uses, in the working directory: a model whose
    weights were read from here gets 31337.0 (or that pattern as ints) instead of its own."""
    blob = np.full(1 << 15, 31337.0, np.float32).tobytes()
    for loc in DECOY_LOCATIONS:
        p = cwd / loc
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)


def generate_epoch(seed: int, epoch: int, feats: frozenset[str], root: Path, n_cases: int) -> list[Case]:
    """The epoch's cases (deterministic in seed, epoch and features): fresh models, exact
    duplicates, twins with other weights (some FNV-forged to their sibling's former cache key),
    models with external data, and twins of those sharing the same .onnx bytes."""
    rng = np.random.default_rng([seed, epoch, 0xCA5E])
    cases: list[Case] = []
    for idx in range(n_cases):
        crng = np.random.default_rng([seed, epoch, idx])
        base = [c for c in cases if c.refused is None and not c.origin.startswith(("forged", "ext twin"))]
        roll = rng.random()
        if "twins" in feats and base and roll < 0.12:
            src = base[int(crng.integers(len(base)))]
            case = Case(
                idx,
                src.model,
                src.data,
                src.inputs,
                src.rowwise,
                src.dynamic,
                f"duplicate of case {src.idx}",
                src.folder,
                src.path,
            )
        elif "twins" in feats and base and roll < 0.3:
            src = base[int(crng.integers(len(base)))]
            twin = reweight(src.model, crng)
            if twin is None:
                case = _fresh(idx, crng, feats, root, epoch)
            elif src.ext and "extdata" in feats:
                loc = _location(src)
                folder = root / f"e{epoch}c{idx}"
                data = _write_external(twin, folder, loc)
                origin = f"ext twin of case {src.idx} (same .onnx bytes: {data == src.data})"
                case = Case(
                    idx, twin, data, src.inputs, src.rowwise, src.dynamic, origin, folder, folder / "model.onnx"
                )
            else:
                data = twin.SerializeToString()
                origin = f"twin of case {src.idx} (other weights)"
                if "forge" in feats:
                    pad = next(t for t in twin.graph.initializer if t.name == "fz_pad")
                    where = data.find(pad.raw_data)
                    forged = forge_fnv(src.data, data, where) if where >= 0 and data.count(pad.raw_data) == 1 else None
                    if forged is not None and fnv_words(forged) == fnv_words(src.data):
                        data = forged
                        twin = onnx.load_model_from_string(data)
                        origin = f"forged twin of case {src.idx} (other weights, the same former FNV cache key)"
                case = Case(idx, twin, data, src.inputs, src.rowwise, src.dynamic, origin)
        else:
            case = _fresh(idx, crng, feats, root, epoch)
        _attach_reference(case)
        cases.append(case)
    return cases


def _location(case: Case) -> str:
    """Where an external-data case keeps its weights (relative to its folder)."""
    m = onnx.load_model_from_string(case.data)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                return e.value
    return DECOY_LOCATIONS[0]


def _fresh(idx: int, rng: np.random.Generator, feats: frozenset[str], root: Path, epoch: int) -> Case:
    rowwise = "batcher" in feats and rng.random() < 0.2
    model, inputs, dynamic = generate_model(rng, feats, rowwise, f"e{epoch}c{idx}")
    if "extdata" in feats and not rowwise and len(model.graph.initializer) > 1 and rng.random() < 0.25:
        folder = root / f"e{epoch}c{idx}"
        data = _write_external(model, folder, DECOY_LOCATIONS[int(rng.integers(2))])
        return Case(idx, model, data, inputs, rowwise, dynamic, "fresh", folder, folder / "model.onnx")
    return Case(idx, model, model.SerializeToString(), inputs, rowwise, dynamic, "fresh")


def _attach_reference(case: Case) -> None:
    try:
        case.ref = Reference(str(case.path) if case.ext else case.data)
    except Exception as exc:  # onnxruntime refuses the model: so must the library
        case.refused = f"{type(exc).__name__}: {str(exc)[:300]}"


# ----------------------------------------------------------------------------------------------
# Findings


@dataclass
class Finding:
    kind: str
    where: str  # seed:epoch:case:run
    what: str
    detail: str = ""


class Findings:
    def __init__(self, argv_hint: str, keep: int = 200, echo: int = 3) -> None:
        self.lock = threading.Lock()
        self.items: list[Finding] = []
        self.kinds: Counter[str] = Counter()
        self.keep = keep
        self.echo = echo
        self.hint = argv_hint

    def add(self, kind: str, where: str, what: str, detail: str = "") -> None:
        with self.lock:
            self.kinds[kind] += 1
            if self.kinds[kind] <= self.keep:
                self.items.append(Finding(kind, where, what, detail))
            if self.kinds[kind] <= self.echo:
                print(f"FINDING [{kind}] at {where}: {what}\n  replay: {self.replay_cmd(where)}", flush=True)
                if kind == "tenant":  # a bug in the harness or an exception the API does not promise
                    print(detail, flush=True)

    def replay_cmd(self, where: str) -> str:
        if where.count(":") != 3:
            return "(rerun the campaign: see below)"
        return f"python tests/fuzz_isolation.py --replay {where}{self.hint}"

    def __bool__(self) -> bool:
        return bool(self.items)

    def groups(self) -> list[tuple[int, str, Finding]]:
        """Findings grouped by kind, the case's origin and what the message says about the
        cause (tags; for errors the exception and its text with numbers blanked): (count,
        signature, first example), most frequent first."""
        import re

        seen: dict[str, tuple[int, Finding]] = {}
        for f in self.items:
            tags = sorted(
                set(re.findall(r"(pass-through|output listed twice|empty graph|CROSS-TENANT|poison|decoy)", f.what))
            )
            origin = re.search(r"\{(fresh|duplicate|twin|forged twin|ext twin)[^}]*\}", f.what)
            if f.kind in ("mismatch", "cross-tenant"):
                sig = f"[{f.kind}] {','.join(tags) or 'computed output'}" + (
                    f" in a {origin.group(1)}" if origin else ""
                )
            else:
                m = re.search(r"raised (\w+): (.{0,90})", f.what)
                text = m.group(0) if m else f.what[:110]
                sig = f"[{f.kind}] " + re.sub(r"\d+", "#", text)
            n, first = seen.get(sig, (0, f))
            seen[sig] = (n + 1, first)
        return sorted(((n, sig, f) for sig, (n, f) in seen.items()), key=lambda x: -x[0])

    def summary(self) -> str:
        lines = [
            f"{sum(self.kinds.values())} finding(s): " + ", ".join(f"{k}={n}" for k, n in self.kinds.most_common())
        ]
        lines.append(f"grouped (over the first {self.keep} of each kind):")
        for n, sig, f in self.groups():
            lines.append(f"  {n:5d} x {sig}\n        e.g. {f.where}: {f.what[:300]}")
        lines.append("the first ones:")
        for f in self.items[:10]:
            lines.append(f"- [{f.kind}] {f.where}: {f.what[:600]}")
            lines.append(f"  replay: {self.replay_cmd(f.where)}")
        return "\n".join(lines)


def compare(
    got: dict[str, Any], want: dict[str, np.ndarray], tenant: int, n_tenants: int, case: Case | None = None
) -> str | None:
    """None when ``got`` is exactly ``want`` (names, dtypes, shapes, bytes); else what differs,
    naming a cross-tenant leak (another tenant's marker where the reference has none) and
    values that look like poison or stale blocks."""
    if set(got) != set(want):
        return f"output names {sorted(got)} != {sorted(want)}"
    problems = []
    for name, w in want.items():
        g = got[name]
        if not isinstance(g, np.ndarray):
            return f"{name}: not an ndarray but {type(g).__name__}"
        if g.dtype != w.dtype or g.shape != w.shape:
            problems.append(f"{name}: {g.dtype}{list(g.shape)} != reference {w.dtype}{list(w.shape)}")
            continue
        if g.tobytes() == w.tobytes():
            continue
        gb = np.ascontiguousarray(g).view(np.uint8).reshape((*g.shape, g.dtype.itemsize)) if g.ndim else None
        wb = np.ascontiguousarray(w).view(np.uint8).reshape((*w.shape, w.dtype.itemsize)) if w.ndim else None
        if gb is not None and wb is not None:
            bad = np.any(gb != wb, axis=-1)
        else:
            bad = np.array(True)
        gbad, wbad = np.asarray(g[bad] if g.ndim else g).reshape(-1), np.asarray(w[bad] if w.ndim else w).reshape(-1)
        tags = []
        if case is not None:
            if name in {i.name for i in case.inputs}:
                tags.append("pass-through output (a graph input)")
            if [o.name for o in case.model.graph.output].count(name) > 1:
                tags.append("output listed twice")
            if not case.model.graph.node:
                tags.append("empty graph")
        dt = next((k for k, v in NP.items() if v == g.dtype), None)
        if dt is not None and marker(0, dt) is not None:
            others = {t: marker(t, dt) for t in range(n_tenants) if t != tenant}
            leaked = sorted(t for t, m in others.items() if np.any(gbad == m))
            if leaked:
                tags.append(f"CROSS-TENANT: holds tenant {leaked}'s input marker (this run is tenant {tenant})")
            if np.any(gbad == marker(tenant, dt)):
                tags.append("holds this tenant's own marker")
        if g.dtype.kind == "f" or g.dtype == NP[BF16]:
            if np.all(np.isnan(gbad.astype(np.float32))):
                tags.append("NaN where the reference has values (poison: a stale block?)")
            if np.any(gbad.astype(np.float32) == 31337.0):
                tags.append("decoy weights from the working directory")
        if g.dtype.itemsize and (g.reshape(-1).view(np.uint8) == 0xA5).all():
            tags.append("all 0xA5 bytes (poison: never written)")
        problems.append(
            f"{name}: {int(np.sum(bad))}/{g.size} elements differ, "
            f"e.g. got {gbad[:4].tolist()} want {wbad[:4].tolist()}" + (f" [{'; '.join(tags)}]" if tags else "")
        )
    return "; ".join(problems) if problems else None


# ----------------------------------------------------------------------------------------------
# The campaign: sessions, slots, tenants


@dataclass
class Slot:
    """One case added to one session: its current Graph, the way it was added, its run mode."""

    case: Case
    session: aa.Session
    sidx: int
    mode: str  # "stream" | "sync" | "callback"
    how: str  # "bytes" | "proto" | "path" | "graph" | "bytes+base_dir" | "proto+base_dir"
    graph: aa.Graph | None = None
    gen: int = 0  # bumped by every successful remove_graph
    lock: threading.Lock = field(default_factory=threading.Lock)
    removing: int = 0  # remove_graph calls under way (gen is bumped once one returns)
    settled: threading.Condition = field(init=False)  # notified when `removing` drops (on lock)
    batcher: aa.Batcher | None = None
    batcher_params: dict[str, Any] = field(default_factory=dict)
    shared_graph: aa.Graph | None = None

    def __post_init__(self) -> None:
        self.settled = threading.Condition(self.lock)

    def source(self) -> Any:
        c = self.case
        if self.how == "graph" and self.shared_graph is not None:
            return self.shared_graph
        if self.how == "path":
            return str(c.path)
        if self.how.startswith("proto"):
            return onnx.load_model_from_string(c.data)
        return c.data

    def add(self) -> aa.Graph:
        kwargs: dict[str, Any] = {}
        if self.how.endswith("+base_dir"):
            kwargs["base_dir"] = str(self.case.folder)
        return self.session.add_graph(self.source(), **kwargs)


@dataclass
class Job:
    kind: str  # run | run_dev | cancel | remove | batch | burst | sync | callback
    slot: int
    run: int
    extra: int = 0


class Campaign:
    """Runs epochs of generated cases through shared sessions from several tenants."""

    def __init__(
        self,
        seed: int,
        feats: frozenset[str],
        root: Path,
        findings: Findings,
        runs_per_epoch: int = 240,
        cases_per_epoch: int = 8,
        verbose: bool = False,
    ) -> None:
        self.seed = seed
        self.feats = feats
        self.root = root
        self.findings = findings
        self.runs_per_epoch = runs_per_epoch
        self.cases_per_epoch = cases_per_epoch
        self.verbose = verbose
        self.sessions: list[aa.Session] = []
        self.stats: Counter[str] = Counter()
        self.stats_lock = threading.Lock()
        backends: list[tuple[str, dict[str, Any]]] = [("asyncio", {})]
        if "uvloop" in feats and uvloop is not None:
            backends.append(("asyncio", {"loop_factory": uvloop.new_event_loop}))
        if "trio" in feats:
            backends.append(("trio", {}))
        backends.append(("asyncio", {}))
        self.backends = backends
        self.n_tenants = len(backends) + 1  # the plain thread is the last tenant

    def count(self, key: str, n: int = 1) -> None:
        with self.stats_lock:
            self.stats[key] += n

    def __enter__(self) -> Campaign:
        self.sessions = [aa.Session(streams=k) for k in (1, 2, 3)]
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.sessions:
            s.close()

    # -- one epoch ---------------------------------------------------------------------------

    def epoch(self, e: int) -> int:
        """Generate, place and run one epoch; returns the number of runs compared."""
        cases = generate_epoch(self.seed, e, self.feats, self.root, self.cases_per_epoch)
        rng = np.random.default_rng([self.seed, e, 0x5107])
        slots = self.place(e, cases, rng)
        if not slots:
            return 0
        jobs = self.plan(e, slots, rng)
        burst = "burst" in self.feats and any(j.kind == "burst" for js in jobs for j in js)
        held: list[Any] = []
        if burst:
            held = self.hold_streams()
        threads = []
        for k, (backend, options) in enumerate(self.backends):
            threads.append(
                threading.Thread(
                    target=self.async_tenant, args=(e, k, backend, options, slots, jobs[k]), name=f"fuzz-tenant-{k}"
                )
            )
        threads.append(
            threading.Thread(
                target=self.thread_tenant, args=(e, len(self.backends), slots, jobs[-1]), name="fuzz-tenant-sync"
            )
        )
        before = self.stats["compared"]
        for t in threads:
            t.start()
        if held:
            self.release_when_full(held, sum(j.extra for js in jobs for j in js if j.kind == "burst"))
        for t in threads:
            t.join(600)
            if t.is_alive():
                self.findings.add("hang", f"{self.seed}:{e}", f"{t.name} still running after 600 s")
                raise SystemExit(f"hang in {t.name}; seed {self.seed} epoch {e}")
        self.retire(e, slots)
        return self.stats["compared"] - before

    def place(self, e: int, cases: list[Case], rng: np.random.Generator) -> list[Slot]:
        """Add each case to one to three sessions (the same Graph object shared now and then);
        a case onnxruntime refuses must be refused by the library too."""
        slots: list[Slot] = []
        for c in cases:
            where = f"{self.seed}:{e}:{c.idx}:0"
            if c.refused is not None:
                self.count("refused_by_onnxruntime")
                try:
                    g = self.sessions[0].add_graph(c.data) if not c.ext else self.sessions[0].add_graph(str(c.path))
                except aa.GraphError:
                    continue
                except Exception as exc:
                    self.findings.add(
                        "refusal",
                        where,
                        f"onnxruntime refuses ({c.refused}); add_graph raised {type(exc).__name__}: {exc}",
                    )
                    continue
                with contextlib.suppress(aa.AscendError):  # the finding below is what matters
                    self.sessions[0].remove_graph(g)
                self.findings.add(
                    "refusal",
                    where,
                    f"onnxruntime refuses the model ({c.refused}) but add_graph accepted it: {c.describe()}",
                )
                continue
            n = 1 + int(rng.integers(0, 3)) if "twins" in self.feats else 1
            sidxs = [int(i) for i in rng.choice(len(self.sessions), n, replace=False)]
            shared = None
            for sidx in sidxs:
                if c.rowwise:
                    mode = "stream"
                else:
                    modes = (
                        ["stream"] * 6 + ["sync"] * ("sync" in self.feats) + ["callback"] * ("callback" in self.feats)
                    )
                    mode = modes[int(rng.integers(len(modes)))]
                if c.ext:
                    hows = ["path"] + (["bytes+base_dir", "proto+base_dir"] if "base_dir" in self.feats else [])
                else:
                    hows = ["bytes", "bytes", "proto", "path"] + (["graph"] if shared is not None else [])
                how = hows[int(rng.integers(len(hows)))]
                if how == "path" and c.path is None:
                    c.path = self.root / f"e{e}c{c.idx}.onnx"
                    c.path.write_bytes(c.data)
                slot = Slot(c, self.sessions[sidx], sidx, mode, how, shared_graph=shared)
                try:
                    slot.graph = slot.add()
                except aa.GraphError as exc:
                    outs = [o.name for o in c.model.graph.output]
                    if len(set(outs)) < len(outs) and "more than once" in str(exc):
                        # GE forbids an output name twice: refusing it at add_graph is the
                        # library's promise (issue 17, item 8); running it exactly is too.
                        self.count("refused_duplicate_outputs")
                        continue
                    self.findings.add(
                        "add_graph",
                        where,
                        f"session {sidx} add_graph({how}) raised GraphError: {exc}; {c.describe()}",
                    )
                    continue
                except Exception as exc:
                    self.findings.add(
                        "add_graph",
                        where,
                        f"session {sidx} add_graph({how}) raised {type(exc).__name__}: {exc}; {c.describe()}",
                    )
                    continue
                if shared is None and how in ("bytes", "proto", "path"):
                    shared = slot.graph
                if c.rowwise and "batcher" in self.feats:
                    slot.batcher_params = {
                        "max_batch_size": int(rng.integers(4, 17)),
                        "max_delay_ms": float(rng.choice([0.2, 1.0, 2.0])),
                    }
                    slot.batcher = slot.session.batcher(slot.graph, **slot.batcher_params)
                slots.append(slot)
            if c.ext and "base_dir" in self.feats and rng.random() < 0.3:
                self.expect_refusal_without_base_dir(c, where)
        return slots

    def expect_refusal_without_base_dir(self, c: Case, where: str) -> None:
        """Bytes with external data and no base_dir: refused (GraphError), never resolved
        against the working directory."""
        s = self.sessions[0]
        try:
            g = s.add_graph(c.data)
        except aa.GraphError:
            self.count("ext_bytes_refused")
            return
        except Exception as exc:
            self.findings.add(
                "extdata", where, f"add_graph(bytes with external data, no base_dir) raised {type(exc).__name__}: {exc}"
            )
            return
        self.findings.add(
            "extdata",
            where,
            "add_graph(bytes with external data, no base_dir) was accepted (resolved against the working directory?)",
        )
        with contextlib.suppress(aa.AscendError):
            s.remove_graph(g)

    def plan(self, e: int, slots: list[Slot], rng: np.random.Generator) -> list[list[Job]]:
        """Each tenant's jobs for the epoch (deterministic): async tenants get stream-mode work,
        the plain thread gets run_sync and run_with_callback work."""
        n_async = len(self.backends)
        jobs: list[list[Job]] = [[] for _ in range(n_async + 1)]
        stream = [i for i, s in enumerate(slots) if s.mode == "stream"]
        batched = [i for i in stream if slots[i].batcher is not None]
        threaded = [i for i, s in enumerate(slots) if s.mode != "stream"]
        burst_epoch = "burst" in self.feats and stream and e % 7 == 3
        run = 0
        for k in range(n_async):
            if burst_epoch:
                jobs[k].append(Job("burst", int(rng.choice(stream)), run, int(rng.integers(250, 330))))
                run += 1
        per = self.runs_per_epoch
        for _ in range(per):
            run += 1
            if threaded and rng.random() < 0.2:
                i = int(rng.choice(threaded))
                jobs[-1].append(Job(slots[i].mode, i, run))
                continue
            if not stream:
                continue
            k = int(rng.integers(n_async))
            roll = rng.random()
            if batched and roll < 0.06:
                jobs[k].append(Job("batch", int(rng.choice(batched)), run))
            elif "remove" in self.feats and roll < 0.075:
                jobs[k].append(Job("remove", int(rng.choice(stream)), run))
            elif "cancel" in self.feats and roll < 0.14:
                jobs[k].append(Job("cancel", int(rng.choice(stream)), run, int(rng.integers(0, 6))))
            elif "device_io" in self.feats and roll < 0.2:
                jobs[k].append(Job("run_dev", int(rng.choice(stream)), run, int(rng.integers(0, 3))))
            else:
                jobs[k].append(Job("run", int(rng.choice(stream)), run))
        return jobs

    # -- checking one result -------------------------------------------------------------------

    def where(self, e: int, slot: Slot, run: int) -> str:
        return f"{self.seed}:{e}:{slot.case.idx}:{run}"

    def expected(self, slot: Slot, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The reference's outputs, computed before the library runs; None when onnxruntime
        fails on these inputs (e.g. a Reshape of an empty batch to (0, -1)). Such a run is not
        submitted on a shared stream: its device fault would fail the innocent runs queued
        behind it on the stream (the documented fault contract), which is not what this fuzzer
        looks for. run_sync still submits it and must fail (see thread_tenant)."""
        assert slot.case.ref is not None
        try:
            return slot.case.ref.run(inputs)
        except Exception:
            self.count("reference_failed")
            return None

    def rows_stand_alone(self, slot: Slot, inputs: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
        """Whether onnxruntime gives these rows the same outputs wherever they sit in a batch
        (after 1 to 7 other rows, or before a few): what comparing a batcher's answer with the
        request's own reference assumes."""
        assert slot.case.ref is not None
        rows = next(iter(inputs.values())).shape[0]
        for lead, tail in [(n, 0) for n in range(1, 8)] + [(0, 3)]:
            big = {
                k: np.concatenate([np.repeat(a[:1], lead, axis=0), a, np.repeat(a[:1], tail, axis=0)])
                for k, a in inputs.items()
            }
            try:
                got = slot.case.ref.run(big)
            except Exception:
                return False
            for name, w in want.items():
                g = got[name][lead : lead + rows]
                if g.shape != w.shape or g.tobytes() != w.tobytes():
                    return False
        return True

    def check(
        self,
        e: int,
        slot: Slot,
        job: Job,
        tenant: int,
        want: dict[str, np.ndarray],
        got: dict[str, Any],
        api: str,
    ) -> None:
        diff = compare(got, want, tenant, self.n_tenants, slot.case)
        self.count("compared")
        if diff is not None:
            kind = "cross-tenant" if "CROSS-TENANT" in diff else "mismatch"
            self.findings.add(
                kind,
                self.where(e, slot, job.run),
                f"{api} on session {slot.sidx} (added as {slot.how}, tenant {tenant}) {{{slot.case.origin}}}: {diff}",
                slot.case.describe(),
            )

    def error(self, e: int, slot: Slot, job: Job, gen: int, api: str, exc: BaseException) -> None:
        """An exception from a run: expected only when a remove_graph of its graph succeeded
        meanwhile (the run raced it), else a finding."""
        if isinstance(exc, aa.AscendError):
            # A removal that succeeded may not have bumped gen yet (remove_graph returns first):
            # wait for removals under way to settle (they never wait for this thread).
            with slot.lock:
                slot.settled.wait_for(lambda: slot.removing == 0, timeout=60)
                raced = slot.gen != gen
            if raced:
                self.count("raced_removal")
                return
        self.findings.add(
            "error",
            self.where(e, slot, job.run),
            f"{api} on session {slot.sidx} raised {type(exc).__name__}: {str(exc)[:400]}",
            slot.case.describe() + "\n" + "".join(traceback.format_exception(exc))[-2000:],
        )

    def inputs_for(self, e: int, slot: Slot, job: Job, tenant: int, rows: int | None = None) -> dict[str, np.ndarray]:
        return make_inputs(slot.case, np.random.default_rng([self.seed, e, slot.case.idx, job.run]), tenant, rows)

    # -- async tenants -------------------------------------------------------------------------

    def async_tenant(
        self, e: int, k: int, backend: str, options: dict[str, Any], slots: list[Slot], jobs: list[Job]
    ) -> None:
        try:
            anyio.run(self._async_main, e, k, slots, jobs, backend=backend, backend_options=options)
        except BaseException as exc:
            self.findings.add(
                "tenant",
                f"{self.seed}:{e}",
                f"tenant {k} ({backend}) died: {type(exc).__name__}: {exc}",
                traceback.format_exc(),
            )

    async def _async_main(self, e: int, k: int, slots: list[Slot], jobs: list[Job]) -> None:
        rng = np.random.default_rng([self.seed, e, k, 0xA5])
        window = anyio.Semaphore(int(rng.choice([1, 4, 16, 64])))
        async with anyio.create_task_group() as tg:
            for job in jobs:
                if job.kind == "burst":
                    for i in range(job.extra):
                        tg.start_soon(self._one, e, k, slots, Job("run", job.slot, job.run * 1000 + i), None)
                    continue
                await window.acquire()
                tg.start_soon(self._one, e, k, slots, job, window)

    async def _one(self, e: int, k: int, slots: list[Slot], job: Job, window: anyio.Semaphore | None) -> None:
        slot = slots[job.slot]
        try:
            with slot.lock:
                g, gen = slot.graph, slot.gen
            if g is None:  # being added again after a removal
                self.count("skipped_while_readded")
                return
            if job.kind == "remove":
                await self._remove(e, slot, job, k)
            elif job.kind == "batch":
                await self._batch(e, slot, job, k, gen)
            elif job.kind == "cancel":
                await self._cancel(e, slot, g, job, k, gen)
            else:
                await self._run(e, slot, g, job, k, gen)
        finally:
            if window is not None:
                window.release()

    async def _run(self, e: int, slot: Slot, g: aa.Graph, job: Job, k: int, gen: int) -> None:
        inputs = self.inputs_for(e, slot, job, k)
        want = self.expected(slot, inputs)
        if want is None:
            return
        api = "await session.run"
        dev_in: list[aa.DeviceTensor] = []
        try:
            feed: dict[str, Any] = inputs
            outputs = "numpy"
            if job.kind == "run_dev":
                if job.extra in (0, 2):
                    feed = {}
                    for name, a in inputs.items():
                        t = aa.DeviceTensor.from_numpy(slot.session, a)
                        dev_in.append(t)
                        feed[name] = t
                    api += " (DeviceTensor inputs)"
                if job.extra in (1, 2):
                    outputs = "device"
                    api += ' (outputs="device")'
            out = await slot.session.run(g, feed, outputs=outputs)  # type: ignore[arg-type]
            if outputs == "device":
                host = {}
                for name, t in out.items():
                    host[name] = t.numpy()
                    t.close()
                out = host
        except Exception as exc:
            self.error(e, slot, job, gen, api, exc)
            return
        finally:
            for t in dev_in:
                t.close()
        self.check(e, slot, job, k, want, out, api)

    async def _cancel(self, e: int, slot: Slot, g: aa.Graph, job: Job, k: int, gen: int) -> None:
        """A run cancelled after ``job.extra`` checkpoints: done before that, it is checked;
        otherwise it finishes on the device and its result is dropped."""
        inputs = self.inputs_for(e, slot, job, k)
        want = self.expected(slot, inputs)
        if want is None:
            return
        box: dict[str, Any] = {}

        async def go() -> None:
            try:
                box["out"] = await slot.session.run(g, inputs)
            except Exception as exc:
                box["exc"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            for _ in range(job.extra):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        if "exc" in box:
            self.error(e, slot, job, gen, "await session.run (then cancelled)", box["exc"])
        elif "out" in box:
            self.check(e, slot, job, k, want, box["out"], "await session.run (cancelled too late)")
        else:
            self.count("cancelled")

    async def _batch(self, e: int, slot: Slot, job: Job, k: int, gen: int) -> None:
        batcher = slot.batcher
        if batcher is None:  # its graph is being added again
            self.count("skipped_while_readded")
            return
        rng = np.random.default_rng([self.seed, e, slot.case.idx, job.run, 1])
        rows = int(rng.integers(1, 5))
        inputs = self.inputs_for(e, slot, job, k, rows)
        want = self.expected(slot, inputs)
        if want is None:
            return
        if not self.rows_stand_alone(slot, inputs, want):
            # onnxruntime's own answer for these rows depends on where they sit in a batch
            # (Min/Max/reductions over NaN take SIMD-lane-dependent paths): no batch the
            # batcher could form has one reference answer.
            self.count("batch_rows_position_dependent")
            return
        timeout = 0.0005 if rng.random() < 0.1 else None
        try:
            out = await batcher.run(inputs, timeout=timeout)
        except TimeoutError:
            if timeout is None:
                raise
            self.count("batch_timeouts")
            return
        except Exception as exc:
            self.error(e, slot, job, gen, "await batcher.run", exc)
            return
        self.check(e, slot, job, k, want, out, "await batcher.run")

    async def _remove(self, e: int, slot: Slot, job: Job, k: int) -> None:
        """remove_graph while other tenants run the graph: it succeeds (then the graph is added
        again) or is refused, and then the graph must still run."""
        with slot.lock:
            g, gen = slot.graph, slot.gen
            if g is None:
                return
            slot.removing += 1
        try:
            slot.session.remove_graph(g)
        except Exception as exc:
            with slot.lock:
                slot.removing -= 1
                slot.settled.notify_all()
            if not isinstance(exc, aa.AscendError):
                self.findings.add(
                    "remove",
                    self.where(e, slot, job.run),
                    f"remove_graph raised {type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                )
            self.count("remove_refused")
            # Refused (its runs are in flight): the graph must stay fully usable.
            try:
                await self._run(e, slot, g, Job("run", job.slot, job.run), k, gen)
            except Exception as exc2:  # pragma: no cover - _run reports its own errors
                self.findings.add(
                    "remove", self.where(e, slot, job.run), f"after a refused remove_graph ({exc}): {exc2}"
                )
            return
        with slot.lock:
            slot.gen += 1
            slot.graph = None
            old, slot.batcher = slot.batcher, None
            slot.removing -= 1
            slot.settled.notify_all()
        if old is not None:
            old.close()
        self.count("removed")
        try:
            new = slot.add() if slot.how != "graph" else slot.session.add_graph(slot.case.data)
        except Exception as exc:
            self.findings.add(
                "remove",
                self.where(e, slot, job.run),
                f"add_graph after remove_graph raised {type(exc).__name__}: {exc}",
            )
            return
        batcher = slot.session.batcher(new, **slot.batcher_params) if slot.batcher_params else None
        with slot.lock:
            slot.graph, slot.batcher = new, batcher

    # -- the plain-thread tenant ---------------------------------------------------------------

    def thread_tenant(self, e: int, tenant: int, slots: list[Slot], jobs: list[Job]) -> None:
        pending: list[tuple[Slot, Job, int, dict[str, np.ndarray], threading.Event, dict[str, Any]]] = []

        def settle() -> None:
            for slot, job, gen, want, done, box in pending:
                if not done.wait(60):
                    self.findings.add(
                        "hang", self.where(e, slot, job.run), "run_with_callback never called back (60 s)"
                    )
                    continue
                if box.get("err") is not None:
                    self.error(e, slot, job, gen, "run_with_callback", box["err"])
                else:
                    self.check(e, slot, job, tenant, want, box["out"], "run_with_callback")
            pending.clear()

        try:
            for job in jobs:
                slot = slots[job.slot]
                with slot.lock:
                    g, gen = slot.graph, slot.gen
                if g is None:
                    continue
                inputs = self.inputs_for(e, slot, job, tenant)
                want = self.expected(slot, inputs)
                if job.kind == "sync":
                    try:
                        out = slot.session.run_sync(g, inputs)
                    except Exception as exc:
                        if want is None and isinstance(exc, aa.DeviceError):
                            self.count("failed_like_reference")
                        else:
                            self.error(e, slot, job, gen, "run_sync", exc)
                        continue
                    if want is None:
                        self.findings.add(
                            "mismatch",
                            self.where(e, slot, job.run),
                            f"run_sync on session {slot.sidx} returned where onnxruntime fails on these inputs",
                        )
                    else:
                        self.check(e, slot, job, tenant, want, out, "run_sync")
                    continue
                if want is None:
                    continue
                else:
                    done = threading.Event()
                    box: dict[str, Any] = {}

                    def cb(out: Any, err: Any, box: dict[str, Any] = box, done: threading.Event = done) -> None:
                        box["out"], box["err"] = out, err
                        done.set()

                    try:
                        slot.session.run_with_callback(g, inputs, cb)
                    except Exception as exc:
                        self.error(e, slot, job, gen, "run_with_callback (submit)", exc)
                        continue
                    pending.append((slot, job, gen, want, done, box))
                    if len(pending) >= 8:
                        settle()
            settle()
        except BaseException as exc:
            self.findings.add(
                "tenant",
                f"{self.seed}:{e}",
                f"the plain-thread tenant died: {type(exc).__name__}: {exc}",
                traceback.format_exc(),
            )

    # -- bursts past the device's event budget ---------------------------------------------------

    def hold_streams(self) -> list[Any]:
        from ascend_async._native import _sim

        streams = [st for s in self.sessions for st in s.streams]
        return [st.handle for st in streams if _sim.lib.aa_sim_stream_hold(st.handle) == 0]

    def release_when_full(self, held: list[Any], expected: int) -> None:
        """Release the held streams once the bursts' runs are in flight (or admission parked
        them: no progress for 0.3 s), at most after 10 s."""
        from ascend_async._native import _sim

        deadline = time.monotonic() + 10
        last, still = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = sum(s.statistics().in_flight for s in self.sessions)
            if now >= expected:
                break
            if now != last:
                last, still = now, time.monotonic()
            elif time.monotonic() - still > 0.3:
                break
            time.sleep(0.01)
        self.count("burst_peak_in_flight", 0)
        with self.stats_lock:
            self.stats["burst_peak_in_flight"] = max(self.stats["burst_peak_in_flight"], last)
        for h in held:
            _sim.lib.aa_sim_stream_release(h)

    # -- the end of an epoch ---------------------------------------------------------------------

    def retire(self, e: int, slots: list[Slot]) -> None:
        """Wait for abandoned runs to finish, then remove every graph (which must succeed)."""
        deadline = time.monotonic() + 30
        while any(s.statistics().in_flight for s in self.sessions):
            if time.monotonic() > deadline:
                self.findings.add(
                    "hang",
                    f"{self.seed}:{e}",
                    f"runs still in flight 30 s after the epoch: {[s.statistics().in_flight for s in self.sessions]}",
                )
                break
            time.sleep(0.002)
        for slot in slots:
            if slot.batcher is not None:
                slot.batcher.close()
            if slot.graph is None:
                continue
            try:
                slot.session.remove_graph(slot.graph)
            except Exception as exc:
                self.findings.add(
                    "remove",
                    self.where(e, slot, 0),
                    f"remove_graph at the end of the epoch raised {type(exc).__name__}: {exc}",
                )
        for c in {id(s.case): s.case for s in slots}.values():
            if c.folder is not None:
                shutil.rmtree(c.folder, ignore_errors=True)
            elif c.path is not None:
                c.path.unlink(missing_ok=True)


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def fuzz(
    seed: int,
    runs: int,
    feats: frozenset[str],
    *,
    hint: str = "",
    verbose: bool = False,
    runs_per_epoch: int = 240,
    out: Any = sys.stdout,
) -> tuple[Findings, Counter[str], float]:
    """Run the campaign for ``seed`` until ``runs`` results were compared. Returns the findings,
    the counters and the wall time. The working directory is a temporary folder (with decoy
    weight files) for the duration."""
    findings = Findings(hint)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_isolation_") as tmp:
        root = Path(tmp)
        cwd = root / "cwd"
        cwd.mkdir()
        if "decoy" in feats:
            write_decoys(cwd)
        with (
            _in_dir(cwd),
            Campaign(seed, feats, root / "models", findings, runs_per_epoch=runs_per_epoch, verbose=verbose) as camp,
        ):
            (root / "models").mkdir()
            e = 0
            done = 0
            while done < runs:
                done += camp.epoch(e)
                e += 1
                if verbose and e % 10 == 0:
                    dt = time.perf_counter() - t0
                    print(
                        f"epoch {e}: {done} runs compared, {done / dt:.0f}/s, {sum(findings.kinds.values())} findings",
                        file=out,
                        flush=True,
                    )
            camp.stats["epochs"] = e
            stats = camp.stats
    return findings, stats, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Replay: one case, one run, one thread


def replay(where: str, feats: frozenset[str], dump: str | None) -> int:
    """Rerun one case's run alone on one thread, in a fresh session per mode: the case it was
    derived from (a duplicate's or twin's sibling) is added and run first, as it was in the
    campaign, so a cache that confuses the two shows here too. Returns 1 when it differs."""
    import re

    seed, epoch, idx, run = (int(x) for x in where.split(":"))
    with tempfile.TemporaryDirectory(prefix="fuzz_replay_") as tmp:
        root = Path(tmp)
        cwd = root / "cwd"
        cwd.mkdir()
        if "decoy" in feats:
            write_decoys(cwd)
        (root / "models").mkdir()
        with _in_dir(cwd):
            cases = generate_epoch(seed, epoch, feats, root / "models", max(8, idx + 1))
            c = cases[idx]
            print(f"case {where}: {c.describe()}")
            print(onnx.printer.to_text(c.model.graph))
            if c.refused:
                print(f"onnxruntime refuses it: {c.refused}")
                return 0
            chain = [c]
            while (m := re.search(r"of case (\d+)", chain[0].origin)) is not None:
                chain.insert(0, cases[int(m.group(1))])
            inputs = make_inputs(c, np.random.default_rng([seed, epoch, idx, run]), 0)
            assert c.ref is not None
            try:
                want = c.ref.run(inputs)
            except Exception as exc:
                print(f"onnxruntime fails on these inputs: {exc}")
                return 0
            if dump:
                d = Path(dump)
                d.mkdir(parents=True, exist_ok=True)
                (d / "model.onnx").write_bytes(c.data)
                np.savez(
                    d / "inputs.npz", **{k: v.view(np.uint16) if v.dtype == NP[BF16] else v for k, v in inputs.items()}
                )
                np.savez(
                    d / "reference.npz", **{k: v.view(np.uint16) if v.dtype == NP[BF16] else v for k, v in want.items()}
                )
                print(f"dumped model.onnx, inputs.npz, reference.npz (bfloat16 as uint16) to {d}")
            bad = 0
            hows = ["path", *(["bytes+base_dir"] if "base_dir" in feats else [])] if c.ext else ["bytes"]
            for how in hows:
                for mode in ("stream", "sync"):
                    with aa.Session(streams=1) as s:
                        try:
                            for k in chain:  # the siblings first, as in the campaign
                                slot = Slot(k, s, 0, mode, how if k.ext == c.ext else ("path" if k.ext else "bytes"))
                                g = slot.add()
                                ins = make_inputs(k, np.random.default_rng([seed, epoch, k.idx, run]), 0)
                                if mode == "stream":
                                    got = anyio.run(lambda g=g, ins=ins: s.run(g, ins))
                                else:
                                    got = s.run_sync(g, ins)
                        except Exception as exc:
                            print(f"{mode} ({how}): {type(exc).__name__}: {exc}")
                            bad += 1
                            continue
                        diff = compare(got, want, 0, MAX_TENANTS, c)
                        print(
                            f"{mode} ({how}, after {[k.idx for k in chain[:-1]]}): {'exact' if diff is None else diff}"
                        )
                        bad += diff is not None
            return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=2000, help="results to compare (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="campaign seed (default: random, printed)")
    p.add_argument("--features", default=None, help="comma-separated -name/+name; names: " + ", ".join(ALL_FEATURES))
    p.add_argument("--runs-per-epoch", type=int, default=240)
    p.add_argument("--replay", metavar="SEED:EPOCH:CASE:RUN", help="rerun one case's run alone, single-threaded")
    p.add_argument("--dump", metavar="DIR", help="with --replay: write model.onnx, inputs.npz, reference.npz there")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    feats, why = parse_features(args.features, detect_features())
    hint = f" --features={args.features}" if args.features else ""
    if args.replay:
        return replay(args.replay, feats, args.dump)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"fuzz_isolation: seed {seed}, {args.runs} runs of {aa.__file__}; features off: {why or 'none'}", flush=True)
    findings, stats, dt = fuzz(
        seed, args.runs, feats, hint=hint, verbose=not args.quiet, runs_per_epoch=args.runs_per_epoch
    )
    n = stats["compared"]
    print(
        f"{n} runs compared in {dt:.1f} s ({n / dt:.0f} runs/s), {stats['epochs']} epochs; "
        + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k not in ("compared", "epochs"))
    )
    if findings:
        print(findings.summary())
        print(f"rerun the campaign: python tests/fuzz_isolation.py --seed {seed} --runs {args.runs}{hint}")
        return 1
    print("no findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
