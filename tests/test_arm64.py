"""arm64 tier: the tiny artifact and its four quantized variants run under qemu-user as arm64 CPUs
(``-cpu max`` with dot product and i8mm; a Cortex-A53, plain Armv8.0) with the registry's aarch64
wheels, and their vectors agree with the same artifacts run on this x86 host.

Runs only when the root from scripts/setup-arm64.sh exists (skipped with a banner otherwise); about
two minutes. It runs scripts/check-arm64.sh's code as a subprocess and reads its --json output.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quant.cli import main as quant_main

pytestmark = pytest.mark.arm64
REPO = Path(__file__).resolve().parents[1]

# Measured on the tiny model (rtn, accuracy level 4, 8-bit w8a8 activations; 13 texts x query and
# document prompts; onnxruntime 1.32.0; AMD EPYC host; 2026-12-04), mean / min cosine:
#   arm64 vs the same artifact on x86   -cpu max                 -cpu cortex-a53
#     fp32                              1.000000 / 1.000000      1.000000 / 1.000000
#     q8_0                              0.999999 / 0.999996      0.999935 / 0.999739
#     q4_0                              0.999820 / 0.999521      0.999922 / 0.999838
#     e4_a8_f4_p4                       0.999892 / 0.999803      0.999921 / 0.999834
#     w8a8                              1.000000 / 0.999999      1.000000 / 0.999999
# and arm64 vs x86 fp32 within 0.0007 (mean) / 0.004 (min) of what the same variant gets on x86.
# (The tiny random model is far less quantization-friendly than the real one, so the real targets,
# e.g. q4_0 >= 0.99, do not apply to it; it checks that arm64 computes what x86 computes.)
SAME_MIN = {"fp32": 0.99999, "q8_0": 0.999, "q4_0": 0.998, "e4_a8_f4_p4": 0.998, "w8a8": 0.9999}
FP32_DROP_MEAN, FP32_DROP_MIN = 0.003, 0.015


@pytest.fixture(scope="module")
def arm64_result(tiny_artifact, tmp_path_factory) -> dict:
    parent = tmp_path_factory.mktemp("arm64") / "variants"
    assert quant_main(["--in", str(tiny_artifact), "--variant", "all", "--out", str(parent), "-q", "--threads", "1",
                       "--accuracy-level", "4"]) == 0
    out = parent.parent / "arm64.json"
    proc = subprocess.run([sys.executable, "-m", "scripts.arm64.check", str(parent), "--fp32", str(tiny_artifact),
                           "--cpu", "both", "--json", str(out)], cwd=REPO, text=True, capture_output=True)
    print(proc.stdout)
    # Exit 1 = a row missed the real model's targets, which the tiny model does (see above).
    assert proc.returncode in (0, 1) and out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_both_cpu_models_ran_with_the_expected_features(arm64_result):
    cpus = arm64_result["cpus"]
    assert set(cpus) == {"max", "armv8.0"}
    assert {"asimddp", "i8mm"} <= set(cpus["max"]["features"])
    assert not {"asimddp", "i8mm", "sve"} & set(cpus["armv8.0"]["features"])
    for cpu in cpus.values():
        assert set(cpu["rows"]) == {"fp32", "q8_0", "q4_0", "e4_a8_f4_p4", "w8a8"}
        for row in cpu["rows"].values():
            assert row["guest"]["machine"] == "aarch64"
            assert row["guest"]["onnxruntime"] == arm64_result["onnxruntime"]["x86"]


@pytest.mark.parametrize("cpu", ["max", "armv8.0"])
@pytest.mark.parametrize("variant", ["fp32", "q8_0", "q4_0", "e4_a8_f4_p4", "w8a8"])
def test_arm64_vectors_match_x86(arm64_result, cpu, variant):
    row = arm64_result["cpus"][cpu]["rows"][variant]
    assert row["vs_x86_same"]["min"] >= SAME_MIN[variant], row["vs_x86_same"]
    # Quantized on arm64 is about as close to x86 fp32 as the same variant is on x86.
    arm, x86 = row["vs_x86_fp32"], row["x86_vs_x86_fp32"]
    assert arm["mean"] >= x86["mean"] - FP32_DROP_MEAN and arm["min"] >= x86["min"] - FP32_DROP_MIN, (arm, x86)
