"""GE's process-wide state: GEInitialize (once per process, with AscendCL's aclInit before it)
and its global options.

GE reads some options only at GEInitialize (the *global* level of the option table in
``_ge_options``); they are set with :func:`set_ge_options` before the first session opens, and
every session inherits them. ``_lock`` guards ``_ready`` and ``_global``: any thread may open
the first session, and GE is initialized exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ._ge_options import GLOBAL, validate

__all__ = ["ge_initialize", "global_options", "option_array", "set_ge_options"]

_lock = threading.Lock()
_ready = False
_global: dict[str, str] = {}  # GEInitialize's options (set_ge_options)


def global_options() -> dict[str, str]:
    """A copy of GE's global options (what sessions inherit)."""
    with _lock:
        return dict(_global)


def set_ge_options(options: Mapping[str, str]) -> dict[str, str]:
    """GE's global options (GEInitialize's), checked against the table in ``ascend_async._ge_options``: call
    before the first Session of the process opens (GE is initialized once). Sessions inherit
    them (``Session.ge_options``); a session's own options of the same name win. Returns them.

    :raises ValueError: an unknown key, one GE does not read globally, a bad value.
    :raises RuntimeError: GE was initialized already (a session has been opened).
    """
    global _global
    opts = validate(options, GLOBAL)
    with _lock:
        if _ready:
            raise RuntimeError(
                "GE is initialized already (a Session was opened in this process); set its global options "
                "before the first Session, or pass session-level options to Session(options=...)"
            )
        _global = opts
    return dict(opts)


def ge_initialize(backend: Any) -> None:
    """aclInit and GEInitializeV2 with the global options, once per process (any thread)."""
    global _ready
    with _lock:
        if _ready:
            return
        rc = backend.lib.aclInit(backend.ffi.NULL)
        if rc not in (0, 100002):  # a repeated aclInit is allowed
            backend.check(rc, "aclInit")
        opts = {"ge.graphRunMode": "0", **_global}
        keep, arr = option_array(backend.ffi, opts)
        backend.check_ge(backend.lib.aa_ge_initialize(arr, len(opts)), "GEInitializeV2")
        del keep
        _ready = True


def option_array(ffi: Any, opts: Mapping[str, str]) -> tuple[list[Any], Any]:
    """``opts`` as an ``aa_option[]`` for the C ABI, and the buffers to keep alive meanwhile."""
    keep = []
    arr = ffi.new("aa_option[]", max(len(opts), 1))
    for i, (k, v) in enumerate(opts.items()):
        kc, vc = ffi.new("char[]", k.encode()), ffi.new("char[]", str(v).encode())
        keep += [kc, vc]
        arr[i].key = kc
        arr[i].value = vc
    return keep, arr
