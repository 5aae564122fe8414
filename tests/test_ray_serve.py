"""Ray Serve on a real local Ray cluster that declares two ``NPU`` resources on the sim: two
replicas, each owning one NPU, batching concurrent HTTP requests. Checks the results, that each
replica sees its own ASCEND_RT_VISIBLE_DEVICES, and a clean shutdown. Needs the [ray] extra
(CI installs it); bounded to a few minutes."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any

import numpy as np
import pytest

import ascend_async as aa
from ascend_async.ray_serve import npu_app, require_serve


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'ascend-async\[ray\]'"):
        require_serve()
    with pytest.raises(ImportError, match="Ray Serve"):
        npu_app(b"")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own imports (pydantic v1-style fields)
def test_two_replicas_each_own_an_npu_and_batch_http_requests() -> None:
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (CI installs it)")
    serve = require_serve()
    model = (files("ascend_async.models") / "mlp.onnx").read_bytes()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(48)]
    with aa.Session() as s:  # the reference: unbatched runs here
        g = s.add_graph(model)
        want = [s.run_sync(g, {"x": x})["y"] for x in xs]

    # Two sim devices per worker process; Ray hands one to each replica through
    # ASCEND_RT_VISIBLE_DEVICES ("0" or "1"), which the sim maps onto its logical device 0.
    env = {"ASCEND_ASYNC_BACKEND": "sim", "ASCEND_ASYNC_SIM_DEVICES": "2"}
    ray.init(
        num_cpus=4,
        resources={"NPU": 2},
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = npu_app(model, num_replicas=2, max_batch_size=16, max_delay_ms=2, ray_actor_options={"num_cpus": 0})
        handle = serve.run(app, name="npu", route_prefix="/mlp")
        url = f"http://127.0.0.1:{port}/mlp"
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda x: _post(url, {"inputs": {"x": x.tolist()}}), xs))
        for x, w, a in zip(xs, want, answers, strict=True):
            assert "outputs" in a, a
            got = np.asarray(a["outputs"]["y"], np.float32)
            assert got.shape == (x.shape[0], 10)
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
        replicas = {a["replica"]["pid"]: a["replica"] for a in answers}
        assert len(replicas) == 2, replicas
        assert sorted(r["visible_devices"] for r in replicas.values()) == ["0", "1"]
        assert all(r["device_count"] == 1 and r["backend"] == "sim" for r in replicas.values())
        batched = sum(r["batches"] for r in replicas.values())  # counters as last reported
        assert batched >= 1

        # the Python handle path, and a clear error for a request without the batch dimension
        out = handle.infer.remote({"x": xs[0]}).result()
        np.testing.assert_allclose(out["y"], want[0], rtol=1e-5, atol=1e-5)
        bad = _post(url, {"inputs": {"x": xs[0][0].tolist()}})
        assert "without the batch dimension" in bad["error"]

        serve.delete("npu")
        assert "npu" not in serve.status().applications
        serve.shutdown()
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    os.environ.pop("RAY_ADDRESS", None)
