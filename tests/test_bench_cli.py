"""Smoke tests of ``ascend-async bench`` / ``doctor`` on the sim, with tiny counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ascend_async.bench import main
from ascend_async.models import path as model_path

pytestmark = pytest.mark.timeout(60)


def test_bench_demo_json_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j, c = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(
        [
            "bench",
            "--demo",
            "--quiet",
            "--count",
            "30",
            "--warmup",
            "5",
            "--concurrency",
            "1,4",
            "--json",
            str(j),
            "--csv",
            str(c),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "backend: sim" in out and "SIMULATED" in out
    doc = json.loads(j.read_text())
    assert doc["environment"]["backend"] == "sim"
    assert doc["error"] is None
    assert [r["value"] for r in doc["results"]] == [1.0, 4.0]
    for r in doc["results"]:
        assert r["runs"] >= 30 and r["throughput"] > 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        # One run in 16 is profiled: device stages from events, and the compute-only rate.
        stages = r["stages_ms"]
        assert set(stages) >= {"h2d", "compute", "d2h", "submit", "queued"}
        assert stages["compute"] > 0 and r["compute_only_throughput"] > 0
    rows = list(csv.DictReader(c.read_text().splitlines()))
    assert len(rows) == 2 and rows[0]["backend"] == "sim" and float(rows[1]["throughput"]) > 0
    assert float(rows[0]["compute_ms_p50"]) > 0


@pytest.mark.parametrize(("mode", "loop"), [("thread", "trio"), ("callback", "asyncio"), ("sync", "asyncio")])
def test_bench_modes(mode: str, loop: str, tmp_path: Path) -> None:
    j = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            str(model_path("mlp")),
            "--quiet",
            "--count",
            "20",
            "--warmup",
            "2",
            "--concurrency",
            "2",
            "--mode",
            mode,
            "--loop",
            loop,
            "--shape",
            "x:2,64",
            "--json",
            str(j),
        ]
    )
    assert rc == 0
    doc = json.loads(j.read_text())
    assert doc["run"]["inputs"] == {"x": "float32[2, 64]"}
    assert doc["results"][0]["runs"] >= 20


def test_bench_open_loop_rate(tmp_path: Path) -> None:
    j = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            "--demo",
            "--quiet",
            "--rate",
            "500",
            "--poisson",
            "--duration",
            "0.3",
            "--warmup",
            "5",
            "--json",
            str(j),
        ]
    )
    assert rc == 0
    res = json.loads(j.read_text())["results"][0]
    assert res["load"] == "rate" and res["runs"] > 50


@pytest.mark.parametrize("spec", ["x:1,2,3", "x1,64", "x:a,64", "nope:1,64", "x:2,65"])
def test_bench_bad_shape(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--demo", "--quiet", "--count", "5", "--shape", spec])
    assert rc != 0
    assert "--shape" in capsys.readouterr().err


def test_bench_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["bench", str(bad), "--quiet", "--count", "5"]) != 0
    assert "cannot load model" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.onnx")]) != 0


def test_bench_plot_without_matplotlib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "bench",
            "--demo",
            "--quiet",
            "--count",
            "10",
            "--concurrency",
            "1",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert rc != 0 and "matplotlib" in capsys.readouterr().err
    else:
        assert rc == 0 and (tmp_path / "p.png").exists()


def test_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "backend: sim" in out and "CANN module built" in out and "devices visible" in out


def test_bench_device_fault_keeps_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ascend_async as aa

    real = aa.Session.run
    calls = [0]

    async def flaky(self: aa.Session, *args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] > 40:
            raise aa.DeviceError(507011, "RunGraphWithStreamAsync", "injected fault")
        return await real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(aa.Session, "run", flaky)
    j = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            "--demo",
            "--quiet",
            "--count",
            "20",
            "--warmup",
            "2",
            "--concurrency",
            "1,2",
            "--json",
            str(j),
        ]
    )
    assert rc != 0
    assert "injected fault" in capsys.readouterr().err
    doc = json.loads(j.read_text())
    assert doc["results"][0]["runs"] >= 20 and doc["results"][0]["error"] is None
    assert "injected fault" in doc["results"][1]["error"] and "injected fault" in doc["error"]


def test_bench_default_sweep_sync(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--demo", "--quiet", "--count", "10", "--warmup", "1", "--mode", "sync"]) == 0
    assert main(["bench", "--demo", "--quiet", "--count", "10", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "c=64" in out
