"""The CANN backend without an NPU: the GE shim compiled and driven through stand-ins.

What runs here (see docs/cann.md for the boundary):

- ``cann/ge_shim.cpp`` compiles with ``-Wall -Wextra -Wpedantic -Wshadow -Werror`` against the
  stand-in headers (``tests/cann_standins/include``), which declare exactly the GE / gert /
  parser API the shim uses, and exports exactly the functions of ``cdefs/ge_session.h``;
- ``cann_build.make_cann_ffi`` builds the real module (``ascend_async._native._cann``: C++ shim
  plus the C common helpers, one extension) against a fake CANN root whose libraries carry the
  real names (libacl_rt.so, libge_runner_v2.so, libfmk_onnx_parser.so, libgraph.so);
- a contract suite drives that module end to end. The stand-in libacl_rt.so is the simulator;
  the stand-in GeSession forwards to the simulator's session; the stand-in ONNX parser keeps the
  bytes and the simulator parses them with onnxruntime. So the shim's C++ marshalling (gert::Tensor in and out,
  output ownership, the RunGraphAsync callback, the ge::Allocator bridge, error texts, the
  mode-conflict codes) is exercised for real.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from helpers import held
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "ascend_async" / "_native"
CDEFS = NATIVE / "cdefs"
STANDINS = Path(__file__).resolve().parent / "cann_standins"

AA_GE_SUCCESS = 0
AA_GE_FAILED = 0xFFFFFFFF
AA_GE_UNSUPPORTED = 1343225956
AA_GE_PARAM_INVALID = 1343225857
DT_FLOAT, DT_INT32, FORMAT_ND = 0, 3, 2
PLACEMENT_DEVICE, PLACEMENT_HOST = 0, 1
H2D, D2H = 1, 2
NORMAL_ONLY = 2

pytestmark = [
    pytest.mark.cann_shim,
    pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None, reason="needs gcc and g++"),
]


def _load_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


standins = _load_path("aa_build_standins", STANDINS / "build_standins.py")
cann_build = _load_path("aa_cann_build", NATIVE / "cann_build.py")


def shared_cdefs() -> str:
    # The order build.py uses (SHARED_CDEFS): the aclmdl subset and its run helper too.
    names = ("acl_rt.h", "ge_session.h", "support.h", "acl_mdl.h", "offline.h")
    return "\n".join((CDEFS / n).read_text() for n in names)


def session_abi_functions() -> set[str]:
    """Names of the functions cdefs/ge_session.h declares."""
    text = (CDEFS / "ge_session.h").read_text()
    names = set(re.findall(r"^(?:aa_status|size_t|void)\s+\**(aa_\w+)\s*\(", text, re.M))
    assert len(names) >= 15, names
    return names


# --------------------------------------------------------------------------------------------
# Checks that need no simulator


@pytest.mark.slow
def test_shim_compiles_warning_free_against_standin_headers(tmp_path: Path) -> None:
    obj = tmp_path / "ge_shim.o"
    proc = subprocess.run(standins.shim_compile_command(obj), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not available to list the shim's exports")
    out = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
    c_exports = {s for s in exported if not s.startswith("_Z")}
    assert c_exports == session_abi_functions() | {"aa_om_build"}  # and GE's build API (cdefs/om_build.h)


def test_build_without_cann_says_one_line_and_gives_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    assert cann_build.make_cann_ffi(shared_cdefs(), NATIVE) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "CANN not found" in lines[0]


def test_toolkit_home_is_honoured_and_acl_library_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "include").mkdir()
    lib = tmp_path / "lib64"
    lib.mkdir()
    (lib / "libascendcl.so").write_bytes(b"")
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert cann_build.cann_home() == str(tmp_path)
    assert cann_build.acl_library([str(lib)]) == "ascendcl"
    (lib / "libacl_rt.so").write_bytes(b"")
    assert cann_build.acl_library([str(lib)]) == "acl_rt"
    builder = cann_build.make_cann_ffi(shared_cdefs(), NATIVE)
    assert builder is not None
    kwds = builder._assigned_source[3]  # type: ignore[attr-defined]
    assert kwds["libraries"] == ["acl_rt", "ge_runner_v2", "fmk_onnx_parser", "graph", "stdc++"]
    assert kwds["runtime_library_dirs"] == [str(lib)]
    assert "ascend_async/_native/cann/ge_shim.cpp" in kwds["sources"]
    assert all(not Path(s).is_absolute() for s in kwds["sources"])


# --------------------------------------------------------------------------------------------
# The shim module over the stand-ins


@dataclass
class Cann:
    ffi: Any  # the shim module's (API mode)
    lib: Any
    sffi: Any  # the stand-in side (ABI mode over the stand-in libraries)
    sim: Any  # libacl_rt.so: the simulator, for stats and its graph engine
    runner: Any  # libge_runner_v2.so: stand-in counters
    root: Path  # the fake CANN root
    module_path: str  # the built ascend_async._native._cann
    keep: list[Any] = field(default_factory=list)

    def error_text(self) -> str:
        buf = self.ffi.new("char[]", 8192)
        self.lib.aa_ge_get_error_msg(buf, 8192)
        return str(self.ffi.string(buf).decode("utf-8", "replace"))

    def check(self, status: int) -> None:
        assert status == AA_GE_SUCCESS, f"status {status}: {self.error_text()}"

    def check_acl(self, rc: int) -> None:
        assert rc == 0, f"aclError {rc}: {self.ffi.string(self.lib.aclGetRecentErrMsg() or b'')!r}"

    def stats(self) -> Any:
        s = self.sffi.new("aa_sim_stats *")
        self.sim.aa_sim_get_stats(s)
        return s


def _load_extension(name: str, path: str) -> ModuleType:
    # Not registered in sys.modules: the package's own backend loader never sees it.
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    # Loading an extension registers it (and cffi its ``.lib``) in sys.modules under the
    # package's own name; left there, a later Session in this process would pick this module
    # as its backend (auto: "built, and a device is visible" through the stand-ins).
    for key in (name, f"{name}.lib"):
        sys.modules.pop(key, None)
    return module


@pytest.fixture(scope="module")
def cann(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cann]:
    work = tmp_path_factory.mktemp("cann")
    root = standins.build(work / "root")
    saved = {k: os.environ.get(k) for k in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
    os.environ["ASCEND_HOME_PATH"] = str(root)
    try:
        builder = cann_build.make_cann_ffi(shared_cdefs(), NATIVE, absolute_paths=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert builder is not None
    so_path = builder.compile(tmpdir=str(work / "module"))
    module = _load_extension(cann_build.MODULE, so_path)

    side = standins.open_standins(root)
    c = Cann(module.ffi, module.lib, side.ffi, side.sim, side.runner, root, so_path, keep=[side])
    lib = c.lib
    c.check_acl(lib.aclInit(c.ffi.NULL))
    c.check_acl(lib.aclrtSetDevice(0))
    opts = c.ffi.new("aa_option[1]")
    key, value = c.ffi.new("char[]", b"ge.exec.deviceId"), c.ffi.new("char[]", b"0")
    opts[0].key, opts[0].value = key, value
    c.check(lib.aa_ge_initialize(opts, 1))
    try:
        yield c
    finally:
        side.uninstall()
        c.check(lib.aa_ge_finalize())
        lib.aclrtResetDevice(0)
        lib.aclFinalize()


@dataclass
class Env:
    c: Cann
    session: Any
    stream: Any


@pytest.fixture
def env(cann: Cann) -> Iterator[Env]:
    c, ffi, lib = cann, cann.ffi, cann.lib
    before = c.stats()
    before_outputs, before_graphs = before.ge_outputs, before.graphs
    out = ffi.new("aa_session **")
    c.check(lib.aa_session_create(ffi.NULL, 0, out))
    lib.aclrtSetDevice(0)  # GeSession construction may switch this thread's context
    stream = ffi.new("aclrtStream *")
    c.check_acl(lib.aclrtCreateStream(stream))
    e = Env(c, out[0], stream[0])
    try:
        yield e
    finally:
        c.check_acl(lib.aclrtSynchronizeStream(e.stream))
        c.check_acl(lib.aclrtDestroyStream(e.stream))
        c.check(lib.aa_session_destroy(e.session))
        c.error_text()  # drain
        after = c.stats()
        # no leaks: every GE output went back, through the shim and the stand-in manager
        assert after.ge_outputs == before_outputs
        assert after.graphs == before_graphs
        assert c.runner.ge_standin_live_outputs() == 0
        assert c.runner.ge_standin_live_blocks() == 0


# ---- models and tensors ----


def add_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def two_output_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Identity", ["a"], ["z"])],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def identity_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.full((2, 3), 10.0, dtype=np.float32)
X = np.array([7, -1, 3, 42], dtype=np.int32)


def add_graph(e: Env, graph_id: int, model: bytes) -> None:
    c = e.c
    c.check(c.lib.aa_session_add_graph_onnx(e.session, graph_id, model, len(model), c.ffi.NULL, 0))


def fill(t: Any, dtype: int, shape: tuple[int, ...], placement: int) -> None:
    t.dtype, t.format, t.placement, t.ndim = dtype, FORMAT_ND, placement, len(shape)
    for i, d in enumerate(shape):
        t.dims[i] = d


class Device:
    """Device buffers of one test, freed at the end."""

    def __init__(self, c: Cann) -> None:
        self.c = c
        self.ptrs: list[Any] = []

    def put(self, t: Any, array: np.ndarray, dtype: int) -> None:
        c = self.c
        p = c.ffi.new("void **")
        c.check_acl(c.lib.aclrtMalloc(p, array.nbytes, NORMAL_ONLY))
        self.ptrs.append(p[0])
        c.check_acl(c.lib.aclrtMemcpy(p[0], array.nbytes, c.ffi.from_buffer(array), array.nbytes, H2D))
        fill(t, dtype, array.shape, PLACEMENT_DEVICE)
        t.addr, t.size = p[0], array.nbytes

    def empty(self, t: Any, nbytes: int, dtype: int, shape: tuple[int, ...]) -> None:
        c = self.c
        p = c.ffi.new("void **")
        c.check_acl(c.lib.aclrtMalloc(p, nbytes, NORMAL_ONLY))
        self.ptrs.append(p[0])
        fill(t, dtype, shape, PLACEMENT_DEVICE)
        t.addr, t.size = p[0], nbytes

    def read(self, t: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        c = self.c
        host = np.empty(shape, dtype=dtype)
        c.check_acl(c.lib.aclrtMemcpy(c.ffi.from_buffer(host), host.nbytes, t.addr, host.nbytes, D2H))
        return host

    def free(self) -> None:
        for p in self.ptrs:
            self.c.check_acl(self.c.lib.aclrtFree(p))
        self.ptrs.clear()


@pytest.fixture
def dev(env: Env) -> Iterator[Device]:
    d = Device(env.c)
    try:
        yield d
    finally:
        d.free()


def host_inputs(e: Env, *arrays: tuple[np.ndarray, int]) -> Any:
    ffi = e.c.ffi
    ts = ffi.new("aa_tensor[]", len(arrays))
    for t, (array, dtype) in zip(ts, arrays, strict=True):
        fill(t, dtype, array.shape, PLACEMENT_HOST)
        t.addr, t.size = ffi.from_buffer(array), array.nbytes
    return ts


def host_view(e: Env, t: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(bytes(e.c.ffi.buffer(t.addr, n)), dtype=dtype).reshape(shape).copy()


# ---- RunGraphWithStreamAsync ----


def test_stream_async_into_caller_outputs(env: Env, dev: Device) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 1, add_model())
    c.check(lib.aa_session_compile_graph(env.session, 1))
    c.check(lib.aa_session_load_graph(env.session, 1, ffi.NULL, 0, env.stream))
    ins = ffi.new("aa_tensor[2]")
    dev.put(ins[0], A, DT_FLOAT)
    dev.put(ins[1], B, DT_FLOAT)
    outs = ffi.new("aa_tensor[1]")
    dev.empty(outs[0], A.nbytes, DT_FLOAT, (2, 3))
    caller_addr = outs[0].addr
    for _ in range(3):
        c.check(lib.aa_session_run_graph_with_stream_async(env.session, 1, env.stream, ins, 2, outs, 1))
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    assert outs[0].owner == ffi.NULL and outs[0].addr == caller_addr
    assert outs[0].dtype == DT_FLOAT and outs[0].ndim == 2
    np.testing.assert_array_equal(dev.read(outs[0], np.float32, (2, 3)), A + B)
    c.check(lib.aa_session_remove_graph(env.session, 1))


def test_stream_async_ge_allocated_outputs_are_owned(env: Env, dev: Device) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 2, add_model())
    ins = ffi.new("aa_tensor[2]")
    dev.put(ins[0], A, DT_FLOAT)
    dev.put(ins[1], B, DT_FLOAT)
    base = c.stats().ge_outputs
    outs = ffi.new("aa_tensor[1]")  # an empty slot: GE allocates (auto compile + load)
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 2, env.stream, ins, 2, outs, 1))
    t = outs[0]
    assert t.owner != ffi.NULL and t.addr != ffi.NULL
    assert t.placement == PLACEMENT_DEVICE and t.dtype == DT_FLOAT and t.format == FORMAT_ND
    assert (t.ndim, t.dims[0], t.dims[1]) == (2, 2, 3)
    assert t.size == ((A.nbytes + 31) // 32) * 32 + 32  # GE's block rule
    assert int(ffi.cast("uintptr_t", t.addr)) % 32 == 0
    assert c.stats().ge_outputs == base + 1
    assert c.runner.ge_standin_live_outputs() == 1  # still GE's TensorData, detached by the shim
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    np.testing.assert_array_equal(dev.read(t, np.float32, (2, 3)), A + B)
    lib.aa_tensor_release(outs)
    assert outs[0].owner == ffi.NULL and outs[0].addr == ffi.NULL and outs[0].size == 0
    assert c.stats().ge_outputs == base
    assert c.runner.ge_standin_live_outputs() == 0
    lib.aa_tensor_release(outs)  # a second release is a no-op
    lib.aa_tensor_release(ffi.NULL)
    c.check(lib.aa_session_remove_graph(env.session, 2))


def test_stream_async_mixed_slots_allocate_only_the_empty_ones(env: Env, dev: Device) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 11, two_output_model())
    ins = ffi.new("aa_tensor[2]")
    dev.put(ins[0], A, DT_FLOAT)
    dev.put(ins[1], B, DT_FLOAT)
    base = c.stats().ge_outputs
    outs = ffi.new("aa_tensor[2]")
    dev.empty(outs[0], A.nbytes, DT_FLOAT, (2, 3))  # y: caller memory; z: GE allocates
    caller = outs[0].addr
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 11, env.stream, ins, 2, outs, 2))
    assert outs[0].owner == ffi.NULL and outs[0].addr == caller
    assert outs[1].owner != ffi.NULL and (outs[1].ndim, outs[1].dims[1]) == (2, 3)
    assert c.stats().ge_outputs == base + 1
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    np.testing.assert_array_equal(dev.read(outs[0], np.float32, (2, 3)), A + B)
    np.testing.assert_array_equal(dev.read(outs[1], np.float32, (2, 3)), A)
    lib.aa_tensor_release(ffi.addressof(outs, 1))
    # all slots empty: both allocated, described from the graph
    both = ffi.new("aa_tensor[2]")
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 11, env.stream, ins, 2, both, 2))
    assert both[0].owner != ffi.NULL and both[1].owner != ffi.NULL
    assert c.stats().ge_outputs == base + 2
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    np.testing.assert_array_equal(dev.read(both[1], np.float32, (2, 3)), A)
    for i in range(2):
        lib.aa_tensor_release(ffi.addressof(both, i))
    # a slot count that does not match the graph: nothing allocated, nothing leaked
    one = ffi.new("aa_tensor[1]")
    status = lib.aa_session_run_graph_with_stream_async(env.session, 11, env.stream, ins, 2, one, 1)
    assert status == AA_GE_FAILED
    c.error_text()
    assert c.stats().ge_outputs == base
    c.check(lib.aa_session_remove_graph(env.session, 11))


class CountingAllocator:
    """An aa_allocator over aclrtMalloc/aclrtFree that counts its calls. Stream-ordered as GE
    requires: a freed block may still be used by its stream (GE frees a run's workspace at
    submit), so it goes back to the runtime only in release_freed(), after a synchronize."""

    def __init__(self, c: Cann) -> None:
        self.c = c
        self.allocs = 0
        self.frees = 0
        self.sizes: list[int] = []
        self.freed: list[Any] = []
        self._alloc = c.ffi.callback("void *(void *, size_t, void **)", self.alloc)
        self._free = c.ffi.callback("void (void *, void *)", self.free)
        self.table = c.ffi.new("aa_allocator *")
        self.table.alloc, self.table.free = self._alloc, self._free

    def alloc(self, ctx: Any, size: int, addr: Any) -> Any:
        p = self.c.ffi.new("void **")
        if self.c.lib.aclrtMalloc(p, size, NORMAL_ONLY) != 0:
            return self.c.ffi.NULL
        self.allocs += 1
        self.sizes.append(size)
        addr[0] = p[0]
        return p[0]

    def free(self, ctx: Any, block: Any) -> None:
        self.frees += 1
        self.freed.append(block)

    def release_freed(self) -> None:
        """Give the freed blocks back to the runtime (the stream was synchronized)."""
        for block in self.freed:
            self.c.lib.aclrtFree(block)
        self.freed.clear()


def test_stream_async_external_allocator_bridge(env: Env, dev: Device) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    alloc = CountingAllocator(c)
    c.check(lib.aa_session_register_external_allocator(env.session, env.stream, alloc.table))
    add_graph(env, 3, add_model())
    c.check(lib.aa_session_load_graph(env.session, 3, ffi.NULL, 0, env.stream))
    ins = ffi.new("aa_tensor[2]")
    dev.put(ins[0], A, DT_FLOAT)
    dev.put(ins[1], B, DT_FLOAT)
    outs = ffi.new("aa_tensor[1]")
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 3, env.stream, ins, 2, outs, 1))
    # GE's workspace for the run (the sim's 512 bytes; freed when the submission returned), then
    # the output block.
    assert (alloc.allocs, alloc.frees) == (2, 1)
    assert alloc.sizes == [512, ((A.nbytes + 31) // 32) * 32 + 32]
    assert outs[0].owner != ffi.NULL and outs[0].size == alloc.sizes[1]
    assert c.runner.ge_standin_live_blocks() == 1
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    np.testing.assert_array_equal(dev.read(outs[0], np.float32, (2, 3)), A + B)
    # the caller-provided slot next to a GE-allocated one: only the empty slot is allocated
    outs2 = ffi.new("aa_tensor[1]")
    dev.empty(outs2[0], A.nbytes, DT_FLOAT, (2, 3))
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 3, env.stream, ins, 2, outs2, 1))
    assert alloc.allocs == 3 and outs2[0].owner == ffi.NULL  # a workspace, no output block
    lib.aa_tensor_release(outs)  # MemBlock::Free -> the bridge -> our free
    assert (alloc.allocs, alloc.frees) == (3, 3)
    assert c.runner.ge_standin_live_blocks() == 0
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    alloc.release_freed()
    c.check(lib.aa_session_remove_graph(env.session, 3))
    c.check(lib.aa_session_unregister_external_allocator(env.session, env.stream))
    c.check(lib.aa_session_unregister_external_allocator(env.session, env.stream))  # no-op
    bad = ffi.new("aa_allocator *")
    status = lib.aa_session_register_external_allocator(env.session, env.stream, bad)
    assert status == AA_GE_PARAM_INVALID and "allocator" in c.error_text()


# ---- RunGraphWithStreamAsync: dynamic-shape graphs (outputs GE describes after submission) ----


def nonzero_model() -> bytes:
    """idx = NonZero(x > 0): int64[2, ?], a shape that depends on values; r = Relu(x) beside it."""
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["x", "zero"], ["mask"]),
            helper.make_node("NonZero", ["mask"], ["idx"]),
            helper.make_node("Relu", ["x"], ["r"]),
        ],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("idx", TensorProto.INT64, [2, None]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


XS = np.array([[1, -2, 3, 0], [-1, 5, 5, 1], [0, 0, 0, 2]], dtype=np.float32)


def ort_reference(model: bytes, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's own Python API: the independent reference."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, {"x": x})]


def standin_stream(c: Cann, stream: Any) -> Any:
    """The same aclrtStream as the stand-in libacl_rt.so (ABI mode) sees it."""
    return c.sffi.cast("aclrtStream", int(c.ffi.cast("uintptr_t", stream)))


def submit_in_thread(c: Cann, call: Any) -> int:
    """Runs a submission on another thread and returns its status. Submission must not wait for
    the device: with the stream gated closed, a submission that waits never returns by itself,
    so after a minute the gate is opened to get the thread back, and the test fails."""
    box: list[Any] = []
    done = threading.Event()
    ctx = c.ffi.new("aclrtContext *")
    c.check_acl(c.lib.aclrtGetCurrentContext(ctx))

    def run() -> None:
        c.lib.aclrtSetCurrentContext(ctx[0])  # the stream's context, as every submitter needs
        status = call()
        box.append((status, c.error_text()))  # GE's error text is per thread
        done.set()

    t = threading.Thread(target=run)
    t.start()
    if not done.wait(60):
        raise AssertionError("RunGraphWithStreamAsync blocked on a gated stream (it waits for the device)")
    t.join()
    status, text = box[0]
    assert status == AA_GE_SUCCESS, f"status {status}: {text}"
    return int(status)


XNONE = np.full((2, 4), -1.0, dtype=np.float32)  # nothing positive: idx is empty, (2, 0)


@pytest.mark.parametrize("x", [XS, XNONE], ids=["values", "empty_output"])
@pytest.mark.parametrize("external", [False, True], ids=["builtin_allocator", "pool_allocator"])
def test_dynamic_run_returns_pending_and_is_described_after_the_event(
    env: Env, dev: Device, external: bool, x: np.ndarray
) -> None:
    """GE's order for a dynamic-shape graph: submit returns at once with the outputs not yet
    written (the stand-in GE writes them only when the stream reaches the run); after the run's
    event completed, aa_session_resolve_outputs describes them without waiting."""
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    model = nonzero_model()
    add_graph(env, 40, model)
    pool = lib.aa_pool_create(0, 1 << 20)
    event = ffi.new("aclrtEvent *")
    c.check_acl(lib.aclrtCreateEvent(event))
    gate = standin_stream(c, env.stream)
    try:
        if external:
            table = ffi.new("aa_allocator *")
            lib.aa_pool_allocator(pool, table)
            c.check(lib.aa_session_register_external_allocator(env.session, env.stream, table))
        c.check(lib.aa_session_load_graph(env.session, 40, ffi.NULL, 0, env.stream))
        ins = ffi.new("aa_tensor[1]")
        dev.put(ins[0], x, DT_FLOAT)
        outs = ffi.new("aa_tensor[2]")
        base = c.stats().ge_outputs
        with held(gate, lib=c.sim):
            status = submit_in_thread(
                c, lambda: lib.aa_session_run_graph_with_stream_async(env.session, 40, env.stream, ins, 1, outs, 2)
            )
            c.check(status)
            # pending: no address yet, both slots share the run's kept tensors
            assert [outs[i].addr == ffi.NULL and outs[i].size == 0 for i in range(2)] == [True, True]
            assert outs[0].owner != ffi.NULL and outs[0].owner == outs[1].owner
            assert c.runner.ge_standin_late_pending() == 1  # the stand-in GE has not written them
            assert c.stats().ge_outputs == base  # nor has the sim placed anything
            c.check_acl(lib.aclrtRecordEvent(event[0], env.stream))
            status_p = ffi.new("aclrtEventRecordedStatus *")
            c.check_acl(lib.aclrtQueryEventStatus(event[0], status_p))
            assert status_p[0] == 0  # ACL_EVENT_RECORDED_STATUS_NOT_READY: the run has not run
            # Described too early (the stream has not passed the run): refused, still pending.
            assert lib.aa_session_resolve_outputs(outs, 2) == AA_GE_FAILED
            assert "still pending" in c.error_text()
            assert outs[0].owner == outs[1].owner != ffi.NULL and outs[0].addr == ffi.NULL
        c.check_acl(lib.aclrtSynchronizeEvent(event[0]))
        assert c.runner.ge_standin_late_pending() == 0
        c.check(lib.aa_session_resolve_outputs(outs, 2))
        want = ort_reference(model, x)
        assert outs[0].owner != outs[1].owner  # each holds its own GE block now
        for t, w, dtype in zip(outs, want, (np.int64, np.float32), strict=True):
            assert t.addr != ffi.NULL and t.owner != ffi.NULL and t.placement == PLACEMENT_DEVICE
            shape = tuple(t.dims[d] for d in range(t.ndim))
            assert shape == w.shape
            np.testing.assert_array_equal(dev.read(t, dtype, shape), w)
        described = [(outs[i].addr, outs[i].owner) for i in range(2)]
        c.check(lib.aa_session_resolve_outputs(outs, 2))  # again: nothing left to do
        assert [(outs[i].addr, outs[i].owner) for i in range(2)] == described
        if external:
            stats = ffi.new("aa_pool_stats *")
            lib.aa_pool_get_stats(pool, stats)
            # Placed when the stream reached the run, so in GE's own memory, not through the
            # stream's allocator: that late, a stream-ordered allocator may hold blocks that
            # only later work may take (sim/session.c alloc_output).
            assert stats.live_blocks == 0
        lib.aa_tensor_release(outs)
        lib.aa_tensor_release(outs + 1)
        assert c.runner.ge_standin_live_outputs() == 0 and c.stats().ge_outputs == base
        c.check(lib.aa_session_remove_graph(env.session, 40))
        if external:
            c.check(lib.aa_session_unregister_external_allocator(env.session, env.stream))
    finally:
        lib.aclrtDestroyEvent(event[0])
        assert lib.aa_pool_destroy(pool) == 0


def test_dynamic_run_released_pending_frees_what_ge_placed(env: Env, dev: Device) -> None:
    """A dynamic run nobody collects (an abandoned or failed run): releasing its pending slots
    once the stream passed the run frees the kept tensors and the blocks GE placed in them."""
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 41, nonzero_model())
    ins = ffi.new("aa_tensor[1]")
    dev.put(ins[0], XS, DT_FLOAT)
    outs = ffi.new("aa_tensor[2]")
    base = c.stats().ge_outputs
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 41, env.stream, ins, 1, outs, 2))
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    assert c.stats().ge_outputs == base + 2 and c.runner.ge_standin_live_outputs() == 2
    lib.aa_tensor_release(outs)
    assert c.runner.ge_standin_live_outputs() == 2  # the other slot still holds the run
    lib.aa_tensor_release(outs + 1)
    assert c.runner.ge_standin_live_outputs() == 0 and c.stats().ge_outputs == base
    c.check(lib.aa_session_remove_graph(env.session, 41))


def test_dynamic_run_on_a_faulted_stream_leaks_nothing(env: Env, dev: Device) -> None:
    """The run faults on the device: GE never describes its outputs (the stand-in's update task
    is skipped), and releasing the pending slots frees everything."""
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 42, nonzero_model())
    ins = ffi.new("aa_tensor[1]")
    dev.put(ins[0], XS, DT_FLOAT)
    sp = ffi.new("aclrtStream *")
    c.check_acl(lib.aclrtCreateStream(sp))
    stream = sp[0]
    try:
        outs = ffi.new("aa_tensor[2]")
        assert c.sim.aa_sim_inject_fault(standin_stream(c, stream), 1, 507011) == 0
        c.check(lib.aa_session_run_graph_with_stream_async(env.session, 42, stream, ins, 1, outs, 2))
        assert lib.aclrtSynchronizeStream(stream) != 0
        lib.aclGetRecentErrMsg()
        assert c.runner.ge_standin_late_pending() == 0
        assert lib.aa_session_resolve_outputs(outs, 2) == AA_GE_FAILED  # GE never described them
        assert "still pending" in c.error_text()
        lib.aa_tensor_release(outs)
        lib.aa_tensor_release(outs + 1)
        assert c.runner.ge_standin_live_outputs() == 0
    finally:
        lib.aclrtDestroyStream(stream)
    c.check(lib.aa_session_remove_graph(env.session, 42))


# ---- RunGraph and RunGraphAsync: host outputs ----


def test_run_graph_returns_owned_host_outputs(env: Env) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 4, identity_model())
    ins = host_inputs(env, (X, DT_INT32))
    base = c.stats().ge_outputs
    outs = ffi.new("aa_tensor[4]")
    n = ffi.new("size_t *", 4)
    c.check(lib.aa_session_run_graph(env.session, 4, ins, 1, outs, n))
    assert n[0] == 1
    t = outs[0]
    assert t.owner != ffi.NULL and t.placement == PLACEMENT_HOST and t.dtype == DT_INT32
    assert (t.ndim, t.dims[0]) == (1, 4)
    np.testing.assert_array_equal(host_view(env, t, np.int32, (4,)), X)
    assert c.stats().ge_outputs == base + 1
    lib.aa_tensor_release(outs)
    assert c.stats().ge_outputs == base and c.runner.ge_standin_live_outputs() == 0
    # no room for the outputs: PARAM_INVALID, the count needed, nothing leaked
    n[0] = 0
    assert lib.aa_session_run_graph(env.session, 4, ins, 1, outs, n) == AA_GE_PARAM_INVALID
    assert n[0] == 1 and "room for 0" in c.error_text()
    assert c.stats().ge_outputs == base and c.runner.ge_standin_live_outputs() == 0
    c.check(lib.aa_session_remove_graph(env.session, 4))


class AsyncResult:
    def __init__(self, c: Cann) -> None:
        self.c = c
        self.done = threading.Event()
        self.calls = 0
        self.status: int | None = None
        self.outputs: list[Any] = []
        self.thread: int | None = None
        self.callback = c.ffi.callback("aa_run_callback", self.on_done)

    def on_done(self, user_data: Any, status: int, outputs: Any, n: int) -> None:
        self.calls += 1
        self.status = status
        self.thread = threading.get_ident()
        for i in range(n):  # ownership passes to us: copy the structs
            t = self.c.ffi.new("aa_tensor *")
            t[0] = outputs[i]
            self.outputs.append(t)
        self.done.set()


def test_run_graph_async_callback_hands_over_outputs(env: Env) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    add_graph(env, 5, add_model())
    ins = host_inputs(env, (A, DT_FLOAT), (B, DT_FLOAT))
    result = AsyncResult(c)
    c.check(lib.aa_session_run_graph_async(env.session, 5, ins, 2, result.callback, ffi.NULL))
    assert result.done.wait(30)
    assert result.calls == 1 and result.status == AA_GE_SUCCESS and len(result.outputs) == 1
    t = result.outputs[0]
    assert t.owner != ffi.NULL and t.placement == PLACEMENT_HOST
    np.testing.assert_array_equal(host_view(env, t, np.float32, (2, 3)), A + B)
    assert c.runner.ge_standin_live_outputs() == 1
    lib.aa_tensor_release(t)
    assert c.runner.ge_standin_live_outputs() == 0
    c.check(lib.aa_session_remove_graph(env.session, 5))


# ---- the common C helpers (common/*.c) compiled into the CANN module, over the shim ----


def wait_tokens(e: Env, watch: Any, want: int) -> dict[int, int]:
    ffi, lib = e.c.ffi, e.c.lib
    tokens, codes, ns = ffi.new("uint64_t[8]"), ffi.new("int32_t[8]"), ffi.new("uint64_t[8]")
    got: dict[int, int] = {}
    for _ in range(100):
        n = lib.aa_watch_wait(watch, tokens, codes, ns, 8, 100)
        assert n >= 0
        got.update({tokens[i]: codes[i] for i in range(n)})
        if len(got) >= want:
            break
    return got


def test_pool_allocator_and_watcher_over_the_shim(env: Env, dev: Device) -> None:
    """The product's path: the caching pool as GE's external allocator, completion through
    an event handed to the watch, and RunGraphAsync through aa_watch_run_callback."""
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    ctx = ffi.new("aclrtContext *")
    c.check_acl(lib.aclrtGetCurrentContext(ctx))
    watch = lib.aa_watch_create(ctx[0], ffi.NULL)
    pool = lib.aa_pool_create(0, 1 << 20)
    event = ffi.new("aclrtEvent *")
    c.check_acl(lib.aclrtCreateEvent(event))
    try:
        table = ffi.new("aa_allocator *")
        lib.aa_pool_lane_allocator(lib.aa_pool_lane_open(pool), table)  # a lane: stream-ordered
        c.check(lib.aa_session_register_external_allocator(env.session, env.stream, table))
        add_graph(env, 9, add_model())
        ins = ffi.new("aa_tensor[2]")
        dev.put(ins[0], A, DT_FLOAT)
        dev.put(ins[1], B, DT_FLOAT)
        outs = ffi.new("aa_tensor[1]")
        c.check(lib.aa_session_run_graph_with_stream_async(env.session, 9, env.stream, ins, 2, outs, 1))
        c.check_acl(lib.aclrtRecordEvent(event[0], env.stream))
        c.check_acl(lib.aa_watch_add(watch, env.stream, event[0], 77))
        assert wait_tokens(env, watch, 1) == {77: 0}
        np.testing.assert_array_equal(dev.read(outs[0], np.float32, (2, 3)), A + B)
        stats = ffi.new("aa_pool_stats *")
        lib.aa_pool_get_stats(pool, stats)
        assert stats.live_blocks == 1
        lib.aa_tensor_release(outs)
        lib.aa_pool_get_stats(pool, stats)
        assert stats.live_blocks == 0

        add_graph(env, 10, add_model())
        host_ins = host_inputs(env, (A, DT_FLOAT), (B, DT_FLOAT))
        slot = ffi.new("aa_cb_slot *")
        slot_outputs = ffi.new("aa_tensor[2]")
        slot.watch, slot.token, slot.capacity, slot.outputs = watch, 78, 2, slot_outputs
        c.check(lib.aa_session_run_graph_async(env.session, 10, host_ins, 2, lib.aa_watch_run_callback, slot))
        assert wait_tokens(env, watch, 1) == {78: 0}
        assert slot.status == AA_GE_SUCCESS and slot.n_outputs == 1
        np.testing.assert_array_equal(host_view(env, slot_outputs[0], np.float32, (2, 3)), A + B)
        lib.aa_tensor_release(slot_outputs)
        c.check_acl(lib.aclrtSynchronizeStream(env.stream))
        for gid in (9, 10):
            c.check(lib.aa_session_remove_graph(env.session, gid))
        c.check(lib.aa_session_unregister_external_allocator(env.session, env.stream))
    finally:
        lib.aclrtDestroyEvent(event[0])
        lib.aa_watch_close(watch)
        lib.aa_watch_destroy(watch)
        assert lib.aa_pool_destroy(pool) == 0


def test_host_smoke_script_runs_over_the_standins(cann: Cann) -> None:
    """The first-run script docs/cann.md gives for an Ascend host, run here end to end."""
    smoke = _load_path("aa_cann_smoke", NATIVE / "cann" / "smoke.py")
    before = cann.stats()
    lines: list[str] = []
    smoke.run(cann.ffi, cann.lib, finalize=False, say=lines.append)
    cann.lib.aclrtSetDevice(0)  # (re)establish this thread's context after the script's resets
    assert lines[-1] == "ok  all steps"
    assert sum("result matches numpy" in line for line in lines) == 3
    after = cann.stats()
    assert (after.ge_outputs, after.graphs, after.sessions) == (
        before.ge_outputs,
        before.graphs,
        before.sessions,
    )
    assert cann.runner.ge_standin_live_outputs() == 0


FULL_STACK = """
import sys
from pathlib import Path

import anyio
import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, sys.argv[2])
import build_standins

side = build_standins.open_standins(Path(sys.argv[1]))
import ascend_async as aa

graph = helper.make_graph(
    [helper.make_node("Add", ["a", "b"], ["y"])],
    "add",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.full((2, 3), 10.0, dtype=np.float32)


async def main():
    info = aa.backend_info()
    assert info["backend"] == "cann", info
    async with aa.Session(0) as session:
        g = session.add_graph(model.SerializeToString())
        results = []

        async def one(i):
            out = await session.run(g, {"a": A + i, "b": B})
            results.append(np.array_equal(out["y"], A + i + B))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
        assert results == [True] * 16, results
        g2 = session.add_graph(model)
        out = session.run_sync(g2, {"a": A, "b": B})
        assert np.array_equal(out["y"], A + B)
    assert side.runner.ge_standin_live_outputs() == 0


for backend in ("asyncio", "trio"):
    anyio.run(main, backend=backend)
side.uninstall()
print("FULL STACK OK")
"""


@pytest.mark.slow
def test_the_python_stack_runs_unchanged_over_the_shim(cann: Cann) -> None:
    """The public API (Session.run on asyncio and trio, run_sync) with the CANN backend
    selected: the package's Python layers over the shim module, in a fresh process."""
    _run_stack(cann, FULL_STACK, "FULL STACK OK", 120)


def _run_stack(cann: Cann, script: str, marker: str, timeout: int, *args: str) -> None:
    """Runs ``script`` in a fresh process with the CANN backend over the stand-ins (argv:
    the stand-in root, the stand-in sources, then ``args``)."""
    env = {
        **os.environ,
        "ASCEND_ASYNC_BACKEND": "cann",
        "ASCEND_ASYNC_CANN_MODULE": cann.module_path,
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, str(cann.root), str(STANDINS), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout + proc.stderr


DYNAMIC_STACK = """
import sys
from pathlib import Path

import anyio
import numpy as np
import onnxruntime as ort
import uvloop

sys.path.insert(0, sys.argv[2])
import build_standins

side = build_standins.open_standins(Path(sys.argv[1]))
import ascend_async as aa

model = Path(sys.argv[3]).read_bytes()  # nonzero_model(), written by the test
reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(18)
XS = [rng.integers(-3, 3, size=(n, 4)).astype(np.float32) for n in (1, 3, 5, 2)]
XS.append(np.full((2, 4), -1.0, np.float32))  # nothing positive: an empty idx


def check(out, x):
    want = dict(zip(("idx", "r"), reference.run(None, {"x": x})))
    assert set(out) == set(want), out
    for name, w in want.items():
        got = out[name]
        got = got.numpy() if isinstance(got, aa.DeviceTensor) else got
        assert got.dtype == w.dtype and got.shape == w.shape, (name, got.shape, w.shape)
        assert np.array_equal(got, w), (name, got, w)


async def main():
    assert aa.backend_info()["backend"] == "cann"
    async with aa.Session(0, streams=1) as session:
        g = session.add_graph(model)
        check(await session.run(g, {"x": XS[0]}), XS[0])  # loads the graph on the stream
        ffi = session._device.backend.ffi
        (stream,) = session.streams
        gate = side.ffi.cast("aclrtStream", int(ffi.cast("uintptr_t", stream.handle)))
        results = {}

        async def one(i, x, where):
            results[i] = (await session.run(g, {"x": x}, outputs=where), x)

        assert side.sim.aa_sim_stream_hold(gate) == 0
        try:
            async with anyio.create_task_group() as tg:
                for i, x in enumerate(XS):
                    tg.start_soon(one, i, x, "device" if i % 2 else "numpy")
                # Every run is submitted while the device cannot run it, and this loop goes on
                # running: submission waited for nothing. Their outputs are still pending (the
                # stand-in GE has written none of them) and no run completed.
                with anyio.fail_after(60):
                    while side.runner.ge_standin_late_pending() < len(XS):
                        await anyio.sleep(0.001)
                assert results == {}
                assert session.statistics().in_flight == len(XS)
                side.sim.aa_sim_stream_release(gate)
        finally:
            side.sim.aa_sim_stream_release(gate)
        assert side.runner.ge_standin_late_pending() == 0
        for i, (out, x) in sorted(results.items()):
            check(out, x)
            for t in out.values():
                if isinstance(t, aa.DeviceTensor):
                    t.close()
        # and one by one, ungated
        for x in XS:
            check(await session.run(g, {"x": x}), x)
    assert side.runner.ge_standin_live_outputs() == 0
    assert side.runner.ge_standin_live_blocks() == 0


for backend, options in (
    ("asyncio", {}),
    ("asyncio", {"loop_factory": uvloop.new_event_loop}),
    ("trio", {}),
):
    anyio.run(main, backend=backend, backend_options=options)
side.uninstall()
print("DYNAMIC STACK OK")
"""


@pytest.mark.slow
def test_dynamic_graph_never_blocks_the_loop_through_session_run(cann: Cann, tmp_path: Path) -> None:
    """Session.run on asyncio, uvloop and trio with the CANN backend over the stand-ins: runs of
    a value-dependent graph (NonZero) are all submitted while their stream is gated closed (the
    loop keeps running, the outputs stay pending), and once the gate opens each result matches
    onnxruntime's Python API, host and device outputs alike. In a fresh process."""
    model = tmp_path / "nonzero.onnx"
    model.write_bytes(nonzero_model())
    _run_stack(cann, DYNAMIC_STACK, "DYNAMIC STACK OK", 300, str(model))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_setup_py_builds_the_cann_module(cann: Cann, tmp_path: Path) -> None:
    """The install path itself: setup.py -> build.py -> make_cann_ffi (paths relative to the
    project root) with ASCEND_HOME_PATH set builds _cann next to _sim, and the result runs the
    public stack. Built into tmp_path; the source tree is not touched."""
    env = {**os.environ, "ASCEND_HOME_PATH": str(cann.root)}
    env.pop("ASCEND_TOOLKIT_HOME", None)
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    built = sorted((tmp_path / "lib" / "ascend_async" / "_native").glob("_cann*.so"))
    assert len(built) == 1, build.stdout + build.stderr
    run = subprocess.run(
        [sys.executable, "-c", FULL_STACK, str(cann.root), str(STANDINS)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ASCEND_ASYNC_BACKEND": "cann",
            "ASCEND_ASYNC_CANN_MODULE": str(built[0]),
        },
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and "FULL STACK OK" in run.stdout, run.stdout + run.stderr


# ---- mode exclusivity, unknown graphs, errors ----


def test_mode_conflicts_keep_ge_codes_and_text(env: Env, dev: Device) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    ins = ffi.new("aa_tensor[2]")
    dev.put(ins[0], A, DT_FLOAT)
    dev.put(ins[1], B, DT_FLOAT)
    outs = ffi.new("aa_tensor[1]")
    dev.empty(outs[0], A.nbytes, DT_FLOAT, (2, 3))
    host_outs = ffi.new("aa_tensor[1]")
    n = ffi.new("size_t *", 1)

    # stream-async first: RunGraph and RunGraphAsync are UNSUPPORTED
    add_graph(env, 6, add_model())
    c.check(lib.aa_session_run_graph_with_stream_async(env.session, 6, env.stream, ins, 2, outs, 1))
    assert lib.aa_session_run_graph(env.session, 6, ins, 2, host_outs, n) == AA_GE_UNSUPPORTED
    text = c.error_text()
    assert "mutually exclusive" in text and "RunGraphWithStreamAsync" in text
    result = AsyncResult(c)
    status = lib.aa_session_run_graph_async(env.session, 6, ins, 2, result.callback, ffi.NULL)
    assert status == AA_GE_UNSUPPORTED
    assert result.done.is_set() and result.status == AA_GE_UNSUPPORTED and result.outputs == []
    assert "mutually exclusive" in c.error_text()

    # RunGraph first: stream-async is FAILED (E10062 in the text)
    add_graph(env, 7, add_model())
    n[0] = 1
    c.check(lib.aa_session_run_graph(env.session, 7, ins, 2, host_outs, n))
    lib.aa_tensor_release(host_outs)
    status = lib.aa_session_run_graph_with_stream_async(env.session, 7, env.stream, ins, 2, outs, 1)
    assert status == AA_GE_FAILED
    text = c.error_text()
    assert "E10062" in text and "mutually exclusive" in text

    # RemoveGraph resets the mode
    c.check_acl(lib.aclrtSynchronizeStream(env.stream))
    c.check(lib.aa_session_remove_graph(env.session, 6))
    add_graph(env, 6, add_model())
    n[0] = 1
    c.check(lib.aa_session_run_graph(env.session, 6, ins, 2, host_outs, n))
    lib.aa_tensor_release(host_outs)
    for gid in (6, 7):
        c.check(lib.aa_session_remove_graph(env.session, gid))


def test_unknown_graph_id_is_failed_with_text(env: Env) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    assert lib.aa_session_compile_graph(env.session, 999) == AA_GE_FAILED
    assert "999" in c.error_text()
    assert lib.aa_session_load_graph(env.session, 999, ffi.NULL, 0, env.stream) == AA_GE_FAILED
    outs = ffi.new("aa_tensor[1]")
    status = lib.aa_session_run_graph_with_stream_async(env.session, 999, env.stream, ffi.NULL, 0, outs, 1)
    assert status == AA_GE_FAILED
    assert "does not exist" in c.error_text()
    assert lib.aa_session_remove_graph(env.session, 999) == AA_GE_FAILED
    c.error_text()


def test_bad_model_and_bad_arguments(env: Env) -> None:
    c, lib, ffi = env.c, env.c.lib, env.c.ffi
    junk = b"not an onnx model"
    status = lib.aa_session_add_graph_onnx(env.session, 8, junk, len(junk), ffi.NULL, 0)
    assert status == AA_GE_FAILED
    # The stand-in parser only keeps the bytes; the stand-in AddGraph's parse refuses them.
    assert "protobuf parsing failed" in c.error_text()
    assert lib.aa_session_add_graph_onnx(env.session, 8, ffi.NULL, 0, ffi.NULL, 0) == AA_GE_PARAM_INVALID
    c.error_text()
    opt = ffi.new("aa_option[1]")  # NULL key
    model = add_model()
    status = lib.aa_session_add_graph_onnx(env.session, 8, model, len(model), opt, 1)
    assert status == AA_GE_PARAM_INVALID and "empty key" in c.error_text()
    add_graph(env, 8, model)
    ins = ffi.new("aa_tensor[2]")
    ins[0].ndim = 26  # more dims than gert::Shape holds
    outs = ffi.new("aa_tensor[1]")
    status = lib.aa_session_run_graph_with_stream_async(env.session, 8, env.stream, ins, 2, outs, 1)
    assert status == AA_GE_PARAM_INVALID and "26 dims" in c.error_text()
    assert lib.aa_session_destroy(ffi.NULL) == AA_GE_PARAM_INVALID
    c.error_text()
    c.check(lib.aa_session_remove_graph(env.session, 8))


def test_session_ids_and_failed_construction(cann: Cann) -> None:
    """Session id 0 alone is not a failure (the stand-in, like GE's id counter may, starts at
    0); a construction GE reports as failed (here: GE finalized) is FAILED with its text."""
    c, lib, ffi = cann, cann.lib, cann.ffi
    out = ffi.new("aa_session **")
    c.check(lib.aa_session_create(ffi.NULL, 0, out))
    c.check(lib.aa_session_destroy(out[0]))
    c.check(lib.aa_ge_finalize())
    try:
        assert lib.aa_session_create(ffi.NULL, 0, out) == AA_GE_FAILED
        assert out[0] == ffi.NULL
        text = c.error_text()
        assert "GeSession" in text and "not initialized" in text
    finally:
        opts = ffi.new("aa_option[1]")
        key, value = ffi.new("char[]", b"ge.exec.deviceId"), ffi.new("char[]", b"0")
        opts[0].key, opts[0].value = key, value
        c.check(lib.aa_ge_initialize(opts, 1))
        lib.aclrtSetDevice(0)
    assert c.stats().sessions == 0


def test_error_text_size_query_then_copy_and_clear(env: Env) -> None:
    lib, ffi = env.c.lib, env.c.ffi
    assert lib.aa_session_compile_graph(env.session, 12345) == AA_GE_FAILED
    n = lib.aa_ge_get_error_msg(ffi.NULL, 0)
    assert n > 10
    assert lib.aa_ge_get_error_msg(ffi.NULL, 0) == n  # a size query keeps the text
    small = ffi.new("char[8]")
    assert lib.aa_ge_get_error_msg(small, 8) == n
    assert len(ffi.string(small)) == 7
    assert lib.aa_ge_get_error_msg(small, 8) == 0  # copied and cleared


def test_error_text_is_per_thread(env: Env) -> None:
    c, lib = env.c, env.c.lib
    assert lib.aa_session_compile_graph(env.session, 4242) == AA_GE_FAILED
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(lib.aa_ge_get_error_msg(c.ffi.NULL, 0)))
    t.start()
    t.join()
    assert seen == [0]
    assert "4242" in c.error_text()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


# --------------------------------------------------------------------------------------------
# Offline models (aclmdl) through the CANN module


def test_offline_model_c_compiles_warning_free() -> None:
    """common/mdl.c (the CANN module's aclmdl run path) and sim/model.c (the stand-in's aclmdl)
    compile with -Wall -Wextra -Wpedantic -Wshadow -Werror against the shared cdefs."""
    for source in ("common/mdl.c", "sim/model.c"):
        proc = subprocess.run(
            [
                "gcc",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Wshadow",
                "-Werror",
                "-fsyntax-only",
                f"-I{NATIVE}",
                str(NATIVE / source),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, source + "\n" + proc.stderr


def test_model_library_linked_where_it_is_its_own(tmp_path: Path) -> None:
    """libacl_mdl.so (the current layout) is linked for aclmdl*; the legacy libascendcl.so holds
    them itself, so nothing is added there."""
    assert cann_build.model_library([str(tmp_path)]) == []
    (tmp_path / "libacl_mdl.so").write_bytes(b"")
    assert cann_build.model_library([str(tmp_path)]) == ["acl_mdl"]


def test_standins_have_the_real_model_library_layout(cann: Cann, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in root has libacl_mdl.so (depending on libacl_rt.so, where the sim holds
    aclmdl*), and the module's link line names it, as on a current CANN install."""
    lib64 = cann.root / "lib64"
    needed = subprocess.run(["readelf", "-d", str(lib64 / "libacl_mdl.so")], capture_output=True, text=True, check=True)
    assert "[libacl_rt.so]" in needed.stdout, needed.stdout
    monkeypatch.setenv("ASCEND_HOME_PATH", str(cann.root))
    builder = cann_build.make_cann_ffi(shared_cdefs(), NATIVE)
    assert builder is not None
    kwds = builder._assigned_source[3]  # type: ignore[attr-defined]
    assert kwds["libraries"][:2] == ["acl_rt", "acl_mdl"]


OFFLINE_STACK = """
import sys
import threading
from pathlib import Path

import anyio
import numpy as np
import onnxruntime as ort

sys.path.insert(0, sys.argv[2])
import build_standins

side = build_standins.open_standins(Path(sys.argv[1]))
import ascend_async as aa
from ascend_async import _offline

onnx_bytes = Path(sys.argv[3]).read_bytes()
container = _offline.build_container(onnx_bytes, _offline.parse_gears("batch:1,2,4"))
# ascend-async compile on "CANN": GE's build API through the module (aa_om_build); the stand-in
# libge_compiler.so writes the sim's layout, so the file must equal the container.
om = Path(sys.argv[4]) / "add.om"
line = aa.compile_model(sys.argv[3], str(om), "batch:1,2,4", {"ge.socVersion": "Ascend910B1"})
assert "offline model built by GE (Ascend910B1)" in line and om.read_bytes() == container, line
for opts, text in (({}, "ge.socVersion"), ({"ge.socVersion": "x", "input_shape": "bad"}, "bad input_shape entry")):
    try:
        aa.compile_model(sys.argv[3], str(om), "batch:1,2,4", opts)
    except aa.GraphError as exc:
        assert text in str(exc), exc
    else:
        raise AssertionError(opts)
reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def want(x):
    return reference.run(None, {"a": x, "b": x})[0]


async def main():
    assert aa.backend_info()["backend"] == "cann"
    async with aa.Session(0, streams=2) as session:
        # A sim container is refused on CANN, before ACL sees it.
        try:
            session.load_model(container)
        except aa.GraphError as exc:
            assert "simulated offline model" in str(exc) and "ATC" in str(exc), exc
        else:
            raise AssertionError("a sim container loaded on CANN")
        # The stand-in aclmdl is the sim's (it reads only its container): drive the CANN
        # module's model path with the refusal lifted.
        refuse, _offline._refuse_foreign = _offline._refuse_foreign, lambda *a: None  # back below
        model = session.load_model(om)
        assert model.gears == aa.Gears("batch", ((1,), (2,), (4,)))
        results = {}

        async def one(i):
            x = np.full((1 + i % 3 // 2 * 3, 4), float(i), np.float32)  # batch 1 or 4
            results[i] = ((await session.run(model, {"a": x, "b": x}, stream=i % 2))["y"], x)

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        for out, x in results.values():
            assert np.array_equal(out, want(x)), (out, x)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        assert np.array_equal(session.run_sync(model, [x, x])["y"], want(x))
        dev = await session.run(model, [x, x], outputs="device")
        assert np.array_equal(dev["y"].numpy(), want(x))
        dev["y"].close()
        done = threading.Event()
        got = {}
        session.run_with_callback(model, [x, x], lambda o, e: (got.update(o=o, e=e), done.set()))
        await anyio.to_thread.run_sync(done.wait, 30)
        assert got["e"] is None and np.array_equal(got["o"]["y"], want(x)), got
        try:
            await session.run(model, [x[:1].repeat(3, 0)] * 2)
        except aa.InputError as exc:
            assert "batch sizes 1, 2, 4" in str(exc)
        else:
            raise AssertionError("batch 3 ran")
        session.remove_graph(model)
        _offline._refuse_foreign = refuse
    stats = side.ffi.new("aa_sim_stats *")
    side.sim.aa_sim_get_stats(stats)
    assert stats.device_allocations == 0 and stats.models == 0, (stats.device_allocations, stats.models)


for backend in ("asyncio", "trio"):
    anyio.run(main, backend=backend)
side.uninstall()
print("OFFLINE STACK OK")
"""


def test_offline_models_through_the_cann_module(cann: Cann, tmp_path: Path) -> None:
    """ascend-async compile through GE's build API (aa_om_build over the stand-in
    libge_compiler.so), then Session.load_model and every run path with the CANN backend over
    the stand-ins, on asyncio and trio: the module's aclmdl binding (cdefs/acl_mdl.h,
    common/mdl.c) linked against the stand-in libraries, outputs compared with onnxruntime; a
    sim container is refused on CANN with a clear message. In a fresh process."""
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", vi[:2], vi[2:])
    model = tmp_path / "add.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _run_stack(cann, OFFLINE_STACK, "OFFLINE STACK OK", 300, str(model), str(tmp_path))
