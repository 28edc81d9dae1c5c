"""The benchmark's pure parts around the peers: ceiling arithmetic, peer specs, skip lines, verdicts. No timing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ceiling, peers
from benchmarks.targets import check_peers

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, vendor, fp32, int8", [
    ({"avx512f", "avx2", "fma", "avx512_vnni"}, "AuthenticAMD", 32, 128),    # Zen 4: 512-bit on two 256-bit pipes
    ({"avx512f", "avx2", "fma", "avx512_vnni"}, "GenuineIntel", 64, 256),    # Xeon: two 512-bit FMA units
    ({"avx2", "fma"}, "GenuineIntel", 32, 64),                               # no VNNI: pair products
    ({"avx2", "fma", "avx_vnni"}, "GenuineIntel", 32, 128),
    ({"avx"}, "GenuineIntel", 16, 32),
    ({"asimd", "asimddp"}, "", 16, 64),
    (set(), "", 8, 16),
])
def test_peak_per_cycle_from_flags(flags, vendor, fp32, int8):
    got_fp32, got_int8, why = ceiling.per_cycle(flags, vendor)
    assert (got_fp32, got_int8) == (fp32, int8) and why


def test_peak_is_width_times_cores_times_clock():
    peak = ceiling.machine_peak(cores=2, ghz=3.0, flags={"avx512f", "avx2", "fma", "avx512_vnni"},
                                vendor="AuthenticAMD", measure=False)
    assert peak.fp32_gflops == pytest.approx(2 * 32 * 3.0) and peak.int8_gops == pytest.approx(2 * 128 * 3.0)
    assert peak.clock_source == "given"


def test_amx_adds_a_matrix_int8_peak_beside_the_vector_one():
    flags = {"avx512f", "avx2", "fma", "avx512_vnni", "amx_tile", "amx_int8"}
    peak = ceiling.machine_peak(cores=2, ghz=3.0, flags=flags, vendor="GenuineIntel", measure=False)
    assert peak.int8_gops == pytest.approx(2 * 256 * 3.0)             # VNNI on two 512-bit units
    assert peak.int8_matrix_gops == pytest.approx(2 * 2048 * 3.0)     # AMX: 1,024 multiply-adds per cycle
    assert "AMX" in peak.assumption
    no_amx = ceiling.machine_peak(cores=2, ghz=3.0, flags=flags - {"amx_int8"}, vendor="GenuineIntel", measure=False)
    assert no_amx.int8_matrix_gops == 0 and "AMX" not in no_amx.assumption


def test_nominal_clock_prefers_lscpu_max_then_cpuinfo():
    assert ceiling.nominal_clock_ghz("", "CPU max MHz:  3700.0000\n") == (3.7, "lscpu max MHz")
    ghz, source = ceiling.nominal_clock_ghz("cpu MHz\t\t: 2596.142\n", "")
    assert ghz == pytest.approx(2.596142) and source == "/proc/cpuinfo cpu MHz"
    assert ceiling.nominal_clock_ghz("", "") == (None, "unknown")


@pytest.mark.parametrize("length, window", [(1, 3), (5, 3), (10, 3), (30, 257), (600, 257), (2000, 257), (7, None)])
def test_attention_pairs_match_brute_force(length, window):
    brute = sum(1 for i in range(length) for j in range(length) if window is None or abs(i - j) < window)
    assert ceiling._pairs(length, window) == brute


def test_text_flops_counts_linear_attention_and_heads():
    shape = ceiling.ModelShape(token_macs=100, text_macs=7, attn_width=4, windows=(None, 2))
    # 10 tokens: linear 10 x 100, attention 2 x 4 x (100 + 28) pairs, heads 7; FLOPs are 2 x MACs
    assert ceiling.text_flops(shape, 10) == 2 * (1000 + 2 * 4 * (100 + 28) + 7)


def test_model_shape_from_the_fp32_graph(tiny_artifact):
    shape = ceiling.model_shape(tiny_artifact)
    assert shape.token_macs > 0 and shape.text_macs > 0 and shape.attn_width > 0
    assert shape.windows and all(w is None or w > 0 for w in shape.windows)


def test_parse_peers():
    assert peers.parse_peers([]) == {"llama.cpp": ["F16", "Q8_0", "Q4_0", "Q4_K_M"], "st-onnx": ["fp32", "int8"]}
    assert peers.parse_peers(["all"]) == peers.parse_peers([])
    assert peers.parse_peers(["llama.cpp:q4_0,Q8_0", "st-onnx:int8"]) == {"llama.cpp": ["Q4_0", "Q8_0"],
                                                                        "st-onnx": ["int8"]}
    with pytest.raises(ValueError, match="unknown peer 'ollama'; choose from llama.cpp, st-onnx"):
        peers.parse_peers(["ollama"])
    with pytest.raises(ValueError, match="unknown llama.cpp variant 'Q5_0'"):
        peers.parse_peers(["llama.cpp:Q5_0"])


def test_int8_config_follows_the_cpu():
    assert peers.int8_config({"avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert peers.int8_config({"avx512f"}) == "avx512"
    assert peers.int8_config({"avx2"}) == "avx2"
    assert peers.int8_config({"asimd"}) == "arm64"


def test_missing_peers_are_skipped_with_the_setup_command(tmp_path, monkeypatch):
    real = peers.importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None if name == "llama_cpp" else real(name))
    systems, skips = peers.peer_systems(peers.parse_peers([]), cache=tmp_path, flags={"avx2"})
    assert systems == [] and len(skips) == 2   # one line per peer that is not installed, not per variant
    assert skips[0].startswith("skipping llama.cpp: llama-cpp-python is not installed")
    assert "scripts/setup-peers.sh llama.cpp" in skips[0]
    assert skips[1].startswith("skipping st-onnx: no venv at") and "scripts/setup-peers.sh st-onnx" in skips[1]


def test_installed_peers_become_systems(tmp_path, monkeypatch):
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: object())
    (tmp_path / "gguf").mkdir()
    peers.gguf_path(tmp_path, "Q4_0").write_bytes(b"x" * 1000)
    python = peers.st_onnx_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    onnx = tmp_path / "st-onnx" / "onnx"
    onnx.mkdir(parents=True)
    (onnx / "model.onnx").write_bytes(b"x" * 3000)
    (onnx / "model_qint8_avx2.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "st-onnx" / "tokenizer.json").write_bytes(b"x" * 500)
    systems, skips = peers.peer_systems(peers.parse_peers(["llama.cpp:Q4_0,Q8_0", "st-onnx"]), cache=tmp_path,
                                        flags={"avx2"})
    assert [s["name"] for s in systems] == ["llama.cpp Q4_0", "st-onnx fp32", "st-onnx int8"]
    assert skips == [f"skipping llama.cpp Q8_0: no {peers.gguf_path(tmp_path, 'Q8_0')}; {peers.SETUP['llama.cpp']}"]
    fp32, int8 = systems[1], systems[2]
    assert fp32["python"] == str(python) and fp32["options"] == {"file_name": "onnx/model.onnx"}
    assert int8["options"] == {"file_name": "onnx/model_qint8_avx2.onnx"}
    # each size counts its own model file and the shared files, not the other variant's
    assert fp32["size_mb"] == pytest.approx(3500 / 1e6) and int8["size_mb"] == pytest.approx(1500 / 1e6)


def test_peer_verdicts():
    def entry(system, variant, short, long, size):
        return {"system": system, "variant": variant, "size_mb": size,
                "workloads": {"short": {"tokens_per_s": short}, "long": {"tokens_per_s": long}}}

    summary = {"q4_0": entry("onnx", "q4_0", 900, 600, 219), "w8a8": entry("onnx", "w8a8", 1500, 800, 439),
               "fast": entry("onnx", "w8a8_fast", 2100, 1000, 362),
               "llama.cpp Q4_0": entry("llama.cpp", "Q4_0", 500, 650, 240),
               "st-onnx int8": entry("st-onnx", "int8", 1000, 700, 330)}
    fidelity = {"q4_0": {"mean": 0.99, "min": 0.977}, "llama.cpp Q4_0": {"mean": 0.98, "min": 0.93},
                "w8a8": {"mean": 0.9998, "min": 0.9992}, "st-onnx int8": {"mean": 0.999, "min": 0.9995}}
    rows = {r["target"]: r for r in check_peers(summary, fidelity)}
    assert rows["q4_0 faster than llama.cpp Q4_0, short workload"]["ok"]
    assert not rows["q4_0 faster than llama.cpp Q4_0, long workload"]["ok"]
    assert rows["q4_0 at least as close to fp32 as llama.cpp Q4_0 (mean and min cosine)"]["ok"]
    assert rows["q4_0 no larger than llama.cpp Q4_0"]["ok"]
    assert not rows["w8a8 at least as close to fp32 as st-onnx int8 (mean and min cosine)"]["ok"]   # min lower
    assert "w8a8 no larger than st-onnx int8" not in rows
    # a build of w8a8_fast (by its manifest variant) gets the same pair; the integer path is judged on
    # speed and fidelity, not size
    assert rows["fast faster than st-onnx int8, short workload"]["ok"]
    assert "fast no larger than st-onnx int8" not in rows
    assert not any("Q8_0" in t or "Q4_K_M" in t for t in rows)   # pairs without the peer are left out


def test_peers_need_the_fp32_artifact(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--peers", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "--peers needs the fp32 artifact" in run.stderr


def test_unknown_peer_is_an_error(tiny_artifact, tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--artifacts", f"fp32={tiny_artifact}", "--peers",
                          "vllm", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and "unknown peer 'vllm'" in run.stderr


def test_run_with_missing_peers_skips_them_and_reports_fidelity_and_ceiling(tiny_artifact, tmp_path):
    env = {**__import__("os").environ, "PEERS_CACHE": str(tmp_path / "empty")}
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--artifacts", f"fp32={tiny_artifact}",
                          f"copy={tiny_artifact}", "--peers", "st-onnx", "--workloads", "short", "--rounds", "1",
                          "--repeats", "1", "--threads", "1", "--cpu-ghz", "2.0", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "skipping st-onnx: no venv at" in run.stderr
    result = json.loads((out / "results.json").read_text())
    c = result["meta"]["ceiling"]
    assert c["ghz"] == 2.0 and c["clock_source"] == "given" and c["cores"] == 1
    assert c["fp32_gflops"] == pytest.approx(c["fp32_per_cycle"] * 2.0)
    short = result["summary"]["copy"]["workloads"]["short"]
    assert short["gflops"] == pytest.approx(result["meta"]["workloads"]["short"]["gflop"] / short["seconds"])
    assert short["of_fp32_peak"] == pytest.approx(short["gflops"] / c["fp32_gflops"])
    # the copy of fp32 is measured for fidelity like any variant: identical vectors
    assert result["meta"]["fidelity"]["fp32"]["min"] > 0.99999
    assert (out / "fidelity.json").is_file()
    md = (out / "results.md").read_text()
    assert "| copy | " in md and "Ceiling: 1 cores x 2.00 GHz (given)" in md and "share of peak" in md


def test_profile_sums_kernel_time_and_matmul_flops_per_encode():
    from benchmarks.profile import node_flops, summarise_profile

    mm = {"op_name": "MatMulNBits", "input_type_shape": [{"float": [4, 30, 768]}],
          "output_type_shape": [{"float": [4, 30, 1152]}]}
    assert node_flops("MatMulNBits", mm) == 2 * 4 * 30 * 1152 * 768
    assert node_flops("Gelu", {"op_name": "Gelu"}) == 0
    events = [{"cat": "Node", "name": "a_kernel_time", "dur": 3000, "args": mm},
              {"cat": "Node", "name": "a_kernel_time", "dur": 1000, "args": mm},
              {"cat": "Node", "name": "b_kernel_time", "dur": 500, "args": {"op_name": "Gelu"}},
              {"cat": "Node", "name": "a_fence_before", "dur": 9999, "args": mm},
              {"cat": "Session", "name": "model_run", "dur": 9999}]
    ops = summarise_profile(events, repeats=2)
    assert ops["MatMulNBits"]["ms"] == pytest.approx(2.0) and ops["Gelu"]["ms"] == pytest.approx(0.25)
    assert ops["MatMulNBits"]["gflop"] == pytest.approx(2 * 4 * 30 * 1152 * 768 / 1e9)


def test_profile_drops_the_warm_up_encode_whatever_its_number_of_runs():
    """An encode of three length batches is three model runs: the warm-up's three go, not one
    (counting runs as encodes reported a third of the kernel time)."""
    from benchmarks.profile import last_encodes, summarise_profile

    events = []
    for encode in range(3):            # a warm-up and two timed encodes, three runs each
        for run in range(3):
            ts = 100 * encode + 10 * run
            events += [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 5},
                       {"cat": "Node", "name": "n_kernel_time", "ts": ts + 1, "dur": 1000 * (encode + 1),
                        "args": {"op_name": "Gelu"}}]
    kept = last_encodes(events, encodes=3, keep=2)
    assert min(e["ts"] for e in kept) == 100
    assert summarise_profile(kept, repeats=2)["Gelu"]["ms"] == pytest.approx(3 * (2 + 3) / 2)
    assert last_encodes(events, encodes=3, keep=3) == events


def test_peak_cells_name_the_ceiling_each_row_is_held_against():
    from benchmarks.report import _peak_cell

    assert _peak_cell({"of_fp32_peak": 0.8}) == "80 % of fp32"
    assert _peak_cell({"of_fp32_peak": 1.5, "of_int8_peak": 0.375}) == "38 % of int8, 150 % of fp32"
    # the integer GEMM on an AMX CPU: its matrix-unit ceiling first, the vector one beside it
    assert _peak_cell({"of_fp32_peak": 2.0, "of_int8_peak": 0.5, "of_matrix_peak": 0.0625}) == (
        "6.2 % of AMX int8, 50 % of vector int8, 200 % of fp32")
    # the per-op profile writes its shares the same way (one owner: benchmarks.ceiling.share_text)
    from benchmarks.ceiling import Peak
    from benchmarks.profile import _table

    peak = Peak(cores=2, ghz=1.0, clock_source="given", fp32_per_cycle=100, int8_per_cycle=400, assumption="",
                int8_matrix_per_cycle=4000)
    ops = {"MatMulIntegerToFloat": {"ms": 1000.0, "gflop": 400.0}, "MatMul": {"ms": 1000.0, "gflop": 50.0}}
    table = _table("w8a8", ops, peak, int8=False)
    assert "| MatMulIntegerToFloat | 1000.0 | 50 % | 400 | 5.0 % of AMX int8, 50 % of vector int8 |" in table
    assert "| MatMul | 1000.0 | 50 % | 50 | 25 % of fp32 |" in table


def test_a_crashed_worker_is_named_with_its_signal(tmp_path):
    """A native crash (llama.cpp's AMX path segfaulted on one CPU) leaves no traceback: the error names the signal."""
    from benchmarks.process import call_worker

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(0o755)
    system = {"name": "llama.cpp Q8_0", "system": "llama.cpp", "path": str(tmp_path), "python": str(fake)}
    with pytest.raises(RuntimeError, match=r"llama\.cpp Q8_0 / embed failed \(killed by SIGSEGV\)"):
        call_worker(system, {"mode": "embed"}, 1)
