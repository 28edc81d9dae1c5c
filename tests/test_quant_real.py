"""Real google/embeddinggemma-300m: round-to-nearest Q8_0 and Q4_0 artifacts from the fp32 export.

Runs only with EMBEDDINGGEMMA_DIR set. Checks what the quant stage promises and meets today: Q8_0
fidelity on the parity texts, sizes on disk, every tokenizer file carried over, and the fidelity of the
integer-path variants w8a8 and w8a8_fast. (Q4_0 meets its
fidelity target only with ``--method gptq``; that build and its fidelity run would add ~7 minutes to
CI, so the target is measured by hand: docs/notes/quant.md and README have the numbers.)
"""
from __future__ import annotations

import pytest

from quant.build import BuildOptions, build_variants
from quant.fidelity import TARGETS, load_texts, measure
from quant.recipe import parse_recipe
from runtime.artifact import read_manifest

pytestmark = pytest.mark.real_model
MB = 1e6
MAX_MODEL_MB = {"q8_0": 340, "q4_0": 200}


@pytest.mark.parametrize("variant", ["q8_0", "q4_0"])
def test_model_size_and_files(rtn_variants, real_artifact, variant):
    folder = rtn_variants[variant]
    m = read_manifest(folder)
    model_bytes = sum(m["files"][name]["size"] for name in ("model.onnx", "model.onnx.data"))
    assert model_bytes <= MAX_MODEL_MB[variant] * MB
    fp32 = read_manifest(real_artifact)
    assert set(fp32["files"]) == set(m["files"])  # tokenizer.json + the sentencepiece pair travel along
    assert m.get("sentencepiece") == fp32.get("sentencepiece")
    assert m["quant_check"]["min_cosine_vs_fp32"] > 0.9


def test_q8_0_fidelity_on_parity_texts(rtn_variants, real_artifact):
    result = measure(real_artifact, [rtn_variants["q8_0"]], load_texts(), prompt_names=("document",))
    got = result[str(rtn_variants["q8_0"])]["prompts"]["document"]
    mean_target, min_target = TARGETS["q8_0"]
    assert got["mean"] >= mean_target and got["min"] >= min_target, got


@pytest.fixture(scope="module")
def integer_variants(real_artifact, tmp_path_factory) -> dict[str, object]:
    """The speed-first variants as the quant stage builds them by default (GPTQ weights, calibrated
    smoothing, activation width chosen for this CPU), sharing one calibration pass."""
    parent = tmp_path_factory.mktemp("real-int8")
    names = ("w8a8", "w8a8_fast")
    build_variants(real_artifact, [(parse_recipe(n), parent / n) for n in names],
                   BuildOptions(method="gptq", progress=False, verify_input=False))
    return {n: parent / n for n in names}


@pytest.fixture(scope="module")
def w8a8(integer_variants):
    return integer_variants["w8a8"]


# What w8a8 measured (document | query prompt), asserted as floors with room for build-to-build
# variation of the minimum (set by a few short texts, chaotic; docs/notes/quant.md). 8-bit codes,
# v/down fp32, latest build: 0.99970 / 0.99928 | 0.99966 / 0.99912 (the minimum ranged 0.9988-0.9994
# over equivalent builds). 7-bit (x86 without VNNI): 0.99933 / 0.99678 | 0.99926 / 0.99830.
W8A8_FLOOR = {8: (TARGETS["w8a8"][0], 0.998), 7: (0.9990, 0.9965)}


def test_w8a8_fidelity_on_parity_texts(w8a8, real_artifact):
    """w8a8 against fp32 on the parity texts, both prompts, at the activation width built for this CPU."""
    int8 = read_manifest(w8a8)["quantization"]["int8_path"]
    result = measure(real_artifact, [w8a8], load_texts())[str(w8a8)]["prompts"]
    mean_target, min_target = W8A8_FLOOR[int8["activation_bits"]]
    for prompt, got in result.items():
        assert got["mean"] >= mean_target and got["min"] >= min_target, (prompt, got, int8)


# w8a8_fast measured (document | query): 8-bit codes 0.99831 / 0.99438 | 0.99793 / 0.99558 (before
# down_proj's smoothing moved into up_proj's scales: 0.99829 / 0.99438 | 0.99798 / 0.99546; its target
# 0.997 / 0.99); 7-bit codes (x86 without VNNI, where it is not the fast variant) 0.99403 / 0.98867 |
# 0.99286 / 0.98523, below its target: floors with room for build-to-build variation of the minimum.
W8A8_FAST_FLOOR = {8: (TARGETS["w8a8_fast"][0], 0.992), 7: (0.992, 0.983)}


def test_w8a8_fast_fidelity_on_parity_texts(integer_variants, real_artifact):
    """The static form against fp32 on the parity texts, both prompts: below w8a8, far above dynamic
    per-tensor int8 (0.92 / 0.38, docs/benchmarks.md)."""
    folder = integer_variants["w8a8_fast"]
    bits = read_manifest(folder)["quantization"]["int8_path"]["activation_bits"]
    result = measure(real_artifact, [folder], load_texts())[str(folder)]["prompts"]
    mean_floor, min_floor = W8A8_FAST_FLOOR[bits]
    for prompt, got in result.items():
        assert got["mean"] >= mean_floor and got["min"] >= min_floor, (prompt, got, bits)
