"""The CANN model check: GE's parser keys, verdicts, the fix, the CLI and the table's sources."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, version_converter

import ascend_async as aa
from ascend_async._cann_check import cann_registrations, check_model, fix_opset, ops_markdown
from ascend_async.bench._cli import main
from ascend_async.bench._fix import fix_model

ROOT = Path(__file__).resolve().parents[1]
LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


def _model(nodes, inputs, outputs, opset=17, **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=kw.pop("initializer", None))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *kw.pop("extra_opsets", [])], **kw)


def _vi(name, elem=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_table_names_its_sources_and_keys():
    reg = cann_registrations()
    assert len(reg.sources) == 3 and all("at commit" in s for s in reg.sources)
    assert ("ai.onnx", 11, "Conv") in reg
    assert ("ai.onnx", 19, "Conv") not in reg
    # The reading of the public plugins: nothing standard past opset 18.
    assert max(reg.versions("ai.onnx", "Add")) == 18
    assert not reg.versions("ai.onnx", "QuantizeLinear")


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_bundled_models_are_accepted(name):
    check = check_model(aa.models.path(name))
    assert check.ok, check.format()
    assert all(n.verdict in ("registered", "internal") for n in check.nodes)


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p) for p in LIGHT])
def test_light_zoo_accepted_at_9_refused_at_19_plus(path):
    model = onnx.load(path)
    check = check_model(model)
    assert check.ok, check.format()
    assert check.opsets == {"ai.onnx": 9}
    newer = version_converter.convert_version(model, 21)
    refused = check_model(newer)
    assert not refused.ok
    assert refused.refused, "every standard node must be refused at opset 21"
    assert all(n.opset == 21 for n in refused.refused)
    assert "opset 21 is past what CANN registers" in refused.format()
    assert fix_opset(newer) == 18


@pytest.mark.parametrize("name", ["light_squeezenet.onnx", pytest.param("light_resnet50.onnx", marks=pytest.mark.slow)])
def test_fix_converts_runs_both_and_writes(tmp_path, name):
    src = tmp_path / "new.onnx"
    onnx.save(version_converter.convert_version(onnx.load(os.path.join(os.path.dirname(LIGHT[0]), name)), 21), src)
    out = tmp_path / "fixed.onnx"
    result = fix_model(src, out, seed=3)
    assert result.written, result.message
    assert result.opset == 18
    fixed = check_model(out)
    assert fixed.ok and fixed.opsets == {"ai.onnx": 18}
    # The written model computes what the refused one computes, by onnxruntime's own API.
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sa, sb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, out))
    a = sa.run(None, {sa.get_inputs()[0].name: x})
    b = sb.run(None, {sb.get_inputs()[0].name: x})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_fix_refuses_to_write_when_outputs_change(tmp_path, monkeypatch):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=20)

    def wrong(m, target):  # a "conversion" that changes what the model computes
        bad = _model([helper.make_node("Neg", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=target)
        return bad

    monkeypatch.setattr(version_converter, "convert_version", wrong)
    out = tmp_path / "out.onnx"
    result = fix_model(model, out)
    assert not result.written
    assert "changed after converting" in result.message and "'y'" in result.message
    assert not out.exists()


def test_fix_leaves_an_accepted_model_alone(tmp_path):
    out = tmp_path / "out.onnx"
    result = fix_model(aa.models.path("mlp"), out)
    assert not result.written and "nothing to fix" in result.message and not out.exists()


def _quantize_model() -> onnx.ModelProto:
    init = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    return _model(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant_in")],
        [_vi("x")],
        [_vi("q", TensorProto.UINT8)],
        opset=13,
        initializer=init,
    )


def test_quantizelinear_at_13_is_refused_by_name():
    check = check_model(_quantize_model())
    assert not check.ok
    (node,) = check.refused
    assert (node.name, node.key, node.verdict) == ("quant_in", "ai.onnx::13::QuantizeLinear", "not registered")
    assert "quant_in" in check.format() and "ai.onnx::13::QuantizeLinear" in check.summary()
    assert "no public plugin registers QuantizeLinear at any opset" in check.summary()


def test_subgraph_nodes_use_the_models_opset():
    then = helper.make_graph([helper.make_node("Gelu", ["x"], ["t"], name="deep")], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="fine")], "else", [], [_vi("e")])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    model = _model(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
        [_vi("x"), cond],
        [_vi("y")],
        opset=17,
    )
    check = check_model(model)
    refused = {n.name: n for n in check.refused}
    assert set(refused) == {"deep"}
    assert refused["deep"].graph == "main/branch.then_branch"
    assert next(n for n in check.nodes if n.name == "fine").verdict == "registered"


def test_graph_level_problems():
    # No real input (only an initializer), a string output, a float8 FNUZ initializer.
    init = [helper.make_tensor("w", TensorProto.FLOAT, [2, 3], [0.0] * 6)]
    model = _model(
        [helper.make_node("Identity", ["w"], ["y"])],
        [],
        [_vi("y", TensorProto.STRING)],
        initializer=init,
    )
    check = check_model(model)
    text = check.summary()
    assert not check.ok
    assert "no input (GE's parser: E16001)" in text
    assert "output 'y' is STRING: GE carries it, but ascend_async cannot pass it from numpy" in text
    fnuz = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT8E4M3FNUZ)], [_vi("y", 18)])
    assert "GE's ONNX parser has no ge::DataType" in check_model(fnuz).summary()
    # bfloat16 crosses both GE's parser and the library (ml_dtypes), in a fresh process too
    bf16 = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", TensorProto.BFLOAT16)], [_vi("y", 16)])
    assert check_model(bf16).ok
    code = "import sys, ascend_async as aa; sys.exit(0 if aa.check_model(sys.stdin.buffer.read()).ok else 1)"
    assert subprocess.run([sys.executable, "-c", code], input=bf16.SerializeToString()).returncode == 0
    no_out = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [])
    assert "no output (GE's parser: E16001)" in check_model(no_out).summary()


def test_unknown_domain_and_local_function_and_dims():
    custom = _model([helper.make_node("Foo", ["x"], ["y"], domain="my.ops")], [_vi("x")], [_vi("y")])
    (node,) = check_model(custom).refused
    assert node.verdict == "no opset" and "my.ops" in node.detail
    fn = helper.make_function(
        "local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    model = _model(
        [helper.make_node("Twice", ["x"], ["y"], domain="local")],
        [_vi("x", shape=("batch", 3))],
        [_vi("y")],
        extra_opsets=[helper.make_opsetid("local", 1)],
        functions=[fn],
    )
    check = check_model(model)
    assert "model-local function" in check.refused[0].detail
    dims = [p for p in check.problems if p.kind == "shape"]
    assert dims and "0 (batch)" in dims[0].message and dims[0].severity == "info"


def test_external_data_is_reported(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.ones(6, np.float32).tobytes(), raw=True)
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x")], [_vi("y")], initializer=[w])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    check = check_model(tmp_path / "m.onnx")
    assert check.ok
    (ext,) = [p for p in check.problems if p.kind == "external"]
    assert "m.data" in ext.message


def test_not_a_model_is_a_graph_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(aa.GraphError, match="not a valid ONNX model"):
        check_model(bad)
    with pytest.raises(aa.GraphError, match="cannot read model"):
        check_model(tmp_path / "missing.onnx")


def test_cli_exit_status_and_json(tmp_path, capsys):
    assert main(["check", str(aa.models.path("mlp"))]) == 0
    assert "would accept it" in capsys.readouterr().out
    newer = tmp_path / "new.onnx"
    onnx.save(version_converter.convert_version(onnx.load(aa.models.path("mlp")), 19), newer)
    assert main(["check", str(newer), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["opsets"] == {"ai.onnx": 19}
    assert {r["key"] for r in doc["refused"]} >= {"ai.onnx::19::Gemm"}
    fixed = tmp_path / "fixed.onnx"
    assert main(["check", str(newer), "--fix", str(fixed)]) == 0
    assert "fixed: " in capsys.readouterr().out and check_model(fixed).ok
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    assert main(["check", str(bad)]) == 2


def test_doctor_and_bench_say_the_verdict(tmp_path, capsys):
    assert main(["doctor", str(aa.models.path("cnn"))]) == 0
    assert "CANN check: CANN's ONNX parser would accept it" in capsys.readouterr().out
    refused = tmp_path / "q.onnx"
    onnx.save(_quantize_model(), refused)
    assert main(["doctor", str(refused)]) == 1
    assert "quant_in (ai.onnx::13::QuantizeLinear)" in capsys.readouterr().out
    assert main(["bench", "--demo", "--duration", "0.2", "--concurrency", "1", "--quiet"]) == 0
    assert "CANN check: CANN's ONNX parser would accept this model" in capsys.readouterr().out


def test_docs_table_is_current():
    doc = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    begin, end = "<!-- cann-ops:begin -->\n", "<!-- cann-ops:end -->"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == ops_markdown(), (
        "docs/ops.md's CANN table is stale: regenerate it (see the paragraph above it)"
    )


def test_table_script_reads_both_forms(tmp_path):
    plugin = tmp_path / "repo" / "math" / "foo" / "framework" / "foo_onnx_plugin.cpp"
    plugin.parent.mkdir(parents=True)
    plugin.write_text(
        "#define REGISTER_CUSTOM_ONNX_OP(ONNX_OPP, ATC_OPP, FUN) .OriginOpType(#ONNX_OPP)\n"
        "REGISTER_CUSTOM_ONNX_OP(ai.onnx::11::Acos, Acos, AcosV11);\n"
        "// REGISTER_CUSTOM_ONNX_OP(ai.onnx::12::Commented, X, Y);\n"
        'REGISTER_CUSTOM_OP("Foo").FrameworkType(ONNX)\n'
        '    .OriginOpType({ge::AscendString("ai.onnx::8::Foo"), ge::AscendString("ai.onnx::9::Foo")})\n'
        "    .ParseParamsFn(ParseFoo);\n"
        'REGISTER_CUSTOM_OP("Bar").OriginOpType("npu::1::NPUBar").ParseParamsFn(P);\n'
    )
    out = tmp_path / "table.tsv"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cann_ops_table.py"), "--repo", f"x/ops={tmp_path / 'repo'}", "-o", out],
        check=True,
    )
    text = out.read_text()
    keys = {line.split("\t")[0] for line in text.splitlines() if line and not line.startswith(("#", "key"))}
    assert keys == {"ai.onnx::11::Acos", "ai.onnx::8::Foo", "ai.onnx::9::Foo", "npu::1::NPUBar"}
    assert "#   x/ops at commit" in text
    reg = cann_registrations(str(out))
    assert ("ai.onnx", 9, "Foo") in reg and ("ai.onnx", 12, "Commented") not in reg


# -- the sim applies the check at add_graph -------------------------------------------------------


def test_add_graph_warns_by_default_naming_the_node_and_still_runs(monkeypatch):
    monkeypatch.delenv("ASCEND_ASYNC_CANN_CHECK")
    x = np.array([[1.0, 2.2, -3.0], [4.6, 100.0, 0.0]], np.float32)
    with aa.Session() as s:
        with pytest.warns(aa.AscendWarning, match=r"quant_in \(ai\.onnx::13::QuantizeLinear\).*--fix"):
            g = s.add_graph(_quantize_model())
        got = s.run_sync(g, {"x": x})["q"]
        want = ort.InferenceSession(_quantize_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        np.testing.assert_array_equal(got, want)
        with warnings_as_errors():  # an accepted model: no warning
            s.add_graph(aa.models.path("mlp"))


def test_add_graph_refuses_in_error_mode_before_anything_is_added(monkeypatch):
    from helpers import sim_stats

    monkeypatch.delenv("ASCEND_ASYNC_CANN_CHECK")
    with aa.Session(options={"sim.cann_check": "error"}) as s:
        before = sim_stats()["graphs"]
        with pytest.raises(aa.GraphError, match=r"quant_in \(ai\.onnx::13::QuantizeLinear\)"):
            s.add_graph(_quantize_model())
        assert sim_stats()["graphs"] == before
        s.add_graph(aa.models.path("cnn"))
    monkeypatch.setenv("ASCEND_ASYNC_CANN_CHECK", "error")
    with aa.Session() as s, pytest.raises(aa.GraphError, match="would refuse"):
        s.add_graph(_quantize_model())
    with aa.Session(options={"sim.cann_check": "off"}) as s, warnings_as_errors():
        s.add_graph(_quantize_model())  # the option wins over the environment


@pytest.mark.parametrize(
    ("options", "env", "match"),
    [
        ({"sim.cann_check": "strict"}, None, r"option 'sim.cann_check' is 'strict'; expected one of 'warn'"),
        ({}, "loud", r"environment variable ASCEND_ASYNC_CANN_CHECK is 'loud'"),
        ({"sim.typo": "1"}, None, r"unknown sim option 'sim.typo'"),
    ],
)
def test_check_mode_is_validated(monkeypatch, options, env, match):
    if env is None:
        monkeypatch.delenv("ASCEND_ASYNC_CANN_CHECK")
    else:
        monkeypatch.setenv("ASCEND_ASYNC_CANN_CHECK", env)
    with pytest.raises(ValueError, match=match):
        aa.Session(options=options)


@contextmanager
def warnings_as_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_custom_domain_ops_get_no_opset_advice() -> None:
    """A new user's finding: a model whose only refused ops are of a custom domain was told to
    convert to opset 22 with --fix, which could not help (no opset touches another domain)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("FooOp", ["x"], ["y"], domain="my.domain")], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    text = check_model(m).refusal()
    assert "No opset conversion helps: no public plugin registers my.domain::FooOp" in text
    assert "registered at opset" not in text
    assert fix_opset(m) is None
