"""Only the cffi hook lives here; all metadata is in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "ascend_async" / "_native"))
from build import ffi_cann

modules = ["ascend_async/_native/build.py:ffi_sim"]
if ffi_cann is not None:
    modules.append("ascend_async/_native/build.py:ffi_cann")

setup(cffi_modules=modules)
