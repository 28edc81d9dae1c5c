"""Real google/embeddinggemma-300m: round-to-nearest Q8_0 and Q4_0 artifacts from the fp32 export.

Runs only with EMBEDDINGGEMMA_DIR set. Checks what the quant stage promises and meets today: Q8_0
fidelity on the parity texts, sizes on disk, every tokenizer file carried over. (The Q4_0 fidelity
target is not met yet; quant/NOTES-quant.md has the numbers, so it is not asserted here.)
"""
from __future__ import annotations

import pytest

from quant.build import build_variants
from quant.fidelity import TARGETS, load_texts, measure
from quant.recipe import parse_recipe
from runtime.artifact import read_manifest

pytestmark = pytest.mark.real_model
MB = 1e6
MAX_MODEL_MB = {"q8_0": 340, "q4_0": 200}


@pytest.fixture(scope="module")
def rtn_variants(real_artifact, tmp_path_factory):
    parent = tmp_path_factory.mktemp("real-quant")
    targets = [(parse_recipe(v), parent / v) for v in ("q8_0", "q4_0")]
    build_variants(real_artifact, targets, method="rtn", progress=False, verify_input=False)
    return {v: parent / v for v in ("q8_0", "q4_0")}


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
