"""Smoke run of the benchmark command on the tiny artifact: output files and fields, never a time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_report(tiny_artifact, tmp_path):
    from quant.cli import main as quant_main

    q4 = tmp_path / "q4_0"   # a fixed level, so the report's level line is known in advance
    assert quant_main(["--in", str(tiny_artifact), "--variant", "q4_0", "--accuracy-level", "0", "--out", str(q4),
                       "-q", "--threads", "1", "--no-check"]) == 0
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--artifacts", f"fp32={tiny_artifact}", f"copy={tiny_artifact}",
         f"q4={q4}", "--workloads", "short,latency", "--rounds", "2", "--repeats", "1", "--threads", "1",
         "--out", str(out)],
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
        fastest = min(t for r in result["raw"][name]["short"] for t in r["times"])
        assert short["best_tokens_per_s"] == result["meta"]["workloads"]["short"]["tokens"] / fastest
        assert short["best_tokens_per_s"] >= short["tokens_per_s"]
        assert latency["p95_ms"] >= latency["p50_ms"] > 0
        assert len(result["raw"][name]["short"]) == 2  # one fresh process per round
    assert result["summary"]["q4"]["variant"] == "q4_0" and result["summary"]["q4"]["accuracy_level"] == "0"
    assert result["summary"]["fp32"]["accuracy_level"] == "–"
    assert result["summary"]["fp32"]["workloads"]["short"]["vs_fp32_onnx"] == 1.0
    assert result["summary"]["fp32"]["workloads"]["short"]["best_vs_fp32_onnx"] == 1.0
    md = (out / "results.md").read_text()
    assert "| fp32 |" in md and "| copy |" in md and "latency p50 / p95 ms" in md
    assert "Best repeat of each system" in md and "| system | short best |" in md
    assert "(1.00×)" in md and ", )" not in md   # no torch in this run: no empty ×torch ratio
    assert "MatMulNBits accuracy level (chosen when each variant was built): q4 0." in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # verdicts can be re-checked later with fidelity numbers measured elsewhere (keyed by folder, as
    # quant.fidelity writes them; a folder the run does not have is left out)
    fid = tmp_path / "fid.json"
    fid.write_text(json.dumps({str(q4): {"variant": "q4_0", "prompts": {"document": {"mean": 0.95, "min": 0.90}}},
                               "x": {"variant": "q8_0", "prompts": {"document": {"mean": 0.9999, "min": 0.9995}}}}))
    rerun = subprocess.run([sys.executable, "-m", "benchmarks.targets", str(out), "--fidelity", str(fid)],
                           capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = json.loads((out / "results.json").read_text())
    assert set(again["meta"]["fidelity"]) == {"q4"} and not again["meta"]["fidelity"]["q4"]["meets"]
    assert again["summary"] == result["summary"]
    rows = {r["target"]: r for r in again["meta"]["targets"]}
    assert rows["fastest variant meeting its fidelity target >= 1.5x fp32 ONNX and torch"]["measured"] == \
        "no variant meets its fidelity target"
    assert "| target | measured | verdict |" in (out / "results.md").read_text()


def test_benchmark_rejects_bad_arguments(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--artifacts", str(tmp_path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "not an artifact folder" in run.stderr


def test_benchmark_keeps_an_earlier_run_unless_forced(tiny_artifact, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.md").write_text("an earlier hour-long run")
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--artifacts", f"fp32={tiny_artifact}", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "already exists; choose another --out or pass --force" in run.stderr
    assert "measuring" not in run.stderr and [p.name for p in out.iterdir()] == ["results.md"]


def test_target_verdicts_on_a_hand_made_run(tmp_path):
    from benchmarks.targets import check, load_fidelity

    def entry(variant, short, long=None, rss=300.0, load=1.0, system="onnx"):
        w = {"short": {"tokens_per_s": short, "peak_rss_mb": rss, "load_s": load}}
        if long:
            w["long"] = {"tokens_per_s": long, "peak_rss_mb": rss, "load_s": load}
        return {"system": system, "variant": variant, "size_mb": 1.0, "workloads": w}

    summary = {"fp32": entry("fp32", 800, 500), "q8_0": entry("q8_0", 950, 520), "q4_0": entry("q4_0", 700, 510, rss=390),
               "w8a8": entry("w8a8", 1600, 900), "torch": entry("sentence-transformers", 700, 400, system="torch")}
    fid = tmp_path / "fid.json"
    fid.write_text(json.dumps({
        "a": {"variant": "q8_0", "prompts": {"document": {"mean": 0.9999, "min": 0.9995}, "query": {"mean": 0.9998, "min": 0.9992}}},
        "b": {"variant": "w8a8", "prompts": {"document": {"mean": 0.9996, "min": 0.9989}, "query": {"mean": 0.9996, "min": 0.9995}}},
    }))
    fidelity = load_fidelity(fid, summary)
    assert fidelity["q8_0"]["meets"] and not fidelity["w8a8"]["meets"] and fidelity["w8a8"]["min"] == 0.9989
    rows = {r["target"]: r for r in check(summary, fidelity)}
    assert not rows["short workload: no variant slower than fp32 ONNX"]["ok"]       # q4_0 0.88x
    assert "q4_0 0.88x" in rows["short workload: no variant slower than fp32 ONNX"]["measured"]
    assert rows["long workload: no variant slower than fp32 ONNX"]["ok"]
    assert rows["q4_0 short workload >= 525 tokens/s"]["ok"]
    assert not rows["q4_0 peak resident memory <= 350 MB (short workload)"]["ok"]
    fastest = rows["fastest variant meeting its fidelity target >= 1.5x fp32 ONNX and torch"]
    # w8a8 is faster but misses its fidelity target, so q8_0 decides: 950/800 = 1.19x -> MISS
    assert not fastest["ok"] and fastest["measured"].startswith("q8_0: 1.19x fp32, 1.36x torch")


def test_fidelity_follows_each_artifact_folder(tmp_path):
    """Two builds of one variant (w8a8 for the host and for x86-amx) keep their own fidelity and peer
    verdicts; a JSON keyed by other names is matched by a variant only one row has."""
    from benchmarks.targets import check_peers, load_fidelity

    def row(variant, path, short, system="onnx"):
        return {"system": system, "variant": variant, "path": str(path), "size_mb": 400.0,
                "workloads": {"short": {"tokens_per_s": short}}}

    host, amx = tmp_path / "host", tmp_path / "amx"
    summary = {"w8a8": row("w8a8", host, 2000), "w8a8 x86-amx": row("w8a8", amx, 2300), "q8_0": row("q8_0", "x", 900),
               "st-onnx int8": row("int8", "st", 2700, system="st-onnx")}

    def fid(mean, low):
        return {"document": {"mean": mean, "min": low}, "query": {"mean": mean, "min": low}}

    raw = {str(host): {"variant": "w8a8", "prompts": fid(0.9998, 0.9994)},
           str(amx / "." / ""): {"variant": "w8a8", "prompts": fid(0.9997, 0.9990)},
           "elsewhere/q8_0": {"variant": "q8_0", "prompts": fid(0.9999, 0.9996)},
           "st-onnx int8": {"variant": "st-onnx int8", "prompts": fid(0.92, 0.38)}}
    fidelity = load_fidelity(raw, summary)
    assert fidelity["w8a8"]["min"] == 0.9994 and fidelity["w8a8 x86-amx"]["min"] == 0.9990
    assert fidelity["q8_0"]["mean"] == 0.9999 and fidelity["st-onnx int8"]["min"] == 0.38
    rows = {r["target"]: r for r in check_peers(summary, fidelity)}
    assert not rows["w8a8 faster than st-onnx int8, short workload"]["ok"]
    assert "2300 vs 2700" in rows["w8a8 x86-amx faster than st-onnx int8, short workload"]["measured"]
    assert rows["w8a8 x86-amx at least as close to fp32 as st-onnx int8 (mean and min cosine)"]["measured"].startswith("0.9997 / 0.9990")
    # two rows of one variant and a JSON that names neither folder: no guess
    assert "w8a8" not in load_fidelity({"other": {"variant": "w8a8", "prompts": fid(0.9, 0.9)}}, summary)


def test_worker_peak_memory_is_its_own_not_the_parents():
    ballast = bytearray(400 * 1024 * 1024)   # this (parent) process now holds 400 MB resident
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    run = subprocess.run([sys.executable, "-c", "from benchmarks.worker import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 5 < float(run.stdout) < 200, run.stdout   # a bare interpreter, not the parent's 400 MB
    del ballast


def test_corpus_benchmark_sizes_shards_for_its_actors():
    """Default shards: six per actor of the largest configuration, so no actor idles on a small corpus."""
    from benchmarks.corpus import CONFIGS, default_rows_per_shard

    assert default_rows_per_shard(600, list(CONFIGS)) == 50        # 2 actors -> 12 shards
    assert default_rows_per_shard(20000, list(CONFIGS)) == 1667
    assert default_rows_per_shard(600, ["local"]) == 100           # one process -> 6 shards
    assert default_rows_per_shard(5, list(CONFIGS)) == 1


def test_workloads_are_cut_with_the_first_folder_that_ships_tokenizer_json(tmp_path):
    """A folder built with --tokenizer sentencepiece has no tokenizer.json: the next one's is used, and a
    run with none says which folder to add."""
    from benchmarks.workloads import tokenizer_json_of

    sp_only, full = tmp_path / "sp", tmp_path / "full"
    sp_only.mkdir()
    full.mkdir()
    (full / "tokenizer.json").write_text("{}")
    assert tokenizer_json_of([sp_only, full]) == full / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="add the fp32 artifact"):
        tokenizer_json_of([sp_only])


def test_workloads_carry_the_token_counts_of_the_tokenizer_that_cut_them(tiny_artifact):
    """The report's tokens/s divide by these counts: each is the model's input length (BOS/EOS included)."""
    from benchmarks.workloads import build_workloads
    from tokenizers import Tokenizer

    tokenizer_json = Path(tiny_artifact) / "tokenizer.json"
    built = build_workloads(tokenizer_json, names=("short", "latency"))
    tok = Tokenizer.from_file(str(tokenizer_json))
    for work in built.values():
        assert work.token_counts == tuple(len(tok.encode(t).ids) for t in work.texts)
        assert len(work.token_counts) == len(work.texts) > 0
