"""``--method corrected`` on the tiny artifact: the corrected weight is the least-squares map it claims
to be, the build records what it did, its codes decode bit-exactly as Q4_0 (gguf's decoder, the
independent reference), and it is closer to fp32 than plain GPTQ. Its refusals are tested with
learned rounding's (``test_quant_learned``)."""
from __future__ import annotations

import numpy as np
import pytest

from quant.corrected import corrected_weight
from runtime.artifact import read_manifest
from test_quant_learned import _mean_cosine, gguf_q4_0_decoded, tiny_q4_0
from test_quant_tiny import TINY_LAYERS, _stored, run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def corrected(tiny_artifact, tmp_path_factory):
    return tiny_q4_0(tiny_artifact, tmp_path_factory, "corrected")


def test_corrected_weight_undoes_a_known_input_error():
    """With X' = X A the corrected weight maps X' back to X W (ridge -> 0: A^-1 W); with X' = X it is W;
    a ridge pulls it towards W."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16))
    a = np.eye(16) + 0.1 * rng.standard_normal((16, 16))
    w = rng.standard_normal((16, 8))
    xq = x @ a
    h, c = xq.T @ xq, xq.T @ x
    exact = corrected_weight(h, c, w, ridge=0.0)
    np.testing.assert_allclose(xq @ exact, x @ w, atol=1e-9)
    np.testing.assert_allclose(corrected_weight(x.T @ x, x.T @ x, w), w, atol=1e-12)
    ridged = corrected_weight(h, c, w, ridge=10.0)
    assert np.linalg.norm(ridged - w) < 0.5 * np.linalg.norm(exact - w)


def test_corrected_build_records_each_layer(corrected):
    """The manifest names the method per group and, per layer, how far each corrected weight moved
    (o, gate, up, down; q/k/v read the layer input and get plain GPTQ)."""
    q = read_manifest(corrected)["quantization"]
    assert q["method"] == "corrected"
    assert q["groups"]["attention"]["method"] == q["groups"]["feed_forward"]["method"] == "awq+corrected"
    assert q["groups"]["projection"]["method"].startswith("gptq")
    report = q["corrected_target"]
    assert report["ridge"] == 0.1 and report["tokens"] > 0 and "learned_rounding" not in q
    assert [e["layer"] for e in report["layers"]] == list(range(TINY_LAYERS))
    for entry in report["layers"]:
        assert set(entry["relative_change"]) == {"o", "gate", "up", "down"}
        assert all(0 < v < 1 for v in entry["relative_change"].values()), entry


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["backbone.layers.0.self_attn.o_proj.weight_t", "backbone.layers.3.mlp.down_proj.weight_t"])
def test_corrected_codes_decode_as_gguf_q4_0(corrected, tiny_artifact, name):
    """The stored blocks decode in gguf to exactly what the graph decodes, and are not round-to-nearest's."""
    from quant.formats import FORMATS

    decoded = gguf_q4_0_decoded(corrected, name)
    w = _stored(tiny_artifact, name).astype(np.float32)
    assert decoded.shape == w.T.shape
    assert not np.array_equal(decoded, FORMATS["Q4_0"].dequantize(*FORMATS["Q4_0"].quantize(np.ascontiguousarray(w.T))))


def test_corrected_is_closer_to_fp32_than_gptq(corrected, tiny_artifact, tmp_path_factory):
    """Mean cosine to fp32 on the tiny texts (measured: gptq 0.9744, corrected 0.9814)."""
    gptq = tiny_q4_0(tiny_artifact, tmp_path_factory, "gptq")
    assert _mean_cosine(corrected, tiny_artifact) > _mean_cosine(gptq, tiny_artifact) + 0.004


def test_corrected_with_per_layer_overrides(tiny_artifact, tmp_path):
    """A recipe that mixes formats within a group (v_proj 8-bit beside 4-bit q/k) and across layers
    builds: each weight is stored in its own format, and the later groups are still corrected."""
    out = tmp_path / "mixed"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0:v8,down8@1", "--method", "corrected",
                   "--accuracy-level", "0", "--out", out, "-q", "--threads", "1") == 0
    layer0, layer1 = "backbone.layers.0.self_attn", "backbone.layers.1.mlp.down_proj.weight_t"
    for name, ext in ((f"{layer0}.q_proj.weight_t", "q4"), (f"{layer0}.v_proj.weight_t", "q8"), (layer1, "q8")):
        assert _stored(out, f"{name}.{ext}").size > 0
    report = read_manifest(out)["quantization"]["corrected_target"]
    assert set(report["layers"][1]["relative_change"]) == {"o", "gate", "up", "down"}
