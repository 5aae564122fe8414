"""The public surface: __all__, importability, and backend_info()."""

from __future__ import annotations
import __future__

import importlib

import ascend_async


def test_all_matches_exported_names() -> None:
    public = {n for n in dir(ascend_async) if not n.startswith("_")}
    # every public attribute that is not a submodule is listed, and nothing else
    # (and not the `from __future__ import annotations` feature flag)
    exported = {
        n for n in public if not isinstance(getattr(ascend_async, n), (type(ascend_async), __future__._Feature))
    }
    # public submodules listed in __all__ (ascend_async.models) are part of the surface too
    listed_modules = {n for n in ascend_async.__all__ if isinstance(getattr(ascend_async, n), type(ascend_async))}
    assert listed_modules == {"models"}
    assert set(ascend_async.__all__) == exported | listed_modules
    assert len(set(ascend_async.__all__)) == len(ascend_async.__all__)
    assert list(ascend_async.__all__) == sorted(ascend_async.__all__)


def test_every_name_is_importable() -> None:
    module = importlib.import_module("ascend_async")
    for name in ascend_async.__all__:
        obj = getattr(module, name)
        assert obj is not None
        exec(f"from ascend_async import {name}", {})
        if isinstance(obj, type):
            assert obj.__module__ == "ascend_async", name


def test_exception_hierarchy() -> None:
    a = ascend_async
    for exc in (a.AclError, a.GeError, a.GraphError, a.InputError, a.SessionClosedError, a.WatcherError):
        assert issubclass(exc, a.AscendError)
    assert issubclass(a.DeviceError, a.AclError)
    assert issubclass(a.DeviceMemoryError, MemoryError)
    assert issubclass(a.ModeConflictError, a.GeError)
    assert issubclass(a.InputError, ValueError) and issubclass(a.GraphError, ValueError)
    err = a.DeviceError(507015, "device stream", "boom")
    assert err.code == 507015 and "ACL_ERROR_RT_AICORE_EXCEPTION" in str(err) and "boom" in str(err)


def test_backend_info() -> None:
    info = ascend_async.backend_info()
    assert info["backend"] == "sim"
    assert isinstance(info["reason"], str) and info["reason"]
    assert isinstance(info["devices"], int) and info["devices"] >= 1
    assert ascend_async.__version__
