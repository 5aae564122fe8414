"""ONNX backend node test cases on the simulated device.

Every case of ``onnx.backend.test.case.node`` whose ops are all supported-listed ops runs through
lowering and the sim's RunGraph. Each one must either match the expected outputs (ONNX's
tolerances) or be refused with GraphError when lowered; a wrong answer or a run-time failure is a
test failure. Per op, most of the cases within the supported dtypes must pass.

Shape-determining inputs (Reshape's shape, Slice's starts/ends/axes/steps, Squeeze/Unsqueeze
axes, Reduce* axes) are graph inputs in the ONNX cases; the sim requires them to be constant
initializers, so the harness folds the case's data for them into initializers first.
"""

from __future__ import annotations

import collections
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ascend_async._errors import GraphError

_simrun = pytest.importorskip("_simrun")

LISTED_OPS = frozenset(
    "MatMul Gemm Add Sub Mul Div Pow Sqrt Neg Abs Relu LeakyRelu Sigmoid Tanh Exp Log Erf Gelu "
    "Softmax LogSoftmax LayerNormalization ReduceMean ReduceSum ReduceMax Transpose Reshape "
    "Flatten Squeeze Unsqueeze Concat Slice Gather Cast Identity Where Equal Less Greater Conv "
    "MaxPool AveragePool GlobalAveragePool BatchNormalization".split()
)
# Inputs that determine output shapes: folded into initializers (see the module docstring).
CONST_INPUTS = {
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
}
SUPPORTED_DTYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.BOOL,
}
# Cases too slow for the 2-minute budget (none so far); listed in docs/ops.md as "not run".
SKIPPED_CASES: frozenset[str] = frozenset()
MULTI = "(multi-op cases)"


@dataclass
class Tally:
    passed: int = 0
    refused: int = 0
    in_scope: int = 0
    in_scope_passed: int = 0
    problems: list[str] = field(default_factory=list)


def _to_array(a: Any) -> np.ndarray:
    return numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else np.asarray(a)


def _fold_constant_inputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    folded = {
        node.input[i]
        for node in model.graph.node
        for i in CONST_INPUTS.get(node.op_type, ())
        if i < len(node.input) and node.input[i]
    }
    if not folded:
        return model, inputs
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kept_vi, kept = [], []
    for vi, arr in zip(model.graph.input, inputs, strict=False):
        if vi.name in folded:
            m.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
        else:
            kept_vi.append(vi)
            kept.append(arr)
    del m.graph.input[:]
    m.graph.input.extend(kept_vi)
    return m, kept


def _dtypes_in_scope(model: onnx.ModelProto) -> bool:
    g = model.graph
    for vi in list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type"):
            return False
        if vi.type.tensor_type.elem_type not in SUPPORTED_DTYPES:
            return False
    return all(t.data_type in SUPPORTED_DTYPES for t in g.initializer)


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if want.dtype == np.float16:
        rtol, atol = max(rtol, 1e-2), max(atol, 1e-3)
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol, atol, equal_nan=True))
    return bool(np.array_equal(got, want))


def _cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cases = collect_testcases(None)
        except TypeError:  # older onnx: no op_type parameter
            cases = collect_testcases()  # type: ignore[call-arg]
        return [c for c in cases if c.kind == "node"]


def run_conformance() -> dict[str, Tally]:
    """Runs every eligible case; returns the tally per op (MULTI for multi-op cases)."""
    tallies: dict[str, Tally] = collections.defaultdict(Tally)
    for case in _cases():
        ops = {n.op_type for n in case.model.graph.node} - {"Constant"}
        if not ops or not ops <= LISTED_OPS or case.name in SKIPPED_CASES:
            continue
        key = next(iter(ops)) if len(ops) == 1 else MULTI
        tally = tallies[key]
        in_scope = _dtypes_in_scope(case.model)
        for raw_inputs, raw_expected in case.data_sets or []:
            inputs = [_to_array(a) for a in raw_inputs]
            expected = [_to_array(a) for a in raw_expected]
            model, inputs = _fold_constant_inputs(case.model, inputs)
            tally.in_scope += in_scope
            try:
                program = _simrun.lower(model)
            except GraphError:
                tally.refused += 1
                continue
            try:
                outputs = _simrun.run_program_sync(program, inputs)
            except Exception as exc:
                tally.problems.append(f"{case.name}: run failed: {exc}")
                continue
            ok = len(outputs) == len(expected) and all(
                _close(g, w, case.rtol, case.atol) for g, w in zip(outputs, expected, strict=False)
            )
            if ok:
                tally.passed += 1
                tally.in_scope_passed += in_scope
            else:
                tally.problems.append(f"{case.name}: wrong answer")
    return dict(tallies)


@pytest.fixture(scope="module")
def tallies() -> dict[str, Tally]:
    try:
        return run_conformance()
    finally:
        _simrun.close()


def format_table(tallies: dict[str, Tally]) -> str:
    lines = ["| op | passed | refused | passed / cases in supported dtypes |", "|---|---|---|---|"]
    for op in [*sorted(LISTED_OPS), MULTI]:
        t = tallies.get(op, Tally())
        lines.append(f"| {op} | {t.passed} | {t.refused} | {t.in_scope_passed} / {t.in_scope} |")
    return "\n".join(lines)


def test_no_wrong_answers_or_crashes(tallies: dict[str, Tally]) -> None:
    print("\n" + format_table(tallies))
    if os.environ.get("AA_CONFORMANCE_TABLE"):
        with open(os.environ["AA_CONFORMANCE_TABLE"], "w") as f:
            f.write(format_table(tallies) + "\n")
    problems = [p for t in tallies.values() for p in t.problems]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("op", sorted(LISTED_OPS))
def test_most_cases_pass(tallies: dict[str, Tally], op: str) -> None:
    t = tallies.get(op)
    if t is None or t.in_scope == 0:
        pytest.skip(f"the installed onnx has no test cases for {op}")
    assert t.in_scope_passed * 2 > t.in_scope, f"{op}: {t.in_scope_passed}/{t.in_scope} passed"
