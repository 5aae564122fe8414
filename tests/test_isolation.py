"""Every run gets its own model and its own bytes (issue 17, items 1, 2, 3 and 8).

- Model identity: the sim's compiled-model cache once keyed by a 64-bit FNV hash + size. A model
  forged to the bundled mlp's FNV key (one chosen 8-byte word in its doc_string) must run its
  own graph in another session, and the mlp its own.
- Every output is written by its run: outputs that are graph inputs, names listed twice, empty
  graphs, in every run mode, next to another session whose inputs are 4242.0. The suite runs
  with the sim's poisoning on (conftest.py), so a stale block reads NaN, not plausible data.
- External data is read from the model's folder (or base_dir), never the working directory.
- add_graph refuses what GE cannot run, listing every problem.

Every result is compared with onnxruntime's own Python API on the same model and inputs.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ascend_async as aa
from ascend_async import GraphError
from ascend_async._native import _sim
from ascend_async.models import path

ffi, lib = _sim.ffi, _sim.lib
STALE = 4242.0


def _ort(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], folder: str | None = None) -> list[Any]:
    """onnxruntime's own answer (its Python API), reading external data from ``folder``."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    so = ort.SessionOptions()
    if folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    return list(ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds))


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name: str, shape: list[Any], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _same(got: dict[str, Any] | list[Any], want: list[np.ndarray]) -> None:
    values = list(got.values()) if isinstance(got, dict) else list(got)
    assert len(values) == len(want)
    for g, w in zip(values, want, strict=True):
        g = g.numpy() if isinstance(g, aa.DeviceTensor) else g
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
        assert not np.any(g == STALE), "another session's input leaked into this output"


# ---------------------------------------------------------------------------------------------
# 1. Model identity


def test_sha256_matches_hashlib() -> None:
    """The cache's digest is SHA-256 (FIPS 180-4): every padding boundary, and a large input."""
    rng = np.random.default_rng(7)
    out = ffi.new("unsigned char[32]")
    for n in (0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 69420, 1 << 20):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        lib.aa_sim_sha256(data, n, out)
        assert bytes(ffi.buffer(out, 32)) == hashlib.sha256(data).digest(), n


_FNV_PRIME = 1099511628211
_FNV_INV = pow(_FNV_PRIME, -1, 1 << 64)
_M64 = (1 << 64) - 1


def _old_key(data: bytes) -> int:
    """The key the cache used before: FNV-1a over little-endian 8-byte words, the tail byte by
    byte, then xor the size (engine.c's hash_bytes, rewritten here as it was)."""
    h = 1469598103934665603
    n = len(data) // 8 * 8
    for (w,) in np.frombuffer(data[:n], "<u8").reshape(-1, 1).tolist():
        h = ((h ^ w) * _FNV_PRIME) & _M64
    for b in data[n:]:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h ^ len(data)


def _forge(target: bytes, model: onnx.ModelProto) -> bytes:
    """``model`` serialized to ``len(target)`` bytes with the same old FNV key as ``target``:
    the doc_string pads it to the size, and one 8-byte word in it is solved for (FNV's
    multiplier is odd, so each step inverts)."""
    pad = 64
    for _ in range(8):
        model.doc_string = "Z" * pad
        size = len(model.SerializeToString())
        if size == len(target):
            break
        pad += len(target) - size
    data = bytearray(model.SerializeToString())
    assert len(data) == len(target)
    start = bytes(data).index(b"Z" * pad)
    k = (start + 7) // 8  # the first whole word inside the doc_string
    assert 8 * k + 8 <= start + pad
    words = np.frombuffer(bytes(data[: len(data) // 8 * 8]), "<u8").tolist()
    h = 1469598103934665603
    for w in words[:k]:
        h = ((h ^ w) * _FNV_PRIME) & _M64
    back = _old_key(target) ^ len(data)
    for b in reversed(data[len(words) * 8 :]):
        back = ((back * _FNV_INV) & _M64) ^ b
    for w in reversed(words[k + 1 :]):
        back = ((back * _FNV_INV) & _M64) ^ w
    word = ((back * _FNV_INV) & _M64) ^ h
    data[8 * k : 8 * k + 8] = word.to_bytes(8, "little")
    return bytes(data)


def _twin_of_mlp() -> onnx.ModelProto:
    """The mlp's signature (x: float32[batch, 64] -> y: float32[batch, 10]), another graph."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 640, dtype=np.float32).reshape(64, 10), "w")
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", ["batch", 64])], [_vi("y", ["batch", 10])], [w]
    )


@pytest.mark.anyio
async def test_a_model_forged_to_the_mlps_old_key_runs_its_own_graph() -> None:
    mlp = path("mlp").read_bytes()
    forged = _forge(mlp, _twin_of_mlp())
    # A real forgery: the old cache key (FNV + size) is the mlp's, the bytes are not.
    assert forged != mlp and len(forged) == len(mlp) and _old_key(forged) == _old_key(mlp)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    want_mlp, want_forged = _ort(mlp, {"x": x}), _ort(forged, {"x": x})
    assert not np.allclose(want_mlp[0], want_forged[0])
    async with aa.Session() as a, aa.Session() as b:
        g_mlp = a.add_graph(mlp)
        np.testing.assert_allclose((await a.run(g_mlp, {"x": x}))["y"], want_mlp[0], rtol=1e-5, atol=1e-5)
        g_forged = b.add_graph(forged)  # another Session, after the mlp's model is compiled
        np.testing.assert_allclose((await b.run(g_forged, {"x": x}))["y"], want_forged[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose((await a.run(g_mlp, {"x": x}))["y"], want_mlp[0], rtol=1e-5, atol=1e-5)
        # The other way round, and in the synchronous mode: each graph its own answer.
        g_forged_sync, g_mlp_sync = a.add_graph(forged), b.add_graph(mlp)
        np.testing.assert_allclose(a.run_sync(g_forged_sync, {"x": x})["y"], want_forged[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b.run_sync(g_mlp_sync, {"x": x})["y"], want_mlp[0], rtol=1e-5, atol=1e-5)


def test_equal_bytes_still_share_one_compiled_model() -> None:
    """Identity is exact, not absent: the same bytes in two sessions are one compiled model."""
    from helpers import sim_stats

    mlp = path("mlp").read_bytes()
    before = sim_stats()["models"]
    with aa.Session() as a, aa.Session() as b:
        a.add_graph(mlp)
        b.add_graph(mlp)
        assert sim_stats()["models"] == before + 1


# ---------------------------------------------------------------------------------------------
# 2. Every output is written by its run


def _passthrough() -> onnx.ModelProto:
    """Outputs (x, y = -x): x is a graph input no node produces (onnxruntime returns it)."""
    return _model(
        [helper.make_node("Neg", ["x"], ["y"])], [_vi("x", ["n", 4])], [_vi("x", ["n", 4]), _vi("y", ["n", 4])]
    )


def _empty() -> onnx.ModelProto:
    """No nodes at all: the output is the input."""
    return _model([], [_vi("x", ["n", 4])], [_vi("x", ["n", 4])])


def _passthrough_dynamic() -> onnx.ModelProto:
    """x passed through beside a value-dependent output (NonZero): outputs placed after the run."""
    return _model(
        [helper.make_node("NonZero", ["x"], ["nz"])],
        [_vi("x", ["n", 4])],
        [_vi("x", ["n", 4]), helper.make_tensor_value_info("nz", TensorProto.INT64, [2, None])],
    )


def _stale_add() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Add", ["a", "b"], ["c"])], [_vi("a", ["n", 4]), _vi("b", ["n", 4])], [_vi("c", ["n", 4])]
    )


def _callback_run(session: aa.Session, graph: aa.Graph, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    done = threading.Event()
    box: list[Any] = []

    def cb(out: Any, err: Any) -> None:
        box.append((out, err))
        done.set()

    session.run_with_callback(graph, feeds, cb)
    assert done.wait(30)
    out, err = box[0]
    assert err is None, err
    return out  # type: ignore[no-any-return]


@pytest.mark.anyio
@pytest.mark.parametrize("make", [_passthrough, _empty, _passthrough_dynamic], ids=["passthrough", "empty", "dynamic"])
async def test_pass_through_outputs_carry_this_runs_input_beside_another_session(make: Any) -> None:
    """Session A keeps running on blocks full of 4242.0; session B's pass-through outputs must
    be B's own input in every run mode, never A's data nor a stale block."""
    model = make()
    stale = np.full((3, 4), STALE, np.float32)
    async with aa.Session() as a, aa.Session() as b:
        g_stale = a.add_graph(_stale_add())
        graphs = {mode: b.add_graph(model.SerializeToString(), name=mode) for mode in ("run", "device", "sync", "cb")}
        for i in range(6):
            out = await a.run(g_stale, {"a": stale, "b": np.zeros_like(stale)})
            np.testing.assert_array_equal(out["c"], stale)
            x = np.arange(12, dtype=np.float32).reshape(3, 4) + i
            want = _ort(model, {"x": x})
            _same(await b.run(graphs["run"], {"x": x}), want)
            dev = await b.run(graphs["device"], {"x": x}, outputs="device")
            try:
                _same(dev, want)
            finally:
                for t in dev.values():
                    t.close()
            _same(b.run_sync(graphs["sync"], {"x": x}), want)
            _same(_callback_run(b, graphs["cb"], {"x": x}), want)
            # A device-tensor input passed through: the output is a block of its own, a copy.
            dx = aa.DeviceTensor.from_numpy(b, x)
            try:
                _same(await b.run(graphs["run"], {"x": dx}), want)
            finally:
                dx.close()


def _run_stream_at_abi(model: bytes, x: np.ndarray, n_out: int) -> list[np.ndarray]:
    """RunGraphWithStreamAsync at the C ABI with GE-allocated outputs (poisoned blocks), then
    RunGraph: what each output slot holds."""
    import _simrun

    _simrun._init()
    p = ffi.new("aa_session**")
    assert lib.aa_session_create(ffi.NULL, 0, p) == 0
    session = p[0]
    sp = ffi.new("aclrtStream*")
    assert lib.aclrtCreateStream(sp) == 0
    stream = sp[0]
    dx = ffi.new("void**")
    assert lib.aclrtMalloc(dx, x.nbytes, 0) == 0
    results: list[np.ndarray] = []
    try:
        assert lib.aclrtMemcpy(dx[0], x.nbytes, ffi.from_buffer(x), x.nbytes, 1) == 0
        assert lib.aa_session_add_graph_onnx(session, 1, model, len(model), ffi.NULL, 0) == 0
        tin = ffi.new("aa_tensor[1]")
        tin[0].addr, tin[0].size, tin[0].dtype, tin[0].format, tin[0].placement = dx[0], x.nbytes, 0, 2, 0
        tin[0].ndim = x.ndim
        for d, n in enumerate(x.shape):
            tin[0].dims[d] = n
        tout = ffi.new("aa_tensor[]", n_out)
        assert lib.aa_session_run_graph_with_stream_async(session, 1, stream, tin, 1, tout, n_out) == 0
        assert lib.aclrtSynchronizeStream(stream) == 0
        for i in range(n_out):
            out = np.empty_like(x)
            assert lib.aclrtMemcpy(ffi.from_buffer(out), out.nbytes, tout[i].addr, out.nbytes, 2) == 0
            results.append(out)
            lib.aa_tensor_release(ffi.addressof(tout, i))
        assert lib.aa_session_remove_graph(session, 1) == 0
        # RunGraph (host outputs) on the same model.
        assert lib.aa_session_add_graph_onnx(session, 2, model, len(model), ffi.NULL, 0) == 0
        tin[0].addr, tin[0].placement = ffi.from_buffer(x), 1
        hout = ffi.new("aa_tensor[]", n_out)
        count = ffi.new("size_t*", n_out)
        assert lib.aa_session_run_graph(session, 2, tin, 1, hout, count) == 0
        assert count[0] == n_out
        for i in range(n_out):
            out = np.empty_like(x)
            ffi.memmove(ffi.from_buffer(out), hout[i].addr, out.nbytes)
            results.append(out)
            lib.aa_tensor_release(ffi.addressof(hout, i))
        assert lib.aa_session_remove_graph(session, 2) == 0
    finally:
        lib.aclrtFree(dx[0])
        assert lib.aclrtDestroyStream(stream) == 0
        assert lib.aa_session_destroy(session) == 0
    return results


def test_an_output_listed_twice_is_written_in_every_slot() -> None:
    """ONNX lets a graph list one tensor twice as an output (onnxruntime returns it twice); the
    Python API refuses it (results are keyed by name), the C ABI must fill both slots."""
    model = _model([helper.make_node("Neg", ["x"], ["y"])], [_vi("x", [2, 4])], [_vi("y", [2, 4]), _vi("y", [2, 4])])
    x = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    want = _ort(model, {"x": x})
    assert len(want) == 2
    got = _run_stream_at_abi(model.SerializeToString(), x, 2)
    for g, w in zip(got, want + want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_pass_through_and_empty_graphs_at_the_abi() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
    for model in (_passthrough(), _empty()):
        want = _ort(model, {"x": x})
        got = _run_stream_at_abi(model.SerializeToString(), x, len(want))
        for g, w in zip(got, want + want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_the_suite_runs_with_poisoning_on() -> None:
    """conftest.py turns poisoning on: a fresh device block reads NaN as float16/32/64."""
    cfg = ffi.new("aa_sim_config*")
    lib.aa_sim_get_config(cfg)
    assert cfg.poison == 1
    import _simrun

    _simrun._init()
    ctx = ffi.new("aclrtContext*")
    assert lib.aclrtCreateContext(ctx, 0) == 0
    p = ffi.new("void**")
    try:
        assert lib.aclrtMalloc(p, 256, 0) == 0
        raw = np.empty(256, np.uint8)
        assert lib.aclrtMemcpy(ffi.from_buffer(raw), 256, p[0], 256, 2) == 0
        for dtype in (np.float16, np.float32, np.float64):
            assert np.isnan(raw.view(dtype)).all(), dtype
        assert lib.aclrtFree(p[0]) == 0
    finally:
        assert lib.aclrtDestroyContext(ctx[0]) == 0


# ---------------------------------------------------------------------------------------------
# 3. External data from the model's own folder


def _weights_model(location: str = "w.bin") -> tuple[onnx.ModelProto, np.ndarray]:
    """y = x + w, with w (float32[4]) in external data at ``location`` (not written here)."""
    w = np.array([10, 20, 30, 40], np.float32)
    t = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], [t])
    return model, w


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the model's folder, with model.onnx and w.bin; a working directory elsewhere with a
    `sub/app.env` and its own w.bin); the process runs in the latter."""
    model_dir, cwd = tmp_path / "models", tmp_path / "server"
    (cwd / "sub").mkdir(parents=True)
    model_dir.mkdir()
    model, w = _weights_model()
    (model_dir / "model.onnx").write_bytes(model.SerializeToString())
    w.tofile(model_dir / "w.bin")
    np.full(4, STALE, np.float32).tofile(cwd / "w.bin")  # what a CWD lookup would find
    np.full(4, STALE, np.float32).tofile(cwd / "sub" / "app.env")
    monkeypatch.chdir(cwd)
    return model_dir, cwd


def test_weights_beside_the_model_load_from_another_working_directory(folders: tuple[Path, Path]) -> None:
    model_dir, cwd = folders
    assert Path.cwd() == cwd
    x = np.arange(4, dtype=np.float32)
    want = _ort((model_dir / "model.onnx").read_bytes(), {"x": x}, folder=str(model_dir))
    np.testing.assert_array_equal(want[0], x + np.array([10, 20, 30, 40], np.float32))
    with aa.Session() as s:
        g = s.add_graph(model_dir / "model.onnx")
        assert g.external_data_dir == os.path.realpath(model_dir)
        _same(s.run_sync(g, {"x": x}), want)
        # Bytes and ModelProto need base_dir=, and work with it.
        data = (model_dir / "model.onnx").read_bytes()
        for source in (data, onnx.load_model_from_string(data)):
            with pytest.raises(GraphError, match=r"external data.*initializer 'w' at 'w\.bin'.*base_dir="):
                s.add_graph(source)
            _same(s.run_sync(s.add_graph(source, base_dir=model_dir), {"x": x}), want)


def test_a_weight_file_changed_on_disk_is_a_new_model(folders: tuple[Path, Path]) -> None:
    model_dir, _ = folders
    x = np.zeros(4, np.float32)
    with aa.Session() as s:
        first = s.run_sync(s.add_graph(model_dir / "model.onnx"), {"x": x})["y"]
        np.array([1, 2, 3, 4], np.float32).tofile(model_dir / "w.bin.new")
        os.replace(model_dir / "w.bin.new", model_dir / "w.bin")
        second = s.run_sync(s.add_graph(model_dir / "model.onnx"), {"x": x})["y"]
    np.testing.assert_array_equal(first, [10, 20, 30, 40])
    np.testing.assert_array_equal(second, [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("sub/app.env", "cannot read"),  # relative to the model's folder: not there
        ("../server/sub/app.env", r"contains '\.\.'"),
        ("ABS", "absolute path"),
        ("link.bin", "outside the model's folder"),
        ("", "without a location"),
    ],
)
def test_locations_outside_the_model_folder_are_refused(folders: tuple[Path, Path], location: str, why: str) -> None:
    model_dir, cwd = folders
    (model_dir / "link.bin").symlink_to(cwd / "sub" / "app.env")
    if location == "ABS":
        location = str(cwd / "sub" / "app.env")
    model, _ = _weights_model(location)
    path_ = model_dir / "evil.onnx"
    path_.write_bytes(model.SerializeToString())
    with aa.Session() as s:
        for source, kw in ((path_, {}), (model, {"base_dir": model_dir})):
            with pytest.raises(GraphError, match=why) as err:
                s.add_graph(source, **kw)
            assert "initializer 'w'" in str(err.value)
            if location:
                assert repr(location) in str(err.value)


def test_every_refused_location_is_listed(folders: tuple[Path, Path]) -> None:
    model_dir, _ = folders
    model, _ = _weights_model("../a.bin")
    extra = onnx.TensorProto()
    extra.CopyFrom(model.graph.initializer[0])
    extra.name = "v"
    extra.external_data[0].value = "/etc/passwd"
    model.graph.initializer.append(extra)
    with pytest.raises(GraphError, match="2 external data location") as err:
        aa.Graph(model, base_dir=model_dir)
    assert "initializer 'w'" in str(err.value) and "initializer 'v'" in str(err.value)
    assert "'../a.bin'" in str(err.value) and "'/etc/passwd'" in str(err.value)


def test_a_range_past_the_end_of_the_weight_file_is_refused(folders: tuple[Path, Path]) -> None:
    model_dir, _ = folders
    model, _ = _weights_model()
    model.graph.initializer[0].external_data[2].value = "64"
    with pytest.raises(GraphError, match=r"initializer 'w'.*outside the 16-byte file"):
        aa.Graph(model, base_dir=model_dir)


# ---------------------------------------------------------------------------------------------
# 8. add_graph refuses what cannot run, listing every problem


def test_a_graph_without_outputs_is_refused_at_add_graph() -> None:
    model = _model([helper.make_node("Neg", ["x"], ["y"])], [_vi("x", [2])], [])
    with aa.Session() as s:
        with pytest.raises(GraphError, match="no outputs"):
            s.add_graph(model)
        assert not s._graphs


def test_every_structural_problem_is_listed_in_one_error() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["y"], name="n1"),
        helper.make_node("Abs", ["x"], ["y"], name="n2"),  # y produced twice
        helper.make_node("Relu", ["x"], ["w"], name="n3"),  # shadows an initializer
    ]
    inputs = [_vi("x", [2]), _vi("x", [2]), _vi("s", [2], TensorProto.STRING)]
    outputs = [
        _vi("y", [2]),
        _vi("y", [2]),
        _vi("ghost", [2]),
        helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
        _vi("deep", [1] * 26),
    ]
    inits = [numpy_helper.from_array(np.ones(2, np.float32), "w"), numpy_helper.from_array(np.ones(2, np.float32), "w")]
    graph = helper.make_graph(nodes, "bad", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(GraphError) as err:
        aa.Graph(model)
    text = str(err.value)
    for needle in (
        "input name 'x' is used more than once",
        "output name 'y' is used more than once",
        "initializer name 'w' is used more than once",
        "'y' is produced by Abs node n2",
        "'w' is produced by Relu node n3 but is already an initializer",
        "output 'ghost' is not produced",
        "output 'seq' is a sequence_type, not a tensor",
        "input 's' has dtype string",
        "output 'deep' has rank 26",
    ):
        assert needle in text, (needle, text)


def test_valid_models_still_pass_the_checks() -> None:
    """The bundled models, an overridable initializer (an input with a default) and a graph
    whose output is an input all pass add_graph."""
    with aa.Session() as s:
        for name in ("mlp", "cnn", "transformer"):
            s.add_graph(path(name))
        c = numpy_helper.from_array(np.ones(2, np.float32), "c")
        s.add_graph(
            _model([helper.make_node("Add", ["x", "c"], ["y"])], [_vi("x", [2]), _vi("c", [2])], [_vi("y", [2])], [c])
        )
        s.add_graph(_passthrough())


def _huge_matmul() -> onnx.ModelProto:
    return _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [_vi("a", ["M", "K"]), _vi("b", ["K", "N"])],
        [_vi("y", ["M", "N"])],
    )


def _zero_size(shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, (0,) * len(shape))


@pytest.mark.anyio
async def test_an_output_larger_than_the_device_is_refused_at_submit_in_every_mode() -> None:
    """The output's size follows from the input shapes (4 TiB from empty inputs): refused before
    the graph runs, in every run mode, and the session goes on."""
    from helpers import sim_stats

    feeds = {"a": _zero_size((2**40, 0)), "b": _zero_size((0, 1))}
    async with aa.Session(streams=1) as s:
        graphs = {mode: s.add_graph(_huge_matmul(), name=mode) for mode in ("run", "sync", "cb")}
        runs = sim_stats()["graph_runs"]
        with pytest.raises(aa.AscendError, match="more than the device's memory"):
            await s.run(graphs["run"], feeds)
        with pytest.raises(aa.AscendError, match="more than the device's memory"):
            s.run_sync(graphs["sync"], feeds)
        with pytest.raises(aa.AscendError, match="more than the device's memory"):
            s.run_with_callback(graphs["cb"], feeds, lambda out, err: None)
        assert sim_stats()["graph_runs"] == runs  # nothing ran
        small = {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 2), np.float32)}
        _same(await s.run(graphs["run"], small), _ort(_huge_matmul(), small))


def test_the_sim_refuses_a_graph_without_outputs_at_the_abi() -> None:
    """A direct ABI caller gets AddGraph FAILED too (onnxruntime itself accepts the model)."""
    import _simrun

    model = _model([helper.make_node("Neg", ["x"], ["y"])], [_vi("x", [2])], []).SerializeToString()
    ort.InferenceSession(model, providers=["CPUExecutionProvider"])  # onnxruntime accepts it
    with pytest.raises(_simrun.AddGraphError, match="no outputs"):
        _simrun.run_case(model, [np.ones(2, np.float32)])


@pytest.mark.anyio
async def test_a_0d_device_tensor_stays_0d_and_runs() -> None:
    """DeviceTensor.from_numpy kept a rank-0 array as shape (1,) (np.ascontiguousarray makes
    0-d arrays 1-d), so a rank-0 graph input refused it (found by the isolation fuzzer)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "scalar", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    async with aa.Session() as s:
        g = s.add_graph(model)
        t = aa.DeviceTensor.from_numpy(s, np.array(2.5, np.float32))
        try:
            assert t.shape == ()
            out = await s.run(g, {"x": t})
        finally:
            t.close()
    assert out["y"].shape == () and out["y"] == np.float32(-2.5)
