"""Activation-aware scales (quant/awq.py), the pooled-window rows of the heads' calibration and
the length-batched calibration pass.

Tiny random Gemma 3 model; no download.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from quant import awq
from export.fusions import NORM_OPS
from quant.calibration import collect_statistics, load_calibration_texts, window_means
from quant.formats import FORMATS
from quant.graph import head_chain, pooling_states
from quant.source import open_fp32_artifact
from quant.cli import main
from runtime.artifact import read_manifest

TINY_LAYERS = 4   # tests/conftest.py's tiny Gemma 3
Q4_0 = FORMATS["Q4_0"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def calibrated(tiny_artifact):
    src = open_fp32_artifact(tiny_artifact)
    stats = collect_statistics(src, load_calibration_texts()[:12], threads=1, progress=False)
    return src, stats.hessians, stats.rows, stats.info


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def test_folding_is_exact_in_fp32(calibrated):
    """Scaled weights with the divided norms / v / up columns compute what the fp32 graph computes."""
    src, hessians, rows, _ = calibrated
    model = onnx.load(str(src.folder / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    read = lambda site: numpy_helper.to_array(inits[site.name])  # noqa: E731
    fold = awq.plan(model, src.sites, hessians, rows, read, {"attention", "feed_forward"}, Q4_0)
    assert len(fold.norm_divisors) == 2 * TINY_LAYERS            # input and pre-feed-forward norms
    assert len(fold.column_divisors) == 2 * TINY_LAYERS          # v_proj and up_proj
    assert len(fold.input_scales) == 4 * TINY_LAYERS
    assert any(a > 0 for a in fold.alphas.values())              # the search does scale something
    ids = np.array([[2, 17, 450, 33, 91, 7, 300, 5, 1]], np.int64)
    want = _run(model, ids)
    for site in src.sites:
        if site.name in fold.row_scales or site.name in fold.column_divisors:
            inits[site.name].CopyFrom(numpy_helper.from_array(fold.weight(site.name, read(site)), site.name))
    for name, s in fold.norm_divisors.items():
        inits[name].CopyFrom(numpy_helper.from_array((numpy_helper.to_array(inits[name]) / s).astype(np.float32), name))
    got = _run(model, ids)
    assert any(not np.allclose(s, 1) for s in fold.norm_divisors.values())   # the graph really changed
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_scale_search_never_worse_than_no_scaling_and_helps_outlier_channels():
    rng = np.random.default_rng(1)
    k, n, rows = 64, 96, 1000
    x = rng.standard_normal((rows, k))
    x[:, 5] *= 30.0                                              # one activation channel 30x the others
    h = x.T @ x
    w = rng.standard_normal((k, n)).astype(np.float32)
    s, alpha = awq.search_scales(w, h, rows, fmt=Q4_0)
    base = awq._rtn_error(w, np.ones(k, np.float32), h, Q4_0)
    assert alpha > 0 and awq._rtn_error(w, s, h, Q4_0) < base
    assert s[5] == s.max()                                       # the loud channel gets the finest steps
    # a flat input distribution: whatever is picked is at least as good as alpha = 0
    h_flat = np.eye(k) * rows
    s_flat, _ = awq.search_scales(w, h_flat, rows, fmt=Q4_0)
    assert awq._rtn_error(w, s_flat, h_flat, Q4_0) <= awq._rtn_error(w, np.ones(k, np.float32), h_flat, Q4_0)


def test_tied_scales_are_equal_across_heads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 96)) * rng.uniform(0.5, 20, 96)
    s, _ = awq.search_scales(rng.standard_normal((96, 64)).astype(np.float32), x.T @ x, 500, fmt=Q4_0, tie=3)
    np.testing.assert_array_equal(s[:32], s[32:64])
    np.testing.assert_array_equal(s[:32], s[64:])


def test_window_means_against_direct_means():
    x = np.arange(40, dtype=np.float32).reshape(10, 4) ** 1.5
    got = window_means(x, 25, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    length = rng.integers(1, 11, 25)
    start = rng.integers(0, 10 - length + 1)
    want = np.stack([x[a:a + b].mean(axis=0) for a, b in zip(start, length)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (25, 4) and length.min() >= 1 and (start + length).max() <= 10


def test_heads_get_window_rows_and_the_pooling_input_is_found(calibrated):
    src, _, rows, info = calibrated
    model = onnx.load(str(src.folder / "model.onnx"), load_external_data=False)
    heads = head_chain(model, src.sites)
    assert [h.name for h in heads] == ["dense_weights.0", "dense_weights.1"]
    states = pooling_states(model, heads[0].activation)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert states is not None and producers[states] in ("Mul", *NORM_OPS)   # the final RMSNorm's output
    per_text = info["heads"]["pooled_windows_per_text"]
    texts = rows[heads[0].activation] // (per_text + 1)
    assert rows[heads[0].activation] == texts * (per_text + 1) and rows[heads[1].activation] == rows[heads[0].activation]
    assert rows[heads[1].activation] >= heads[1].k                 # enough for a full-rank GPTQ Hessian


def test_gptq_q4_0_records_awq_and_keeps_norms_consistent(tiny_artifact, tmp_path):
    out = tmp_path / "q4"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--out", out, "--method", "gptq", "-q",
                   "--threads", "1", "--accuracy-level", "0") == 0
    q = read_manifest(out)["quantization"]
    assert q["groups"]["attention"]["method"] == q["groups"]["feed_forward"]["method"] == "awq+gptq"
    assert q["groups"]["projection"]["method"] == "gptq+chain" and q["groups"]["embeddings"]["method"] == "scale_search"
    a = q["activation_aware_scales"]
    assert a["groups"] == ["attention", "feed_forward"] and a["norm_weights_divided"] == 2 * TINY_LAYERS
    assert a["inputs"] == 4 * TINY_LAYERS and 0 <= a["alpha"]["min"] <= a["alpha"]["max"] <= 1
    # the graph's norm weights are the fp32 ones divided by positive scales (same signs, new values)
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tiny_artifact / "model.onnx")).graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    changed = [n for n in new if n in fp32 and new[n].ndim == 1 and new[n].shape == fp32[n].shape
               and not np.array_equal(new[n], fp32[n])]
    assert len(changed) == 2 * TINY_LAYERS
    assert all(np.all(np.sign(new[n]) == np.sign(fp32[n])) for n in changed)
    # e4_a8_f4_p4 folds only the 4-bit feed-forward group; Q8_0 attention stays as exported
    out2 = tmp_path / "mixed"
    assert run_cli("--in", tiny_artifact, "--variant", "e4_a8_f4_p4", "--out", out2, "--method", "gptq", "-q",
                   "--threads", "1", "--no-check", "--accuracy-level", "0") == 0
    q2 = read_manifest(out2)["quantization"]
    assert q2["groups"]["attention"]["method"] == "gptq" and q2["groups"]["feed_forward"]["method"] == "awq+gptq"
    assert q2["activation_aware_scales"]["norm_weights_divided"] == TINY_LAYERS


def test_batched_calibration_equals_one_text_per_run(calibrated, monkeypatch):
    """Padding rows never enter the statistics: batching changes the Hessians by float rounding only."""
    import quant.calibration as C

    src, hessians, rows, _ = calibrated
    monkeypatch.setattr(C, "CALIBRATION_BATCH_TOKENS", 1)   # every text in a batch of its own
    stats = collect_statistics(src, load_calibration_texts()[:12], threads=1, progress=False)
    alone, rows_alone = stats.hessians, stats.rows
    assert rows_alone == rows
    for name, h in hessians.items():
        np.testing.assert_allclose(alone[name], h, rtol=1e-4, atol=1e-6 * np.abs(h).max())
