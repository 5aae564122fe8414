"""Builder for the CANN backend module ``ascend_async._native._cann``.

Built only when a CANN toolkit is found through the variables its ``set_env.sh`` exports
(``ASCEND_HOME_PATH``, or ``ASCEND_TOOLKIT_HOME``). The module has the same cdef text as the
sim module's shared part; its sources are the C++ GE shim (``cann/ge_shim.cpp``) and the common
C helpers (``common/*.c``), and it links the real AscendCL runtime and GE libraries:

- ``acl_rt`` (``libacl_rt.so``), or the legacy ``ascendcl`` when ``libacl_rt.so`` is absent;
- ``acl_mdl`` (``libacl_mdl.so``: the offline-model API, aclmdl*) when present (the legacy
  ``libascendcl.so`` holds it otherwise);
- ``ge_compiler`` (``aclgrphBuildModel``/``aclgrphSaveModel``, for ``ascend-async compile``) when
  present, with ``AA_HAVE_GE_COMPILER`` defined for the shim;
- ``ge_runner_v2`` (``ge::GeSession``), ``fmk_onnx_parser`` (``aclgrphParseONNXFromMem``),
  ``graph`` (``ge::Graph``, ``ge::AscendString``) and ``stdc++``.

C and C++ share one extension: the flags that differ per language (``-std=...``) are applied
per source file by a small wrapper around the compiler's per-file compile step, so ``.c`` files
get ``-std=gnu11`` and ``.cpp`` files ``-std=c++17``. See docs/cann.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cffi import FFI  # type: ignore[import-untyped]

MODULE = "ascend_async._native._cann"

# Flags for every source; the language standard is added per file (see _per_language_flags).
COMMON_FLAGS = ["-O2", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
C_STD = "-std=gnu11"
CXX_STD = "-std=c++17"
CXX_SUFFIXES = (".cpp", ".cc", ".cxx")

# Library directories inside a CANN root, current layout first, then the older
# ascend-toolkit/latest layout (facts §1.1). `devlib` holds link-time stubs: used for linking
# only, never as a run-time path.
_RUNTIME_LIB_DIRS = ("lib64", "runtime/lib64", "compiler/lib64")
_LINK_ONLY_LIB_DIRS = ("devlib",)
_INCLUDE_DIRS = ("include", "runtime/include", "compiler/include", "include/external")


def cann_home() -> str | None:
    """The CANN install root from the environment set_env.sh exports, or None."""
    return os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or None


def _existing(root: Path, names: Sequence[str]) -> list[str]:
    return [str(root / n) for n in names if (root / n).is_dir()]


def _has_library(dirs: Sequence[str], name: str) -> bool:
    return any(Path(d, f"lib{name}.so").exists() for d in dirs)


def acl_library(lib_dirs: Sequence[str]) -> str:
    """``acl_rt`` when ``libacl_rt.so`` is present, else the legacy ``ascendcl``."""
    if _has_library(lib_dirs, "acl_rt") or not _has_library(lib_dirs, "ascendcl"):
        return "acl_rt"
    return "ascendcl"


def model_library(lib_dirs: Sequence[str]) -> list[str]:
    """``["acl_mdl"]`` where the offline-model API (aclmdl*, cdefs/acl_mdl.h) is a library of its
    own (``libacl_mdl.so``, the current layout); none where the legacy ``libascendcl.so`` holds it."""
    return ["acl_mdl"] if _has_library(lib_dirs, "acl_mdl") else []


def _strip_std(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-std=")]


def _wrap_compile(original: Callable[..., Any]) -> Callable[..., Any]:
    def _compile(
        self: Any,
        obj: str,
        src: str,
        ext: str,
        cc_args: list[str],
        extra_postargs: list[str],
        pp_opts: list[str],
    ) -> Any:
        std = CXX_STD if src.endswith(CXX_SUFFIXES) else C_STD
        return original(self, obj, src, ext, cc_args, [*_strip_std(extra_postargs), std], pp_opts)

    _compile.aa_per_language = True  # type: ignore[attr-defined]
    return _compile


def _per_language_flags() -> None:
    """Make the Unix compiler pass ``-std=c++17`` to C++ sources and ``-std=gnu11`` to C ones.

    setuptools hands one ``extra_compile_args`` list to every source of an extension; gcc warns
    (and ``-Werror`` builds fail) when a C standard reaches a C++ file or the reverse. Any
    ``-std=`` in that list is replaced per file. Idempotent; patches setuptools' own distutils
    and, when it is a different module, the one ``import distutils`` gives.
    """
    classes: list[Any] = []
    try:
        from setuptools._distutils import unixccompiler as st_unix  # type: ignore[import-untyped]

        classes.append(st_unix.UnixCCompiler)
    except ImportError:  # pragma: no cover - very old setuptools
        pass
    try:
        from distutils import unixccompiler as du_unix  # type: ignore[import-untyped]

        classes.append(du_unix.UnixCCompiler)
    except ImportError:  # pragma: no cover - Python >= 3.12 without setuptools' shim
        pass
    for cls in classes:
        if not getattr(cls._compile, "aa_per_language", False):
            cls._compile = _wrap_compile(cls._compile)


def make_cann_ffi(shared_cdefs: str, native_dir: Path, *, absolute_paths: bool = False) -> FFI | None:
    """The FFI for ``ascend_async._native._cann``, or None (with one line said) without CANN.

    :param shared_cdefs: the cdef text shared with the sim module (acl_rt.h, ge_session.h,
        support.h).
    :param native_dir: ``ascend_async/_native``.
    :param absolute_paths: name sources and include dirs by absolute path (for builds that do
        not run from the project root, e.g. ``ffi.compile(tmpdir=...)`` in the tests); by
        default they are relative to the project root, as setuptools wants.
    """
    home = cann_home()
    if home is None:
        print(  # noqa: T201 - the one line a build without CANN says
            "ascend_async: CANN not found (ASCEND_HOME_PATH unset): building the sim backend only"
        )
        return None
    root = Path(home)
    include_dirs = _existing(root, _INCLUDE_DIRS)
    runtime_dirs = _existing(root, _RUNTIME_LIB_DIRS)
    library_dirs = runtime_dirs + _existing(root, _LINK_ONLY_LIB_DIRS)
    if not include_dirs or not library_dirs:
        print(  # noqa: T201
            f"ascend_async: {root} has no include/ or lib64/ (is it a CANN install?): building the sim backend only"
        )
        return None

    native_dir = native_dir.resolve()
    project_root = native_dir.parent.parent

    def name(p: Path) -> str:
        return str(p) if absolute_paths else str(p.relative_to(project_root))

    sources = [native_dir / "cann" / "ge_shim.cpp", *sorted((native_dir / "common").glob("*.c"))]
    _per_language_flags()

    # GE's build API (aclgrphBuildModel...) for `ascend-async compile` on the host, when the
    # install has the compiler library; aa_om_build says UNSUPPORTED otherwise.
    compiler = ["ge_compiler"] if _has_library(library_dirs, "ge_compiler") else []
    ffi = FFI()
    ffi.cdef(shared_cdefs + "\n" + (native_dir / "cdefs" / "om_build.h").read_text())
    ffi.set_source(
        MODULE,
        '#include "ascend_async.h"',
        sources=[name(s) for s in sources],
        include_dirs=[name(native_dir), *include_dirs],
        extra_compile_args=[*COMMON_FLAGS, C_STD],
        library_dirs=library_dirs,
        runtime_library_dirs=runtime_dirs,
        libraries=[
            acl_library(library_dirs),
            *model_library(library_dirs),
            "ge_runner_v2",
            "fmk_onnx_parser",
            "graph",
            *compiler,
            "stdc++",
        ],
        define_macros=[("AA_HAVE_GE_COMPILER", "1")] if compiler else [],
        extra_link_args=["-pthread"],
    )
    return ffi
