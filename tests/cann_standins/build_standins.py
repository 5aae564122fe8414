"""Build a fake CANN install out of the stand-ins, for the shim tests (tests/test_cann_shim.py).

The result is a directory laid out like a CANN root (``include/``, ``lib64/``) that
``cann_build.make_cann_ffi`` accepts as ``ASCEND_HOME_PATH``:

- ``include/``: the stand-in headers (declarations of exactly the GE / gert / parser API the shim
  uses, from the public headers; see each file's comment);
- ``lib64/libacl_rt.so``: the simulator's C sources, i.e. the real AscendCL names over the
  simulated device, with the sim's own session functions renamed ``standin_sim_*``
  (``src/standin_rename.h``) so that only the shim exports ``aa_session_*``;
- ``lib64/libacl_mdl.so``: empty, over libacl_rt.so (the sim implements aclmdl* there);
- ``lib64/libge_compiler.so``: GE's build API (ge_ir_build.h) writing the sim's offline-model
  container, so ``ascend-async compile`` runs through the CANN module;
- ``lib64/libgraph.so``, ``lib64/libge_runner_v2.so``, ``lib64/libfmk_onnx_parser.so``: the C++
  stand-ins of ``ge::AscendString``/``ge::Graph``, ``ge::GeSession`` and the ONNX parser, built
  over that libacl_rt.so.

Run directly (``python tests/cann_standins/build_standins.py OUT``) to build into OUT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
NATIVE = PROJECT / "ascend_async" / "_native"
INCLUDE = HERE / "include"
SRC = HERE / "src"

CC = os.environ.get("CC", "gcc")
CXX = os.environ.get("CXX", "g++")
# The stand-ins include cdefs/support.h, whose first comment trips -Wcomment; not their code.
CXX_FLAGS = ["-std=c++17", "-O1", "-g", "-fPIC", "-Wall", "-Wextra", "-Wno-comment", "-Werror"]
CXX_INCLUDES = [f"-I{INCLUDE}", f"-I{SRC}", f"-I{NATIVE}"]
C_FLAGS = ["-std=gnu11", "-O1", "-g", "-fPIC", "-pthread", "-fno-strict-aliasing"]

# The flags a compile check of the shim uses (tests/test_cann_shim.py).
SHIM_CHECK_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Werror"]


class BuildError(RuntimeError):
    """A stand-in failed to compile; the message carries the compiler output."""


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def _run_all(cmds: Sequence[Sequence[str]]) -> None:
    procs = [(cmd, subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)) for cmd in cmds]
    errors = []
    for cmd, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"{' '.join(cmd)}\n{out.decode(errors='replace')}")
    if errors:
        raise BuildError("\n".join(errors))


def shim_compile_command(obj: Path) -> list[str]:
    """g++ command compiling ge_shim.cpp against the stand-in headers with warnings as errors."""
    return [
        CXX,
        *SHIM_CHECK_FLAGS,
        "-fPIC",
        "-c",
        str(NATIVE / "cann" / "ge_shim.cpp"),
        "-DAA_HAVE_GE_COMPILER=1",  # the build API's code path is checked too
        f"-I{INCLUDE}",
        f"-I{NATIVE}",
        "-o",
        str(obj),
    ]


def build(root: Path) -> Path:
    """Build the fake CANN install under ``root``; returns ``root``."""
    lib = root / "lib64"
    obj = root / "obj"
    lib.mkdir(parents=True, exist_ok=True)
    obj.mkdir(parents=True, exist_ok=True)
    include = root / "include"
    if include.exists() or include.is_symlink():
        if include.is_symlink() or include.is_file():
            include.unlink()
        else:
            shutil.rmtree(include)
    shutil.copytree(INCLUDE, include)

    # libacl_rt.so: the simulator (objects compiled in parallel, then linked).
    sim_sources = sorted((NATIVE / "sim").glob("*.c"))
    rename = ["-include", str(SRC / "standin_rename.h"), f"-I{NATIVE}"]
    sim_objects = [obj / f"sim_{s.stem}.o" for s in sim_sources]
    cpp_sources = ["graph", "ge_runner_v2", "onnx_parser", "ge_compiler"]
    _run_all(
        [[CC, *C_FLAGS, *rename, "-c", str(s), "-o", str(o)] for s, o in zip(sim_sources, sim_objects, strict=True)]
        + [
            [CXX, *CXX_FLAGS, *CXX_INCLUDES, "-c", str(SRC / f"{n}.cpp"), "-o", str(obj / f"{n}.o")]
            for n in cpp_sources
        ]
    )
    origin = ["-Wl,-rpath,$ORIGIN", f"-L{lib}"]
    _run(
        [
            CC,
            "-shared",
            "-pthread",
            "-Wl,-soname,libacl_rt.so",
            "-Wl,-Bsymbolic",
            *map(str, sim_objects),
            "-o",
            str(lib / "libacl_rt.so"),
            "-lm",
            "-ldl",
        ]
    )
    # libacl_mdl.so: CANN's offline-model library. The sim implements aclmdl* inside
    # libacl_rt.so (sim/model.c, over the same devices and streams), so this stand-in holds no
    # code of its own: it only depends on libacl_rt.so, as the real one does, and makes the
    # link line the real layout's (-lacl_mdl).
    (obj / "acl_mdl_empty.c").write_text("/* the stand-in libacl_mdl.so: aclmdl* live in libacl_rt.so */\n")
    _run([CC, *C_FLAGS, "-c", str(obj / "acl_mdl_empty.c"), "-o", str(obj / "acl_mdl_empty.o")])
    _run(
        [
            CC,
            "-shared",
            "-Wl,-soname,libacl_mdl.so",
            "-Wl,--no-as-needed",
            str(obj / "acl_mdl_empty.o"),
            "-o",
            str(lib / "libacl_mdl.so"),
            *origin,
            "-lacl_rt",
        ]
    )
    for name, deps in (
        ("graph", ["-lacl_rt"]),
        ("ge_runner_v2", ["-lgraph", "-lacl_rt"]),
        ("fmk_onnx_parser", ["-lgraph", "-lacl_rt"]),
        ("ge_compiler", ["-lgraph"]),
    ):
        source = "onnx_parser" if name == "fmk_onnx_parser" else name
        _run(
            [
                CXX,
                "-shared",
                "-pthread",
                f"-Wl,-soname,lib{name}.so",
                str(obj / f"{source}.o"),
                "-o",
                str(lib / f"lib{name}.so"),
                *origin,
                *deps,
            ]
        )
    return root


# The stand-in side's own entry points (src/standin.h), after the shared and sim cdefs.
STANDIN_CDEF = """
int64_t ge_standin_live_outputs(void);
int64_t ge_standin_live_blocks(void);
int64_t ge_standin_late_pending(void);
"""


@dataclass
class StandinSide:
    """The stand-in libraries opened in ABI mode: the sim's extras (stats, the graph engine) in
    libacl_rt.so, counters in libge_runner_v2.so."""

    ffi: Any
    sim: Any
    parser: Any
    runner: Any
    keep: list[Any] = field(default_factory=list)

    def uninstall(self) -> None:
        """Nothing to undo: kept for callers that tidy up."""


def open_standins(root: Path) -> StandinSide:
    """Opens the stand-ins built under ``root`` and opens the graph engine (onnxruntime) in
    their simulator, whose AddGraph parses the ONNX bytes the stand-in parser kept.

    Call it in the process that uses the shim module (the libraries are the same objects the
    module loaded: the dynamic loader matches them by file)."""
    from cffi import FFI  # type: ignore[import-untyped]

    from ascend_async._engine import library_path

    cdefs = NATIVE / "cdefs"
    ffi = FFI()
    ffi.cdef("\n".join((cdefs / n).read_text() for n in ("acl_rt.h", "ge_session.h", "sim.h")) + STANDIN_CDEF)
    lib64 = root / "lib64"
    sim = ffi.dlopen(str(lib64 / "libacl_rt.so"))
    parser = ffi.dlopen(str(lib64 / "libfmk_onnx_parser.so"))
    runner = ffi.dlopen(str(lib64 / "libge_runner_v2.so"))

    err = ffi.new("char[1024]")
    if sim.aa_sim_engine_open(library_path().encode(), err, 1024):
        raise BuildError(f"the stand-in simulator cannot open onnxruntime: {ffi.string(err).decode()}")
    return StandinSide(ffi, sim, parser, runner)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_standins.py OUT_DIR")
    print(build(Path(sys.argv[1]).resolve()))
