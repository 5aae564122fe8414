"""Interpreter exit with sessions left open: exit code 0, nothing on stderr, no hang."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import numpy as np
from onnx import TensorProto, helper
import ascend_async
vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y", "z")]
model = helper.make_model(
    helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", vi[:2], vi[2:]),
    opset_imports=[helper.make_opsetid("", 17)],
)
x = np.ones((2, 4), np.float32)
"""

SCRIPTS = {
    "async run, session left open": """
import anyio
s = ascend_async.Session()
g = s.add_graph(model)
async def main():
    out = await s.run(g, {"x": x, "y": x})
    assert (out["z"] == 2).all()
anyio.run(main)
print("ok")
""",
    "trio run, session left open": """
import anyio
s = ascend_async.Session()
g = s.add_graph(model)
async def main():
    out = await s.run(g, {"x": x, "y": x})
    assert (out["z"] == 2).all()
anyio.run(main, backend="trio")
print("ok")
""",
    "sync run, two sessions left open": """
s1 = ascend_async.Session()
s2 = ascend_async.Session()
g = s1.add_graph(model)
assert (s1.run_sync(g, [x, x])["z"] == 2).all()
print("ok")
""",
    "callback pending on a held stream": """
from ascend_async._native import _sim
s = ascend_async.Session(streams=1)
g = s.add_graph(model)
_sim.lib.aa_sim_stream_hold(s.streams[0].handle)
s.run_with_callback(g, [x, x], lambda out, err: None)
print("ok")
""",
    "async run cancelled on a held stream": """
import anyio
from ascend_async._native import _sim
s = ascend_async.Session(streams=1)
g = s.add_graph(model)
async def main():
    await s.load(g)
    _sim.lib.aa_sim_stream_hold(s.streams[0].handle)
    with anyio.move_on_after(0.05):
        await s.run(g, [x, x])
    assert s.statistics().in_flight == 1
anyio.run(main)
print("ok")
""",
}


@pytest.mark.parametrize("script", list(SCRIPTS.values()), ids=list(SCRIPTS))
@pytest.mark.slow
def test_exit_with_session_left_open(script: str) -> None:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "ok"
