"""Export on the tiny random Gemma 3: graph contract, parity with sentence-transformers, safe writes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from runtime import Embedder
from runtime.artifact import MANIFEST_NAME, sha256_file
from runtime.outputs import OutputExistsError, staged_output
from tiny_checkpoint import PROMPTS, SLIDING_WINDOW, TINY_TEXTS

# Lengths from 3 to past the tiny max length (64), several beyond its window (|i-j| < 9).
TEXTS = TINY_TEXTS


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_graph_contract(tiny_artifact):
    model = onnx.load(str(tiny_artifact / "model.onnx"), load_external_data=False)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    for t in inputs.values():
        assert t.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in t.shape.dim] == ["batch", "sequence"]  # both axes dynamic
    (out,) = model.graph.output
    assert out.name == "sentence_embedding"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = out.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 64
    # Dense heads are MatMul (block quantizers skip Gemm); no Gemm anywhere.
    assert "Gemm" not in {n.op_type for n in model.graph.node}
    # Every 2-D weight carries its module's name, which the quant stage relies on.
    weights = {i.name: list(i.dims) for i in model.graph.initializer if len(i.dims) == 2}
    expected = {"backbone.embed_tokens.weight", "dense_weights.0", "dense_weights.1"}
    for layer in range(4):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            expected.add(f"backbone.layers.{layer}.{proj}.weight_t")
    assert set(weights) == expected
    assert weights["backbone.layers.0.mlp.down_proj.weight_t"] == [96, 64]  # stored [in, out]
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in model.graph.node for p in n.metadata_props)
    # Every RMSNorm (4 per layer, q/k norms, the final one) is one fused operator; the two norms
    # after each residual Add take it in as their skip input.
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("SimplifiedLayerNormalization") + ops.count("SkipSimplifiedLayerNormalization") == 6 * 4 + 1
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * 4
    assert "Pow" not in ops and "Reciprocal" not in ops


def test_manifest_matches_checkpoint_and_files(tiny_artifact, tiny_checkpoint):
    m = json.loads((tiny_artifact / MANIFEST_NAME).read_text())
    assert m["format_version"] == 1 and m["variant"] == "fp32"
    assert m["prompts"] == PROMPTS  # carried from config_sentence_transformers.json, not hard-coded
    assert m["max_seq_length"] == 64
    assert m["embedding"]["dim"] == 64 and m["embedding"]["matryoshka_dims"] == [64, 32, 16]
    assert m["architecture"]["sliding_window_exclusive"] == SLIDING_WINDOW // 2 + 1
    assert set(m["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json"}
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(tiny_artifact / name)
        assert entry["size"] == (tiny_artifact / name).stat().st_size
    assert m["source"]["weights_sha256"]["model.safetensors"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert m["export_check"]["min_cosine_vs_torch"] >= 0.9999


@pytest.mark.parametrize("prompt_name", [None, "query", "STS"])
def test_parity_with_sentence_transformers(tiny_artifact, tiny_st, prompt_name):
    emb = Embedder(tiny_artifact)
    with pytest.warns(Warning):  # the last text is longer than 64 tokens: truncated on both sides
        got = emb.encode(TEXTS, prompt_name=prompt_name, batch_size=4)
    ref = tiny_st.encode(TEXTS, prompt_name=prompt_name, batch_size=4, show_progress_bar=False)
    assert got.shape == ref.shape == (len(TEXTS), 64)
    assert cosines(got, ref).min() >= 0.99999
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_tokenizer_ids_match_reference(tiny_artifact, tiny_st):
    emb = Embedder(tiny_artifact)
    ref_lengths = [len(ids) for ids in tiny_st.tokenizer(TEXTS, truncation=True, max_length=64)["input_ids"]]
    assert emb.count_tokens(TEXTS) == ref_lengths
    assert max(ref_lengths) == 64 and min(ref_lengths) <= 4


def test_padding_and_batch_composition_do_not_change_vectors(tiny_artifact):
    emb = Embedder(tiny_artifact)
    texts = TEXTS[:-1]
    alone = np.stack([emb.encode(t) for t in texts])
    for batch_size in (1, 3, 32):
        together = emb.encode(texts, batch_size=batch_size)
        np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.isfinite(together).all()


def test_export_refuses_existing_output_and_force_replaces(tiny_checkpoint, tiny_artifact, tmp_path):
    from export.build import export_artifact
    from export.checkpoint import resolve_checkpoint

    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--force"):
        export_artifact(resolve_checkpoint(str(tiny_checkpoint)), out)
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]  # no staging folder left behind


def test_staged_output_failure_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "old").write_text("old")
    with staged_output(out, force=True) as stage:
        (stage / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_cli_force_replaces_and_help_is_true(tiny_checkpoint, tiny_artifact, tmp_path):
    out = tmp_path / "cli"
    shutil.copytree(tiny_artifact, out)
    run = subprocess.run([sys.executable, "-m", "export", "--model", str(tiny_checkpoint), "--out", str(out), "-q"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "already exists" in run.stderr and "--force" in run.stderr
    run = subprocess.run([sys.executable, "-m", "export", "--model", str(tiny_checkpoint), "--out", str(out), "-q",
                          "--force", "--matryoshka-dims", "64,32"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / MANIFEST_NAME).read_text())["embedding"]["matryoshka_dims"] == [64, 32]
    helptext = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True).stdout
    for flag in ("--model", "--out", "--force", "--revision", "--matryoshka-dims", "examples:"):
        assert flag in helptext


@pytest.mark.parametrize("model, message", [
    ("/nonexistent/folder/x", "neither an existing folder nor a Hugging Face id"),
    ("not a valid id!", "neither an existing folder nor a Hugging Face id"),
])
def test_cli_bad_model_argument(model, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "export", "--model", model, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "o").exists()


def test_folder_without_modules_json_is_rejected(tmp_path):
    from export.checkpoint import CheckpointError, resolve_checkpoint

    with pytest.raises(CheckpointError, match="modules.json"):
        resolve_checkpoint(str(tmp_path))


def test_hub_id_without_hub_access_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run([sys.executable, "-m", "export", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert "google/embeddinggemma-300m" in run.stderr and "pass a local checkpoint folder with --model" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "o").exists()
