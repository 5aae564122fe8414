"""``ascend-async bench`` / ``bench compare`` / ``doctor`` on the sim, with tiny counts.

No assertion here depends on how fast the machine is: counts that the schedule fixes (an open
loop's intended sends), bounds that hold by construction (warm-up length), formats and files.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ascend_async as aa
from ascend_async.bench import main
from ascend_async.bench._cli import _parser, config_from_args
from ascend_async.bench._config import BEHIND_NS, BenchConfig
from ascend_async.bench._drivers import Schedule
from ascend_async.bench._measure import LevelResult, LevelState, percentiles
from ascend_async.bench._options import BenchError, parse_levels, parse_percentiles, parse_threshold, parse_warmup
from ascend_async.bench._progress import Progress
from ascend_async.models import path as model_path

pytestmark = pytest.mark.timeout(90)

FAST = ["--quiet", "--count", "20", "--warmup", "2"]


def bench(*args: str) -> int:
    return main(["bench", *args])


def run_json(tmp_path: Path, *args: str, name: str = "r.json") -> dict[str, Any]:
    j = tmp_path / name
    rc = bench(*args, "--json", str(j))
    assert rc == 0, rc
    doc: dict[str, Any] = json.loads(j.read_text())
    return doc


# -- the basics ---------------------------------------------------------------------------------


def test_bench_demo_json_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = tmp_path / "r.csv"
    doc = run_json(
        tmp_path, "--demo", "--quiet", "--count", "40", "--warmup", "5", "--concurrency", "1,4", "--csv", str(c)
    )
    out = capsys.readouterr().out
    assert "backend: sim" in out and "SIMULATED" in out
    assert doc["environment"]["backend"] == "sim" and doc["error"] is None
    assert [r["value"] for r in doc["results"]] == [1.0, 4.0]
    for r in doc["results"]:
        assert r["runs"] >= 40 and r["throughput"] > 0
        lat = r["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        # One measured run in 16 is profiled: per-stage percentiles from device events.
        stages = r["stages_ms"]
        assert set(stages) >= {"h2d", "compute", "d2h", "submit", "queued"}
        assert stages["compute"]["p50"] > 0 and stages["compute"]["p50"] <= stages["compute"]["p99"]
        assert r["stage_samples"] >= 2 and r["device_bound_per_s"] > 0
    # The table, its stage breakdown and the legend under them.
    assert "p50 ms" in out and "loop lag p99 ms" in out and "where a run's time goes" in out
    assert "loop lag p99: how late" in out and "--explain" in out
    rows = list(csv.DictReader(c.read_text().splitlines()))
    assert len(rows) == 2 and rows[0]["backend"] == "sim" and float(rows[1]["runs_per_s"]) > 0
    assert float(rows[0]["compute_p50_ms"]) > 0
    for row in rows:  # rounded: ms to the microsecond, rates to 0.1/s
        for key in ("p50_ms", "p99_ms", "max_ms", "compute_p99_ms"):
            assert len(row[key].split(".")[1]) == 3, (key, row[key])
        assert len(row["runs_per_s"].split(".")[1]) == 1


@pytest.mark.parametrize(("mode", "loop"), [("thread", "trio"), ("callback", "uvloop"), ("sync", "asyncio")])
def test_bench_modes(mode: str, loop: str, tmp_path: Path) -> None:
    doc = run_json(
        tmp_path,
        str(model_path("mlp")),
        *FAST,
        "--concurrency",
        "1" if mode == "sync" else "2",
        "--mode",
        mode,
        "--loop",
        loop,
        "--shape",
        "x:2,64",
    )
    assert doc["run"]["inputs"] == {"x": "float32[2, 64]"}
    assert doc["run"]["loop"] == loop and doc["run"]["mode"] == mode
    assert doc["results"][0]["runs"] >= 20


def test_explain_and_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--explain") == 0
    text = capsys.readouterr().out
    for term in ("nearest-rank", "loop lag p99", "missed", "OVERLOAD", "device-bound/s", "--warmup"):
        assert term in text
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "backend: sim" in out and "CANN module built" in out and "devices visible" in out


def test_progress_shows_warmup_then_measuring(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--demo", "--duration", "0.3", "--warmup", "0.2s", "--concurrency", "2") == 0
    err = capsys.readouterr().err
    assert "c=2 warming up" in err and "(not measured)" in err
    assert "c=2 measured" in err and "runs" in err  # one summary line per level off a terminal


def test_progress_uses_the_tables_percentiles() -> None:
    """The progress line and the table use one definition (nearest rank over all measured runs)."""
    from rich.console import Console

    cfg = BenchConfig(model="m", percentiles=(50.0, 90.0, 99.0))
    state = LevelState(cfg, LevelResult("concurrency", 4))
    rng = np.random.default_rng(1)
    state.lat = [int(v) for v in rng.integers(100_000, 9_000_000, size=3001)]
    state.start_measuring(state.t_start - 1_000_000_000)
    line = Progress(Console(file=io.StringIO(), force_terminal=False), "c=4", cfg.percentiles).line(state)
    want = percentiles(state.lat, cfg.percentiles)
    for key in ("p50", "p90", "p99"):
        assert f"{key} {want[key]:.3f}" in line, (key, line)
    assert "3,001 runs" in line


# -- open loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_open_loop_counts_follow_the_schedule(loop: str, tmp_path: Path) -> None:
    doc = run_json(tmp_path, "--demo", "--quiet", "--rate", "200", "--duration", "0.5", "--warmup", "5", "--loop", loop)
    r = doc["results"][0]
    assert r["load"] == "rate" and r["runs"] == r["sent"]
    # The schedule fixes the intended sends in the window: 200/s x 0.5 s.
    assert 99 <= r["intended"] <= 101
    assert r["intended"] == r["sent"] + r["missed"]
    assert r["max_in_flight"] == 128


@pytest.mark.slow
def test_open_loop_poisson_schedule_is_seeded(tmp_path: Path) -> None:
    args = ("--demo", "--quiet", "--rate", "400", "--poisson", "--duration", "0.3", "--warmup", "3")
    a = run_json(tmp_path, *args, name="a.json")["results"][0]
    b = run_json(tmp_path, *args, name="b.json")["results"][0]
    c = run_json(tmp_path, *args, "--seed", "7", name="c.json")["results"][0]
    assert a["intended"] == b["intended"]  # same seed, same schedule, whatever the machine did
    assert c["intended"] != a["intended"]


def test_open_loop_overload_is_reported_and_ends_on_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One run may be in flight, 50,000 are asked per second: the sender cannot keep up. It
    neither blocks its loop nor builds a backlog; the window closes on schedule, and every
    scheduled send is accounted for as sent or missed."""
    doc = run_json(
        tmp_path,
        "--demo",
        "--quiet",
        "--rate",
        "50000,60000",
        "--duration",
        "0.2",
        "--warmup",
        "0.05s",
        "--max-in-flight",
        "1",
    )
    out = capsys.readouterr().out
    assert len(doc["results"]) == 1  # a rate sweep stops at the first overloaded level
    r = doc["results"][0]
    assert r["overloaded"] is True
    assert r["intended"] == r["sent"] + r["missed"]
    assert 9_990 <= r["intended"] <= 10_010  # 50,000/s x 0.2 s, fixed by the schedule
    assert r["missed"] > 0 and r["runs"] == r["sent"] < r["intended"]
    assert r["loop_lag_ms"]  # the loop kept running its other tasks (the lag probe sampled)
    assert "OVERLOAD" in out and "warning: OVERLOAD at 50000/s" in out
    assert "sweep stopped: 50000/s is overloaded" in out and "find the knee with --rate" in out
    assert doc["run"]["stopped"].startswith("50000/s is overloaded")


@pytest.mark.slow
def test_open_loop_host_overload_keeps_no_backlog(tmp_path: Path) -> None:
    """Slots to spare, but more sends asked than the loop can make: points more than BEHIND_NS
    overdue are missed, so latency from the intended time stays near one run's time instead of
    growing with the level (a backlog would put the p50 near half the window, 500 ms here)."""
    doc = run_json(
        tmp_path, "--demo", "--quiet", "--rate", "400000", "--duration", "1", "--warmup", "0.1s",
        "--max-in-flight", "4096",
    )  # fmt: skip
    r = doc["results"][0]
    assert r["overloaded"] is True and r["missed"] > 0
    assert r["intended"] == r["sent"] + r["missed"]
    assert r["runs"] > 100  # skipping never starves the sends (a skip does not chase the clock)
    assert BEHIND_NS <= 50_000_000 and r["latency_ms"]["p50"] < 150


def _naive_skip(sched: Schedule, now: float, end: float | None) -> int:
    n = 0
    while sched.t <= now and (end is None or sched.t < end):
        n += 1
        sched.advance()
    return n


@pytest.mark.parametrize("poisson", [False, True])
def test_schedule_skip_matches_passing_points_one_by_one(poisson: bool) -> None:
    """``Schedule.skip`` (O(blocks), on the loop) passes exactly the points a one-by-one loop
    would, across Poisson blocks and the window's end."""
    import random

    for trial in range(100):
        fast, slow = Schedule(1e6, 5000.0, poisson, trial), Schedule(1e6, 5000.0, poisson, trial)
        rnd = random.Random(trial)
        for _ in range(20):
            if rnd.random() < 0.4:
                fast.advance()
                slow.advance()
                continue
            reach = 2e9 if rnd.random() < 0.2 else 5e6  # sometimes several Poisson blocks
            now = fast.t + rnd.uniform(-1e5, reach)
            end = None if rnd.random() < 0.5 else fast.t + rnd.uniform(0, 4e6)
            assert fast.skip(now, end) == _naive_skip(slow, now, end)
            assert fast.t == pytest.approx(slow.t, rel=1e-12, abs=1e-3)


# -- option syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "integer", "want"),
    [
        ("1:64:x2", True, [1, 2, 4, 8, 16, 32, 64]),
        ("1:40:x2", True, [1, 2, 4, 8, 16, 32]),
        ("100:500:+100", False, [100, 200, 300, 400, 500]),
        ("100:300:100", False, [100, 200, 300]),
        ("1,2,8:32:x2", True, [1, 2, 8, 16, 32]),
        ("2:4", True, [2, 3, 4]),
        ("250.5", False, [250.5]),
        ("4,4,1", True, [4, 1]),
    ],
)
def test_parse_levels(text: str, integer: bool, want: list[float]) -> None:
    assert parse_levels(text, integer=integer, option="--x") == [float(v) for v in want]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1:64:x1", "never reaches END"),
        ("64:1:x2", "below START"),
        ("1:64:y2", "xN to multiply"),
        ("a:64:x2", "not a number"),
        ("1::x2", "START:END:STEP"),
        ("1:2:3:4", "START:END:STEP"),
        ("0", "> 0"),
        ("1,,2", "expected numbers"),
        ("1.5", "whole number"),
        ("1:100000:+1", "more than 200 levels"),
    ],
)
def test_parse_levels_errors(text: str, fragment: str) -> None:
    with pytest.raises(BenchError, match="--concurrency") as exc:
        parse_levels(text, integer=True, option="--concurrency")
    assert fragment in str(exc.value)


def test_parse_small_options() -> None:
    assert parse_warmup("2s").seconds == 2.0 and parse_warmup("500ms").seconds == 0.5
    assert parse_warmup("20").runs == 20 and parse_warmup("0").runs == 0
    assert parse_percentiles("p99.9,50,95") == (50.0, 95.0, 99.9)
    assert parse_threshold("10").ms == 10 and parse_threshold("10").percentile == 99
    assert parse_threshold("p95:2.5").percentile == 95 and parse_threshold("p95:2.5").ms == 2.5
    for bad, fn in [
        ("2x", parse_warmup),
        ("1.5", parse_warmup),
        ("50,abc", parse_percentiles),
        ("100", parse_percentiles),
        ("p95:", parse_threshold),
        ("0", parse_threshold),
    ]:
        with pytest.raises(BenchError):
            fn(bad)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--concurrency", "1:64:y2"], "--concurrency '1:64:y2'"),
        (["--rate", "100:50:+10"], "--rate '100:50:+10'"),
        (["--rate", "100", "--concurrency", "4"], "exclude each other"),
        (["--warmup", "2x"], "--warmup"),
        (["--percentiles", "50,101"], "--percentiles"),
        (["--latency-threshold", "fast"], "--latency-threshold"),
        (["--rate", "100", "--mode", "sync"], "--mode sync"),
        (["--concurrency", "1,4", "--mode", "sync"], "--mode sync is a closed loop of one"),
        (["--demo", "resnet"], "no bundled model"),
        (["--batch-delay", "2"], "--batch-delay sets the batcher: it needs --batch-max"),
        (["--batch-preferred", "4"], "--batch-preferred sets the batcher"),
        (["--batch-max", "8", "--batch-preferred", "4,x"], "--batch-preferred '4,x'"),
        (["--batch-max", "4", "--batch-preferred", "8"], "--batch-preferred 8 is larger than --batch-max 4"),
        (["--batch-max", "4", "--batch-size", "8"], "each request carries 8 rows"),
        (["--batch-max", "4", "--mode", "thread"], "--batch-max runs requests with await"),
        (["--devices", "0,1", "--mode", "sync"], "--devices runs requests with await"),
        (["--devices", "0,0"], "device 0 is named twice"),
        (["--devices", "0,1", "--device", "1"], "exclude each other"),
        (["--sim-timing", "2,0.1,3"], "--sim-timing '2,0.1,3'"),
        (["--sim-timing", "-1"], "--sim-timing '-1'"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    full = args if "--demo" in args else ["--demo", *args]
    assert bench(*full, "--quiet", "--count", "5") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err


def test_concurrency_range_sweeps_each_level(tmp_path: Path) -> None:
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1:4:x2")
    assert [r["value"] for r in doc["results"]] == [1.0, 2.0, 4.0]


def test_rate_range_sweeps_each_level(tmp_path: Path) -> None:
    doc = run_json(tmp_path, "--demo", "--quiet", "--rate", "100:300:+100", "--duration", "0.2", "--warmup", "2")
    assert [r["value"] for r in doc["results"]] == [100.0, 200.0, 300.0]
    assert all(r["load"] == "rate" for r in doc["results"])


def test_percentile_choice_and_few_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = tmp_path / "r.csv"
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--percentiles", "50,95,99.9", "--csv", str(c))
    out = capsys.readouterr().out
    assert "p95 ms" in out and "p99.9 ms" in out and "p90 ms" not in out
    r = doc["results"][0]
    assert {"p50", "p95", "p99.9"} <= set(r["latency_ms"])
    # 20 runs: p50 is fine, p95 and p99.9 rest on fewer than 10 runs beyond them.
    assert r["few_samples"] == ["p95", "p99.9"]
    assert "few samples*" in out and "warning: few samples (marked *): p95, p99.9 at c=1 (20 runs)" in out
    assert f"{r['latency_ms']['p99.9']:.3f}*" in out
    header = c.read_text().splitlines()[0].split(",")
    assert {"p50_ms", "p95_ms", "p99.9_ms"} <= set(header) and "p90_ms" not in header


@pytest.mark.parametrize("spec", ["0.000001", "p50:0.000001"])
def test_latency_threshold_stops_the_sweep(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1,2,4", "--latency-threshold", spec)
    assert len(doc["results"]) == 1
    key = "p99" if ":" not in spec else "p50"
    assert doc["run"]["stopped"].startswith(f"c=1: {key} ")
    assert "sweep stopped: c=1" in capsys.readouterr().out
    assert doc["config"]["latency_threshold"]["ms"] == 1e-06


def test_time_and_count_warmup(tmp_path: Path) -> None:
    r = run_json(tmp_path, "--demo", "--quiet", "--count", "10", "--warmup", "0.15s", "--concurrency", "1")
    assert r["results"][0]["warmup_s"] >= 0.15  # measuring starts only after the warm-up time
    assert r["config"]["warmup"] == {"seconds": 0.15, "runs": None}
    r = run_json(tmp_path, "--demo", "--quiet", "--count", "10", "--warmup", "7", "--concurrency", "1")
    assert r["results"][0]["warmup_runs"] == 7
    r = run_json(tmp_path, "--demo", "--quiet", "--count", "10", "--warmup", "0", "--concurrency", "1")
    assert r["results"][0]["warmup_runs"] == 0


# -- input data, outputs, batch -----------------------------------------------------------------


def _mlp_out(x: np.ndarray) -> np.ndarray:
    with aa.Session(0) as s:
        g = s.add_graph(model_path("mlp"))
        y: np.ndarray = s.run_sync(g, {"x": x})["y"]
        return y


def test_inputs_from_npy_and_saved_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outdir = tmp_path / "out"
    doc = run_json(
        tmp_path,
        "--demo",
        *FAST,
        "--concurrency",
        "2",
        "--input",
        str(tmp_path / "x.npy"),
        "--save-outputs",
        str(outdir),
    )
    assert doc["run"]["inputs"] == {"x": "float32[4, 64]"} and doc["run"]["batch"] == 4
    r = doc["results"][0]
    assert r["batch"] == 4 and r["inferences_per_s"] == pytest.approx(4 * r["throughput"], rel=1e-4)
    out = capsys.readouterr().out
    assert "inferences/s" in out and f"outputs saved: {outdir / 'x.npz'}" in out
    with np.load(outdir / "x.npz") as saved:
        np.testing.assert_allclose(saved["y"], _mlp_out(x), rtol=1e-5)


def test_inputs_from_npz_folder_zeros_and_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((2, 64)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "one.npz", x=a)
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--input", str(tmp_path / "one.npz"))
    assert doc["run"]["inputs"] == {"x": "float32[2, 64]"}
    sets = tmp_path / "sets"
    sets.mkdir()
    np.savez(sets / "a.npz", x=a)
    np.savez(sets / "b.npz", x=b)
    outdir = tmp_path / "o"
    doc = run_json(tmp_path, "--demo", *FAST, "--input", str(sets), "--concurrency", "1", "--save-outputs", str(outdir))
    assert "2 input sets, used in turn" in doc["run"]["notes"]
    with np.load(outdir / "b.npz") as saved:
        np.testing.assert_allclose(saved["y"], _mlp_out(b), rtol=1e-5)
    per_input = tmp_path / "per_input"
    per_input.mkdir()
    np.save(per_input / "x.npy", a)
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--input", str(per_input))
    assert doc["run"]["input_source"] == str(per_input)
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--input", "zeros", "--save-outputs", str(outdir))
    assert doc["run"]["input_source"] == "zeros"
    with np.load(outdir / "zeros.npz") as saved:
        np.testing.assert_allclose(saved["y"], _mlp_out(np.zeros((1, 64), np.float32)), rtol=1e-5)


def test_named_input_file(tmp_path: Path) -> None:
    np.save(tmp_path / "data.npy", np.ones((3, 64), np.float32))
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--input", f"x={tmp_path / 'data.npy'}")
    assert doc["run"]["inputs"] == {"x": "float32[3, 64]"} and doc["run"]["batch"] == 3


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: str(d / "missing.npy"), "no such file"),
        (lambda d: (np.savez(d / "w.npz", y=np.ones((1, 64), np.float32)), str(d / "w.npz"))[1], "not inputs"),
        (lambda d: (np.save(d / "f64.npy", np.ones((1, 64))), str(d / "f64.npy"))[1], "float64"),
        (lambda d: (np.save(d / "s.npy", np.ones((1, 63), np.float32)), str(d / "s.npy"))[1], "[1, 63]"),
        (lambda d: ((d / "bad.npy").write_bytes(b"junk"), str(d / "bad.npy"))[1], "cannot read"),
        (lambda d: ((d / "empty").mkdir(), str(d / "empty"))[1], "x.npy"),
        (lambda d: ((d / "t.txt").write_text("1"), str(d / "t.txt"))[1], "expected a .npy"),
        (lambda d: "nope=x.npy", "no such file"),
    ],
)
def test_bad_input_data(make: Any, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = make(tmp_path)
    assert bench("--demo", *FAST, "--concurrency", "1", "--input", spec) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --input") and fragment in err
    if "not inputs" in fragment:
        assert "x: float32[batch, 64]" in err  # names what the model wants


def test_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1", "--batch-size", "8")
    assert doc["run"]["inputs"] == {"x": "float32[8, 64]"}
    r = doc["results"][0]
    assert r["batch"] == 8 and r["inferences_per_s"] == pytest.approx(8 * r["throughput"], rel=1e-4)
    assert "inferences/s" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.ones((4, 64), np.float32))
    assert bench("--demo", *FAST, "--input", str(tmp_path / "x.npy"), "--batch-size", "8") == 2
    assert "--batch-size 8" in capsys.readouterr().err


# -- results: JSON to stdout, reproducibility, compare ------------------------------------------


def test_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--demo", *FAST, "--concurrency", "1", "--json", "-") == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is the JSON alone; the tables went to stderr
    assert doc["results"][0]["runs"] >= 20
    assert "p50 ms" in captured.err
    assert not Path("-").exists()


def test_summary_json_reproduces_the_run(tmp_path: Path) -> None:
    doc = run_json(
        tmp_path,
        "--demo",
        "cnn",
        "--quiet",
        "--count",
        "12",
        "--warmup",
        "0.05s",
        "--concurrency",
        "1:2:x2",
        "--percentiles",
        "50,95",
        "--streams",
        "3",
        "--seed",
        "5",
    )
    assert doc["schema"] == "ascend-async-bench/2"
    assert doc["model"]["name"] == "cnn.onnx" and len(doc["model"]["sha256"]) == 64
    import shlex

    argv = shlex.split(doc["command"])
    assert argv[0] == "ascend-async"
    again = config_from_args(_parser().parse_args(argv[1:])).as_dict()
    assert json.loads(json.dumps(again)) == doc["config"]
    assert doc["config"]["levels"] == [1.0, 2.0] and doc["config"]["streams"] == 3


def test_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1,2", name="a.json")
    slower = json.loads(json.dumps(doc))
    for r in slower["results"]:
        r["throughput"] /= 2
        r["latency_ms"]["p99"] *= 3
    slower["config"]["streams"] = 4
    slower["results"].append({**slower["results"][0], "value": 8.0})
    (tmp_path / "b.json").write_text(json.dumps(slower))
    capsys.readouterr()
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert main(["bench", "compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "(-50.0%)" in out and "(+200.0%)" in out
    assert "streams: 2 vs 4" in out and "only in B: c=8" in out
    assert main(["bench", "compare", a, b, "--max-regression", "10"]) == 1
    out = capsys.readouterr().out
    assert "regression: c=1: runs/s -50.0%" in out and "regression: c=2: p99 +200.0%" in out
    assert main(["bench", "compare", a, a, "--max-regression", "10"]) == 0


def test_compare_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    (tmp_path / "y.json").write_text("not json")
    assert main(["bench", "compare", str(tmp_path / "missing.json"), str(tmp_path / "x.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "not an ascend-async bench summary" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "y.json"), str(tmp_path / "x.json")]) == 2
    assert "not a JSON file" in capsys.readouterr().err
    assert main(["bench", "compare", "one.json"]) == 2


# -- the plot -----------------------------------------------------------------------------------


def _png_info(data: bytes) -> tuple[int, int, dict[str, str]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, text = 8, (0, 0), {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            text[k.decode()] = v.decode("latin-1")
        elif kind == b"zTXt":
            k, _, v = body.partition(b"\0")
            text[k.decode()] = zlib.decompress(v[1:]).decode("latin-1")
        elif kind == b"iTXt":
            k, _, rest = body.partition(b"\0")
            flag, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, v = rest.partition(b"\0")
            text[k.decode()] = (zlib.decompress(v) if flag else v).decode()
        pos += 12 + length
    return size[0], size[1], text


def test_plot_latency_throughput_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curve.png"
    doc = run_json(tmp_path, "--demo", *FAST, "--concurrency", "1,2,4", "--plot", str(png))
    assert f"plot: {png}" in capsys.readouterr().out
    width, height, text = _png_info(png.read_bytes())
    assert (width, height) == (800, 500)
    series = json.loads(text["Description"])
    assert series["labels"] == ["c=1", "c=2", "c=4"]
    results = doc["results"]
    assert series["x"] == pytest.approx([r["throughput"] for r in results], rel=1e-5)
    assert series["p50"] == pytest.approx([r["latency_ms"]["p50"] for r in results], rel=1e-5)
    assert series["p99"] == pytest.approx([r["latency_ms"]["p99"] for r in results], rel=1e-5)


def test_plot_checks_matplotlib_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert bench("--demo", *FAST, "--plot", "p.png") == 2
    captured = capsys.readouterr()
    assert "pip install 'ascend-async[plot]'" in captured.err
    assert "runs/s" not in captured.out  # nothing was run
    assert not Path("p.png").exists()


# -- failures -----------------------------------------------------------------------------------


def test_bench_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert bench(str(bad), "--quiet", "--count", "5") == 2
    assert "cannot load model" in capsys.readouterr().err
    assert bench(str(tmp_path / "missing.onnx")) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["x:1,2,3", "x1,64", "x:a,64", "nope:1,64", "x:2,65"])
def test_bench_bad_shape(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--demo", "--quiet", "--count", "5", "--shape", spec) == 2
    assert "--shape" in capsys.readouterr().err


def test_bench_device_fault_keeps_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = aa.Session.run
    calls = [0]

    async def flaky(self: aa.Session, *args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] > 40:
            raise aa.DeviceError(507011, "RunGraphWithStreamAsync", "injected fault")
        return await real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(aa.Session, "run", flaky)
    j = tmp_path / "r.json"
    rc = bench("--demo", *FAST, "--concurrency", "1,2", "--json", str(j))
    assert rc == 1
    assert "injected fault" in capsys.readouterr().err
    doc = json.loads(j.read_text())
    assert doc["results"][0]["runs"] >= 20 and doc["results"][0]["error"] is None
    assert "injected fault" in doc["results"][1]["error"] and "injected fault" in doc["error"]


def test_bench_default_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--demo", "--quiet", "--count", "10", "--warmup", "1", "--mode", "sync") == 0
    assert bench("--demo", "--quiet", "--count", "10", "--warmup", "1") == 0
    out = capsys.readouterr().out
    assert "c=64" in out


# -- serving: the batcher, the device pool, the sim's timing model ------------------------------


@pytest.mark.parametrize("rows", [1, 2])
def test_batcher_batches_requests_and_counts_rows(
    rows: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--demo", "--quiet", "--count", "300", "--warmup", "30", "--concurrency", "16", "--batch-max", "8"]
    doc = run_json(tmp_path, *args, "--batch-delay", "2", "--batch-size", str(rows))
    out = capsys.readouterr().out
    assert doc["config"]["batch_max"] == 8 and doc["config"]["batch_delay_ms"] == 2.0
    assert doc["run"]["batcher"]["max_batch_size"] == 8 and doc["run"]["batch"] == rows
    r = doc["results"][0]
    b = r["batcher"]
    sizes = {int(k): v for k, v in b["batch_sizes"].items()}
    # 16 requests outstanding, at most one batch per stream (2) in flight: the rest wait and join
    # the next batch, so batches hold several requests; never more than 8 rows.
    assert max(sizes) > rows and max(sizes) <= 8
    assert all(k % rows == 0 for k in sizes)  # whole requests of `rows` rows each
    assert b["batches"] == sum(sizes.values()) > 0 and b["mean_batch"] > rows
    assert 0 < b["fill_ratio"] <= 1 and b["fill_ratio"] == pytest.approx(b["mean_batch"] / 8, rel=1e-3)
    assert 0 <= b["queue_delay_ms"]["p50"] <= b["queue_delay_ms"]["p99"] <= b["queue_delay_ms"]["max"]
    # runs/s counts requests; inferences/s counts their rows
    assert r["batch"] == rows and r["inferences_per_s"] == pytest.approx(rows * r["throughput"], rel=1e-4)
    assert r["runs"] >= 300 and r["errors"] == 0
    assert "inferences/s" in out and "batcher c=16:" in out and "queue delay p50" in out


def test_batcher_preferred_sizes(tmp_path: Path) -> None:
    args = ["--demo", "--quiet", "--count", "200", "--warmup", "20", "--concurrency", "16", "--batch-max", "32"]
    doc = run_json(tmp_path, *args, "--batch-delay", "50", "--batch-preferred", "4")
    assert doc["run"]["batcher"]["preferred_batch_sizes"] == [4]
    sizes = {int(k): v for k, v in doc["results"][0]["batcher"]["batch_sizes"].items()}
    # 16 queued one-row requests would fill 16 rows; a batch leaves as soon as it reaches 4
    assert max(sizes, key=lambda k: sizes[k]) == 4 and max(sizes) <= 16


def _static_model(path: Path, batch: int) -> Path:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "static", [x], [y])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_batch_max_above_a_static_batch_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _static_model(tmp_path / "static4.onnx", 4)
    assert bench(str(model), "--quiet", "--count", "5", "--batch-max", "8") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-max 8: ") and "static (4)" in err and "max_batch_size <= 4" in err
    # Within the static size, each request carries the model's 4 rows, and they are counted.
    doc = run_json(tmp_path, str(model), "--quiet", "--count", "20", "--warmup", "2", "--batch-max", "4")
    r = doc["results"][0]
    assert r["batch"] == 4 and r["inferences_per_s"] == pytest.approx(4 * r["throughput"], rel=1e-4)
    assert set(r["batcher"]["batch_sizes"]) == {"4"}


def test_devices_pool_with_batcher_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # conftest gives the test process 4 sim devices
    args = ["--demo", "--quiet", "--count", "200", "--warmup", "20", "--concurrency", "16", "--devices", "all"]
    doc = run_json(tmp_path, *args, "--batch-max", "8", "--batch-delay", "0.5")
    out = capsys.readouterr().out
    assert doc["run"]["devices"] == [0, 1, 2, 3] and doc["config"]["devices"] == "all"
    r = doc["results"][0]
    assert set(r["device_runs"]) == {"0", "1", "2", "3"} and sum(r["device_runs"].values()) > 0
    assert r["batcher"]["batches"] > 0 and doc["run"]["batcher"]["max_concurrent_batches"] == 8  # 4 x 2 streams
    assert "devices: all (DevicePool)" in out and "devices c=16: 0: " in out and "batches completed" in out
    assert "device: 0 " not in out
    # the summary JSON still reproduces the run's configuration
    import shlex

    argv = shlex.split(doc["command"])
    assert json.loads(json.dumps(config_from_args(_parser().parse_args(argv[1:])).as_dict())) == doc["config"]


@pytest.mark.slow
def test_devices_pool_in_a_subprocess_with_two_sim_devices(tmp_path: Path) -> None:
    import os
    import subprocess

    env = dict(os.environ, ASCEND_ASYNC_SIM_DEVICES="2", ASCEND_ASYNC_BACKEND="sim")
    env.pop("ASCEND_RT_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "ascend_async.bench", "bench", "--demo", "--quiet", "--concurrency", "8"]
    cmd += ["--count", "400", "--warmup", "20", "--json", "-"]
    done = subprocess.run([*cmd, "--devices", "0,1"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    r = doc["results"][0]
    assert doc["run"]["devices"] == [0, 1] and r["batcher"] is None
    # the pool sends each run to the least-loaded device: with 8 in flight both get work
    assert r["device_runs"]["0"] > 0 and r["device_runs"]["1"] > 0
    assert r["device_runs"]["0"] + r["device_runs"]["1"] >= 400
    # a device the sim does not have: exit 2, naming it and the visible ones
    done = subprocess.run([*cmd, "--devices", "0,2"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "device 2 is not visible; this process sees 2 device(s): 0, 1" in done.stderr
    assert "ASCEND_ASYNC_SIM_DEVICES=2" in done.stderr


def test_devices_not_visible_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--demo", "--quiet", "--count", "5", "--devices", "0,9") == 2
    err = capsys.readouterr().err
    assert "device 9 is not visible; this process sees 4 device(s): 0, 1, 2, 3" in err
    assert bench("--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "ASCEND_ASYNC_SIM_DEVICES=4 ascend-async bench --demo cnn --devices all" in text
    for flag in ("--batch-max", "--batch-delay", "--batch-preferred", "--devices", "--sim-timing"):
        assert flag in text


def test_sim_timing_sets_a_floor_and_is_reset(tmp_path: Path) -> None:
    base = ["--demo", "--quiet", "--count", "10", "--warmup", "1", "--concurrency", "1"]
    doc = run_json(tmp_path, *base, "--sim-timing", "30,1", "--batch-size", "4")
    assert doc["run"]["sim_timing"] == {"ms_per_run": 30.0, "ms_per_sample": 1.0}
    assert doc["config"]["sim_timing"] == [30.0, 1.0]
    assert doc["results"][0]["latency_ms"]["p50"] >= 34.0  # every run lasts >= 30 ms + 4 x 1 ms
    doc = run_json(tmp_path, *base)  # the timing model is off again after the run
    assert doc["results"][0]["latency_ms"]["p50"] < 30.0
