"""The Ray Serve app. Without Ray: the HTTP semantics of :meth:`NPUModel.respond` (200, 400
naming the problem, 405, 413, 503 when the replica sheds, 500 only for our own failures, with
the request id logged) on every loop. With a real local Ray cluster that declares two ``NPU``
resources on the sim (one start for the module): two replicas, each owning one NPU, batching
concurrent HTTP requests, and each HTTP status driven over real HTTP. Needs the [ray] extra for
the cluster part (CI installs it); bounded to a few minutes."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
import ml_dtypes
import numpy as np
import onnx
import pytest
from helpers import wait_until
from onnx import TensorProto, helper

import ascend_async as aa
from ascend_async._native import _sim
from ascend_async.ray_serve import DEFAULT_MAX_BODY_BYTES, NPUModel, npu_app, parse_inputs, require_serve

BF16 = np.dtype(ml_dtypes.bfloat16)


def serve_model() -> onnx.ModelProto:
    """x: float32[batch, 4], n: int32[batch], h: bfloat16[batch, 2] -> y = x + x, m = n * n, hb = h."""
    f, i32, b = TensorProto.FLOAT, TensorProto.INT32, TensorProto.BFLOAT16
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["y"]),
            helper.make_node("Mul", ["n", "n"], ["m"]),
            helper.make_node("Identity", ["h"], ["hb"]),
        ],
        "serve",
        [
            helper.make_tensor_value_info("x", f, ["batch", 4]),
            helper.make_tensor_value_info("n", i32, ["batch"]),
            helper.make_tensor_value_info("h", b, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("y", f, ["batch", 4]),
            helper.make_tensor_value_info("m", i32, ["batch"]),
            helper.make_tensor_value_info("hb", b, ["batch", 2]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def unsplittable_model() -> onnx.ModelProto:
    """x: float32[batch, 4] -> s: float32[] (a scalar: the batcher cannot split it by rows)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)],
        "unsplittable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def request(rows: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32).tolist(),
        "n": rng.integers(-1000, 1000, rows).tolist(),
        "h": rng.standard_normal((rows, 2)).astype(BF16).astype(np.float32).tolist(),
    }


def body(inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def check_outputs(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """The answer is exactly the model's, computed here with numpy."""
    x = np.asarray(inputs["x"], np.float32)
    n = np.asarray(inputs["n"], np.int32)
    h = np.asarray(inputs["h"], np.float32)
    assert set(outputs) == {"y", "m", "hb"}
    np.testing.assert_array_equal(np.asarray(outputs["y"], np.float32), x + x)
    np.testing.assert_array_equal(np.asarray(outputs["m"], np.int32), n * n)
    np.testing.assert_array_equal(np.asarray(outputs["hb"], np.float32), h)  # bfloat16 values, exact


@pytest.fixture
def replica() -> Iterator[NPUModel]:
    m = NPUModel(serve_model(), max_batch_size=8, max_delay_ms=0)
    try:
        yield m
    finally:
        m.session.close()


# ------------------------------------------------------------------------------------------------
# HTTP semantics without Ray: NPUModel.respond on every loop


@pytest.mark.anyio
async def test_http_200_answers_the_models_outputs(replica: NPUModel) -> None:
    for rows in (1, 3):
        inputs = request(rows, rows)
        status, payload = await replica.respond(body(inputs), {"content-type": "application/json"})
        assert status == 200, payload
        check_outputs(inputs, payload["outputs"])
    # non-finite floats travel as Python's json writes them
    inputs = request(1, 9)
    inputs["x"][0][:3] = [float("nan"), float("inf"), -float("inf")]
    status, payload = await replica.respond(body(inputs))
    assert (
        status == 200
        and np.isnan(payload["outputs"]["y"][0][0])
        and payload["outputs"]["y"][0][1:3]
        == [
            float("inf"),
            -float("inf"),
        ]
    )
    json.dumps(payload)  # and they can be written back


BAD_REQUESTS: list[tuple[bytes, str]] = [
    (b"", "empty body"),
    (b"  \n", "empty body"),
    (b'{"inputs": {"x": [[1, 2', "not valid JSON"),
    (b"\xff\xfe{]", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[1, 2]", "the body is a JSON list"),
    (b'{"x": [[1, 2, 3, 4]]}', "has no 'inputs'"),
    (b'{"inputs": [[1, 2, 3, 4]]}', "has 'inputs' as a JSON list"),
    (body({**request(1, 0), "x": {"a": 1}}), "input 'x' is a JSON object"),
    (body({**request(1, 0), "x": [[{"a": 1}, 2, 3, 4]]}), "input 'x' holds nulls, objects"),
    (body({**request(1, 0), "x": [[None, 2, 3, 4]]}), "input 'x' holds nulls"),
    (body({**request(1, 0), "x": [["a", "b", "c", "d"]]}), "input 'x' holds strings"),
    (body({**request(1, 0), "x": [[1, 2, 3, 4], [1, 2]]}), "input 'x' is not a rectangular"),
    (
        body({**request(1, 0), "x": [[True, False, True, False]]}),
        "input 'x' is float32: expected numbers, got true/false",
    ),
    (body({**request(1, 0), "x": [[1e39, 0, 0, 0]]}), "input 'x' is float32: a finite value overflows it"),
    (body({**request(1, 0), "n": [1.5]}), "input 'n' is int32: expected integers"),
    (body({**request(1, 0), "n": [2**31]}), r"input 'n' is int32: a value is outside \[-2147483648, 2147483647\]"),
    (body({**request(1, 0), "n": [2**70]}), "integers beyond 64 bits"),
    (body({**request(1, 0), "h": [[1e39, 0]]}), "input 'h' is bfloat16: a finite value overflows it"),
    (body({**request(1, 0), "nope": [1]}), r"unknown input 'nope'; the model takes x: float32\[batch, 4\]"),
    (body({"x": request(1, 0)["x"]}), "missing input 'n'"),
    (body({**request(1, 0), "x": [1, 2, 3, 4]}), "input 'x' has shape"),  # no batch dimension
    (body({**request(1, 0), "x": [[1, 2, 3]]}), "dim 1 must be 4"),
    (body({**request(2, 0), "n": [1]}), "inputs disagree on the batch dimension"),
    (body({**request(1, 0), "x": []}), "input 'x' has shape"),
]


@pytest.mark.anyio
async def test_http_400_names_the_problem(replica: NPUModel) -> None:
    for raw, problem in BAD_REQUESTS:
        status, payload = await replica.respond(raw, {"x-request-id": "req-1"})
        assert status == 400, (raw[:80], payload)
        assert set(payload) == {"error", "request_id"} and payload["request_id"] == "req-1"
        assert re.search(problem, payload["error"]), (problem, payload["error"])
    assert replica.batcher.statistics().requests == 0  # nothing bad was queued, let alone run
    status, payload = await replica.respond(body(request(1, 0)), {"content-length": "12abc"})
    assert status == 400 and "Content-Length" in payload["error"]
    # the parser alone, as the app uses it
    with pytest.raises(Exception, match="unknown input"):
        parse_inputs(body({"q": 1}), replica.graph.inputs)


@pytest.mark.anyio
async def test_http_405_and_413(replica: NPUModel) -> None:
    status, payload = await replica.respond(b"", {}, method="GET")
    assert status == 405 and "POST" in payload["error"]
    assert replica._max_body_bytes == DEFAULT_MAX_BODY_BYTES
    replica.reconfigure({"max_body_bytes": 1000})
    big = body(request(40, 0))
    assert len(big) > 1000
    status, payload = await replica.respond(big)
    assert status == 413 and "1000" in payload["error"]
    # declared too big: refused on the header alone (the app does not read such a body)
    status, payload = await replica.respond(b"", {"content-length": str(60 * 2**20)})
    assert status == 413 and str(60 * 2**20) in payload["error"]
    small = body(request(1, 0))
    assert len(small) <= 1000
    status, _ = await replica.respond(small, {"content-length": str(len(small))})
    assert status == 200
    assert replica.batcher.statistics().requests == 1  # the 413s never reached the batcher
    with pytest.raises(ValueError, match="max_body_bytes"):
        replica.reconfigure({"max_body_bytes": 0, "max_delay_ms": 5})
    assert replica._max_body_bytes == 1000 and replica.batcher.config.max_delay_ms == 0  # nothing changed


@pytest.mark.anyio
async def test_http_503_when_the_replica_sheds() -> None:
    m = NPUModel(serve_model(), streams=1, max_batch_size=8, max_delay_ms=60_000, max_pending=1)
    try:
        held_inputs = request(1, 1)
        answers: list[tuple[int, dict[str, Any]]] = []
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                answers.append(await m.respond(body(held_inputs)))

            tg.start_soon(first)
            with anyio.fail_after(10):
                while m.info()["pending"] != 1:  # noqa: ASYNC110 - waits for the first request to queue
                    await anyio.sleep(0.001)
            status, payload = await m.respond(body(request(1, 2)))  # one too many: shed at once
            assert status == 503 and "at capacity" in payload["error"], payload
            m.reconfigure({"max_delay_ms": 0})  # the held request's batch leaves now
        assert answers[0][0] == 200
        check_outputs(held_inputs, answers[0][1]["outputs"])

        m.reconfigure({"max_delay_ms": 60_000, "request_timeout_s": 0.05, "max_pending": None})
        status, payload = await m.respond(body(request(1, 3)))
        assert status == 503 and "request_timeout_s" in payload["error"]
        assert m.batcher.statistics().timed_out == 1

        m.reconfigure({"max_delay_ms": 0, "request_timeout_s": None})
        await m.session.load(m.graph)
        assert _sim.lib.aa_sim_inject_fault(m.session.streams[0].handle, 1, 507015) == 0
        status, payload = await m.respond(body(request(1, 4)))
        assert status == 503 and "DeviceError" in payload["error"], payload
        status, payload = await m.respond(body(request(1, 5)))  # the replaced stream serves again
        assert status == 200

        m.batcher.close()
        status, payload = await m.respond(body(request(1, 6)))
        assert status == 503 and "shutting down" in payload["error"]
    finally:
        m.session.close()


@pytest.mark.anyio
async def test_http_500_only_for_our_failures_with_the_request_id_logged(caplog: pytest.LogCaptureFixture) -> None:
    m = NPUModel(unsplittable_model(), max_delay_ms=0)
    try:
        with caplog.at_level(logging.ERROR, logger="ascend_async.ray_serve"):
            status, payload = await m.respond(body({"x": [[1, 2, 3, 4]]}), {"x-request-id": "rid-500"})
        assert status == 500 and payload["request_id"] == "rid-500" and "rid-500" in payload["error"]
        assert "cannot split" not in payload["error"]  # the details go to the log, not to the client
        assert any("rid-500" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        m.session.close()


@pytest.mark.anyio
async def test_http_500_for_a_bug_gets_a_fresh_request_id(
    replica: NPUModel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(replica.batcher, "run", broken)
    with caplog.at_level(logging.ERROR, logger="ascend_async.ray_serve"):
        status, payload = await replica.respond(body(request(1, 0)))
    assert status == 500 and len(payload["request_id"]) == 32
    assert "a bug of ours" not in payload["error"]
    assert any(payload["request_id"] in r.getMessage() for r in caplog.records)


def test_bad_serving_limits_are_refused() -> None:
    for kwargs, what in (
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_pending": 0}, "max_pending"),
        ({"request_timeout_s": float("inf")}, "request_timeout_s"),
    ):
        with pytest.raises(ValueError, match=what):
            NPUModel(serve_model(), **kwargs)


# ------------------------------------------------------------------------------------------------
# With Ray


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'ray\[serve\]' .*from a clone: pip install '\.\[ray\]'"):
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


class Cluster:
    """The module's one local Ray cluster with Serve on ``port``; ``logs`` is its logs folder."""

    def __init__(self, ray: Any, serve: Any, port: int, logs: Path) -> None:
        self.ray, self.serve, self.port, self.logs = ray, serve, port, logs

    def http(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
        """One request on a fresh connection: the status, the JSON answer and the headers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {}), resp.headers
        finally:
            conn.close()

    def raw(self, path: str, head: dict[str, str], chunks: list[bytes] | None = None) -> tuple[int, dict[str, Any]]:
        """A POST whose headers are sent, then only ``chunks`` (chunked encoding; none: no body
        at all, whatever Content-Length says), then the answer is read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest("POST", path)
            for k, v in head.items():
                conn.putheader(k, v)
            conn.endheaders()
            for c in chunks or []:
                conn.send(b"%x\r\n%s\r\n" % (len(c), c))
            if chunks is not None:
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One Ray start for the module (Ray is slow on 2 cores): two NPU resources, two sim devices
    per worker process; Ray hands one to each NPU replica through ASCEND_RT_VISIBLE_DEVICES
    ("0" or "1"), which the sim maps onto its logical device 0."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (CI installs it)")
    serve = require_serve()
    env = {"ASCEND_ASYNC_BACKEND": "sim", "ASCEND_ASYNC_SIM_DEVICES": "2"}
    ctx = ray.init(
        num_cpus=4,
        resources={"NPU": 2},
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield Cluster(ray, serve, port, Path(ctx.address_info["session_dir"]) / "logs")
        serve.shutdown()
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
    assert not ray.is_initialized()


ray_test = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own imports (pydantic v1-style fields)


@pytest.mark.slow
@pytest.mark.timeout(300)
@ray_test
def test_two_replicas_each_own_an_npu_and_batch_http_requests(cluster: Cluster) -> None:
    serve = cluster.serve
    model = (files("ascend_async.models") / "mlp.onnx").read_bytes()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(48)]
    with aa.Session() as s:  # the reference: unbatched runs here
        g = s.add_graph(model)
        want = [s.run_sync(g, {"x": x})["y"] for x in xs]

    app = npu_app(model, num_replicas=2, max_batch_size=16, max_delay_ms=2, ray_actor_options={"num_cpus": 0})
    handle = serve.run(app, name="npu", route_prefix="/mlp")
    url = f"http://127.0.0.1:{cluster.port}/mlp"
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

    # the Python handle path, and a clear 400 for a request without the batch dimension
    out = handle.infer.remote({"x": xs[0]}).result()
    np.testing.assert_allclose(out["y"], want[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(urllib.error.HTTPError) as bad:
        _post(url, {"inputs": {"x": xs[0][0].tolist()}})
    assert bad.value.code == 400 and "without the batch dimension" in json.loads(bad.value.read())["error"]

    serve.delete("npu")
    assert "npu" not in serve.status().applications


@pytest.mark.slow
@pytest.mark.timeout(300)
@ray_test
def test_each_http_status_over_real_http(cluster: Cluster) -> None:
    """200, 400 (bad JSON, empty body, nested objects, wrong name, shape, dtype), 405, 413 (on
    Content-Length alone, and on a chunked body past the cap), 503 (the replica sheds) and 500
    (a failure of ours, its request id in the answer and in the replica's log), each through
    Serve's HTTP proxy. The replicas ask for no NPU (the two are the other test's)."""
    serve = cluster.serve
    opts = {"npus_per_replica": 0, "ray_actor_options": {"num_cpus": 0}}
    edge = serve.run(
        npu_app(
            serve_model().SerializeToString(), name="edge", max_batch_size=8, max_delay_ms=0, max_pending=1, **opts
        ),
        name="edge",
        route_prefix="/edge",
    )
    json_type = {"Content-Type": "application/json"}

    inputs = request(3, 0)
    status, payload, headers = cluster.http("POST", "/edge", body(inputs), json_type)
    assert status == 200, payload
    check_outputs(inputs, payload["outputs"])

    for raw, problem in [
        (b'{"inputs": {"x": [[1, 2', "not valid JSON"),
        (b"", "empty body"),
        (body({**request(1, 0), "x": {"a": [1, 2, 3, 4]}}), "input 'x' is a JSON object"),
        (body({**request(1, 0), "nope": [1]}), "unknown input 'nope'"),
        (body({**request(1, 0), "x": [[1, 2, 3]]}), "dim 1 must be 4"),
        (body({**request(1, 0), "n": [0.5]}), "input 'n' is int32: expected integers"),
        (body({**request(1, 0), "x": [["a", "b", "c", "d"]]}), "input 'x' holds strings"),
    ]:
        status, payload, headers = cluster.http("POST", "/edge", raw, json_type)
        assert status == 400 and problem in payload["error"], (raw[:60], status, payload)
        assert payload["request_id"] == headers["X-Request-ID"]  # Serve's request id

    status, payload, headers = cluster.http("GET", "/edge")
    assert status == 405 and headers["Allow"] == "POST"

    # 413: a declared 60 MB body is refused on its header, before a byte of it is sent
    status, payload = cluster.raw("/edge", {"Content-Length": str(60 * 2**20), **json_type})
    assert status == 413 and str(60 * 2**20) in payload["error"]
    # and a chunked body (no Content-Length) is read only up to the cap
    chunk = b" " * 2**16
    status, payload = cluster.raw(
        "/edge", {"Transfer-Encoding": "chunked", **json_type}, [chunk] * (DEFAULT_MAX_BODY_BYTES // len(chunk) + 1)
    )
    assert status == 413 and str(DEFAULT_MAX_BODY_BYTES) in payload["error"]

    # 503: one request waits at the replica (a batch leaves only when full), the next is shed
    edge.reconfigure.remote({"max_delay_ms": 60_000}).result()
    held = request(1, 1)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(cluster.http, "POST", "/edge", body(held), json_type)
        wait_until(
            lambda: first.done() or edge.info.remote().result()["pending"] == 1,
            "the first request queues",
            timeout=60,
            poll=0.05,
        )
        assert not first.done(), "the first request was answered instead of waiting"
        status, payload, headers = cluster.http("POST", "/edge", body(request(1, 2)), json_type)
        assert status == 503 and "at capacity" in payload["error"] and headers["Retry-After"] == "1"
        edge.reconfigure.remote({"max_delay_ms": 0}).result()  # the held request's batch leaves
        status, payload, _ = first.result(timeout=60)
    assert status == 200
    check_outputs(held, payload["outputs"])
    serve.delete("edge")

    # 500: a model whose output has no batch rows cannot be split; the answer says only the
    # request id, the replica's log has it with the traceback
    serve.run(
        npu_app(unsplittable_model().SerializeToString(), name="broken", max_delay_ms=0, **opts),
        name="broken",
        route_prefix="/broken",
    )
    status, payload, headers = cluster.http("POST", "/broken", body({"x": [[1, 2, 3, 4]]}), json_type)
    rid = payload.get("request_id")
    assert status == 500 and rid == headers["X-Request-ID"] and rid in payload["error"], payload
    wait_until(
        lambda: any(rid in f.read_text(errors="replace") for f in cluster.logs.rglob("*") if f.is_file()),
        f"request id {rid} in the logs under {cluster.logs}",
        poll=0.2,
    )
    serve.delete("broken")
