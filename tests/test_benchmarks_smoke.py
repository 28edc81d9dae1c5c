"""Smoke run of the benchmark command on the tiny artifact: output files and fields, never a time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_report(tiny_artifact, tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--artifacts", f"fp32={tiny_artifact}", f"copy={tiny_artifact}",
         "--workloads", "short,latency", "--rounds", "2", "--repeats", "1", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["threads"] == 1 and result["meta"]["rounds"] == 2
    assert result["meta"]["workloads"]["short"]["texts"] == 64
    for name in ("fp32", "copy"):
        entry = result["summary"][name]
        assert entry["variant"] == "fp32" and entry["size_mb"] > 0
        short, latency = entry["workloads"]["short"], entry["workloads"]["latency"]
        assert short["tokens_per_s"] > 0 and short["texts_per_s"] > 0 and short["peak_rss_mb"] > 0
        assert "vs_fp32_onnx" in short
        assert latency["p95_ms"] >= latency["p50_ms"] > 0
        assert len(result["raw"][name]["short"]) == 2  # one fresh process per round
    assert result["summary"]["fp32"]["workloads"]["short"]["vs_fp32_onnx"] == 1.0
    md = (out / "results.md").read_text()
    assert "| fp32 |" in md and "| copy |" in md and "latency p50 / p95 ms" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_rejects_bad_arguments(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--artifacts", str(tmp_path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "not an artifact folder" in run.stderr
