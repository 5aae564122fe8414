"""Issue 19: GE options validated at three levels, static gears (and the gear batcher), warm-up,
the Chrome trace, the data dump and ais_bench's report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from helpers import add_model_proto, sim_stats

import ascend_async as aa
from ascend_async import _ge
from ascend_async._ge_options import LEVELS, OPTIONS, gears_to_options, parse_gears, table_markdown, validate
from ascend_async.bench import main
from ascend_async.bench._measure import ais_summary

pytestmark = pytest.mark.timeout(90)

GEARS = {"x": [(1, 4), (8, 4), (32, 4)], "y": [(1, 4), (8, 4), (32, 4)]}
DOC_PAGES = {
    "precision_tuning.md",
    "operator_and_graph_compilation.md",
    "experimental_parameters.md",
    "memory_management.md",
    "precision_comparison.md",
    "Profiling.md",
    "dynamic_shape.md",
    "basic_functions.md",
}


# -- 1. options --------------------------------------------------------------------------------


def test_table_entries_are_complete() -> None:
    for name, o in OPTIONS.items():
        assert name == o.name and name.startswith("ge.")
        assert o.levels and set(o.levels) <= set(LEVELS), name
        assert o.doc in DOC_PAGES, name
        assert o.values is not None or (o.check is not None and o.form), name
    # facts from hicann/ge options_params (生效级别): the levels of the options
    assert OPTIONS["ge.exec.precision_mode_v2"].levels == ("global", "session", "graph")
    assert OPTIONS["ge.aicoreNum"].levels == ("global", "session")
    assert OPTIONS["ge.exec.enableDump"].levels == ("global", "session")
    assert OPTIONS["ge.exec.profilingMode"].levels == ("global",)
    assert OPTIONS["ge.inputShape"].levels == ("session", "graph")
    assert "| `ge.oo.level` | global/session/graph | `O1`, `O3` |" in table_markdown()


def test_unknown_key_names_the_closest() -> None:
    before = sim_stats()["sessions"]
    with pytest.raises(
        ValueError,
        match=r"unknown GE option 'ge.exec.precison_mode_v2'.*closest known key is "
        r"'ge.exec.precision_mode_v2'",
    ):
        aa.Session(options={"ge.exec.precison_mode_v2": "fp16"})
    with pytest.raises(ValueError, match=r"closest known key is 'ge.aicoreNum'"):
        aa.Session(options={"ge.aicorenum": "12|10"})
    assert sim_stats()["sessions"] == before  # refused before anything was created


def test_bad_value_lists_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"'ge.exec.precision_mode_v2': 'fp17' is not allowed; allowed: 'fp16', "
        r"'origin', 'cube_fp16in_fp32out', 'mixed_float16'",
    ):
        aa.Session(options={"ge.exec.precision_mode_v2": "fp17"})
    with pytest.raises(ValueError, match=r"'ge.aicoreNum': '12\|0' is not allowed; allowed: \"CUBE\|VECTOR\""):
        aa.Session(options={"ge.aicoreNum": "12|0"})
    for good in ("12|10", "10|", "10"):
        assert validate({"ge.aicoreNum": good}, "session") == {"ge.aicoreNum": good}
    dump = {"ge.exec.enableDump": "1", "ge.exec.dumpPath": "/tmp"}
    with pytest.raises(ValueError, match=r"'ge.exec.dumpStep': '5-2' is not allowed"):  # a new user's finding
        validate({**dump, "ge.exec.dumpStep": "5-2"}, "session")
    assert validate({**dump, "ge.exec.dumpStep": "1|3-4|7-7"}, "session")["ge.exec.dumpStep"] == "1|3-4|7-7"
    with pytest.raises(TypeError, match="values are str"):
        aa.Session(options={"ge.oo.level": 3})
    with pytest.raises(ValueError, match="exclude each other"):
        validate({"ge.exec.precision_mode": "force_fp16", "ge.exec.precision_mode_v2": "fp16"}, "graph")


def test_levels() -> None:
    with pytest.raises(
        ValueError,
        match=r"'ge.exec.profilingMode' is not a session option: GE reads it at the "
        r"global \(ascend_async.set_ge_options\) level",
    ):
        aa.Session(options={"ge.exec.profilingMode": "1"})
    with aa.Session() as s:
        graphs = sim_stats()["graphs"]
        with pytest.raises(ValueError, match=r"'ge.aicoreNum' is not a graph option"):
            s.add_graph(add_model_proto(), options={"ge.aicoreNum": "12|10"})
        with pytest.raises(ValueError, match=r"closest known key is 'ge.oo.level'"):
            s.add_graph(add_model_proto(), options={"ge.oo.levle": "O1"})
        assert sim_stats()["graphs"] == graphs
        s.add_graph(add_model_proto(), options={"ge.oo.level": "O1", "ge.exec.precision_mode_v2": "origin"})
        with pytest.raises(RuntimeError, match="initialized already"):
            aa.set_ge_options({"ge.exec.profilingMode": "0"})
    with pytest.raises(ValueError, match="is not a global option"):
        aa.set_ge_options({"ge.enableSingleStream": "true"})


def test_dump_needs_a_path_and_inherits_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'ge.exec.enableDump' is '1' without 'ge.exec.dumpPath'"):
        aa.Session(options={"ge.exec.enableDump": "1"})
    monkeypatch.setattr(_ge, "_global", {"ge.exec.dumpPath": str(tmp_path)})
    with aa.Session(options={"ge.exec.enableDump": "1"}) as s:
        assert s.ge_options == {"ge.exec.dumpPath": str(tmp_path), "ge.exec.enableDump": "1"}
        st = s.statistics().ge_options
        assert st["ge.exec.enableDump"]["backend"] == "honoured"
    monkeypatch.setattr(_ge, "_global", {"ge.exec.profilingMode": "1"})
    info = aa.backend_info()["ge_options"]
    assert info["global"] == {"ge.exec.profilingMode": "1"}  # type: ignore[index]
    assert info["backend"]["ge.exec.profilingMode"] == "honoured"  # type: ignore[index]
    assert info["backend"]["ge.aicoreNum"] == "recorded"  # type: ignore[index]
    assert info["backend"]["ge.dynamicDims"] == "honoured"  # type: ignore[index]


def test_sim_options_still_work() -> None:
    with pytest.raises(ValueError, match="unknown sim option"):
        aa.Session(options={"sim.nope": "1"})
    with aa.Session(options={"sim.cann_check": "off", "ge.oo.level": "O3"}) as s:
        assert s.ge_options == {"ge.oo.level": "O3"}


# -- 2. gears ----------------------------------------------------------------------------------


def test_gears_as_ge_options() -> None:
    opts = gears_to_options({"x": [(1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)]})
    assert opts == {"ge.inputShape": "x:-1,3,224,224", "ge.dynamicDims": "1;8;32"}
    assert parse_gears(opts["ge.inputShape"], opts["ge.dynamicDims"]) == [
        {"x": (1, 3, 224, 224)},
        {"x": (8, 3, 224, 224)},
        {"x": (32, 3, 224, 224)},
    ]
    # the example of dynamic_shape.md: one value per -1, across inputs in order
    g = parse_gears("data:1,1,40,-1;label:1,-1;mask:-1,-1", "20,20,1,1;40,40,2,2")
    assert g[1] == {"data": (1, 1, 40, 40), "label": (1, 40), "mask": (2, 2)}
    with pytest.raises(ValueError, match="1 gear"):
        validate({"ge.inputShape": "x:-1,4", "ge.dynamicDims": "8"}, "graph")
    with pytest.raises(ValueError, match="has 2 dim"):
        validate({"ge.inputShape": "x:-1,4", "ge.dynamicDims": "1;8,2"}, "graph")
    with pytest.raises(ValueError, match=r"needs 'ge.dynamicDims'"):
        validate({"ge.inputShape": "x:-1,4"}, "session")


@pytest.mark.anyio
async def test_shapes_outside_the_gears_are_refused(anyio_backend: Any) -> None:
    async with aa.Session() as s:
        g = s.add_graph(add_model_proto(), gears=GEARS)
        assert s.gears(g) == GEARS
        x = np.arange(32, dtype=np.float32).reshape(8, 4)
        out = await s.run(g, {"x": x, "y": x})
        np.testing.assert_array_equal(out["z"], x + x)
        submitted = sim_stats()["tasks_submitted"]
        with pytest.raises(
            aa.InputError,
            match=r"input shapes \(x \(3, 4\), y \(3, 4\)\) are not one of the graph's "
            r"gears \(x \(1, 4\), y \(1, 4\); x \(8, 4\)",
        ):
            await s.run(g, {"x": x[:3], "y": x[:3]})
        with pytest.raises(aa.InputError, match="gears"):
            s.run_sync(g, {"x": x[:3], "y": x[:3]})
        assert sim_stats()["tasks_submitted"] == submitted  # nothing reached the device
        # the GE options directly, at graph level and at session level
        g2 = s.add_graph(add_model_proto(), options={"ge.inputShape": "x:-1,4;y:-1,4", "ge.dynamicDims": "2,2;4,4"})
        assert s.gears(g2) == {"x": [(2, 4), (4, 4)], "y": [(2, 4), (4, 4)]}
        with pytest.raises(ValueError, match="already added"):
            s.add_graph(g, gears=GEARS)
        assert s.add_graph(g) is g
        with pytest.raises(ValueError, match="must list every input"):
            s.add_graph(add_model_proto(), gears={"x": [(1, 4), (2, 4)]})
        with pytest.raises(ValueError, match="does not fit"):
            s.add_graph(add_model_proto(), gears={"x": [(1, 5), (2, 5)], "y": [(1, 5), (2, 5)]})
    async with aa.Session(options={"ge.inputShape": "x:-1,4;y:-1,4", "ge.dynamicDims": "1,1;2,2"}) as s:
        g = s.add_graph(add_model_proto())
        with pytest.raises(aa.InputError, match="gears"):
            await s.run(g, {"x": x, "y": x})


@pytest.mark.anyio
async def test_batcher_pads_to_the_smallest_gear(anyio_backend: Any) -> None:
    async with aa.Session() as s:
        g = s.add_graph(add_model_proto(), gears=GEARS)
        b = s.batcher(g, max_delay_ms=0)
        assert b.config.max_batch_size == 32
        with pytest.raises(ValueError, match="largest gear"):
            s.batcher(g, max_batch_size=33)
        rng = np.random.default_rng(0)
        for rows in (3, 3, 3, 9, 1, 32):  # one at a time: each request is its own batch
            x = rng.standard_normal((rows, 4)).astype(np.float32)
            out = await b.run({"x": x, "y": x})
            np.testing.assert_array_equal(out["z"], x + x)
        with pytest.raises(aa.InputError, match="fits none of the graph's gears"):
            await b.run({"x": np.zeros((33, 4), np.float32), "y": np.zeros((33, 4), np.float32)})
        st = b.statistics()
        assert st.rows == 51
        assert st.padded_rows == 3 * 5 + 23 + 0 + 0
        assert st.run_sizes == {1: 1, 8: 3, 32: 2}
        report = await b.warmup()
        assert report.runs == 3 * 2


# -- 3. warm-up --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_warmup_runs_each_gear_on_every_stream(anyio_backend: Any) -> None:
    async with aa.Session(streams=3) as s:
        g = s.add_graph(add_model_proto(), gears=GEARS)
        runs = sim_stats()["graph_runs"]
        report = await s.warmup(g)
        assert report.streams == 3 and report.runs == 9
        assert report.shapes == ({"x": (1, 4), "y": (1, 4)}, {"x": (8, 4), "y": (8, 4)}, {"x": (32, 4), "y": (32, 4)})
        assert sim_stats()["graph_runs"] - runs == 9
        assert report.seconds >= report.load_seconds > 0
        state = s._graphs[id(g)]
        assert state.loaded == set(s.streams)
        # a dynamic graph: given shapes, or compile/load only
        d = s.add_graph(add_model_proto())
        r = await s.warmup(d)
        assert r.runs == 0 and "compiled and loaded only" in r.notes[0]
        r = await s.warmup(d, [{"x": (2, 4), "y": (2, 4)}])
        assert r.runs == 3
        runs = sim_stats()["graph_runs"]
        with pytest.raises(aa.InputError):
            await s.warmup(g, [{"x": (1, 4), "y": (1, 4)}, {"x": (3, 4), "y": (3, 4)}])
        assert sim_stats()["graph_runs"] == runs  # every shape is checked before the first run


@pytest.mark.anyio
async def test_pool_warmup(anyio_backend: Any) -> None:
    async with aa.DevicePool([0], instances=2, streams_per_device=2) as pool:
        g = pool.add_graph(add_model_proto(), gears=GEARS)
        reports = await pool.warmup(g)
        assert [r.runs for r in reports] == [6, 6]


# -- 4. trace ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_trace_structure_and_every_run_once(anyio_backend: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    async with aa.Session(streams=2) as s:
        g = s.add_graph(add_model_proto())
        x = np.ones((4, 4), np.float32)
        await s.run(g, {"x": x, "y": x})  # before the trace: not in it
        b = s.batcher(g, max_delay_ms=0)
        with s.trace(path) as t:
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(s.run, g, {"x": x, "y": x})
            await b.run({"x": x, "y": x})
        with pytest.raises(RuntimeError, match="already"):
            with s.trace(None), s.trace(None):
                pass
    assert t.runs == 21
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    spans = [e for e in events if e["ph"] == "X"]
    for e in spans:
        assert set(e) >= {"name", "ph", "ts", "dur", "pid", "tid", "args"} and e["dur"] >= 0
        assert (e["pid"], e["tid"]) in names
    instants = [e for e in events if e["ph"] == "i"]
    assert {e["name"] for e in instants} == {"resume"}
    per: dict[str, list[int]] = {}
    for e in spans + instants:
        if "run" in e["args"]:
            per.setdefault(e["name"], []).append(e["args"]["run"])
    for stage in ("submit", "H2D", "compute", "D2H", "resume"):
        assert sorted(per[stage]) == list(range(1, 22)), stage  # every run once, in every stage
    for e in spans:
        track = names[(e["pid"], e["tid"])]
        if e["name"] in ("H2D", "compute", "D2H"):
            assert track == f"stream {e['args']['stream']}"
        elif e["name"] in ("submit", "resume"):
            assert track.startswith("loop ")
    batches = [e for e in spans if names[(e["pid"], e["tid"])].startswith("batcher")]
    assert len(batches) == 1 and batches[0]["args"]["rows"] == 4
    # on the sim a run's stages follow each other on the device clock, and no two slices of a
    # track overlap (viewers refuse slices that do not nest)
    by_run = {(e["name"], e["args"].get("run")): e for e in spans}
    for r in range(1, 22):
        h, c = by_run[("H2D", r)], by_run[("compute", r)]
        assert abs(h["ts"] + h["dur"] - c["ts"]) < 1e-6
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in spans:
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for key, ivs in tracks.items():
        ivs.sort()
        for (_, end), (start, _) in itertools.pairwise(ivs):
            assert start >= end - 0.05, (names[key], end, start)  # µs: float32 elapsed times


# -- 5. dump -----------------------------------------------------------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.anyio
async def test_dump_per_run_per_graph(anyio_backend: Any, tmp_path: Path) -> None:
    opts = {"ge.exec.enableDump": "1", "ge.exec.dumpPath": str(tmp_path), "ge.exec.dumpMode": "all"}
    async with aa.Session(options=opts) as s:
        g = s.add_graph(add_model_proto())
        h = s.add_graph(add_model_proto())  # same name: a folder of its own
        xs = [np.full((2, 4), i, np.float32) for i in range(3)]
        for x in xs:
            await s.run(g, {"x": x, "y": x + 1})
        s.run_sync(h, {"x": xs[0], "y": xs[0]})
    assert _names(tmp_path) == ["add", "add_2"]
    assert _names(tmp_path / "add") == ["0.npz", "1.npz", "2.npz"]
    for i, x in enumerate(xs):
        with np.load(tmp_path / "add" / f"{i}.npz") as f:
            assert sorted(f.files) == ["input.x", "input.y", "output.z"]
            np.testing.assert_array_equal(f["input.x"], x)
            np.testing.assert_array_equal(f["output.z"], x + x + 1)
    opts = {"ge.exec.enableDump": "1", "ge.exec.dumpPath": str(tmp_path / "s"), "ge.exec.dumpStep": "1|3-4"}
    async with aa.Session(options=opts) as s:
        g = s.add_graph(add_model_proto())
        for x in [np.full((1, 4), i, np.float32) for i in range(6)]:
            await s.run(g, {"x": x, "y": x})
    assert _names(tmp_path / "s" / "add") == ["1.npz", "3.npz", "4.npz"]
    with np.load(tmp_path / "s" / "add" / "3.npz") as f:
        assert f.files == ["output.z"]  # the default mode: outputs
        np.testing.assert_array_equal(f["output.z"], np.full((1, 4), 6, np.float32))


# -- 6. ais_bench's report ----------------------------------------------------------------------


def test_ais_summary_definitions() -> None:
    compute = [1.0, 2.0, 3.0, 10.0]
    profs = [aa.RunProfile(0.5 * i, c, 0.25, 0.1, None, c + 1) for i, c in enumerate(compute, 1)]
    s = ais_summary(profs, batch=8)
    assert s is not None
    assert s["NPU_compute_time"] == {
        "min": 1.0,
        "max": 10.0,
        "mean": 4.0,
        "median": 2.5,
        "percentile(99%)": pytest.approx(3.0 + 0.97 * 7.0),
    }
    assert s["H2D_latency"]["mean"] == pytest.approx(1.25) and s["D2H_latency"]["max"] == 0.25
    assert s["throughput"] == 1000 * 8 / 4.0
    assert ais_summary([], 1) is None


def test_bench_report_ais_gears_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j, t = tmp_path / "r.json", tmp_path / "t.json"
    rc = main(
        [
            "bench",
            "--demo",
            "--quiet",
            "--count",
            "30",
            "--warmup",
            "2",
            "--concurrency",
            "2",
            "--gears",
            "1,4",
            "--batch-size",
            "4",
            "--report",
            "ais",
            "--trace",
            str(t),
            "--json",
            str(j),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "NPU_compute_time (ms): min = " in out and "percentile(99%) = " in out
    assert "throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(" in out
    doc = json.loads(j.read_text())
    ais = doc["results"][0]["ais"]
    assert ais["batchsize"] == 4 and ais["samples"] >= 30
    assert ais["throughput"] == pytest.approx(1000 * 4 / ais["NPU_compute_time"]["mean"], rel=1e-4)  # JSON rounds
    run = doc["run"]
    assert run["gears"] == {"x": [[1, 64], [4, 64]]}
    assert run["warmup"]["runs"] == 4 and run["trace"] == str(t)
    trace = json.loads(t.read_text())
    assert trace["otherData"]["runs"] >= 30
    # a batch size that is not a gear, without a batcher to pad it: refused before any run
    assert main(["bench", "--demo", "--quiet", "--count", "5", "--gears", "1,4", "--batch-size", "3"]) == 2
    assert "not a gear" in capsys.readouterr().err


def test_readme_options_table_is_current() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert table_markdown() in readme


def test_ray_serve_replica_warms_up_before_ready() -> None:
    from ascend_async.models import path as model_path
    from ascend_async.ray_serve import NPUModel

    runs = sim_stats()["graph_runs"]
    m = NPUModel(str(model_path("mlp")), max_batch_size=8, preferred_batch_sizes=(4,))
    try:
        # compiled and loaded on both streams, and run at 1, 4 and 8 rows on each, before it returned
        assert m.warmup_report.runs == 6 and m.warmup_report.streams == 2
        assert [s["x"] for s in m.warmup_report.shapes] == [(1, 64), (4, 64), (8, 64)]
        assert sim_stats()["graph_runs"] - runs == 6
        assert m.info()["warmup"]["runs"] == 6
    finally:
        m.session.close()


@pytest.mark.anyio
async def test_profiling_mode_traces_every_run(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = {"ge.exec.profilingMode": "1", "ge.exec.profilingOptions": json.dumps({"output": str(tmp_path)})}
    monkeypatch.setattr(_ge, "_global", validate(options, "global"))
    async with aa.Session() as s:
        g = s.add_graph(add_model_proto())
        x = np.ones((2, 4), np.float32)
        for _ in range(3):
            await s.run(g, {"x": x, "y": x})
        with pytest.raises(RuntimeError, match="profilingMode"), s.trace(None):
            pass
    (path,) = _names(tmp_path)
    doc = json.loads((tmp_path / path).read_text())
    assert doc["otherData"]["runs"] == 3
    assert sorted(e["args"]["run"] for e in doc["traceEvents"] if e["name"] == "compute") == [1, 2, 3]


def test_serving_line_counts_padding() -> None:
    from ascend_async.bench._measure import LevelResult
    from ascend_async.bench._report import serving_lines

    b = {
        "batches": 2,
        "batches_per_s": 1.0,
        "mean_batch": 5.0,
        "max_batch_size": 8,
        "fill_ratio": 0.6,
        "batch_sizes": {"3": 1, "7": 1},
        "queue_delay_ms": {},
        "padded_rows": 6,
    }
    (line,) = serving_lines([LevelResult("concurrency", 4, batcher=b)])
    assert line.endswith("; 6 zero rows padded")
    (line,) = serving_lines([LevelResult("concurrency", 4, batcher={**b, "padded_rows": 0})])
    assert "padded" not in line


def test_gear_mistakes_are_named() -> None:
    """A new user's finding: a wrong input name in gears said only that the real input was not
    listed, and a single gear on a dynamic graph said 'a static graph needs no gears'."""
    with aa.Session() as s:
        g = s.add_graph(add_model_proto())  # inputs x, y: [batch, 4]
        with pytest.raises(ValueError, match=r"\['w'\] is not an input; input\(s\) \['y'\] not listed"):
            s.add_graph(add_model_proto(), gears={"x": [(1, 4), (2, 4)], "w": [(1, 4), (2, 4)]})
        with pytest.raises(ValueError, match=r"one gear .* fixes the shapes: give two or more"):
            s.add_graph(add_model_proto(), gears={"x": [(1, 4)], "y": [(1, 4)]})
        assert s.gears(g) is None
